"""Readiness and liveness answers for probes and load balancers, following
Kubernetes' naming: ``/readyz`` answers ``200`` on the leader and ``503``
elsewhere; ``/livez`` answers ``200`` while the election runs and its
heartbeat is current, ``503`` otherwise. The bodies are small JSON objects::

    {"ready": true, "identity": "web-1:4242", "leader": "web-1:4242", "key": "myservice/leader",
     "fencing_token": 1337}
    {"live": true, "identity": "web-1:4242", "running": true, "last_heartbeat_age": 0.4}

The Flask, Django and ASGI integrations answer with :func:`ready_status`
and :func:`live_status`; :func:`serve_readiness` serves both paths for any
candidate on a port of its own (the standard library's HTTP server in a
daemon thread), for a process that has no web framework::

    server = serve_readiness(candidate, 8080)
    ...
    server.close()

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple, Union

from ..candidate import Candidate

__all__ = ["LIVE_PATH", "READY_PATH", "ReadinessServer", "live_status", "ready_status", "serve_readiness"]

log = logging.getLogger("consul_leader")

READY_PATH = "/readyz"
LIVE_PATH = "/livez"

Status = Tuple[int, Dict[str, Any]]


def ready_status(candidate: Optional[Candidate]) -> Status:
    """``(200, body)`` while *candidate* leads, ``(503, body)`` otherwise (and
    for None: no candidate in this process yet)."""
    if candidate is None:
        return 503, {"ready": False, "identity": None, "leader": None, "key": None, "fencing_token": None}
    token = candidate.fencing_token  # None unless leading, read once so the answer is consistent
    ready = token is not None
    return (200 if ready else 503), {"ready": ready, "identity": candidate.identity, "leader": candidate.leader(),
                                     "key": candidate.key, "fencing_token": token}


def live_status(candidate: Optional[Candidate]) -> Status:
    """``(200, body)`` while *candidate*'s election runs and its last good
    heartbeat is younger than the check's TTL (:attr:`Health.ok
    <consul_leader.Health.ok>`), ``(503, body)`` otherwise.

    While Consul itself is unreachable every replica answers 503: a liveness
    probe that restarts on it restarts the whole fleet for nothing; give it
    a ``failureThreshold`` longer than your Consul outages, or probe
    ``running`` (in the body) instead."""
    if candidate is None:
        return 503, {"live": False, "identity": None, "running": False, "last_heartbeat_age": None}
    health = candidate.health()
    age = health.last_heartbeat_age
    return (200 if health.ok else 503), {"live": health.ok, "identity": candidate.identity,
                                         "running": health.running,
                                         "last_heartbeat_age": None if age is None else round(age, 3),
                                         "last_error": health.last_error}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        answer = {READY_PATH: ready_status, LIVE_PATH: live_status}.get(path)
        if answer is None:
            status, body = 404, {"error": f"not found; try {READY_PATH} or {LIVE_PATH}"}
        else:
            status, body = answer(self.server.get_candidate())
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # probes ask every few seconds: no access log
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], get_candidate: Callable[[], Optional[Candidate]]) -> None:
        super().__init__(address, _Handler)
        self.get_candidate = get_candidate


class ReadinessServer:
    """A running readiness server, from :func:`serve_readiness`.

    :ivar port: the port it listens on (the one picked when 0 was asked).
    :ivar host: the address it listens on."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.host: str = host.decode() if isinstance(host, bytes) else str(host)
        self.port: int = int(port)

    @property
    def url(self) -> str:
        """``http://host:port`` (``127.0.0.1`` for a wildcard address)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and close the port; idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> "ReadinessServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_readiness(candidate: Union[Candidate, Callable[[], Optional[Candidate]]], port: int,
                    host: str = "0.0.0.0") -> ReadinessServer:
    """Serve ``GET /readyz`` and ``GET /livez`` for *candidate* on *port*, in
    a daemon thread, until :meth:`ReadinessServer.close`.

    :param candidate: the candidate, or a function returning the current one
        (None answers 503 on both paths).
    :param port: the TCP port; 0 picks a free one (see ``ReadinessServer.port``).
    :param host: the address to listen on; all interfaces by default, as a
        kubelet probes the pod's IP.
    :raises OSError: the port cannot be bound (e.g. in use)."""
    get_candidate = (lambda: candidate) if isinstance(candidate, Candidate) else candidate
    server = _Server((host, port), get_candidate)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"consul-leader-readiness :{server.server_address[1]}", daemon=True)
    thread.start()
    log.info("serving %s and %s on %s:%d", READY_PATH, LIVE_PATH, host, server.server_address[1])
    return ReadinessServer(server, thread)
