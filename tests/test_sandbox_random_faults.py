"""The sandbox's random faults (settings `random_faults`, for `make bench`'s fleet): each Dataverse or
Partner Center request meets a 429 with Retry-After, a 503, a reset or a lost answer with the given rate,
logged as `random:<kind>`; a lost answer means the request was processed."""

from __future__ import annotations

import pytest
import requests

from sandbox.testing import ControlError


@pytest.fixture
def control(sandbox):
    yield sandbox.control
    sandbox.control.settings(random_faults=None)


def call(sandbox, method, url, **kwargs):
    token = sandbox.control.issue_token(audience=url.split("/api/data/")[0], client_id=sandbox.info["admin_client_id"])
    return requests.request(method, url, headers={"Authorization": f"Bearer {token['access_token']}"},
                            verify=sandbox.info["ca_bundle"], timeout=20, **kwargs)


def test_every_request_meets_the_chosen_fault_at_rate_1_and_none_at_rate_0(sandbox, control, org):
    whoami = f"{org}/api/data/v9.2/WhoAmI"
    control.settings(random_faults={"rate": 1, "kinds": ["429"], "retry_after": 2})
    throttled = call(sandbox, "GET", whoami)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2"
    assert throttled.json()["error"]["code"] == "0x80072322"
    control.settings(random_faults={"rate": 1, "kinds": ["503"]})
    assert call(sandbox, "GET", whoami).status_code == 503
    control.settings(random_faults={"rate": 1, "kinds": ["reset"]})
    with pytest.raises(requests.ConnectionError):
        call(sandbox, "GET", whoami)
    control.settings(random_faults={"rate": 0})
    assert call(sandbox, "GET", whoami).status_code == 200
    faults = [e.get("fault") for e in control.log() if e.get("path", "").endswith("/WhoAmI")][-4:]
    assert faults == ["random:429", "random:503", "random:reset", None]


def test_a_lost_answer_comes_after_the_write_landed(sandbox, control, org):
    control.settings(random_faults={"rate": 1, "kinds": ["lost"]})
    with pytest.raises(requests.ConnectionError):
        call(sandbox, "POST", f"{org}/api/data/v9.2/leads", json={"subject": "lost answer", "lastname": "Fault"})
    control.settings(random_faults=None)
    assert [lead["subject"] for lead in control.state(org)["leads"]] == ["lost answer"]
    entry = [e for e in control.log() if e.get("method") == "POST" and e.get("path", "").endswith("/leads")][-1]
    assert entry["fault"] == "random:lost"
    assert entry["applied_status"] in (201, 204)


def test_the_rate_is_roughly_kept_and_a_seed_repeats_the_sequence(sandbox, control, org):
    whoami = f"{org}/api/data/v9.2/WhoAmI"

    def statuses():
        control.settings(random_faults={"rate": 0.25, "kinds": ["503"], "seed": 7})
        return [call(sandbox, "GET", whoami).status_code for _ in range(40)]

    first, second = statuses(), statuses()
    assert first == second
    assert 4 <= first.count(503) <= 18  # 10 expected; the seeded sequence is fixed, so this cannot flake


def test_entra_token_requests_meet_only_the_kinds_named_for_entra(sandbox, control, org):
    token_url = f"{sandbox.info['authority']}/oauth2/v2.0/token"
    form = {"grant_type": "client_credentials", "client_id": sandbox.info["admin_client_id"],
            "client_secret": sandbox.info["admin_client_secret"], "scope": f"{org}/.default"}
    control.settings(random_faults={"rate": 1, "targets": ["entra", "dataverse"], "retry_after": 3,
                                    "target_kinds": {"entra": ["429"], "dataverse": ["503"]}})
    throttled = requests.post(token_url, data=form, verify=sandbox.info["ca_bundle"], timeout=20)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "3"
    assert throttled.json()["error"]  # Entra's OAuth error shape, not Dataverse's envelope
    assert call(sandbox, "GET", f"{org}/api/data/v9.2/WhoAmI").status_code == 503
    entry = [e for e in control.log() if e.get("kind") == "entra" and e.get("path", "").endswith("/token")][-1]
    assert entry["fault"] == "random:429"


def test_bad_random_fault_settings_are_refused(control):
    for bad in ({"rate": 2}, {"kinds": ["429"]}, {"rate": 0.1, "kinds": ["timeout"]}, {"rate": 0.1, "targets": ["x"]},
                {"rate": 0.1, "target_kinds": {"entra": ["lost", "slow"]}}, {"rate": 0.1, "target_kinds": {"x": ["429"]}}):
        with pytest.raises(ControlError, match="400"):
            control.settings(random_faults=bad)
