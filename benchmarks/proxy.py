"""A counting HTTP proxy on loopback, between candidates and the agent.

Each :meth:`CountingProxy.listen` opens a port with a label; every HTTP
request that passes through it is counted under that label (the request line
is parsed and the body skipped by its ``Content-Length``), so the idle cost of
one candidate is counted, not estimated. Responses are copied through as bytes.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Counter, Dict, Tuple

_HEAD_END = b"\r\n\r\n"


class CountingProxy:
    """Forwards to *upstream* (``host``, ``port``), counting requests per label.

    Runs an asyncio loop in a daemon thread; :meth:`close` stops it."""

    def __init__(self, upstream: Tuple[str, int]) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._servers: Dict[str, asyncio.Server] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-proxy", daemon=True)
        self._thread.start()

    def listen(self, label: str) -> str:
        """Open a port for *label*; return its ``127.0.0.1:PORT`` address."""
        async def start() -> asyncio.Server:
            return await asyncio.start_server(lambda r, w: self._serve(label, r, w), "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self._servers[label] = server
        port = server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def snapshot(self) -> Dict[str, int]:
        """The counts so far, per label."""
        with self._lock:
            return dict(self.counts)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers.values():
                server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self, label: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.ensure_future(self._copy(up_reader, writer))
        try:
            while True:
                head = await reader.readuntil(_HEAD_END)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    elif name.strip().lower() == b"transfer-encoding":
                        raise RuntimeError("chunked request bodies are not supported by the counting proxy")
                body = await reader.readexactly(length) if length else b""
                with self._lock:
                    self.counts[label] += 1
                up_writer.write(head + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            up_writer.close()
            back.cancel()
            writer.close()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
