"""The one module that talks HTTP to Consul.

It builds a py-consul client from arguments or the consul CLI's environment
variables, gives every thread (and every forked process) its own
``requests.Session``, bounds every request by a timeout, and translates what
goes wrong into the exceptions of :mod:`consul_leader.errors`. Everything
else in the package speaks of sessions, checks and keys.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import consul
import consul.callback
import consul.exceptions
import consul.std
import requests

from .config import ConsulConfig
from .errors import (
    ConsulLeaderError,
    ConsulTLSError,
    ConsulUnavailable,
    NoClusterLeader,
    PermissionDenied,
    RequestRejected,
    SessionLost,
)
from .interrupt import clear_wake, interrupt, track, wake
from .lockdelay import FreeSince, KeyEntry, LockAttempt, RawEntry, invalidated

__all__ = ["ConsulClient", "ConsulConfig", "FreeSince", "KeyEntry", "LockAttempt", "RawEntry", "clear_wake",
           "interrupt", "invalidated", "wake"]

log = logging.getLogger("consul_leader")

T = TypeVar("T")

#: What each operation needs from an ACL policy, named in PermissionDenied.
_PERMISSION_HINTS = {
    "register check": 'node "<this agent\'s node>" { policy = "write" }',
    "pass check": 'node "<this agent\'s node>" { policy = "write" }',
    "deregister check": 'node "<this agent\'s node>" { policy = "write" }',
    "create session": 'session "<this agent\'s node>" { policy = "write" }',
    "renew session": 'session "<this agent\'s node>" { policy = "write" }',
    "destroy session": 'session "<this agent\'s node>" { policy = "write" }',
    "acquire lock": 'key_prefix "<key>" { policy = "write" }',
    "release lock": 'key_prefix "<key>" { policy = "write" }',
    "read key": 'key_prefix "<key>" { policy = "read" }',
    "join line": 'key_prefix "<key>" { policy = "write" }',
    "delete key": 'key_prefix "<key>" { policy = "write" }',
}


#: The least a request bounded by :meth:`ConsulClient.limit_requests` is
#: given: one that could not even connect would only fail.
_SHORTEST_TIMEOUT = 0.01


class _PerThreadHTTPClient(consul.std.HTTPClient):  # type: ignore[misc]
    """py-consul's client shares one ``requests.Session`` between all threads
    and across ``fork()``, where responses can get mixed up. This one keeps a
    session per thread and per process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._local = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def session(self) -> requests.Session:
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            session = requests.Session()
            # Uncompressed: the agent is near, and gzip costs both sides more
            # CPU than the bytes cost (a listing of 1,000 keys: 3.9 ms with
            # gzip, 2.9 ms without, on the handover path of an Elector).
            session.headers["Accept-Encoding"] = "identity"
            track(session)
            local.session = session
            local.pid = pid
        return local.session  # type: ignore[no-any-return]

    @session.setter
    def session(self, value: requests.Session) -> None:
        pass  # the base class assigns one shared session; ours are per thread

    def limit(self, left: Callable[[], float | None] | None) -> None:
        """See :meth:`ConsulClient.limit_requests`."""
        self._local.limit = left

    def timeout(self, params: Any) -> float | None:
        timeout: float | None = super().timeout(params)
        limit: Callable[[], float | None] | None = getattr(self._local, "limit", None)
        left = None if limit is None else limit()
        if left is None or timeout is None:
            return timeout
        return min(timeout, max(left, _SHORTEST_TIMEOUT))


class _Consul(consul.Consul):  # type: ignore[misc]
    def http_connect(self, host: str, port: int, scheme: str, verify: bool | str = True,
                     cert: Any = None) -> _PerThreadHTTPClient:
        return _PerThreadHTTPClient(host, port, scheme, verify, cert,
                                    connections_timeout=self.connections_timeout)


class ConsulClient:
    """The handful of Consul operations an election needs.

    Thread-safe: each thread gets its own connection. Every request is bounded
    by ``config.timeout``; a blocking query by its wait, plus Consul's jitter
    of up to wait/16, plus that timeout.

    :param config: where and how to reach the agent.
    """

    def __init__(self, config: ConsulConfig) -> None:
        self.config = config
        self._consul = _Consul(host=config.host, port=config.port, scheme=config.scheme, dc=config.datacenter,
                               verify=config.verify, cert=config.cert, connections_timeout=config.timeout)
        # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; ours was
        # already resolved with the argument first.
        self._consul.token = config.token

    def __repr__(self) -> str:
        return f"ConsulClient({self.config!r})"

    @property
    def base_uri(self) -> str:
        """The URL every request starts with, e.g. ``http://[::1]:8500``."""
        return str(self._consul.http.base_uri)

    def limit_requests(self, left: Callable[[], float | None] | None) -> None:
        """Bound each later request of the calling thread, blocking queries
        too, by ``left()`` seconds (at least 10 ms), asked as it starts;
        ``left()`` returning None, or *left* None, leaves the usual bounds.
        For a thread whose requests must not outlive a lease: one that
        times out raises :class:`~consul_leader.ConsulUnavailable`."""
        self._consul.http.limit(left)

    def http_session(self) -> requests.Session:
        """The :class:`requests.Session` the calling thread uses: one per
        thread and per process, so threads never share a connection."""
        return self._consul.http.session  # type: ignore[no-any-return]

    def _call(self, operation: str, fn: Callable[[], T], *, missing: str | None = None,
              key: str | None = None) -> T:
        """Run *fn*, translating what requests and py-consul raise into the
        project's errors (the original as ``__cause__``), once, here."""
        where: dict[str, Any] = {"operation": operation, "key": key}
        try:
            return fn()
        except requests.exceptions.SSLError as exc:
            raise ConsulTLSError(f"{operation}: TLS handshake with {self.config.address} failed: "
                                 f"{_tls_hint(exc)}", **where) from exc
        except requests.exceptions.Timeout as exc:
            raise ConsulUnavailable(f"{operation}: {self.config.address} did not answer within "
                                    f"the timeout", **where) from exc
        except requests.exceptions.RequestException as exc:
            raise ConsulUnavailable(f"{operation}: cannot reach the Consul agent at {self.config.address} "
                                    f"({type(exc).__name__})", **where) from exc
        except consul.ACLPermissionDenied as exc:
            raise self._denied(operation, _body(exc), key, 403) from exc
        except consul.exceptions.BadRequest as exc:
            raise RequestRejected(f"{operation}: Consul refused the request as invalid: {_body(exc)}",
                                  status=400, **where) from exc
        except consul.NotFound as exc:
            if missing:
                raise SessionLost(f"{operation}: {missing}", status=404, **where) from exc
            raise ConsulLeaderError(f"{operation}: not found: {_body(exc)}", status=404, **where) from exc
        except consul.ConsulException as exc:
            text = _body(exc)
            status = _status(exc)
            if "No cluster leader" in text:
                raise NoClusterLeader(f"{operation}: the Consul servers have no leader right now",
                                      status=status, **where) from exc
            if "ACL not found" in text or "Permission denied" in text:
                raise self._denied(operation, text, key, status) from exc
            if missing and ("invalid session" in text or "not found" in text.lower()):
                raise SessionLost(f"{operation}: {missing}", status=status, **where) from exc
            raise ConsulUnavailable(f"{operation}: Consul answered {text}", status=status, **where) from exc

    def _denied(self, operation: str, text: str, key: str | None, status: int | None) -> PermissionDenied:
        where: dict[str, Any] = {"operation": operation, "key": key, "status": status}
        if "ACL not found" in text:
            return PermissionDenied(f"{operation}: Consul does not know the ACL token (ACL not found); check "
                                    f"token=, CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE", **where)
        who = "the ACL token" if self.config.token else \
            "the anonymous token (no token was given: pass token= or set CONSUL_HTTP_TOKEN)"
        rule = _PERMISSION_HINTS.get(operation, "the matching write rule").replace("<key>", key or "<key>")
        return PermissionDenied(f"{operation}: Consul refused {who} ({text}); its policy needs {rule}",
                                rule=rule, **where)

    def register_check(self, check_id: str, name: str, ttl: float, notes: str = "") -> None:
        """Register a TTL check on the agent, already passing (a new check
        starts critical, and a session cannot bind to a critical check)."""
        spec = {"ttl": _duration(ttl), "status": "passing"}
        self._call("register check", lambda: self._consul.agent.check.register(
            name, check=spec, check_id=check_id, notes=notes or None))

    def pass_check(self, check_id: str) -> None:
        """Mark the TTL check as passing.

        :raises SessionLost: the agent no longer knows the check (it restarted)."""
        self._call("pass check", lambda: self._consul.agent.check.ttl_pass(check_id),
                   missing=f"the agent no longer has check {check_id!r}")

    def deregister_check(self, check_id: str) -> None:
        """Remove the check from the agent."""
        self._call("deregister check", lambda: self._consul.agent.check.deregister(check_id))

    def create_session(self, name: str, checks: list[str], lock_delay: float, ttl: int) -> str:
        """Create a session bound to *checks* with ``behavior=release``."""
        # Built here rather than by py-consul's session.create, which can only
        # write the lock-delay in whole seconds.
        body = {"Name": name, "Checks": checks, "LockDelay": _duration(lock_delay), "Behavior": "release",
                "TTL": _duration(ttl)}
        return str(self._call("create session", lambda: self._consul.http.put(
            consul.callback.CB.json(is_id=True), "/v1/session/create", params=self._dc_params(),
            data=json.dumps(body), headers=self._consul.prepare_headers()),
            missing="a check the session binds to is missing or critical"))

    def renew_session(self, session_id: str) -> None:
        """Renew the session at the servers.

        :raises SessionLost: the servers no longer know the session."""
        self._call("renew session", lambda: self._consul.session.renew(session_id),
                   missing=f"session {session_id} no longer exists")

    def destroy_session(self, session_id: str) -> None:
        """Destroy the session, releasing what it holds."""
        self._call("destroy session", lambda: self._consul.session.destroy(session_id))

    def acquire(self, key: str, value: bytes, session_id: str, flags: int = 0,
                delete: str | None = None) -> LockAttempt:
        """Try to take the lock on *key* for the session, in one transaction
        that also answers the key's ModifyIndex (the fencing token) and why a
        refusal happened.

        :param delete: a key to delete in the same transaction if, and only
            if, the lock is taken (the candidate's place in the waiting line).
        :raises SessionLost: the session is gone (Consul says invalid session)."""
        operations: list[Any] = [{"KV": {"Verb": "lock", "Key": key,
                                         "Value": base64.b64encode(value).decode("ascii"),
                                         "Session": session_id, "Flags": flags}}]
        if delete is not None:
            operations.append({"KV": {"Verb": "delete", "Key": delete}})

        def lock() -> LockAttempt:
            try:
                result = self._txn(operations)
            except consul.ConsulException as exc:
                text = str(exc)
                if not text.startswith("409"):
                    raise
                if "lock is already held" in text:
                    return LockAttempt(None, delayed=False)
                if "due to lock delay" in text:
                    return LockAttempt(None, delayed=True)
                if "invalid session" in text:
                    raise SessionLost(f"acquire lock: session {session_id} no longer exists", operation="acquire lock",
                                      key=key, status=409) from exc
                if "Permission denied" in text or "ACL not found" in text:
                    raise self._denied("acquire lock", text, key, 409) from exc
                raise
            kv = result["Results"][0]["KV"]
            return LockAttempt(int(kv["ModifyIndex"]), delayed=False, lock_index=int(kv.get("LockIndex") or 0),
                               create_index=int(kv.get("CreateIndex") or 0))

        return self._call("acquire lock", lock, missing=f"session {session_id} no longer exists", key=key)

    def release(self, key: str, session_id: str, value: bytes | None = None) -> bool:
        """Release the lock on *key* if the session holds it, writing *value*
        (None: an empty value)."""
        return bool(self._call("release lock", lambda: self._consul.kv.put(key, value, release=session_id),
                               key=key))

    def unlock(self, key: str, session_id: str, value: bytes = b"") -> int | None:
        """Release the lock on *key* if the session holds it, writing
        *value*, in a transaction that answers the key's ModifyIndex after
        the release (so the releaser can block on the key from there without
        reading it again). None if the session did not hold it.

        .. versionadded:: 0.2"""
        operations = [{"KV": {"Verb": "unlock", "Key": key, "Session": session_id,
                              "Value": base64.b64encode(value).decode("ascii")}}]

        def unlock() -> int | None:
            try:
                result = self._txn(operations)
            except consul.ConsulException as exc:
                text = str(exc)
                if text.startswith("409") and "lock isn't held" in text:
                    return None
                if "Permission denied" in text or "ACL not found" in text:
                    raise self._denied("release lock", text, key, 409) from exc
                raise
            return int(result["Results"][0]["KV"]["ModifyIndex"])

        return self._call("release lock", unlock, key=key)

    def get_key(self, key: str, index: int | None = None, wait: float | None = None,
                operation: str = "read key") -> tuple[int, RawEntry | None]:
        """Read *key*; with *index*, a blocking query that returns when the key
        changes past *index* or after *wait* seconds. Returns ``(index, entry)``,
        entry None when the key does not exist. *operation* names the step in
        error messages (and so the ACL rule they ask for)."""
        idx, entry = self._call(operation, lambda: self._consul.kv.get(
            key, index=index or None, wait=_duration(wait) if (index and wait) else None), key=key)
        return int(idx), entry

    def get_prefix(self, prefix: str, index: int | None = None,
                   wait: float | None = None) -> tuple[int, dict[str, RawEntry]]:
        """Read every key under *prefix* in one request; with *index*, a
        blocking query that returns when any of them changes past *index* or
        after *wait* seconds. Returns ``(index, {key: entry})``, empty when
        no key exists under the prefix.

        .. versionadded:: 0.2"""
        idx, entries = self._call("read key", lambda: self._consul.kv.get(
            prefix, recurse=True, index=index or None, wait=_duration(wait) if (index and wait) else None),
            key=prefix)
        return int(idx), {entry["Key"]: entry for entry in entries or ()}

    def _dc_params(self) -> list[tuple[str, str]] | None:
        return [("dc", self.config.datacenter)] if self.config.datacenter else None

    def _txn(self, operations: list[Any]) -> Any:
        # py-consul's txn.put sends neither the ACL token nor the datacenter.
        return self._consul.http.put(consul.callback.CB.json(), "/v1/txn", params=self._dc_params(),
                                     data=json.dumps(operations), headers=self._consul.prepare_headers())

    def put_if_index(self, guard_key: str, index: int, key: str, value: bytes) -> bool:
        """Write *key* only if *guard_key*'s ModifyIndex is still *index*, in
        one transaction: with the lock key and a fencing token, a write that
        no later term can interleave with.

        :returns: False if the index moved (the term is over)."""
        operations = [
            {"KV": {"Verb": "check-index", "Key": guard_key, "Index": index}},
            {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(value).decode("ascii")}},
        ]

        def put() -> bool:
            try:
                self._txn(operations)
            except consul.ConsulException as exc:
                if str(exc).startswith("409"):  # a check in the transaction failed
                    return False
                raise
            return True

        return self._call("guarded write", put)

    def put_key(self, key: str, value: bytes) -> None:
        """Write *key* without a lock (used by tests and tools)."""
        self._call("write key", lambda: self._consul.kv.put(key, value))

    def delete_key(self, key: str, recurse: bool = False) -> None:
        """Delete *key* (used by tests and tools)."""
        self._call("delete key", lambda: self._consul.kv.delete(key, recurse=recurse or None), key=key)

    def put_locked(self, key: str, value: bytes, session_id: str) -> bool:
        """Write *key* locked by the session (a place in the waiting line):
        a plain ``?acquire=`` write, told apart from the election's
        transaction by whoever counts requests.

        :returns: False if another session holds *key*.
        :raises SessionLost: the session is gone.

        .. versionadded:: 0.2"""
        return bool(self._call("join line", lambda: self._consul.kv.put(key, value, acquire=session_id),
                               missing=f"session {session_id} no longer exists", key=key))

    def delete_key_if_index(self, key: str, index: int) -> bool:
        """Delete *key* only if its ModifyIndex is still *index* (a
        check-and-set delete).

        :returns: False if the key changed meanwhile.

        .. versionadded:: 0.2"""
        return bool(self._call("delete key", lambda: self._consul.kv.delete(key, cas=index), key=key))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    ms = int(round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _tls_hint(exc: requests.exceptions.SSLError) -> str:
    """Say what a failed handshake most likely means, with the SSL reason."""
    reason = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the SSL error
    text = str(reason)
    if "CERTIFICATE_VERIFY_FAILED" in text and ("mismatch" in text or "match" in text):
        hint = ("the agent's certificate is not valid for this host name; connect by a name or IP address "
                "in the certificate (Consul's server certificates name localhost, server.<dc>.consul and "
                "127.0.0.1)")
    elif "CERTIFICATE_VERIFY_FAILED" in text:
        hint = ("the agent's certificate is not signed by a CA this client trusts; give verify= or "
                "CONSUL_CACERT the CA file that signed it")
    elif "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        hint = "the agent does not speak TLS on this port; use http:// or the agent's HTTPS port"
    else:
        hint = ("the agent ended the handshake; if it requires client certificates (verify_incoming), "
                "give cert= or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY, signed by a CA the agent trusts")
    return f"{hint} ({text})"


def _status(exc: Exception) -> int | None:
    """The HTTP status py-consul put at the start of its message, if any."""
    head = str(exc).split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def _body(exc: Exception) -> str:
    text = str(exc).strip()
    try:
        return json.dumps(json.loads(text)) if text.startswith("{") else text
    except ValueError:
        return text
