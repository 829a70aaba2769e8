"""How the package reaches Consul over HTTP: one ``requests.Session`` per
thread and per process, every request bounded by a timeout, and what goes
wrong translated, in one place, into the exceptions of
:mod:`consul_leader.errors`.

Only :mod:`consul_leader.client` uses it: it says *which* request an
operation is; this module says how a request travels and how it fails.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import requests.adapters

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
from .interrupt import track

__all__ = ["Refused", "Transport", "duration", "one_line", "quote"]

T = TypeVar("T")

#: What each operation needs from an ACL policy, named in PermissionDenied.
_PERMISSION_HINTS = {
    "register service": 'service "<key>" { policy = "write" }',
    "deregister service": 'service "<key>" { policy = "write" }',
    "pass check": 'service "<key>" { policy = "write" }',
    # Only node-level checks: 0.1's, and those tools register.
    "register check": 'node "<this agent\'s node>" { policy = "write" }',
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


class Refused(Exception):
    """Consul answered with an error status; :meth:`Transport.call`
    translates it."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text


class _ServerNameAdapter(requests.adapters.HTTPAdapter):
    """Checks the agent's certificate against a name other than the host
    connected to (``CONSUL_TLS_SERVER_NAME``), and sends it as SNI."""

    def __init__(self, server_name: str) -> None:
        self._server_name = server_name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._server_name
        super().init_poolmanager(*args, **kwargs)


class Transport:
    """Requests to the agent through a ``requests.Session`` per thread and
    per process: a session shared between threads, or carried across
    ``fork()``, can mix up responses. No ``consul`` module is involved, so
    python-consul, python-consul2 and py-consul (which install the same
    package, and whose files pip mixes when two are installed) cannot break
    it."""

    def __init__(self, config: ConsulConfig) -> None:
        self.config = config
        self.base_uri = config.address
        self._local = threading.local()
        self._headers = {"X-Consul-Token": config.token} if config.token else {}

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
            session.headers.update(self._headers)
            if self.config.tls_server_name and self.config.scheme == "https":
                session.mount("https://", _ServerNameAdapter(self.config.tls_server_name))
            track(session)
            local.session = session
            local.pid = pid
        return local.session  # type: ignore[no-any-return]

    def limit(self, left: Callable[[], float | None] | None) -> None:
        """See :meth:`ConsulClient.limit_requests`."""
        self._local.limit = left

    def succeeded(self) -> None:
        self._local.succeeded = time.monotonic()

    def last_success(self) -> float | None:
        return getattr(self._local, "succeeded", None)

    def request(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None,
                *, wait: float | None = None, allow: tuple[int, ...] = ()) -> requests.Response:
        """Send one request; *wait* makes it a blocking query's (its read
        timeout allows the wait and Consul's jitter of up to wait/16).

        :raises Refused: an error status not in *allow*.
        :raises requests.RequestException: no answer."""
        timeout = self.config.timeout + (wait + wait / 16 if wait else 0.0)
        limit: Callable[[], float | None] | None = getattr(self._local, "limit", None)
        left = None if limit is None else limit()
        if left is not None:
            timeout = min(timeout, max(left, _SHORTEST_TIMEOUT))
        query = dict(params or {})
        if self.config.datacenter:
            query["dc"] = self.config.datacenter
        data = None if body is None else body if isinstance(body, (bytes, str)) else json.dumps(body)
        response = self.session.request(method, self.base_uri + path, params=query, data=data, timeout=timeout,
                                        verify=self.config.verify, cert=self.config.cert)
        if response.status_code >= 400 and response.status_code not in allow:
            raise Refused(response.status_code, response.text.strip())
        return response

    def call(self, operation: str, fn: Callable[[], T], *, missing: str | None = None,
              key: str | None = None) -> T:
        """Run *fn*, translating what requests raises and what Consul refuses
        into the project's errors (the original as ``__cause__``), once, here."""
        where: dict[str, Any] = {"operation": operation, "key": key}
        try:
            result = fn()
            self.succeeded()
            return result
        except requests.exceptions.SSLError as exc:
            raise ConsulTLSError(f"{operation}: TLS handshake with {self.config.address} failed: "
                                 f"{_tls_hint(exc)}", **where) from exc
        except requests.exceptions.Timeout as exc:
            raise ConsulUnavailable(f"{operation}: {self.config.address} did not answer within "
                                    f"the timeout", **where) from exc
        except requests.exceptions.RequestException as exc:
            raise ConsulUnavailable(f"{operation}: cannot reach the Consul agent at {self.config.address} "
                                    f"({type(exc).__name__})", **where) from exc
        except Refused as exc:
            raise self._refusal(operation, exc, key, missing) from exc

    def _refusal(self, operation: str, exc: Refused, key: str | None, missing: str | None) -> ConsulLeaderError:
        where: dict[str, Any] = {"operation": operation, "key": key, "status": exc.status}
        text = one_line(exc.text)
        if exc.status == 403 or "ACL not found" in text or "Permission denied" in text:
            return self.denied(operation, text, key, exc.status)
        if exc.status == 400:
            return RequestRejected(f"{operation}: Consul refused the request as invalid: {text}", **where)
        if missing and (exc.status == 404 or "invalid session" in text or "not found" in text.lower()
                        or "does not have associated TTL" in text):
            return SessionLost(f"{operation}: {missing}", **where)
        if exc.status == 404:
            return ConsulLeaderError(f"{operation}: not found: {text}", **where)
        if "No cluster leader" in text:
            return NoClusterLeader(f"{operation}: the Consul servers have no leader right now", **where)
        return ConsulUnavailable(f"{operation}: Consul answered {exc.status} {text}", **where)

    def denied(self, operation: str, text: str, key: str | None, status: int | None) -> PermissionDenied:
        """The :class:`PermissionDenied` for *operation* on *key*, naming the
        rule the token's policy lacks."""
        where: dict[str, Any] = {"operation": operation, "key": key, "status": status}
        if "ACL not found" in text:
            return PermissionDenied(f"{operation}: Consul does not know the ACL token (ACL not found); check "
                                    f"token=, CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE", **where)
        who = "the ACL token" if self.config.token else \
            "the anonymous token (no token was given: pass token= or set CONSUL_HTTP_TOKEN)"
        rule = _PERMISSION_HINTS.get(operation, "the matching write rule").replace("<key>", key or "<key>")
        return PermissionDenied(f"{operation}: Consul refused {who} ({text}); its policy needs {rule}",
                                rule=rule, **where)


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


def one_line(text: str) -> str:
    """Consul's error text, a JSON body made one line."""
    try:
        return json.dumps(json.loads(text)) if text.startswith("{") else text
    except ValueError:
        return text


def quote(segment: str) -> str:
    """*segment* made safe for one segment of a URL path (a ``/`` too)."""
    return urllib.parse.quote(segment, safe="")


def duration(seconds: float | None) -> str:
    """*seconds* as Consul writes a duration (``"3s"``, ``"1500ms"``; ``""`` for None)."""
    if seconds is None:
        return ""
    ms = int(round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
