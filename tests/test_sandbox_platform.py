"""The sandbox platform over real HTTPS: `python -m sandbox serve`, routing, bearer checks, the request
log, fault rules, service protection, latency and the control API (reset, organizations)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import msal
import pytest
import requests

from dynamics_provider.waiting import wait_until
from sandbox.testing import ControlError, stack_config, start_sandbox
from tests.harness.interrupt import first_line

ROOT = Path(__file__).resolve().parent.parent
GRAPH = "https://graph.microsoft.com"
PRODUCTS = "/product?$version=2022-03-01-preview2"
SERVE_KEYS = {"instance_url", "authority", "authority_host", "tenant_id", "ca_bundle", "admin_client_id",
              "admin_client_secret", "leadwriter_client_id", "leadwriter_client_secret", "control_url",
              "partner_center_url", "port"}


@pytest.fixture
def control(sandbox):
    yield sandbox.control
    sandbox.control.clear_faults()
    sandbox.control.settings(token_lifetime_seconds=3600, latency_ms=0, throttle=None)


def bearer(sandbox, audience, client_id=None):
    token = sandbox.control.issue_token(audience=audience, client_id=client_id or sandbox.info["admin_client_id"])
    return {"Authorization": f"Bearer {token['access_token']}"}


def get(sandbox, url, headers=None):
    return requests.get(url, headers=headers, verify=sandbox.info["ca_bundle"], timeout=20)


def products(sandbox, headers):
    return get(sandbox, sandbox.info["partner_center_url"] + PRODUCTS, headers)


def entries_since(sandbox, seq, kind=None):
    return [e for e in sandbox.control.log(since=seq) if kind is None or e["kind"] == kind]


def last_seq(sandbox):
    entries = sandbox.control.log()
    return entries[-1]["seq"] if entries else 0


def test_serve_prints_one_json_line_answers_whoami_401_without_and_200_with_a_token_and_stops_on_sigterm(
        tmp_path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # it would override msal's verify=
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "serve", "--port", "0", "--state-dir", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = first_line(proc.stdout, 120)
        info = json.loads(line)
        assert set(info) == SERVE_KEYS
        assert json.loads((tmp_path / "serve.json").read_text()) == info
        assert Path(info["ca_bundle"]) == (tmp_path / "ca.pem").resolve()
        assert info["instance_url"] == f"https://127.0.0.1:{info['port']}/orgs/contoso"
        response = requests.get(f"{info['instance_url']}/api/data/v9.2/WhoAmI", verify=info["ca_bundle"], timeout=20)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer authorization_uri={info["authority"]}/oauth2/authorize, resource_id={info["instance_url"]}/')
        assert response.content == b""
        app = msal.ConfidentialClientApplication(info["admin_client_id"], client_credential=info["admin_client_secret"],
                                                 authority=info["authority"], instance_discovery=False,
                                                 verify=info["ca_bundle"])
        token = app.acquire_token_for_client([f"{info['instance_url']}/.default"])["access_token"]
        who = requests.get(f"{info['instance_url']}/api/data/v9.2/WhoAmI", verify=info["ca_bundle"], timeout=20,
                           headers={"Authorization": f"Bearer {token}"})
        assert who.status_code == 200 and who.json()["UserId"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_on_a_given_port_names_and_serves_that_port_everywhere(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sandbox", "serve", "--port", str(port), "--state-dir",
                             str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(first_line(proc.stdout, 120))
        host = f"127.0.0.1:{port}"
        assert info["port"] == port and info["authority_host"] == host
        for key in ("instance_url", "authority", "control_url", "partner_center_url"):
            assert info[key].startswith(f"https://{host}/"), (key, info[key])
        assert json.loads((tmp_path / "serve.json").read_text())["port"] == port
        session = requests.Session()
        session.trust_env = False
        session.verify = info["ca_bundle"]
        discovery = session.get(f"{info['authority']}/v2.0/.well-known/openid-configuration", timeout=20).json()
        for key in ("token_endpoint", "jwks_uri", "issuer", "authorization_endpoint"):
            assert discovery[key].startswith(f"https://{host}/"), (key, discovery[key])
        challenge = session.get(f"{info['instance_url']}/api/data/v9.2/WhoAmI", timeout=20).headers["WWW-Authenticate"]
        assert f"authorization_uri=https://{host}/" in challenge
        added = session.post(f"{info['control_url']}/orgs", json={"name": "fabrikam"}, timeout=20).json()
        assert added["instance_url"] == f"https://{host}/orgs/fabrikam"
        hosted = session.post(f"{info['control_url']}/files", json={"name": "a.zip", "content_b64": "UEs="},
                              timeout=20).json()
        assert hosted["url"] == f"https://{host}/files/a.zip"
        assert session.get(hosted["url"], timeout=20).content == b"PK"
        token = session.post(f"{info['authority']}/oauth2/v2.0/token", timeout=20, data={
            "grant_type": "client_credentials", "client_id": info["admin_client_id"],
            "client_secret": info["admin_client_secret"], "scope": f"{added['instance_url']}/.default"}).json()
        who = session.get(f"{added['instance_url']}/api/data/v9.2/WhoAmI", timeout=20,
                          headers={"Authorization": f"Bearer {token['access_token']}"})
        assert who.status_code == 200, who.text
        graph = session.post(f"{info['authority']}/oauth2/v2.0/token", timeout=20, data={
            "grant_type": "client_credentials", "client_id": info["admin_client_id"],
            "client_secret": info["admin_client_secret"], "scope": f"{GRAPH}/.default"}).json()["access_token"]
        version = "2022-03-01-preview2"
        job = session.post(f"{info['partner_center_url']}/configure?$version={version}", timeout=20,
                           headers={"Authorization": f"Bearer {graph}"},
                           json={"$schema": f"https://schema.mp.microsoft.com/schema/configure/{version}",
                                 "resources": []})
        assert job.status_code == 202, job.text
        status_url = f"{info['partner_center_url']}/configure/{job.json()['jobID']}/status?$version={version}"

        def succeeded() -> dict | None:  # resourceUri comes with a succeeded job (docs/sandbox.md, Partner Center)
            status = session.get(status_url, timeout=20, headers={"Authorization": f"Bearer {graph}"}).json()
            return status if status["jobResult"] == "succeeded" else None

        done = wait_until(succeeded, timeout=30, what="the configure job", first_delay=0.1)
        assert done["resourceUri"].startswith(f"https://{host}/rp/product-ingestion/configure/")
        session.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_port_in_use_and_an_impossible_port_with_a_message_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", str(port), "--state-dir",
                               str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 1 and busy.stdout == ""
    assert f"127.0.0.1:{port}" in busy.stderr and "--port" in busy.stderr and "Traceback" not in busy.stderr
    impossible = subprocess.run([sys.executable, "-m", "sandbox", "serve", "--port", "70000", "--state-dir",
                                 str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert impossible.returncode == 2 and "70000 is not a TCP port" in impossible.stderr


def test_restart_on_the_same_state_dir_reuses_the_ca(tmp_path):
    first = start_sandbox(state_dir=tmp_path)
    ca = (tmp_path / "ca.pem").read_bytes()
    first.stop()
    second = start_sandbox(state_dir=tmp_path)
    try:
        assert (tmp_path / "ca.pem").read_bytes() == ca
        assert second.control.orgs()[0]["name"] == "contoso"  # TLS verified with the reused ca.pem
    finally:
        second.stop()


def test_unknown_path_is_404_with_the_dataverse_envelope(sandbox):
    response = get(sandbox, f"https://{sandbox.info['authority_host']}/nowhere/at/all")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "0x8006088a"


def test_token_for_another_organization_is_401(sandbox, org):
    response = get(sandbox, f"{org}/api/data/v9.2/WhoAmI", bearer(sandbox, sandbox.info["instance_url"]))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].endswith(f"resource_id={org}/")


def test_fault_answers_status_and_retry_after_count_times_and_is_logged(sandbox, control):
    headers = bearer(sandbox, "https://graph.microsoft.com")
    seq = last_seq(sandbox)
    control.add_fault(method="GET", path=r"/rp/product-ingestion/product$", status=503, retry_after=1, count=2)
    first, second, third = (products(sandbox, headers) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert first.headers["Retry-After"] == "1"
    assert first.json()["error"]["code"].startswith("0x")
    time.sleep(1.1)
    fourth = products(sandbox, headers)
    assert fourth.status_code == 200
    log = entries_since(sandbox, seq, "partnercenter")
    assert [e["status"] for e in log] == [503, 503, 200, 200]
    # sent at once after a Retry-After: inside the window; after waiting it out: not
    assert [e["inside_retry_after"] for e in log] == [False, True, True, False]
    assert log[0]["caller"] == sandbox.info["admin_client_id"]
    assert {"seq", "time", "org", "kind", "method", "path", "query", "status", "caller", "duration_ms"} <= set(log[0])


def test_reset_fault_drops_the_connection_without_an_answer(sandbox, control, org):
    headers = bearer(sandbox, org)
    seq = last_seq(sandbox)
    control.add_fault(path="WhoAmI", reset=True, org=org.rsplit("/", 1)[-1])
    with pytest.raises(requests.ConnectionError):
        get(sandbox, f"{org}/api/data/v9.2/WhoAmI", headers)
    again = get(sandbox, f"{org}/api/data/v9.2/WhoAmI", headers)
    assert again.status_code != 0 and again.status_code < 500
    log = entries_since(sandbox, seq, "dataverse")
    assert log[0]["status"] == 0 and log[0]["reset"] is True
    assert log[1]["status"] == again.status_code


def test_fault_for_one_organization_leaves_the_others_alone(sandbox, control, org):
    other = sandbox.control.add_org(f"t{uuid.uuid4().hex[:12]}")
    control.add_fault(path="WhoAmI", status=503, org=org.rsplit("/", 1)[-1], count=5)
    hit = get(sandbox, f"{org}/api/data/v9.2/WhoAmI", bearer(sandbox, org))
    spared = get(sandbox, f"{other}/api/data/v9.2/WhoAmI", bearer(sandbox, other))
    assert hit.status_code == 503
    assert spared.status_code != 503


def test_latency_fault_delays_one_answer(sandbox, control):
    headers = bearer(sandbox, "https://graph.microsoft.com")
    control.add_fault(path="product-ingestion", latency_ms=400)
    started = time.monotonic()
    slow = products(sandbox, headers)
    slow_seconds = time.monotonic() - started
    started = time.monotonic()
    products(sandbox, headers)
    fast_seconds = time.monotonic() - started
    assert slow.status_code == 200
    assert slow_seconds >= 0.4 > fast_seconds


def test_setting_latency_delays_every_protected_request(sandbox, control):
    headers = bearer(sandbox, "https://graph.microsoft.com")
    control.settings(latency_ms=300)
    seq = last_seq(sandbox)
    for _ in range(2):
        assert products(sandbox, headers).status_code == 200
    assert all(e["duration_ms"] >= 300 for e in entries_since(sandbox, seq, "partnercenter"))


def test_request_window_throttles_with_429_and_retry_after_and_extends_while_sent(sandbox, control):
    headers = bearer(sandbox, "https://graph.microsoft.com")
    control.settings(throttle={"window_seconds": 2, "max_requests": 3})
    seq = last_seq(sandbox)
    statuses = [products(sandbox, headers).status_code for _ in range(3)]
    throttled = products(sandbox, headers)
    assert statuses == [200, 200, 200]
    assert throttled.status_code == 429
    assert throttled.json()["error"] == {
        "code": "0x80072322", "message": "Number of requests exceeded the limit of 3 over time window of 2 seconds."}
    wait = int(throttled.headers["Retry-After"])
    assert 1 <= wait <= 2
    assert products(sandbox, headers).status_code == 429  # sending while throttled extends the wait
    time.sleep(int(products(sandbox, headers).headers["Retry-After"]) + 0.1)
    assert products(sandbox, headers).status_code == 200
    log = entries_since(sandbox, seq, "partnercenter")
    assert [e["status"] for e in log] == [200, 200, 200, 429, 429, 429, 200]
    assert [e["inside_retry_after"] for e in log] == [False] * 4 + [True, True, False]
    assert all("throttled_until" in e for e in log if e["status"] == 429)


def test_throttling_counts_per_caller(sandbox, control):
    admin = bearer(sandbox, "https://graph.microsoft.com")
    other = bearer(sandbox, "https://graph.microsoft.com", sandbox.info["leadwriter_client_id"])
    control.settings(throttle={"window_seconds": 30, "max_requests": 1, "retry_after": 5})
    assert products(sandbox, admin).status_code == 200
    refused = products(sandbox, admin)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "5")
    assert products(sandbox, other).status_code != 429


def test_throttling_counts_per_organization(sandbox, control, org):
    other = sandbox.control.add_org(f"t{uuid.uuid4().hex[:12]}")
    control.settings(throttle={"window_seconds": 30, "max_requests": 2, "retry_after": 3})
    here, there = bearer(sandbox, org), bearer(sandbox, other)
    statuses = [get(sandbox, f"{org}/api/data/v9.2/WhoAmI", here).status_code for _ in range(3)]
    elsewhere = get(sandbox, f"{other}/api/data/v9.2/WhoAmI", there)
    assert statuses == [200, 200, 429]
    assert elsewhere.status_code == 200


def test_concurrency_limit_answers_0x80072326(sandbox, control):
    headers = bearer(sandbox, "https://graph.microsoft.com")
    # both sent at once (no staggering sleep to guess with): the one admitted first is held 2 s, long enough
    # for the other to arrive while it is in flight even on a busy machine
    control.settings(latency_ms=2000, throttle={"max_concurrent": 1})
    results: list[requests.Response] = []
    together = threading.Barrier(2)
    threads = [threading.Thread(target=lambda: (together.wait(30), results.append(products(sandbox, headers))))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [200, 429]
    refused = next(r for r in results if r.status_code == 429)
    assert refused.json()["error"]["code"] == "0x80072326"
    assert int(refused.headers["Retry-After"]) >= 1


def test_control_reset_returns_to_the_seeded_sandbox(tmp_path):
    handle = start_sandbox(state_dir=tmp_path)
    control, info = handle.control, handle.info
    try:
        control.add_org("extra")
        app = control.register_app(display_name="temporary", client_secret="temporary-secret")
        control.add_fault(path="product-ingestion", status=503, count=10)
        control.settings(latency_ms=50, token_lifetime_seconds=5)
        control.reset()
        assert [o["name"] for o in control.orgs()] == ["contoso"]
        assert [e["path"] for e in control.log()] == ["/_control/orgs"]  # log cleared by the reset
        token = control.issue_token(audience="https://graph.microsoft.com", client_id=info["admin_client_id"])
        assert token["expires_on"] - time.time() > 3000
        response = requests.get(info["partner_center_url"] + PRODUCTS, verify=info["ca_bundle"], timeout=20,
                                headers={"Authorization": f"Bearer {token['access_token']}"})
        assert response.status_code == 200  # the fault rule is gone
        form = {"grant_type": "client_credentials", "client_id": app["client_id"],
                "client_secret": "temporary-secret", "scope": "https://graph.microsoft.com/.default"}
        refused = requests.post(f"{info['authority']}/oauth2/v2.0/token", data=form, verify=info["ca_bundle"],
                                timeout=20)
        assert refused.json()["error_codes"] == [700016]  # the registered app is gone
    finally:
        handle.stop()


def test_organizations_are_added_once_with_valid_names(sandbox):
    name = f"t{uuid.uuid4().hex[:12]}"
    url = sandbox.control.add_org(name)
    assert url == f"https://{sandbox.info['authority_host']}/orgs/{name}"
    assert {"name": name, "instance_url": url} in sandbox.control.orgs()
    with pytest.raises(ControlError, match="409"):
        sandbox.control.add_org(name)
    with pytest.raises(ControlError, match="400"):
        sandbox.control.add_org("Not A Name")


def test_stack_config_points_providers_at_the_sandbox(sandbox, org):
    config = stack_config(sandbox.info, org)
    assert config["lead-destination:instanceUrl"] == org
    assert config["lead-destination:authorityHost"] == sandbox.info["authority_host"]
    assert config["lead-destination:allowLoopback"] == "true"
    assert Path(config["lead-destination:caBundle"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    form = {"grant_type": "client_credentials", "client_id": config["lead-destination:deployerClientId"],
            "client_secret": config["lead-destination:deployerClientSecret"], "scope": f"{org}/.default"}
    url = f"https://{config['lead-destination:authorityHost']}/{config['lead-destination:deployerTenantId']}"
    response = requests.post(f"{url}/oauth2/v2.0/token", data=form, verify=config["lead-destination:caBundle"],
                             timeout=20)
    assert response.status_code == 200 and response.json()["token_type"] == "Bearer"


def test_secrets_never_appear_in_the_request_log(sandbox, org):
    info = sandbox.info
    seq = last_seq(sandbox)
    form = {"grant_type": "client_credentials", "client_id": info["admin_client_id"],
            "client_secret": info["admin_client_secret"], "scope": f"{org}/.default"}
    token = requests.post(f"{info['authority']}/oauth2/v2.0/token", data=form, verify=info["ca_bundle"],
                          timeout=20).json()["access_token"]
    get(sandbox, f"{org}/api/data/v9.2/WhoAmI", {"Authorization": f"Bearer {token}"})
    text = json.dumps(sandbox.control.log(since=seq))
    assert info["admin_client_secret"] not in text and token not in text
    assert info["admin_client_secret"] not in repr(sandbox.control) + repr(sandbox)


def test_drift_and_state_reach_the_organization_and_bad_drift_is_400(sandbox, org):
    result = sandbox.control.drift(org, "add_business_unit", name="Drifted BU")
    names = [bu["name"] for bu in sandbox.control.state(org)["businessunits"]]
    assert "Drifted BU" in names and result["businessunitid"]
    with pytest.raises(ControlError, match="400"):
        sandbox.control.drift(org, "no_such_action")
    with pytest.raises(ControlError, match="404"):
        sandbox.control.state("https://127.0.0.1:1/orgs/missing")


def test_hosted_file_is_served_without_auth_byte_for_byte_and_is_logged(sandbox, control):
    data = bytes(range(256)) * 40 + uuid.uuid4().bytes
    name = f"lead-writer-{uuid.uuid4().hex[:8]}.zip"
    seq = last_seq(sandbox)
    url = control.host_file(name, data)
    assert url == f"https://127.0.0.1:{sandbox.info['port']}/files/{name}"
    got = get(sandbox, url)
    assert got.status_code == 200 and got.content == data
    assert got.headers["Content-Type"] == "application/zip"
    assert get(sandbox, url + "-missing").status_code == 404
    log = entries_since(sandbox, seq, "files")
    assert [(e["method"], e["status"]) for e in log] == [("GET", 200), ("GET", 404)]
    control.remove_file(name)
    assert get(sandbox, url).status_code == 404


def test_hosted_file_downloads_take_fault_rules_and_names_are_checked(sandbox, control):
    name = f"f{uuid.uuid4().hex[:8]}.zip"
    url = control.host_file(name, b"PK\x03\x04 not really a zip")
    control.add_fault(method="GET", path=f"/files/{name}$", status=503, retry_after=1)
    assert get(sandbox, url).status_code == 503
    assert get(sandbox, url).content == b"PK\x03\x04 not really a zip"
    control.add_fault(method="GET", path=f"/files/{name}$", reset=True)
    with pytest.raises(requests.ConnectionError):
        get(sandbox, url)
    for bad in ("../etc/passwd", "a/b", "", ".hidden"):
        with pytest.raises(ControlError, match="400"):
            control.host_file(bad, b"x")


def test_retry_after_http_date_fault_sends_an_rfc7231_date_the_log_understands(sandbox, control, org):
    import email.utils

    headers = bearer(sandbox, org)
    seq = last_seq(sandbox)
    control.add_fault(path="WhoAmI$", status=429, retry_after=3, retry_after_http_date=True, org=org.rsplit("/", 1)[-1])
    sent = time.time()
    refused = get(sandbox, f"{org}/api/data/v9.2/WhoAmI", headers)
    assert refused.status_code == 429
    value = refused.headers["Retry-After"]
    assert value.endswith(" GMT") and not value.strip().isdigit()
    when = email.utils.parsedate_to_datetime(value).timestamp()
    assert sent + 2 <= when <= sent + 5
    entry = entries_since(sandbox, seq, "dataverse")[0]
    assert entry["throttled_until"] == when


def _https(sandbox):
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=sandbox.info["ca_bundle"])
    return http.client.HTTPSConnection("127.0.0.1", sandbox.info["port"], context=context, timeout=20)


def test_keep_alive_serves_many_requests_with_bodies_on_one_connection_each_with_content_length(
        sandbox, org):
    api = f"/orgs/{org.rsplit('/', 1)[-1]}/api/data/v9.2/"
    auth = bearer(sandbox, org)
    conn = _https(sandbox)
    try:
        answers = []
        for method, path, body, headers in [
            ("GET", api + "WhoAmI", None, auth),
            ("POST", api + "leads", json.dumps({"subject": "kept alive"}), {**auth, "Content-Type": "application/json"}),
            ("GET", api + "leads?$select=subject", None, auth),
            ("GET", api + "WhoAmI", None, {}),  # 401 envelope
            ("GET", "/nowhere", None, {}),  # 404 envelope
            ("POST", "/_control/faults", "{not json", {"Content-Type": "application/json"}),  # 400 from control
        ]:
            conn.request(method, path, body=body, headers=headers)
            if conn.sock is not None and not answers:
                first_socket = conn.sock
            resp = conn.getresponse()
            payload = resp.read()
            answers.append((resp.status, resp.getheader("Content-Length"), resp.getheader("Connection"), payload))
            assert conn.sock is first_socket, f"{method} {path} was not served on the first connection"
        assert [a[0] for a in answers] == [200, 204, 200, 401, 404, 400]
        for status, length, connection, payload in answers:
            assert connection != "close"
            assert status == 204 or int(length) == len(payload)
            assert status in (204, 401) or payload  # Dataverse's 401 has no body, the others an envelope
        assert b"kept alive" in answers[2][3]
    finally:
        conn.close()


def test_keep_alive_fault_answers_have_content_length_and_connection_close_is_honoured(sandbox, control):
    conn = _https(sandbox)
    try:
        control.add_fault(path="/rp/product-ingestion/product$", status=429, retry_after=1, count=1)
        conn.request("GET", "/rp/product-ingestion" + PRODUCTS, headers=bearer(sandbox, GRAPH))
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.status == 429 and int(resp.getheader("Content-Length")) == len(payload) > 0
        conn.request("GET", "/rp/product-ingestion" + PRODUCTS, headers={**bearer(sandbox, GRAPH), "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("Connection") == "close"
        assert resp.will_close
    finally:
        conn.close()


def test_reset_fault_drops_a_kept_alive_connection_and_the_next_connection_works(sandbox, control, org):
    import http.client

    api = f"/orgs/{org.rsplit('/', 1)[-1]}/api/data/v9.2/WhoAmI"
    auth = bearer(sandbox, org)
    conn = _https(sandbox)
    try:
        conn.request("GET", api, headers=auth)
        assert conn.getresponse().read() and conn.sock is not None  # the connection is open and reusable
        control.add_fault(path="WhoAmI$", reset=True, org=org.rsplit("/", 1)[-1])
        conn.request("GET", api, headers=auth)
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected, OSError)):
            conn.getresponse().read()
    finally:
        conn.close()
    with requests.Session() as s:  # a pooled client recovers on a fresh connection
        s.trust_env = False
        assert s.get(sandbox.info["instance_url"].rsplit("/orgs/", 1)[0] + api, headers=auth,
                     verify=sandbox.info["ca_bundle"]).status_code == 200


def test_401_is_an_empty_bearer_challenge_for_dataverse_and_a_graph_envelope_for_partner_center(sandbox, org):
    no_token = get(sandbox, f"{org}/api/data/v9.2/WhoAmI")
    assert no_token.status_code == 401 and no_token.content == b""
    challenge = no_token.headers["WWW-Authenticate"]
    assert challenge == (f"Bearer authorization_uri={sandbox.info['authority']}/oauth2/authorize, "
                         f"resource_id={org}/")
    wrong = get(sandbox, f"{org}/api/data/v9.2/WhoAmI", bearer(sandbox, GRAPH))
    assert wrong.status_code == 401 and wrong.content == b""
    pc = products(sandbox, bearer(sandbox, org))
    assert pc.status_code == 401 and pc.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert "resource_id=https://graph.microsoft.com/" in pc.headers["WWW-Authenticate"]


def test_execution_time_limit_answers_0x80072321_once_the_window_holds_enough_work(sandbox, control, org):
    headers = bearer(sandbox, org)
    control.settings(latency_ms=150, throttle={"max_execution_ms": 250, "window_seconds": 60})
    statuses = [get(sandbox, f"{org}/api/data/v9.2/WhoAmI", headers) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    refused = statuses[2].json()["error"]
    assert refused["code"] == "0x80072321" and "Combined execution time" in refused["message"]
    assert 1 <= int(statuses[2].headers["Retry-After"]) <= 60
    other = sandbox.control.add_org(f"t{uuid.uuid4().hex[:12]}")  # counted per caller per organization
    assert get(sandbox, f"{other}/api/data/v9.2/WhoAmI", bearer(sandbox, other)).status_code == 200
