"""A tiny dynamic resource for testing the provider host generically.

`ToyRecord` keeps records in a JSON file (path from stack config `toy:storePath`); the file is the
"remote system": tests edit it to simulate drift and read it to count creates and duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from typing import Any

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

_LOCK = threading.Lock()


def load_store(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {"records": {}, "calls": []}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def save_store(path: str, store: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(store, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _clean(props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if not k.startswith("__")}


class ToyProvider(ResourceProvider):
    """Records {name, kind, size, token} in the store; `kind` changes replace; `token` is a secret input."""

    store_path: str = ""

    def configure(self, req: ConfigureRequest) -> None:
        self.store_path = req.config.get("toy:storePath") or os.environ.get("TOY_STORE_PATH", "")

    def _record(self, props: dict[str, Any]) -> dict[str, Any]:
        token = props.get("token")
        return {
            "name": props.get("name"),
            "kind": props.get("kind", "plain"),
            "size": props.get("size", 0),
            "token_hash": hashlib.sha256(str(token).encode()).hexdigest()[:16] if token else None,
        }

    def _call(self, op: str, **detail: Any) -> dict[str, Any]:
        store = load_store(self.store_path)
        store["calls"].append({"op": op, "pid": os.getpid(), "thread": threading.get_ident(), "at": time.time(),
                               **detail})
        return store

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        size = news.get("size", 0)
        if not isinstance(size, (int, float)) or isinstance(size, bool) or size < 0:
            failures.append(CheckFailure("size", "expected a non-negative number"))
        if not news.get("name"):
            failures.append(CheckFailure("name", "expected a non-empty name"))
        return CheckResult(news, failures)

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        defaults = {"kind": "plain", "size": 0}
        old, new = {**defaults, **_clean(olds)}, {**defaults, **_clean(news)}
        keys = ("name", "kind", "size", "token", "fail_on")
        changed = [k for k in keys if old.get(k) != new.get(k) and not (k == "token" and old.get("token_hash"))]
        if new.get("token") and old.get("token_hash"):
            if hashlib.sha256(str(new["token"]).encode()).hexdigest()[:16] != old["token_hash"]:
                changed.append("token")
        replaces = [k for k in changed if k == "kind"]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=bool(new.get("dbr")))

    def create(self, props: dict[str, Any]) -> CreateResult:
        if props.get("fail_on") == "create":
            raise ValueError(f"toy create refused for {props.get('name')}")
        if props.get("slow") or props.get("rendezvous"):
            with _LOCK:
                save_store(self.store_path, self._call("create-start", name=props.get("name")))
            if props.get("slow"):
                time.sleep(float(props["slow"]))
        if props.get("rendezvous"):  # wait until that many creates are in here at once (a serial host never gets there)
            self._rendezvous(int(props["rendezvous"]))
        with _LOCK:
            store = self._call("create", name=props.get("name"))
            id_ = f"toy-{uuid.uuid4().hex[:12]}"
            store["records"][id_] = self._record(props)
            save_store(self.store_path, store)
        outs = {**_clean(props), **self._record(props), "size_type": type(props.get("size", 0)).__name__}
        return CreateResult(id_, outs)

    def _rendezvous(self, count: int, deadline_seconds: float = 60.0) -> None:
        deadline = time.monotonic() + deadline_seconds
        while True:
            with _LOCK:
                arrived = sum(1 for c in load_store(self.store_path)["calls"] if c["op"] == "create-start")
            if arrived >= count:
                return
            if time.monotonic() > deadline:
                raise ValueError(f"only {arrived} of {count} creates were in the provider at once")
            time.sleep(0.01)  # polling a file the other threads write; the deadline bounds it

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with _LOCK:
            store = self._call("read", id=id_)
            save_store(self.store_path, store)
        record = store["records"].get(id_)
        if record is None:
            return ReadResult("", {})
        return ReadResult(id_, {**_clean(props), **record})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if news.get("fail_on") == "update":
            raise ValueError(f"toy update refused for {news.get('name')}")
        with _LOCK:
            store = self._call("update", id=id_)
            store["records"][id_] = self._record(news)
            save_store(self.store_path, store)
        return UpdateResult({**_clean(news), **self._record(news), "size_type": type(news.get("size", 0)).__name__})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        if props.get("fail_on") == "delete":
            raise ValueError("toy delete refused")
        with _LOCK:
            store = self._call("delete", id=id_)
            store["records"].pop(id_, None)
            save_store(self.store_path, store)


class ToyRecord(Resource, module="toy", name="ToyRecord"):
    name: pulumi.Output[str]
    kind: pulumi.Output[str]
    size: pulumi.Output[float]
    token_hash: pulumi.Output[str]

    def __init__(self, resource_name: str, opts: pulumi.ResourceOptions | None = None, **props: Any) -> None:
        props.setdefault("kind", "plain")
        props.setdefault("token_hash", None)
        super().__init__(ToyProvider(), resource_name, props, opts)


class ToyGroup(pulumi.ComponentResource):
    """A component parenting several records, to prove components are recorded but have no provider."""

    def __init__(self, name: str, count: int, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("toy:index:Group", name, None, opts)
        self.records = [
            ToyRecord(f"{name}-{i}", name=f"{name}-{i}", size=i, opts=pulumi.ResourceOptions(parent=self))
            for i in range(count)
        ]
        self.register_outputs({"ids": [r.id for r in self.records]})
