"""The provider-host driver against the real `python -m pulumi.dynamic` process and the toy provider.

Lifecycle over gRPC, secrets and number types on the wire, failures, concurrency and a killed host.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness.provider_host import ProviderError, ProviderHost, Secret, provider_ref, urn_for
from tests.harness.toy_provider import ToyProvider, load_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def host(tmp_path):
    store = tmp_path / "store.json"
    with ProviderHost(REPO, project="toy", stack="test") as h:
        h.configure({"toy:storePath": str(store)})
        h.store = store
        yield h


def props(**kw):
    return {"__provider": provider_ref(ToyProvider()), **kw}


def test_full_lifecycle_over_grpc_keeps_state_in_the_remote_store(host):
    urn = urn_for("test", "toy", "a", "pulumi-python:dynamic/toy:ToyRecord")
    inputs, failures = host.check(urn, {}, props(name="a", kind="plain", size=3))
    assert failures == []
    id_, outs = host.create(urn, inputs)
    assert id_.startswith("toy-") and outs["name"] == "a"
    assert load_store(str(host.store))["records"][id_]["size"] == 3

    same = host.diff(urn, id_, outs, inputs)
    assert same.changes is False and same.replaces == []

    news, _ = host.check(urn, inputs, props(name="a", kind="plain", size=5))
    upd = host.diff(urn, id_, outs, news)
    assert upd.changes is True and upd.replaces == []
    outs2 = host.update(urn, id_, outs, news)
    assert outs2["size"] == 5 and "__provider" in outs2

    rep = host.diff(urn, id_, outs2, props(name="a", kind="fancy", size=5))
    assert rep.changes and rep.replaces == ["kind"] and rep.delete_before_replace is False

    store = load_store(str(host.store))
    store["records"][id_]["size"] = 99
    host.store.write_text(json.dumps(store))
    rid, routs, _ = host.read(urn, id_, outs2)
    assert rid == id_ and routs["size"] == 99

    host.delete(urn, id_, outs2)
    assert load_store(str(host.store))["records"] == {}
    gone_id, _, _ = host.read(urn, id_, outs2)
    assert gone_id == ""


def test_secret_input_comes_back_as_secret_and_reaches_provider_as_plain_value(host):
    urn = urn_for("test", "toy", "s")
    id_, outs = host.create(urn, props(name="s", token=Secret("hunter2-token")))
    assert isinstance(outs["token"], Secret) and outs["token"].value == "hunter2-token"
    assert "hunter2" not in repr(outs)
    assert load_store(str(host.store))["records"][id_]["token_hash"] is not None
    assert "hunter2" not in host.store.read_text()


def test_integer_input_arrives_in_the_provider_as_float(host):
    id_, outs = host.create(urn_for("test", "toy", "n"), props(name="n", size=7))
    assert outs["size_type"] == "float"
    assert outs["size"] == 7.0


def test_provider_exception_surfaces_as_provider_error_with_its_last_line(host):
    with pytest.raises(ProviderError) as info:
        host.create(urn_for("test", "toy", "f"), props(name="f", fail_on="create"))
    assert info.value.message == "ValueError: toy create refused for f"
    assert info.value.code == "UNKNOWN" and "Traceback" in info.value.details


def test_check_failures_are_returned_per_property(host):
    _, failures = host.check(urn_for("test", "toy", "bad"), {}, props(name="", size=-1))
    assert {f["property"] for f in failures} == {"name", "size"}


def test_four_concurrent_creates_are_served_at_once_by_one_provider_instance(host):
    def create(i):  # each create waits inside the provider until all four are there: a serial host never finishes
        return host.create(urn_for("test", "toy", f"c{i}"), props(name=f"c{i}", rendezvous=4))

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(create, range(4)))
    assert len({r[0] for r in results}) == 4
    calls = load_store(str(host.store))["calls"]
    assert len({c["thread"] for c in calls if c["op"] == "create"}) >= 2
    assert len({c["pid"] for c in calls}) == 1


def test_killed_host_reports_unavailable_as_provider_error(host):
    host.kill()
    assert not host.alive()
    with pytest.raises(ProviderError) as info:
        host.create(urn_for("test", "toy", "k"), props(name="k"))
    assert info.value.code == "UNAVAILABLE"


def test_provider_serialization_survives_thousands_of_calls_from_many_threads_and_stays_deterministic():
    # pulumi's serialize_provider wraps the pickler once more on every call; unguarded, ~1000 dynamic
    # resources serialized in one process (as the harness does for many stacks) end in RecursionError.
    provider = ToyProvider()
    provider.store_path = "/tmp/toy-store.json"  # instance state: pickled through the patched dict writer
    first = provider_ref(provider)
    with ThreadPoolExecutor(8) as pool:
        refs = set(pool.map(lambda _: provider_ref(provider), range(1500)))
    assert refs == {first}
