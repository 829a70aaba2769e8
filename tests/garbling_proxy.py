"""An HTTP proxy in front of a real Consul agent that can answer some
requests itself, the way a broken proxy, a wrong port or a cluster without
a leader does: a ``200 OK`` whose body is JSON of the wrong shape
(:class:`GarblingProxy`), or Consul's ``500 No cluster leader``, before or
after passing the request on (:class:`FailingProxy`)."""

from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from typing import Callable, List, NamedTuple, Optional

import requests


class Answer(NamedTuple):
    """What the proxy answers in Consul's place."""

    status: int
    body: bytes
    content_type: str
    #: True: pass the request on first (Consul did it; the client never hears).
    forwarded: bool = False
    #: Seconds to wait before answering.
    delay: float = 0.0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # The client went first (its request timed out, its test ended): not
        # the proxy's fault, and a traceback would hide the ones that are.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class ConsulProxy:
    """Forwards every request to *upstream* (``http://host:port``) unless
    :meth:`intercept` returns an :class:`Answer` for it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = proxy.intercept(self.command, self.path, body)
                if answer is None or answer.forwarded:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                    resp = requests.request(self.command, proxy.upstream + self.path, data=body or None,
                                            headers=headers, timeout=600)
                if answer is not None:
                    time.sleep(answer.delay)
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("X-Consul-Index", "1")
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    return
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_PUT = do_DELETE = do_POST = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread: Optional[threading.Thread] = None

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        """None to pass the request on; an :class:`Answer` to answer it."""
        return None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "ConsulProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class GarblingProxy(ConsulProxy):
    """Answers ``200`` with :attr:`payload` where :attr:`garble` says so.

    :ivar garble: ``garble(method, path) -> bool``.
    :ivar payload: the garbage; default ``[1]``, a list holding no KV entry.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.garble: Callable[[str, str], bool] = lambda method, path: False
        self.garbled = 0
        self.payload = b"[1]"

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        if not self.garble(method, path):
            return None
        self.garbled += 1
        return Answer(200, self.payload, "application/json")

    def __enter__(self) -> "GarblingProxy":
        super().__enter__()
        return self


#: ``fail(method, path, body)``: None passes the request on; "before"
#: answers 500 without passing it on; "after" passes it on, then answers 500
#: (the answer was lost: Consul did it, the client does not know).
Fail = Callable[[str, str, bytes], Optional[str]]


class FailingProxy(ConsulProxy):
    """Answers Consul's ``500 No cluster leader`` where :attr:`fail` says so,
    and lists those requests in :attr:`failed`."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.fail: Fail = lambda method, path, body: None
        self.failed: List[str] = []

    def fail_once(self, fail: Fail) -> None:
        """Fail the first request that *fail* picks, and no other."""
        self.fail = lambda method, path, body: None if self.failed else fail(method, path, body)

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        how = self.fail(method, path, body)
        if how is None:
            return None
        self.failed.append(f"{how} {method} {path}")
        # After: the elector's watch sees what Consul did before the client hears of it.
        return Answer(500, b"No cluster leader", "text/plain", forwarded=how == "after",
                      delay=0.5 if how == "after" else 0.0)

    def __enter__(self) -> "FailingProxy":
        super().__enter__()
        return self


#: ``hold(method, path, body)``: True holds the request back.
Hold = Callable[[str, str, bytes], bool]


def acquisition_of(key: str) -> Hold:
    """Picks the transaction that locks *key* (how candidates acquire)."""
    def pick(method: str, path: str, body: bytes) -> bool:
        if method != "PUT" or not path.startswith("/v1/txn"):
            return False
        return any(op.get("KV", {}).get("Verb") == "lock" and op["KV"].get("Key") == key
                   for op in json.loads(body or b"[]"))
    return pick


class HoldingProxy(ConsulProxy):
    """Holds back the first request that :attr:`hold` picks, until
    :meth:`let_go` passes it on: a request on its way for as long as a test
    needs other things to happen first."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.hold: Hold = lambda method, path, body: False
        #: Set once the picked request arrived and is held.
        self.held = threading.Event()
        self._go = threading.Event()

    def let_go(self) -> None:
        self._go.set()

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        if not self.held.is_set() and self.hold(method, path, body):
            self.held.set()
            self._go.wait(120)
        return None

    def __enter__(self) -> "HoldingProxy":
        super().__enter__()
        return self


class SlowProxy(ConsulProxy):
    """Answers every request :attr:`delay` seconds late: an agent on a slow
    or loaded machine.

    :ivar delay: seconds added to each request, before it is passed on.
    """

    def __init__(self, upstream: str, delay: float) -> None:
        super().__init__(upstream)
        self.delay = delay

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        time.sleep(self.delay)
        return None

    def __enter__(self) -> "SlowProxy":
        super().__enter__()
        return self
