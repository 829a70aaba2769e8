"""The one module that talks to Consul: which HTTP request each operation
of an election is (sessions, checks, keys, transactions).

It sends them through :mod:`consul_leader.transport` (``requests`` alone, no
``consul`` module: the three distributions that install it disagree, and pip
mixes their files), which gives every thread (and every forked process) its
own ``requests.Session``, bounds every request by a timeout, and translates
what goes wrong into the exceptions of :mod:`consul_leader.errors`.
Everything else in the package speaks of sessions, checks and keys.
"""

from __future__ import annotations

import base64
import functools
import json
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .agent_calls import AgentCalls
from .config import ConsulConfig
from .errors import AlsoLockHeld
from .interrupt import clear_wake, interrupt, wake
from .lockdelay import FreeSince, KeyEntry, LockAttempt, RawEntry, invalidated
from .transport import Refused, Transport, duration, one_line, quote

if TYPE_CHECKING:
    import requests

__all__ = ["ConsulClient", "ConsulConfig", "FreeSince", "KeyEntry", "LockAttempt", "RawEntry", "clear_wake",
           "interrupt", "invalidated", "wake"]


_CONSUL_DEFAULT_WAIT = 300.0


class ConsulClient(AgentCalls):
    """The handful of Consul operations an election needs.

    Thread-safe: each thread gets its own connection. Every request is bounded
    by ``config.timeout``; a blocking query by its wait, plus Consul's jitter
    of up to wait/16, plus that timeout.

    :param config: where and how to reach the agent.
    """

    def __init__(self, config: ConsulConfig) -> None:
        self.config = config
        self._http = Transport(config)

    def __repr__(self) -> str:
        return f"ConsulClient({self.config!r})"

    @property
    def base_uri(self) -> str:
        """The URL every request starts with, e.g. ``http://[::1]:8500``."""
        return self._http.base_uri

    def limit_requests(self, left: Callable[[], float | None] | None) -> None:
        """Bound each later request of the calling thread, blocking queries
        too, by ``left()`` seconds (at least 10 ms), asked as it starts;
        ``left()`` returning None, or *left* None, leaves the usual bounds.
        For a thread whose requests must not outlive a lease: one that
        times out raises :class:`~consul_leader.ConsulUnavailable`."""
        self._http.limit(left)

    def last_success(self) -> float | None:
        """When (``time.monotonic()``) a request of the calling thread last
        got an answer it could use; None if none did yet. Whoever logs a run
        of failures tells its end by it.

        .. versionadded:: 0.2"""
        return self._http.last_success()

    def http_session(self) -> requests.Session:
        """The :class:`requests.Session` the calling thread uses: one per
        thread and per process, so threads never share a connection."""
        return self._http.session

    def create_session(self, name: str, checks: list[str], lock_delay: float, ttl: int) -> str:
        """Create a session bound to *checks* with ``behavior=release``."""
        body = {"Name": name, "Checks": checks, "LockDelay": duration(lock_delay), "Behavior": "release",
                "TTL": duration(ttl)}
        return str(self._http.call("create session", lambda: self._http.request(
            "PUT", "/v1/session/create", body=body).json()["ID"],
            missing="a check the session binds to is missing or critical"))

    def renew_session(self, session_id: str) -> None:
        """Renew the session at the servers.

        :raises SessionLost: the servers no longer know the session."""
        self._http.call("renew session", lambda: self._http.request("PUT", f"/v1/session/renew/{quote(session_id)}"),
                   missing=f"session {session_id} no longer exists")

    def destroy_session(self, session_id: str) -> None:
        """Destroy the session, releasing what it holds."""
        self._http.call("destroy session", lambda: self._http.request(
            "PUT", f"/v1/session/destroy/{quote(session_id)}"))

    def acquire(self, key: str, value: bytes, session_id: str, flags: int = 0,
                delete: str | None = None, also_lock: Sequence[tuple[str, bytes]] = ()) -> LockAttempt:
        """Try to take the lock on *key* for the session, in one transaction
        that also answers the key's ModifyIndex (the fencing token) and why a
        refusal happened.

        :param delete: a key to delete in the same transaction if, and only
            if, the lock is taken (the candidate's place in the waiting line).
        :param also_lock: ``(key, value)`` pairs to lock for the same session
            in the same transaction: the lock is taken only with all of them.
        :raises SessionLost: the session is gone (Consul says invalid session).
        :raises AlsoLockHeld: another session holds one of *also_lock*."""
        operations: list[Any] = [{"KV": {"Verb": "lock", "Key": key,
                                         "Value": base64.b64encode(value).decode("ascii"),
                                         "Session": session_id, "Flags": flags}}]
        operations.extend({"KV": {"Verb": "lock", "Key": other, "Value": base64.b64encode(body).decode("ascii"),
                                  "Session": session_id}} for other, body in also_lock)
        if delete is not None:
            operations.append({"KV": {"Verb": "delete", "Key": delete}})

        def lock() -> LockAttempt:
            status, result = self._txn(operations)
            if status == 409:
                failed = _failed_op(result)
                if 1 <= failed <= len(also_lock) and ("Permission denied" in result or "ACL not found" in result):
                    # The rule to name is for the other key's folder, not the lock's.
                    raise self._http.denied("acquire lock", one_line(result),
                                            also_lock[failed - 1][0].rsplit("/", 1)[0] + "/", 403)
                if "lock is already held" in result:
                    if 1 <= failed <= len(also_lock):
                        raise AlsoLockHeld(f"acquire lock: {also_lock[failed - 1][0]!r}, which this lock is taken "
                                           "with, is held by another session", key=also_lock[failed - 1][0])
                    return LockAttempt(None, delayed=False)
                if "due to lock delay" in result:
                    return LockAttempt(None, delayed=True)
                if "invalid session" in result:
                    raise Refused(409, result)  # -> SessionLost
                if "Permission denied" in result or "ACL not found" in result:
                    raise Refused(403, result)
                raise Refused(409, result)
            kv = result["Results"][0]["KV"]
            return LockAttempt(int(kv["ModifyIndex"]), delayed=False, lock_index=int(kv.get("LockIndex") or 0),
                               create_index=int(kv.get("CreateIndex") or 0))

        return self._http.call("acquire lock", lock, missing=f"session {session_id} no longer exists", key=key)

    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        """Release the lock on *key* if the session holds it, writing *value*
        (None: an empty value)."""
        return bool(self._http.call("release lock", lambda: self._http.request(
            "PUT", _kv_path(key), {"release": session_id}, body=value).json(), key=key))

    def unlock(self, key: str, session_id: str, value: bytes = b"", index: int | None = None,
               also_unlock: Sequence[str] = ()) -> int | None:
        """Release the lock on *key* if the session holds it, writing
        *value*, in a transaction that answers the key's ModifyIndex after
        the release (so the releaser can block on the key from there without
        reading it again). None if the session did not hold it.

        :param index: release only the key as it was at this ModifyIndex
            (a term's acquisition: its fencing token), in the same
            transaction. A release whose answer was lost may still land
            after its holder released again and took the key back; guarded,
            it cannot free that later term. If the key changed otherwise
            (someone wrote it; the session may still hold it), it is read
            and released as it is now, guarded by the index just read.
        :param also_unlock: keys locked with *key* (:meth:`acquire`'s
            *also_lock*), released in the same transaction; one the session
            no longer holds (deleted meanwhile) is released on its own.

        .. versionadded:: 0.2"""
        unlock_op = {"KV": {"Verb": "unlock", "Key": key, "Session": session_id,
                            "Value": base64.b64encode(value).decode("ascii")}}
        others = list(also_unlock)

        def unlock(guard: int | None) -> int | None | bool:
            operations: list[Any] = [{"KV": {"Verb": "unlock", "Key": other, "Session": session_id}}
                                     for other in others] + [unlock_op]
            if guard is not None:
                operations.insert(0, {"KV": {"Verb": "check-index", "Key": key, "Index": guard}})
            status, result = self._txn(operations)
            if status == 409:
                if "lock isn't held" in result:
                    failed = _failed_op(result) - (guard is not None)
                    if 0 <= failed < len(others):
                        # Not ours any more (deleted): free it the lenient
                        # way, and release the key without it.
                        self.release(others.pop(failed), session_id)
                        return False
                    return None
                if "failed index check" in result or "failed to check index" in result:
                    return False
                raise Refused(403 if "Permission denied" in result or "ACL not found" in result else 409, result)
            return int(result["Results"][-1]["KV"]["ModifyIndex"])

        for _ in range(3 + len(others)):
            count = len(others)
            done = self._http.call("release lock", functools.partial(unlock, index), key=key)
            if done is not False:
                return done
            if len(others) < count:
                continue  # one of those dropped: the same guard again
            _, entry = self.get_key(key)
            if entry is None or entry.get("Session") != session_id:
                return None
            index = int(entry["ModifyIndex"])
        return None  # the key keeps changing under a session that holds it: its holder's writes, not ours

    def get_key(self, key: str, index: int | None = None, wait: float | None = None,
                operation: str = "read key") -> tuple[int, RawEntry | None]:
        """Read *key*; with *index*, a blocking query that returns when the key
        changes past *index* or after *wait* seconds. Returns ``(index, entry)``,
        entry None when the key does not exist. *operation* names the step in
        error messages (and so the ACL rule they ask for)."""
        idx, entries = self._http.call(operation, lambda: self._read(key, {}, index, wait), key=key)
        return idx, entries[0] if entries else None

    def get_prefix(self, prefix: str, index: int | None = None,
                   wait: float | None = None) -> tuple[int, dict[str, RawEntry]]:
        """Read every key under *prefix* in one request; with *index*, a
        blocking query that returns when any of them changes past *index* or
        after *wait* seconds. Returns ``(index, {key: entry})``, empty when
        no key exists under the prefix.

        .. versionadded:: 0.2"""
        idx, entries = self._http.call("read key", lambda: self._read(prefix, {"recurse": ""}, index, wait), key=prefix)
        return idx, {entry["Key"]: entry for entry in entries}

    def list_keys(self, prefix: str) -> list[str]:
        """The names of every key under *prefix*, values left out (``?keys``).

        .. versionadded:: 0.2"""
        def keys() -> list[str]:
            response = self._http.request("GET", _kv_path(prefix), {"keys": ""}, allow=(404,))
            return [] if response.status_code == 404 else list(response.json() or [])

        return self._http.call("read key", keys, key=prefix)

    def _read(self, key: str, params: dict[str, Any], index: int | None,
              wait: float | None) -> tuple[int, list[RawEntry]]:
        if index:
            params["index"] = index
            if wait:
                params["wait"] = duration(wait)
        # Without a wait, Consul holds a blocking query for five minutes.
        held = (wait or _CONSUL_DEFAULT_WAIT) if index else None
        response = self._http.request("GET", _kv_path(key), params, wait=held, allow=(404,))
        idx = int(response.headers.get("X-Consul-Index") or 0)
        if response.status_code == 404:
            return idx, []
        entries: list[RawEntry] = response.json() or []
        for entry in entries:
            if entry.get("Value") is not None:
                entry["Value"] = base64.b64decode(entry["Value"])
        return idx, entries

    def _txn(self, operations: list[Any]) -> tuple[int, Any]:
        """Send a transaction: ``(200, result)``, or ``(409, text)`` when an
        operation in it failed (the caller tells which)."""
        response = self._http.request("PUT", "/v1/txn", body=operations, allow=(409,))
        if response.status_code == 409:
            return 409, response.text
        return 200, response.json()

    def put_if_index(self, guard_key: str, index: int, key: str, value: bytes) -> bool:
        """Write *key* only if *guard_key*'s ModifyIndex is still *index*, in
        one transaction: with the lock key and a fencing token, a write that
        no later term can interleave with.

        :returns: False if the index moved (the term is over)."""
        operations = [
            {"KV": {"Verb": "check-index", "Key": guard_key, "Index": index}},
            {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(value).decode("ascii")}},
        ]
        return self._http.call("guarded write", lambda: self._txn(operations)[0] == 200)

    def put_key(self, key: str, value: bytes) -> None:
        """Write *key* without a lock (used by tests and tools)."""
        self._http.call("write key", lambda: self._http.request("PUT", _kv_path(key), body=value), key=key)

    def delete_key(self, key: str, recurse: bool = False) -> None:
        """Delete *key* (used by tests and tools)."""
        self._http.call("delete key", lambda: self._http.request(
            "DELETE", _kv_path(key), {"recurse": ""} if recurse else None), key=key)

    def locked_by(self, keys: Sequence[str], session_id: str) -> list[bool]:
        """Whether each of *keys* is locked by the session, in one read-only
        transaction (``check-session``): a key that is absent, free or held
        by another session is not.

        .. versionadded:: 0.2"""
        operations = [{"KV": {"Verb": "check-session", "Key": key, "Session": session_id}} for key in keys]

        def check() -> list[bool]:
            status, result = self._txn(operations)
            if status == 200:
                return [True] * len(operations)
            if "Permission denied" in result or "ACL not found" in result:
                raise Refused(403, result)
            try:
                errors = json.loads(result).get("Errors") or []
                failed = {int(error.get("OpIndex") or 0) for error in errors}
            except (ValueError, AttributeError, TypeError):
                raise Refused(409, result) from None
            return [index not in failed for index in range(len(operations))]

        return self._http.call("read key", check, key=keys[0])

    def put_locked(self, key: str, value: bytes, session_id: str) -> bool:
        """Write *key* locked by the session (a place in the waiting line):
        a plain ``?acquire=`` write, told apart from the election's
        transaction by whoever counts requests.

        :returns: False if another session holds *key*.
        :raises SessionLost: the session is gone.

        .. versionadded:: 0.2"""
        return bool(self._http.call("join line", lambda: self._http.request(
            "PUT", _kv_path(key), {"acquire": session_id}, body=value).json(),
            missing=f"session {session_id} no longer exists", key=key))

    def set_flags_if_index(self, key: str, value: bytes, flags: int, index: int, session_id: str) -> int | None:
        """Rewrite *key*'s value and flags, which the session holds, only if
        its ModifyIndex is still *index*: the holder locks it again, which
        keeps its LockIndex (a ``cas`` write would reset it to 0, and the
        holder's release mark would name a LockIndex the key no longer has).
        The new ModifyIndex, or None if the key changed meanwhile.

        .. versionadded:: 0.2"""
        operations = [{"KV": {"Verb": "check-index", "Key": key, "Index": index}},
                      {"KV": {"Verb": "lock", "Key": key, "Value": base64.b64encode(value).decode("ascii"),
                              "Flags": flags, "Session": session_id}}]

        def cas() -> int | None:
            status, result = self._txn(operations)
            if status == 409:
                if "index" in result.lower() or "lock is already held" in result or "invalid session" in result:
                    return None
                raise Refused(403 if "Permission denied" in result or "ACL not found" in result else 409, result)
            return int(result["Results"][-1]["KV"]["ModifyIndex"])

        return self._http.call("write key", cas, key=key)

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete *keys*, in transactions of at most 64 (Consul's limit)
        rather than a request each.

        .. versionadded:: 0.2"""
        keys = list(keys)
        for start in range(0, len(keys), _TXN_MAX_OPS):
            operations = [{"KV": {"Verb": "delete", "Key": key}} for key in keys[start:start + _TXN_MAX_OPS]]

            def delete(operations: list[Any] = operations) -> None:
                status, result = self._txn(operations)
                if status != 200:
                    raise Refused(403 if "Permission denied" in result or "ACL not found" in result else 409, result)

            self._http.call("delete key", delete, key=keys[start])

    def delete_key_if_index(self, key: str, index: int) -> bool:
        """Delete *key* only if its ModifyIndex is still *index* (a
        check-and-set delete).

        :returns: False if the key changed meanwhile.

        .. versionadded:: 0.2"""
        return bool(self._http.call("delete key", lambda: self._http.request(
            "DELETE", _kv_path(key), {"cas": index}).json(), key=key))


#: The most operations Consul takes in one transaction.
_TXN_MAX_OPS = 64


def _failed_op(result: str) -> int:
    """The index of the operation a refused transaction failed on (0 if not told)."""
    try:
        errors = json.loads(result).get("Errors") or []
        return int(errors[0].get("OpIndex") or 0)
    except (ValueError, AttributeError, IndexError, TypeError):
        return 0


def _kv_path(key: str) -> str:
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")
