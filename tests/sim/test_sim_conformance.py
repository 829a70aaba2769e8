"""The Consul model of the simulator behaves as a real agent does: each
test runs one script of requests against both (the same session names,
keys and waits) and compares what the election relies on: who holds the
key, its value and flags, how LockIndex moved, whether ModifyIndex and
CreateIndex moved, what was refused and why. Raw index values differ and
are not compared.

One real agent (``consul agent -dev``, a single server) serves all of
them; what needs three servers (a Raft leader that had not applied an
invalidation) is the model's claim, documented in docs/simulation.rst."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import requests

from consul_leader.entry import KeyEntry
from consul_leader.testing import ConsulAgent
from consul_leader.testing.sim import ConsulModel, ManualTimers

Snapshot = Dict[str, Any]


class Side:
    """One of the two Consuls a script runs against, spoken to in the verbs
    of the HTTP API; sessions and checks are named by the script."""

    def __init__(self) -> None:
        self.sessions: Dict[str, str] = {}
        self._last: Dict[str, KeyEntry] = {}

    def name_of(self, session_id: Optional[str]) -> Optional[str]:
        for name, sid in self.sessions.items():
            if sid == session_id:
                return name
        return None if session_id is None else "?"

    def look(self, key: str) -> Snapshot:
        """The key as the election sees it, with how its indexes moved since
        the last look at it."""
        entry = self.read(key)
        last = self._last.get(key)
        if entry is None:
            self._last.pop(key, None)
            return {"exists": False}
        snap = {"exists": True, "session": self.name_of(entry.session), "value": entry.value,
                "lock_index": entry.lock_index, "flags": entry.flags,
                "modified": last is None or entry.modify_index > last.modify_index,
                "recreated": last is None or entry.create_index != last.create_index}
        self._last[key] = entry
        return snap

    # The verbs; each side implements them.
    def read(self, key: str) -> Optional[KeyEntry]: raise NotImplementedError
    def create(self, name: str, lock_delay: float, checks: Tuple[str, ...] = ()) -> None: raise NotImplementedError
    def destroy(self, name: str) -> None: raise NotImplementedError
    def valid(self, name: str) -> bool: raise NotImplementedError
    def acquire(self, key: str, name: str, value: bytes, flags: int = 0) -> bool: raise NotImplementedError
    def release(self, key: str, name: str, value: bytes = b"") -> bool: raise NotImplementedError
    def put(self, key: str, value: bytes, cas: Optional[int] = None) -> bool: raise NotImplementedError
    def delete(self, key: str) -> None: raise NotImplementedError
    def txn(self, ops: List[Dict[str, Any]]) -> Tuple[bool, str]: raise NotImplementedError
    def register_check(self, check_id: str, ttl: float) -> None: raise NotImplementedError
    def wait(self, seconds: float) -> None: raise NotImplementedError
    def index_of(self, key: str) -> int: raise NotImplementedError
    def blocking_read(self, key: str, index: int, wait: float) -> Tuple[int, bool]: raise NotImplementedError


class Real(Side):
    def __init__(self, agent: ConsulAgent) -> None:
        super().__init__()
        self.url = agent.url
        self.http = requests.Session()

    def read(self, key: str) -> Optional[KeyEntry]:
        r = self.http.get(f"{self.url}/v1/kv/{key}", timeout=5)
        if r.status_code == 404:
            return None
        raw = r.json()[0]
        raw["Value"] = base64.b64decode(raw["Value"]) if raw.get("Value") else b""
        return KeyEntry.parse(raw)

    def create(self, name: str, lock_delay: float, checks: Tuple[str, ...] = ()) -> None:
        body = {"Name": name, "LockDelay": f"{lock_delay}s", "Checks": ["serfHealth", *checks]}
        r = self.http.put(f"{self.url}/v1/session/create", json=body, timeout=5)
        r.raise_for_status()
        self.sessions[name] = r.json()["ID"]

    def destroy(self, name: str) -> None:
        self.http.put(f"{self.url}/v1/session/destroy/{self.sessions[name]}", timeout=5).raise_for_status()

    def valid(self, name: str) -> bool:
        return bool(self.http.get(f"{self.url}/v1/session/info/{self.sessions[name]}", timeout=5).json())

    def acquire(self, key: str, name: str, value: bytes, flags: int = 0) -> bool:
        r = self.http.put(f"{self.url}/v1/kv/{key}", params={"acquire": self.sessions[name], "flags": flags},
                          data=value, timeout=5)
        r.raise_for_status()
        return bool(r.json())

    def release(self, key: str, name: str, value: bytes = b"") -> bool:
        r = self.http.put(f"{self.url}/v1/kv/{key}", params={"release": self.sessions.get(name, name)},
                          data=value, timeout=5)
        return bool(r.json())

    def put(self, key: str, value: bytes, cas: Optional[int] = None) -> bool:
        params = {} if cas is None else {"cas": cas}
        return bool(self.http.put(f"{self.url}/v1/kv/{key}", params=params, data=value, timeout=5).json())

    def delete(self, key: str) -> None:
        self.http.delete(f"{self.url}/v1/kv/{key}", timeout=5).raise_for_status()

    def txn(self, ops: List[Dict[str, Any]]) -> Tuple[bool, str]:
        body = []
        for op in ops:
            kv = dict(op)
            if "Value" in kv:
                kv["Value"] = base64.b64encode(kv["Value"]).decode("ascii")
            if "Session" in kv:
                kv["Session"] = self.sessions[kv["Session"]]
            body.append({"KV": kv})
        r = self.http.put(f"{self.url}/v1/txn", json=body, timeout=5)
        return r.status_code == 200, "" if r.status_code == 200 else r.text

    def register_check(self, check_id: str, ttl: float) -> None:
        self.http.put(f"{self.url}/v1/agent/check/register", timeout=5,
                      json={"ID": check_id, "Name": check_id, "TTL": f"{ttl}s",
                            "Status": "passing"}).raise_for_status()

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def index_of(self, key: str) -> int:
        return int(self.http.get(f"{self.url}/v1/kv/{key}", timeout=5).headers["X-Consul-Index"])

    def blocking_read(self, key: str, index: int, wait: float) -> Tuple[int, bool]:
        began = time.monotonic()
        r = self.http.get(f"{self.url}/v1/kv/{key}", params={"index": index, "wait": f"{wait}s"}, timeout=wait * 2 + 5)
        return int(r.headers["X-Consul-Index"]), time.monotonic() - began >= wait * 0.9


class Model(Side):
    NODE = "node-1"

    def __init__(self) -> None:
        super().__init__()
        self.timers = ManualTimers()
        self.consul = ConsulModel(self.timers, servers=1)
        self.consul.add_node(self.NODE)

    def read(self, key: str) -> Optional[KeyEntry]:
        return self.consul.get(key)[1]

    def create(self, name: str, lock_delay: float, checks: Tuple[str, ...] = ()) -> None:
        self.sessions[name] = self.consul.create_session(self.NODE, ("serfHealth", *checks), lock_delay)

    def destroy(self, name: str) -> None:
        self.consul.destroy_session(self.sessions[name])

    def valid(self, name: str) -> bool:
        return self.consul.session_valid(self.sessions[name])

    def acquire(self, key: str, name: str, value: bytes, flags: int = 0) -> bool:
        return self.consul.acquire(key, value, self.sessions[name], flags)

    def release(self, key: str, name: str, value: bytes = b"") -> bool:
        return self.consul.release(key, self.sessions.get(name, name), value)

    def put(self, key: str, value: bytes, cas: Optional[int] = None) -> bool:
        return self.consul.put(key, value, cas=cas)

    def delete(self, key: str) -> None:
        self.consul.delete(key)

    def txn(self, ops: List[Dict[str, Any]]) -> Tuple[bool, str]:
        ops = [dict(op, Session=self.sessions[op["Session"]]) if "Session" in op else op for op in ops]
        _, error = self.consul.txn(ops)
        return error is None, error or ""

    def register_check(self, check_id: str, ttl: float) -> None:
        self.consul.register_check(self.NODE, check_id, ttl)

    def wait(self, seconds: float) -> None:
        self.timers.advance(seconds)

    def index_of(self, key: str) -> int:
        return self.consul.get(key)[0]

    def blocking_read(self, key: str, index: int, wait: float) -> Tuple[int, bool]:
        current = self.consul.get(key)[0]
        if current > index:
            return current, False
        held = self.consul.blocking_wait(wait)
        self.timers.advance(held)
        return self.consul.get(key)[0], held >= wait * 0.9


@pytest.fixture
def both(consul_agent: ConsulAgent) -> Callable[[Callable[[Side, str], List[Any]]], None]:
    """Run a script on the real agent and on the model and compare what it returned."""

    def run(script: Callable[[Side, str], List[Any]]) -> None:
        key = f"conformance/{uuid.uuid4().hex[:8]}/leader"
        real = script(Real(consul_agent), key)
        model = script(Model(), key)
        assert model == real

    return run


def test_lock_release_relock_and_a_refusal_move_lock_index_session_and_value(both) -> None:
    def script(c: Side, key: str) -> List[Any]:
        c.create("a", 0)
        c.create("b", 0)
        out = [c.acquire(key, "a", b"A", flags=7), c.look(key)]   # a new key's first lock: LockIndex 1
        out += [c.acquire(key, "a", b"A2", flags=8), c.look(key)]  # again by its holder: no new lock
        out += [c.acquire(key, "b", b"B"), c.look(key)]            # held: refused, nothing changes
        out += [c.release(key, "b"), c.look(key)]                  # not b's to release
        out += [c.release(key, "a", b"released"), c.look(key)]     # free, the value the release wrote
        out += [c.acquire(key, "b", b"B"), c.look(key)]            # LockIndex 2
        out += [c.release(key, "b"), c.look(key)]                  # an empty release empties the value
        return out

    both(script)


def test_an_invalidation_keeps_the_value_and_a_lock_delay_refuses_the_free_key(both) -> None:
    def script(c: Side, key: str) -> List[Any]:
        c.create("a", 1)
        c.create("b", 0)
        out = [c.acquire(key, "a", b"A"), c.look(key)]
        c.destroy("a")
        out += [c.valid("a"), c.look(key)]                      # free, value kept, LockIndex kept
        out += [c.acquire(key, "b", b"B"), c.look(key)]         # refused by the lock-delay, the key free
        out += [c.txn([{"Verb": "lock", "Key": key, "Value": b"B", "Session": "b"}])[1].count("lock delay")]
        c.wait(1.3)
        out += [c.acquire(key, "b", b"B"), c.look(key)]         # LockIndex 2
        return out

    both(script)


def test_a_release_by_someone_else_sets_no_lock_delay(both) -> None:
    def script(c: Side, key: str) -> List[Any]:
        c.create("a", 10)
        c.create("b", 0)
        out = [c.acquire(key, "a", b"A"), c.release(key, "a"), c.look(key), c.valid("a")]
        out += [c.acquire(key, "a", b"A"), c.look(key)]
        out += [c.release(key, "a"), c.acquire(key, "b", b"B"), c.look(key)]  # at once
        return out

    both(script)


def test_a_plain_write_keeps_the_holder_and_resets_lock_index_and_delete_frees_with_no_lock_delay(both) -> None:
    def script(c: Side, key: str) -> List[Any]:
        c.create("a", 10)
        c.create("b", 10)
        out = [c.acquire(key, "a", b"A"), c.look(key)]
        out += [c.put(key, b"overwritten"), c.look(key)]
        out += [c.acquire(key, "b", b"B"), c.look(key)]        # still held by a
        c.delete(key)
        out += [c.look(key), c.acquire(key, "b", b"B"), c.look(key)]  # recreated, LockIndex 1, at once
        index = c.read(key).modify_index  # type: ignore[union-attr]
        out += [c.put(key, b"stale", cas=index - 1), c.put(key, b"cas", cas=index), c.look(key)]
        out += [c.put(key, b"created", cas=0), c.look(key)]
        return out

    both(script)


def test_transactions_lock_unlock_and_check_index_refuse_as_the_client_reads_them(both) -> None:
    def script(c: Side, key: str) -> List[Any]:
        c.create("a", 0)
        c.create("b", 0)
        out: List[Any] = []
        ok, _ = c.txn([{"Verb": "lock", "Key": key, "Value": b"A", "Session": "a", "Flags": 5}])
        out += [ok, c.look(key)]
        ok, text = c.txn([{"Verb": "lock", "Key": key, "Value": b"B", "Session": "b"}])
        out += [ok, "lock is already held" in text, c.look(key)]
        ok, text = c.txn([{"Verb": "unlock", "Key": key, "Session": "b"}])
        out += [ok, "lock isn't held" in text, c.look(key)]
        index = c.read(key).modify_index  # type: ignore[union-attr]
        ok, _ = c.txn([{"Verb": "check-index", "Key": key, "Index": index - 1},
                       {"Verb": "unlock", "Key": key, "Session": "a"}])
        out += [ok, c.look(key)]                                 # all or nothing
        ok, _ = c.txn([{"Verb": "check-index", "Key": key, "Index": index},
                       {"Verb": "unlock", "Key": key, "Session": "a", "Value": b"rel"}])
        out += [ok, c.look(key)]
        c.destroy("a")
        ok, text = c.txn([{"Verb": "lock", "Key": key, "Value": b"A", "Session": "a"}])
        out += [ok, "invalid session" in text, c.look(key)]
        return out

    both(script)


def test_a_critical_check_invalidates_its_session_and_frees_the_key(both) -> None:
    def script(c: Side, key: str) -> List[Any]:
        check = f"check-{key.split('/')[1]}"
        c.register_check(check, 1)
        c.create("a", 0, (check,))
        out = [c.acquire(key, "a", b"A"), c.look(key)]
        c.wait(0.5)
        out += [c.valid("a"), c.look(key)]
        c.wait(2.5)
        out += [c.valid("a"), c.look(key)]
        return out

    both(script)


def test_blocking_queries_return_at_once_on_an_old_index_and_after_the_wait_on_the_current_one(both) -> None:
    def script(c: Side, key: str) -> List[Any]:
        c.put(key, b"x")
        before = c.index_of(key)
        c.put(key, b"y")
        after = c.index_of(key)
        index, waited = c.blocking_read(key, before, 5)
        out: List[Any] = [after > before, index == after, waited]
        index, waited = c.blocking_read(key, after, 0.3)
        out += [index == after, waited]
        return out

    both(script)
