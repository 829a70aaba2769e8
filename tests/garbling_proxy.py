"""An HTTP proxy in front of a real Consul agent that can answer some
requests with garbage, the way a broken proxy or a wrong port does: a
``200 OK`` whose body is JSON of the wrong shape."""

from __future__ import annotations

import http.server
import threading
from typing import Callable, Optional

import requests


class GarblingProxy:
    """Forwards every request to *upstream* (``http://host:port``) unless
    :attr:`garble` says otherwise for its path.

    :ivar garble: ``garble(method, path) -> bool``; True answers ``200`` with
        :attr:`payload` instead of forwarding.
    :ivar payload: the garbage; default ``[1]``, a list holding no KV entry.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.garble: Callable[[str, str], bool] = lambda method, path: False
        self.garbled = 0
        self.payload = b"[1]"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.garble(self.command, self.path):
                    proxy.garbled += 1
                    payload = proxy.payload
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("X-Consul-Index", "1")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                resp = requests.request(self.command, proxy.upstream + self.path, data=body, headers=headers,
                                        timeout=600)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_PUT = do_DELETE = do_POST = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "GarblingProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
