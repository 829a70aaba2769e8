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
import socket
import threading
import urllib.parse
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import consul
import consul.callback
import consul.exceptions
import consul.std
import requests
import urllib3
import urllib3.connection

from .errors import (
    ConfigurationError,
    ConfigurationTypeError,
    ConsulLeaderError,
    ConsulTLSError,
    ConsulUnavailable,
    NoClusterLeader,
    PermissionDenied,
    RequestRejected,
    SessionLost,
)

log = logging.getLogger("consul_leader")

T = TypeVar("T")
KeyEntry = dict[str, Any]

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


# Connections by the thread that opened them, so that stop() can cut short a
# blocking query another thread is waiting in (Consul may hold it for minutes).
_open_connections: weakref.WeakKeyDictionary[threading.Thread, weakref.WeakSet[Any]] = \
    weakref.WeakKeyDictionary()
_open_connections_lock = threading.Lock()


_interrupted: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
# Threads that wake() asked to give up the request they are (about to be) in,
# once: a connection they open before clear_wake() fails at once.
_woken: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A fork copies the lock in whatever state another thread left it (it
    # may be held for good), and the threads it names do not exist here.
    global _open_connections_lock
    _open_connections_lock = threading.Lock()
    _open_connections.clear()
    _interrupted.clear()
    _woken.clear()


os.register_at_fork(after_in_child=_reset_after_fork)


def _track(conn: Any) -> None:
    thread = threading.current_thread()
    with _open_connections_lock:
        _open_connections.setdefault(thread, weakref.WeakSet()).add(conn)
        if thread in _interrupted:
            # interrupt() already swept this thread's sockets: refuse to open
            # one it could not see.
            conn.sock.close()
            raise OSError("consul-leader: request interrupted because the candidate stops")
        if thread in _woken:
            # wake() shut down the pooled socket before this request took it;
            # urllib3 then reconnects, and the wake must not be lost.
            _woken.discard(thread)
            conn.sock.close()
            raise OSError("consul-leader: request woken")


class _TrackedHTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _track(self)


class _TrackedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _track(self)


class _TrackedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


def interrupt(thread: threading.Thread) -> None:
    """Make the request *thread* is blocked in, and every later one, fail at
    once (as :class:`ConsulUnavailable`), by shutting its sockets down. For
    a thread that is about to end."""
    _cut(thread, _interrupted)


def wake(thread: threading.Thread) -> None:
    """Make the request *thread* is blocked in (or its next one, until it
    calls :func:`clear_wake`) fail at once, as :class:`ConsulUnavailable`.
    Unlike :func:`interrupt`, later requests work: this cuts a blocking query
    short so that the thread looks at something that changed meanwhile."""
    _cut(thread, _woken)


def _cut(thread: threading.Thread, marks: weakref.WeakSet[threading.Thread]) -> None:
    """Mark *thread* in *marks* (seen by _track when it connects) and shut
    down the sockets it has open, failing the request it is blocked in."""
    with _open_connections_lock:
        marks.add(thread)
        conns = list(_open_connections.get(thread, ()))
    for conn in conns:
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def clear_wake() -> None:
    """Forget a :func:`wake` of the calling thread (call it before looking
    at what a wake would announce, then make the request)."""
    with _open_connections_lock:
        _woken.discard(threading.current_thread())


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
            for adapter in session.adapters.values():
                adapter.poolmanager.pool_classes_by_scheme = {  # type: ignore[attr-defined]
                    "http": _TrackedHTTPConnectionPool, "https": _TrackedHTTPSConnectionPool}
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


@dataclass(frozen=True)
class ConsulConfig:
    """Where and how to reach the Consul agent.

    Built by :meth:`from_args`, which fills what is not given from the
    environment variables the ``consul`` CLI reads. The token is hidden from
    ``repr()`` so that it never reaches a log.

    :ivar host: the agent's host name or IP address.
    :ivar port: the agent's HTTP(S) port.
    :ivar scheme: ``"http"`` or ``"https"``.
    :ivar token: the ACL token, or None.
    :ivar datacenter: the datacenter to address, or None for the agent's own.
    :ivar verify: TLS verification: True, False or a CA bundle path.
    :ivar cert: client certificate: a path, a ``(cert, key)`` pair, or None.
    :ivar timeout: seconds allowed for a request that does not block.
    """

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = None
    datacenter: str | None = None
    verify: bool | str = True
    cert: None | str | tuple[str, str] = None
    timeout: float = 5.0

    def __repr__(self) -> str:
        return (f"ConsulConfig(address={self.address!r}, datacenter={self.datacenter!r}, "
                f"token={'<hidden>' if self.token else None}, verify={self.verify!r}, "
                f"cert={self.cert!r}, timeout={self.timeout!r})")

    @property
    def address(self) -> str:
        """The agent's address as ``scheme://host:port``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @classmethod
    def from_args(
        cls,
        address: str | None = None,
        token: str | None = None,
        datacenter: str | None = None,
        verify: None | bool | str = None,
        cert: None | str | tuple[str, str] = None,
        timeout: float = 5.0,
        environ: dict[str, str] | None = None,
        token_file: str | None = None,
    ) -> ConsulConfig:
        """Resolve the settings: arguments first (*token*, else the file
        *token_file*), then ``CONSUL_HTTP_ADDR``,
        ``CONSUL_HTTP_TOKEN`` (or ``CONSUL_HTTP_TOKEN_FILE``), ``CONSUL_HTTP_SSL``,
        ``CONSUL_HTTP_SSL_VERIFY``, ``CONSUL_CACERT``, ``CONSUL_CLIENT_CERT`` and
        ``CONSUL_CLIENT_KEY``, then the defaults (``127.0.0.1:8500``).

        :raises ConfigurationError: an address that does not parse, a
            certificate file that does not exist, a timeout that is not positive.
        """
        env = os.environ if environ is None else environ
        source = "address" if address is not None else "CONSUL_HTTP_ADDR"
        raw = address if address is not None else env.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500")
        if not isinstance(raw, str):
            raise ConfigurationTypeError(f"address must be a str like '127.0.0.1:8500', got {type(raw).__name__}")
        ssl = env.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true", "yes")
        scheme, host, port = _parse_address(raw, source, "https" if ssl else "http")

        if token is None and token_file is not None:
            token = _read_token_file(token_file, "token_file")
        elif token is None:
            token = env.get("CONSUL_HTTP_TOKEN") or None
            env_file = env.get("CONSUL_HTTP_TOKEN_FILE")
            if token is None and env_file:
                token = _read_token_file(env_file, "CONSUL_HTTP_TOKEN_FILE")
        elif not isinstance(token, str):
            raise ConfigurationTypeError(f"token must be a str, got {type(token).__name__}")
        if token and not (token.isascii() and token.isprintable() and not any(ch.isspace() for ch in token)):
            # Never echo it: it is a secret, even when malformed.
            raise ConfigurationError("token (or CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE) must be an ACL token: "
                                     "printable ASCII without spaces; the value given is not (not shown)")

        if datacenter is not None and (not isinstance(datacenter, str) or not datacenter):
            raise ConfigurationError(f"datacenter must be a non-empty str or None, got {datacenter!r}")

        if verify is None:
            if env.get("CONSUL_HTTP_SSL_VERIFY", "").lower() in ("0", "false", "no"):
                verify = False
            else:
                verify = env.get("CONSUL_CACERT") or True
        if isinstance(verify, str) and not os.path.exists(verify):
            raise ConfigurationError(f"verify (or CONSUL_CACERT) names a CA file that does not exist: {verify!r}")
        if not isinstance(verify, (bool, str)):
            raise ConfigurationTypeError(f"verify must be a bool or a CA file path, got {type(verify).__name__}")

        if cert is None and env.get("CONSUL_CLIENT_CERT"):
            client_key = env.get("CONSUL_CLIENT_KEY")
            cert = (env["CONSUL_CLIENT_CERT"], client_key) if client_key else env["CONSUL_CLIENT_CERT"]
        if isinstance(cert, list):
            cert = tuple(cert)
        if cert is not None and not isinstance(cert, str) and not (isinstance(cert, tuple) and len(cert) == 2):
            raise ConfigurationTypeError(f"cert must be a file path or a (cert_file, key_file) pair, "
                                         f"got {type(cert).__name__} {cert!r}")
        for path in (cert,) if isinstance(cert, str) else (cert or ()):
            if not isinstance(path, str) or not os.path.isfile(path):
                raise ConfigurationError(
                    f"cert (or CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY) names a file that does not exist: {path!r}")

        return cls(host=host, port=port, scheme=scheme, token=token, datacenter=datacenter,
                   verify=verify, cert=cert, timeout=_check_timeout(timeout))

    @classmethod
    def resolve(cls, *, consul: Any = None, address: str | None = None, token: str | None = None,
                token_file: str | None = None, datacenter: str | None = None,
                verify: None | bool | str = None, cert: None | str | tuple[str, str] = None,
                timeout: float = 5.0) -> ConsulConfig:
        """The one way :class:`~consul_leader.Candidate`,
        :class:`~consul_leader.Follower` and the ``consul-leader`` command
        turn their connection arguments into settings: an existing
        ``consul.Consul`` (*consul*) or the other arguments, not both; what
        is not given comes from the ``consul`` CLI's environment variables.

        :raises ConfigurationError: both *consul* and another connection
            argument, or an argument that :meth:`from_args` refuses."""
        if consul is not None:
            given = [name for name, value in (("address", address), ("token", token), ("token_file", token_file),
                                              ("datacenter", datacenter), ("verify", verify), ("cert", cert))
                     if value is not None]
            if given:
                raise ConfigurationTypeError(f"give either consul= or {', '.join(given)}, not both: consul= "
                                             f"already says where and how to connect")
            return cls.from_consul(consul, timeout=timeout)
        return cls.from_args(address=address, token=token, token_file=token_file, datacenter=datacenter,
                             verify=verify, cert=cert, timeout=timeout)

    @classmethod
    def from_consul(cls, client: Any, timeout: float = 5.0) -> ConsulConfig:
        """Take the settings of an existing ``consul.Consul`` (py-consul or
        python-consul). Only its settings are used: consul-leader makes its own
        connections, bounded by timeouts and private to each thread.

        :raises ConfigurationTypeError: *client* is not a ``consul.Consul``."""
        http: Any = getattr(client, "http", None)
        if not all(hasattr(http, name) for name in ("host", "port", "scheme", "verify", "cert")) or \
                not hasattr(client, "token") or not hasattr(client, "dc"):
            raise ConfigurationTypeError(f"consul must be a consul.Consul client (py-consul or python-consul), "
                                         f"got {type(client).__name__}")
        return cls(host=http.host, port=int(http.port), scheme=http.scheme, token=client.token or None,
                   datacenter=client.dc, verify=http.verify, cert=http.cert, timeout=_check_timeout(timeout))


def _read_token_file(path: str, source: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip() or None
    except OSError as exc:
        raise ConfigurationError(f"{source}={path!r} cannot be read: {exc.strerror}") from None


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ConfigurationTypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not 0 < timeout <= 300:
        raise ConfigurationError(f"timeout must be in (0, 300] seconds, got {timeout!r}")
    return float(timeout)


def _parse_address(raw: str, source: str, default_scheme: str) -> tuple[str, str, int]:
    text = raw.strip()
    if text.startswith("unix://"):
        raise ConfigurationError(f"{source}={raw!r}: unix sockets are not supported; give host:port")
    try:
        parsed = urllib.parse.urlsplit(text if "//" in text else "//" + text)
        port = parsed.port
    except ValueError:  # an unbalanced '[' of an IPv6 address, a port that is no number
        parsed, port = urllib.parse.urlsplit(""), -1
    scheme = parsed.scheme or default_scheme
    host = parsed.hostname or ""
    if scheme not in ("http", "https") or not host or not (host.isascii() and host.isprintable()) or \
            any(ch.isspace() for ch in host) or (port is not None and not 0 < port < 65536):
        raise ConfigurationError(
            f"{source}={raw!r} is not an agent address; expected host:port or http(s)://host:port")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address: py-consul puts the host into its URLs as it is
    return scheme, host, port if port is not None else (8501 if scheme == "https" else 8500)


class LockAttempt(NamedTuple):
    """What :meth:`ConsulClient.acquire` found.

    :ivar modify_index: the key's ModifyIndex if the lock was taken, else None.
    :ivar delayed: not taken because a lock-delay runs (the key may be free).
    :ivar lock_index: the key's LockIndex if the lock was taken: how many
        sessions took it since the key was created (1: the first one).
    :ivar create_index: the key's CreateIndex if the lock was taken.
    """

    modify_index: int | None
    delayed: bool
    lock_index: int | None = None
    create_index: int | None = None

    def follows(self, seen: KeyEntry | None, session_id: str) -> bool:
        """Whether this lock is the next one taken after *seen*, the key as
        read before the acquisition was sent, while free or this session's.

        Only then did Consul check its lock-delay against this acquisition
        after every invalidation that freed the key, so the last holder's
        work is over. Otherwise it may not be: Consul checks the lock-delay
        before it commits an acquisition, not when it applies it, so one
        sent while another session held the key wins if that session is
        invalidated in between, with no lock-delay at all. The first lock
        of a key never follows anything: a key deleted under its holder
        leaves no lock-delay either. *seen* must come from the Raft leader
        (Consul's default consistency, which every read here uses): a
        ``?stale`` read could show the key free before the leader applied
        the invalidation that set the lock-delay."""
        if self.modify_index is None or seen is None or (self.lock_index or 0) < 2 or \
                int(seen.get("CreateIndex") or 0) != self.create_index:
            return False
        before = int(seen.get("LockIndex") or 0)
        holder = seen.get("Session")
        if not holder:
            return self.lock_index == before + 1
        # Ours all along (an answer lost), or released by us and taken again.
        return holder == session_id and self.lock_index in (before, before + 1)

    def hold_off(self, seen: KeyEntry | None, session_id: str, seen_free_at: float | None, now: float,
                 lock_delay: float) -> tuple[float, str]:
        """How long to hold this lock before leading it (0: lead now), and
        why, for the log.

        A lock that does not :meth:`follow <follows>` *seen* waits one
        *lock_delay*. One that does, where *seen* was freed by an
        invalidation (a free entry that still carries its last holder's
        value; a release empties it), is led no earlier than one
        *lock_delay* after it was first seen so (*seen_free_at*, on the
        caller's clock; None: unknown): Consul keeps lock-delays in each
        server's memory, set as it applies the invalidation, so a Raft
        leader elected before it applied it, or restored from a snapshot,
        enforces none. Normally Consul's own lock-delay already kept the
        acquisition out that long, and this costs nothing."""
        if not self.follows(seen, session_id):
            if self.lock_index == 1:
                why = "as its first holder: if it was deleted under another leader, Consul set no lock-delay"
            else:
                why = ("without seeing it free first: if its last holder's session was invalidated as the "
                       "acquisition was on its way, Consul applied no lock-delay")
            return lock_delay, why
        if not invalidated(seen):
            return 0.0, ""
        first = now if seen_free_at is None else seen_free_at
        return max(0.0, first + lock_delay - now), ("after its last holder's session was invalidated: a Raft "
                                                   "leader that had not applied that applies no lock-delay")


def invalidated(entry: KeyEntry | None) -> bool:
    """Whether *entry* is free because its holder's session was invalidated
    (it keeps the holder's value; a release empties it)."""
    return entry is not None and not entry.get("Session") and bool(entry.get("Value"))


class FreeSince:
    """When one key was first seen free after an invalidation, for
    :meth:`LockAttempt.hold_off`."""

    __slots__ = ("_mark", "_at")

    def __init__(self) -> None:
        self._mark: tuple[int, int] | None = None
        self._at = 0.0

    def see(self, entry: KeyEntry | None, now: float) -> None:
        """Note *entry*, read at *now*."""
        if entry is not None and invalidated(entry):
            mark = _mark(entry)
            if mark != self._mark:
                self._mark, self._at = mark, now

    def of(self, entry: KeyEntry | None) -> float | None:
        """When *entry*, free after an invalidation, was first seen; None if
        it was not seen so."""
        return self._at if entry is not None and _mark(entry) == self._mark else None


def _mark(entry: KeyEntry) -> tuple[int, int]:
    # One free state of a key: a new lock or a re-created key changes it.
    return int(entry.get("CreateIndex") or 0), int(entry.get("LockIndex") or 0)


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

    def release(self, key: str, session_id: str) -> bool:
        """Release the lock on *key* if the session holds it."""
        return bool(self._call("release lock", lambda: self._consul.kv.put(key, None, release=session_id),
                               key=key))

    def unlock(self, key: str, session_id: str) -> int | None:
        """Release the lock on *key* if the session holds it, in a
        transaction that answers the key's ModifyIndex after the release (so
        the releaser can block on the key from there without reading it
        again). None if the session did not hold it.

        .. versionadded:: 0.2"""
        operations = [{"KV": {"Verb": "unlock", "Key": key, "Session": session_id}}]

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
                operation: str = "read key") -> tuple[int, KeyEntry | None]:
        """Read *key*; with *index*, a blocking query that returns when the key
        changes past *index* or after *wait* seconds. Returns ``(index, entry)``,
        entry None when the key does not exist. *operation* names the step in
        error messages (and so the ACL rule they ask for)."""
        idx, entry = self._call(operation, lambda: self._consul.kv.get(
            key, index=index or None, wait=_duration(wait) if (index and wait) else None), key=key)
        return int(idx), entry

    def get_prefix(self, prefix: str, index: int | None = None,
                   wait: float | None = None) -> tuple[int, dict[str, KeyEntry]]:
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
