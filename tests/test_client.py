"""The Web API client against the sandbox's Dataverse over HTTPS: OData helpers, typed errors, the
azure-core pipeline (retry honouring Retry-After, bounded; ambiguous creates not replayed; the bearer
challenge refresh; redacted logging) and TLS verified with the configured CA whatever the environment says."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from dynamics_provider.auth import client_secret_tokens, deployer_tokens
from dynamics_provider.client import (
    ApiClient,
    DataverseClient,
    RetryBounds,
    UnansweredWrite,
    odata_guid,
    odata_string,
    parse_retry_after,
)
from dynamics_provider.dataverse.privileges import privilege_reference
from dynamics_provider.errors import (
    AccessDenied,
    AmbiguousWriteError,
    DataverseError,
    InvalidInstanceUrl,
    NotFound,
    ServiceUnavailable,
    Throttled,
    Unauthorized,
)

FAST = RetryBounds(max_attempts=4, max_total_seconds=20, backoff_base=0.05, backoff_max=0.2, timeout=10)


def org_name(instance_url: str) -> str:
    return instance_url.rsplit("/orgs/", 1)[1]


def client_for(org: str, deployer, retry: RetryBounds = FAST, tokens=None) -> DataverseClient:
    return DataverseClient(org, tokens or deployer_tokens(deployer), ca_bundle=deployer.ca_bundle, retry=retry)


def requests_to(sandbox, org: str, method: str, suffix: str, since: int = 0) -> list[dict]:
    name = org_name(org)
    return [e for e in sandbox.control.log(since=since)
            if e["kind"] == "dataverse" and e["org"] == name and e["method"] == method and e["path"].endswith(suffix)]


def token_requests(sandbox, caller: str, since: int) -> int:
    return sum(1 for e in sandbox.control.log(since=since)
               if e["kind"] == "entra" and e["path"].endswith("/token") and e["caller"] == caller)


def log_mark(sandbox) -> int:
    entries = sandbox.control.log()
    return max((e["seq"] for e in entries), default=0)


def on_threads(count: int, work) -> None:
    """Run `work` on `count` threads at once; the first exception of any of them is raised."""
    with ThreadPoolExecutor(count) as pool:
        for future in [pool.submit(work) for _ in range(count)]:
            future.result()


def lead(**extra) -> dict:
    body = {"subject": f"test {uuid.uuid4().hex[:6]}", "firstname": "Ada", "lastname": "Lovelace",
            "emailaddress1": "ada@example.com", "companyname": "Contoso"}
    body.update(extra)
    return body


# ------------------------------------------------------------------------------ OData helpers


def test_create_returns_the_id_from_odata_entityid_and_the_record_reads_back(sandbox, org, deployer):
    client = client_for(org, deployer)
    body = lead()
    lead_id = client.create("leads", body)
    assert odata_guid(lead_id) == lead_id
    got = client.get(f"leads({lead_id})", {"$select": "subject,lastname"})
    assert got["subject"] == body["subject"]
    assert [row["leadid"] for row in sandbox.control.state(org)["leads"]] == [lead_id]


def test_query_escapes_string_literals_and_guid_literals_are_validated(org, deployer):
    client = client_for(org, deployer)
    obrien = client.create("leads", lead(lastname="O'Brien"))
    client.create("leads", lead(lastname="Brien"))
    rows = client.query("leads", select=["leadid", "lastname"], filter=f"lastname eq {odata_string(chr(79) + chr(39) + 'Brien')}")
    assert [r["leadid"] for r in rows] == [obrien]
    assert odata_string("O'Brien") == "'O''Brien'"
    assert len(client.query("leads", select=["leadid"], top=1)) == 1
    for hostile in ("00000000-0000-0000-0000-000000000000) or (true", "x", "' or 1 eq 1"):
        with pytest.raises(ValueError):
            odata_guid(hostile)


def test_update_and_delete_of_a_missing_record_raise_not_found_with_status_code_and_hint(org, deployer):
    client = client_for(org, deployer)
    lead_id = client.create("leads", lead())
    client.update("leads", lead_id, {"subject": "changed"})
    assert client.get(f"leads({lead_id})", {"$select": "subject"})["subject"] == "changed"
    client.delete("leads", lead_id)
    with pytest.raises(NotFound) as caught:
        client.delete("leads", lead_id)
    err = caught.value
    assert err.status == 404 and err.code == "0x80040217"
    assert str(err).startswith(f"DELETE leads({lead_id}) -> 404 0x80040217: ")
    assert err.hint and err.hint in str(err)
    with pytest.raises(NotFound):
        client.update("leads", lead_id, {"subject": "again"})  # If-Match: * never creates


def test_associate_is_idempotent_and_disassociate_removes_the_role(org, deployer):
    client = client_for(org, deployer)
    me = client.who_am_i()
    role = client.query("roles", select=["roleid", "name"],
                        filter=f"name eq {odata_string('Basic User')} and _businessunitid_value eq {me['BusinessUnitId']}")[0]
    nav = "systemuserroles_association"
    client.associate("systemusers", me["UserId"], nav, "roles", role["roleid"])
    client.associate("systemusers", me["UserId"], nav, "roles", role["roleid"])  # already there: fine
    roles = client.get(f"systemusers({me['UserId']})/{nav}", {"$select": "roleid,name"})["value"]
    assert role["roleid"] in [r["roleid"] for r in roles]
    client.disassociate("systemusers", me["UserId"], nav, role["roleid"])
    roles = client.get(f"systemusers({me['UserId']})/{nav}", {"$select": "roleid,name"})["value"]
    assert role["roleid"] not in [r["roleid"] for r in roles]


def test_bound_privilege_actions_change_the_role_and_a_function_with_a_guid_parameter_reads_it_back(org, deployer):
    client = client_for(org, deployer)
    me = client.who_am_i()
    role_id = client.query("roles", select=["roleid"],
                           filter=f"name eq 'Basic User' and _businessunitid_value eq {me['BusinessUnitId']}")[0]["roleid"]
    privilege = client.query("privileges", select=["privilegeid", "name"],
                             filter="name eq 'prvReadUserEntityUISettings'")[0]
    client.action("RemovePrivilegeRole", {"Privilege": privilege_reference(privilege["privilegeid"])},
                  bound=("roles", role_id))
    before = client.function("RetrieveRolePrivilegesRole", RoleId=role_id)["RolePrivileges"]
    assert "prvReadUserEntityUISettings" not in [p["PrivilegeName"] for p in before]
    client.action("AddPrivilegesRole", {"Privileges": [
        {"PrivilegeId": privilege["privilegeid"], "Depth": "Basic", "BusinessUnitId": me["BusinessUnitId"]}]},
        bound=("roles", role_id))
    after = client.function("RetrieveRolePrivilegesRole", RoleId=role_id)["RolePrivileges"]
    assert {p["PrivilegeName"]: p["Depth"] for p in after}["prvReadUserEntityUISettings"] == "Basic"


def test_batch_get_returns_each_body_or_its_typed_error_in_order(sandbox, org, deployer):
    client = client_for(org, deployer)
    lead_id = client.create("leads", lead())
    missing = str(uuid.uuid4())
    mark = log_mark(sandbox)
    results = client.batch_get([f"leads({lead_id})?$select=subject", f"leads({missing})?$select=subject", "WhoAmI"])
    assert isinstance(results[0], dict) and results[0]["leadid"] == lead_id
    assert isinstance(results[1], NotFound) and results[1].code == "0x80040217"
    assert isinstance(results[2], dict) and "UserId" in results[2]
    assert len(requests_to(sandbox, org, "POST", "$batch", since=mark)) == 1  # one round trip


# ------------------------------------------------------------------------------ typed errors


def test_caller_without_privilege_gets_access_denied_naming_it_and_no_token_in_the_text(sandbox, org, deployer):
    info = sandbox.info
    writer = client_secret_tokens(info["authority"], info["leadwriter_client_id"], info["leadwriter_client_secret"],
                                  ca_bundle=info["ca_bundle"])
    client = client_for(org, deployer, tokens=writer)
    with pytest.raises((AccessDenied, Unauthorized)) as caught:
        client.create("leads", lead())
    token = writer.get_token(f"{org}/.default")
    for text in (str(caught.value), repr(caught.value)):
        assert token not in text and info["leadwriter_client_secret"] not in text
    assert isinstance(caught.value, DataverseError) and caught.value.status in (401, 403)


def test_token_for_another_audience_is_refreshed_once_then_unauthorized(sandbox, org, deployer):
    other = sandbox.control.add_org(f"o{uuid.uuid4().hex[:10]}")
    tokens = deployer_tokens(deployer)
    wrong = ApiClient(f"{org}/api/data/v9.2/", tokens, f"{other}/.default", ca_bundle=deployer.ca_bundle, retry=FAST)
    mark = log_mark(sandbox)
    with pytest.raises(Unauthorized) as caught:
        wrong.request("GET", "WhoAmI")
    assert caught.value.status == 401
    assert len(requests_to(sandbox, org, "GET", "/WhoAmI", since=mark)) == 2  # original + one after refresh
    assert token_requests(sandbox, deployer.client_id, mark) == 2  # the first token, then one refresh
    assert tokens.get_token(f"{other}/.default") not in str(caught.value)


def test_a_401_invalidates_the_token_and_the_call_succeeds_with_a_fresh_one(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="GET", path="WhoAmI$", status=401, org=org_name(org))
    assert "UserId" in client.who_am_i()
    assert [e["status"] for e in requests_to(sandbox, org, "GET", "/WhoAmI", since=mark)] == [401, 200]
    assert token_requests(sandbox, deployer.client_id, mark) == 1


def test_refused_instance_url_fetches_no_token(sandbox, deployer):
    mark = log_mark(sandbox)
    for url in ("https://evil.example", "http://127.0.0.1:1/orgs/x", "https://contoso.crm.dynamics.com.evil.example"):
        with pytest.raises(InvalidInstanceUrl):
            DataverseClient.for_instance(url, deployer)
    assert token_requests(sandbox, deployer.client_id, mark) == 0
    client = DataverseClient.for_instance(sandbox.info["instance_url"], deployer)
    assert DataverseClient.for_instance(sandbox.info["instance_url"] + "/", deployer) is client
    # a nextLink elsewhere (another host, plain http, another scheme spelling) never gets the token
    for link in ("https://evil.example/api/data/v9.2/leads", "http://evil.example/x", "HTTPS://evil.example/x",
                 client.base_url.replace("https://", "http://") + "leads"):
        with pytest.raises(ValueError, match="refusing to send a token"):
            client.url_for(link)
    assert client.url_for(client.base_url + "leads?$skiptoken=1") == client.base_url + "leads?$skiptoken=1"


def test_a_client_for_the_callers_own_tokens_is_not_kept_in_the_process_wide_cache(sandbox, org, deployer):
    import dynamics_provider.client as client_module

    info = sandbox.info
    shared = DataverseClient.for_instance(org, deployer)
    kept = len(client_module._CLIENTS)
    for _ in range(3):  # a LeadWriteCheck builds a writer's token provider per check
        writer = client_secret_tokens(deployer.authority(), info["leadwriter_client_id"],
                                      info["leadwriter_client_secret"], ca_bundle=info["ca_bundle"])
        own = DataverseClient.for_instance(org, deployer, tokens=writer)
        assert own is not shared and own.tokens is writer
    assert len(client_module._CLIENTS) == kept
    assert DataverseClient.for_instance(org, deployer) is shared


# ------------------------------------------------------------------------------ retry policy


def test_429_retry_after_is_honoured_no_request_inside_the_window(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="POST", path="leads$", status=429, retry_after=2, org=org_name(org))
    started = time.monotonic()
    lead_id = client.create("leads", lead())
    elapsed = time.monotonic() - started
    posts = requests_to(sandbox, org, "POST", "/leads", since=mark)
    assert [e["status"] for e in posts] == [429, 204]
    assert posts[1]["time"] - posts[0]["time"] >= 2.0
    assert not any(e["inside_retry_after"] for e in sandbox.control.log(since=mark))
    assert elapsed >= 2.0  # the wait, never shorter than Retry-After (how much longer is make bench's business)
    assert [row["leadid"] for row in sandbox.control.state(org)["leads"]] == [lead_id]


@contextlib.contextmanager
def window_read() -> Iterator[threading.Event]:
    """An event set once a client has read a Retry-After and holds its requests (its debug line says so)."""
    opened = threading.Event()

    class WindowOpened(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Retry-After"):
                opened.set()

    http_log, handler = logging.getLogger("dynamics_provider.http"), WindowOpened()
    level = http_log.level
    http_log.addHandler(handler)
    http_log.setLevel(logging.DEBUG)
    try:
        yield opened
    finally:
        http_log.removeHandler(handler)
        http_log.setLevel(level)


def test_retry_after_window_holds_other_requests_of_the_same_client(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="GET", path="WhoAmI$", status=429, retry_after=1, org=org_name(org))
    with window_read() as opened:
        first = threading.Thread(target=client.who_am_i)
        first.start()
        assert opened.wait(60), "the client never read the WhoAmI 429"
        client.query("leads", select=["leadid"])
        first.join()
    assert not any(e["inside_retry_after"] for e in sandbox.control.log(since=mark))
    gets = [e for e in sandbox.control.log(since=mark) if e["kind"] == "dataverse" and e["method"] == "GET"]
    assert gets[0]["status"] == 429
    assert all(e["time"] >= gets[0]["throttled_until"] for e in gets[1:])


class HeldTokens:
    """The deployer's real token cache, except that the thread named "held" waits in it until released:
    a request whose bearer token is still on its way when another request of the client reads a 429."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.entered, self.release = threading.Event(), threading.Event()

    def get_token_info(self, *scopes, options=None):
        if threading.current_thread().name == "held":
            self.entered.set()
            assert self.release.wait(60), "never released"
        return self.inner.get_token_info(*scopes, options=options)

    def get_token(self, scope: str) -> str:
        return self.get_token_info(scope).token

    def invalidate(self, scope: str) -> None:
        self.inner.invalidate(scope)


def test_a_request_still_fetching_its_token_when_a_429_is_read_waits_out_the_window(sandbox, org, deployer):
    """The window is checked again right before the transport, after the bearer policy: a token fetch can
    take seconds (Entra's own faults and retries), during which the client may learn of a window."""
    tokens = HeldTokens(deployer_tokens(deployer))
    client = client_for(org, deployer, tokens=tokens)  # a new client: its bearer policy has no token yet
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="GET", path="WhoAmI$", status=429, retry_after=1, org=org_name(org))
    with window_read() as opened, contextlib.ExitStack() as cleanup:
        cleanup.callback(tokens.release.set)  # never leave the held thread waiting
        held = threading.Thread(target=lambda: client.query("leads", select=["leadid"]), name="held")
        held.start()
        assert tokens.entered.wait(60), "the held request never asked for its token"
        first = threading.Thread(target=client.who_am_i)
        first.start()
        assert opened.wait(60), "the client never read the WhoAmI 429"
        tokens.release.set()  # the held request has its token now, and the window is known
        held.join(60)
        first.join(60)
    entries = [e for e in sandbox.control.log(since=mark) if e["kind"] == "dataverse"]
    refusal = next(e for e in entries if e["status"] == 429)
    leads = [e for e in entries if e["path"].endswith("/leads")]
    assert [e["status"] for e in leads] == [200]
    assert leads[0]["time"] >= refusal["throttled_until"], "sent inside a Retry-After window the client knew"
    assert not any(e["inside_retry_after"] for e in entries)


def test_service_protection_limits_under_load_cause_no_failure_and_no_early_resend(sandbox, org, deployer):
    sandbox.control.settings(throttle={"window_seconds": 1, "max_requests": 6})
    try:
        client = client_for(org, deployer, retry=RetryBounds(max_attempts=10, max_total_seconds=30))
        mark = log_mark(sandbox)
        on_threads(4, lambda: [client.query("leads", select=["leadid"], top=1) for _ in range(4)])
        entries = requests_to(sandbox, org, "GET", "/leads", since=mark)
    finally:
        sandbox.control.settings(throttle=None)
    assert sum(1 for e in entries if e["status"] == 200) == 16
    refusals = [e for e in entries if e["status"] == 429]
    assert refusals  # the limit really was hit
    # Requests already in flight when the first 429 of a window was answered can land inside it
    # (the client cannot know yet); none may be *sent* after the client has heard of the window.
    in_flight = 0.05
    for e in entries:
        if e["inside_retry_after"]:
            # (a request that arrived before the 429 that opened the window was sent before it existed)
            opened = [r["time"] for r in refusals if r["time"] <= e["time"] <= r["throttled_until"]]
            assert not opened or e["time"] - min(opened) < in_flight, e


def test_503_and_reset_on_reads_are_retried_within_bounds(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    name = org_name(org)
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="GET", path="/leads$", status=503, count=1, org=name)
    sandbox.control.add_fault(method="GET", path="/leads$", reset=True, count=1, org=name)
    assert client.query("leads", select=["leadid"]) == []
    assert [e["status"] for e in requests_to(sandbox, org, "GET", "/leads", since=mark)] == [503, 0, 200]

    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="GET", path="/leads$", status=503, count=50, org=name)
    with pytest.raises(ServiceUnavailable) as caught:
        client.query("leads", select=["leadid"])
    assert "4 attempt(s)" in str(caught.value)
    assert len(requests_to(sandbox, org, "GET", "/leads", since=mark)) == FAST.max_attempts
    sandbox.control.clear_faults()


def test_persistent_throttling_gives_up_when_the_next_wait_would_pass_the_time_budget(sandbox, org, deployer):
    client = client_for(org, deployer, retry=RetryBounds(max_attempts=10, max_total_seconds=2.5))
    client.who_am_i()
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="GET", path="/leads$", status=429, retry_after=1, count=50, org=org_name(org))
    started = time.monotonic()
    with pytest.raises(Throttled) as caught:
        client.query("leads", select=["leadid"])
    elapsed = time.monotonic() - started
    sandbox.control.clear_faults()
    sent = requests_to(sandbox, org, "GET", "/leads", since=mark)
    assert 2 <= len(sent) <= 3  # 1 s apart within 2.5 s: given up on the budget, long before max_attempts
    assert elapsed >= 1.0
    assert caught.value.status == 429 and caught.value.code == "0x80072322"
    assert f"{len(sent)} attempt(s)" in str(caught.value)


def test_ambiguous_create_is_not_replayed(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="POST", path="/leads$", reset=True, org=org_name(org))
    with pytest.raises(AmbiguousWriteError) as caught:
        client.create("leads", lead())
    assert caught.value.method == "POST" and caught.value.path == "leads"
    assert "look" in str(caught.value).lower()
    assert len(requests_to(sandbox, org, "POST", "/leads", since=mark)) == 1

    mark = log_mark(sandbox)  # a 503 without Retry-After may have been processed: also not replayed
    sandbox.control.add_fault(method="POST", path="/leads$", status=503, org=org_name(org))
    with pytest.raises(AmbiguousWriteError):
        client.create("leads", lead())
    assert len(requests_to(sandbox, org, "POST", "/leads", since=mark)) == 1


def test_a_create_applied_whose_answer_is_lost_is_ambiguous_and_the_row_exists(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    mark = log_mark(sandbox)
    body = lead(leadid=str(uuid.uuid4()))
    sandbox.control.add_fault(method="POST", path="/leads$", reset=True, after=True, org=org_name(org))
    with pytest.raises(AmbiguousWriteError):
        client.create("leads", body)
    posts = requests_to(sandbox, org, "POST", "/leads", since=mark)
    assert len(posts) == 1 and posts[0]["applied_status"] == 204  # landed, answer dropped, not replayed
    assert client.get(f"leads({body['leadid']})", {"$select": "leadid"})["leadid"] == body["leadid"]


def test_a_delete_resent_after_its_answer_was_lost_treats_not_found_as_done(sandbox, org, deployer):
    client = client_for(org, deployer)
    lead_id = client.create("leads", lead())
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="DELETE", path=r"/leads\(", reset=True, after=True, org=org_name(org))
    client.delete("leads", lead_id)  # the first DELETE landed; the resend finds nothing and that is success
    deletes = requests_to(sandbox, org, "DELETE", f"/leads({lead_id})", since=mark)
    assert [e.get("applied_status", e["status"]) for e in deletes] == [204, 404]
    with pytest.raises(NotFound):
        client.delete("leads", lead_id)  # without an unanswered attempt, a 404 still says "not there"


def test_create_record_returns_the_row_in_the_same_answer(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    mark = log_mark(sandbox)
    body = lead(leadid=str(uuid.uuid4()))
    row = client.create_record("leads", body, ["leadid", "subject"])
    assert row["leadid"] == body["leadid"] and row["subject"] == body["subject"]
    assert [e["method"] for e in sandbox.control.log(since=mark) if e["kind"] == "dataverse"] == ["POST"]


def test_a_write_without_an_answer_in_the_read_timeout_is_unanswered_and_settled_once_it_lands(
        sandbox, org, deployer):
    from dataclasses import replace

    from dynamics_provider.client import DataverseClient
    from dynamics_provider.dataverse.writes import settle

    # the write lands 3 s after it arrives: 1 s after the client's 2 s read timeout, 1 s before the end of
    # settle's one-timeout look (margins a busy machine does not eat)
    slow = replace(deployer, request_timeout_seconds=2.0)
    client = DataverseClient.for_instance(org, slow)
    assert client.retry.timeout == 2.0  # the setting reaches the pipeline
    client.who_am_i()
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="POST", path="/leads$", latency_ms=3000, org=org_name(org))
    body = lead(leadid=str(uuid.uuid4()))
    started = time.monotonic()
    with pytest.raises(UnansweredWrite) as caught:
        client.create("leads", body)
    assert time.monotonic() - started > 1.9 and isinstance(caught.value, AmbiguousWriteError)
    assert len(requests_to(sandbox, org, "POST", "/leads", since=mark)) <= 1  # not replayed

    def lookup():
        return [r for r in sandbox.control.state(org)["leads"] if r["leadid"] == body["leadid"]] or None

    assert lookup() is None  # not there yet: the server is still working on it
    assert settle(client, lookup, caught.value), "found once the slow write landed"
    # an answered ambiguity (reset) is looked up once, without waiting
    sandbox.control.add_fault(method="POST", path="/leads$", reset=True, org=org_name(org))
    with pytest.raises(AmbiguousWriteError) as reset:
        client.create("leads", lead())
    assert not isinstance(reset.value, UnansweredWrite)
    lookups: list[float] = []
    assert settle(client, lambda: lookups.append(time.monotonic()), reset.value) is None
    assert len(lookups) == 1


def test_create_refused_with_retry_after_is_surely_unprocessed_and_is_retried_once(sandbox, org, deployer):
    client = client_for(org, deployer)
    client.who_am_i()
    mark = log_mark(sandbox)
    sandbox.control.add_fault(method="POST", path="/leads$", status=503, retry_after=1, org=org_name(org))
    lead_id = client.create("leads", lead())
    assert [e["status"] for e in requests_to(sandbox, org, "POST", "/leads", since=mark)] == [503, 204]
    assert [row["leadid"] for row in sandbox.control.state(org)["leads"]] == [lead_id]


def test_retry_after_parsing_accepts_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 10))
    assert 10 <= parse_retry_after(date, now=now) <= 12  # rounded up: never inside the window


# ------------------------------------------------------------------------------ tokens and logs


def test_eight_threads_share_one_token_request(sandbox, org, deployer):
    info = sandbox.info
    tokens = client_secret_tokens(deployer.authority(), info["admin_client_id"], info["admin_client_secret"],
                                  ca_bundle=info["ca_bundle"])  # a fresh cache
    client = client_for(org, deployer, tokens=tokens)
    mark = log_mark(sandbox)
    barrier = threading.Barrier(8)
    on_threads(8, lambda: (barrier.wait(), [client.who_am_i() for _ in range(3)]))
    assert len(requests_to(sandbox, org, "GET", "/WhoAmI", since=mark)) == 24
    assert token_requests(sandbox, info["admin_client_id"], mark) == 1


def test_short_lived_tokens_are_renewed_before_they_expire(sandbox, org, deployer):
    info = sandbox.info
    sandbox.control.settings(token_lifetime_seconds=2)
    try:
        tokens = client_secret_tokens(deployer.authority(), info["admin_client_id"], info["admin_client_secret"],
                                      ca_bundle=info["ca_bundle"])
        client = client_for(org, deployer, tokens=tokens)
        mark = log_mark(sandbox)
        deadline = time.monotonic() + 4.5
        calls = 0
        while time.monotonic() < deadline:
            client.who_am_i()
            calls += 1
            time.sleep(0.25)
    finally:
        sandbox.control.settings(token_lifetime_seconds=3600)
    statuses = [e["status"] for e in requests_to(sandbox, org, "GET", "/WhoAmI", since=mark)]
    assert statuses == [200] * calls
    assert 3 <= token_requests(sandbox, info["admin_client_id"], mark) <= 6


def test_http_trace_is_off_by_default_and_redacts_the_token_and_query_values_when_on(org, deployer, caplog):
    client = client_for(org, deployer)
    marker = f"Marker{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.INFO, logger="dynamics_provider"):  # what the providers log at by default
        client.who_am_i()
    assert not [r for r in caplog.records if r.name == "dynamics_provider.http"]
    with caplog.at_level(logging.INFO, logger="dynamics_provider.http"):
        client.who_am_i()
        client.create("leads", lead(lastname=marker))
        client.query("leads", select=["leadid"], filter=f"lastname eq {odata_string(marker)}")
    token = deployer_tokens(deployer).get_token(f"{org}/.default")
    assert "/api/data/v9.2/WhoAmI'" in caplog.text and "Response status: 200" in caplog.text
    assert "%24select=leadid" in caplog.text and "%24filter=REDACTED" in caplog.text
    assert "'Authorization': 'REDACTED'" in caplog.text
    for hidden in (token, deployer.client_secret, marker):
        assert hidden not in caplog.text


def test_tls_uses_the_configured_ca_bundle_whatever_the_environment_says(sandbox, org, deployer, tmp_path,
                                                                          monkeypatch):
    import certifi

    info = sandbox.info
    # requests lets REQUESTS_CA_BUNDLE replace a session's `verify` and a netrc entry replace the
    # Authorization header; the pipeline ignores both (a bundle without the sandbox CA, hostile netrc)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password netrc-password\n")
    monkeypatch.setenv("NETRC", str(netrc))
    tokens = client_secret_tokens(deployer.authority(), info["admin_client_id"], info["admin_client_secret"],
                                  ca_bundle=info["ca_bundle"])  # a fresh cache: its token request is made now
    assert "UserId" in client_for(org, deployer, tokens=tokens).who_am_i()

    # no CA configured: the environment's bundle is the fallback (here, the sandbox's CA)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", info["ca_bundle"])
    tokens = client_secret_tokens(deployer.authority(), info["admin_client_id"], info["admin_client_secret"])
    assert "UserId" in DataverseClient(org, tokens, retry=FAST).who_am_i()
