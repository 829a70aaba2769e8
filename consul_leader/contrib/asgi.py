"""ASGI (FastAPI, Starlette, Quart, Django's ASGI handler...): readiness and
liveness paths as a middleware, and a lifespan that runs a candidate for as
long as the application runs.

::

    from fastapi import FastAPI
    from consul_leader import Candidate
    from consul_leader.contrib.asgi import ReadinessMiddleware, candidate_lifespan

    candidate = Candidate("myservice/leader")
    app = FastAPI(lifespan=candidate_lifespan(candidate))
    app.add_middleware(ReadinessMiddleware, candidate=candidate)

``GET /readyz`` answers ``200`` on the leader and ``503`` elsewhere,
``GET /livez`` ``200`` while the election runs with a current heartbeat (see
:mod:`consul_leader.contrib.readiness`); every other request goes to the
application.

.. versionadded:: 0.2
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, MutableMapping, Optional, Union

from ..candidate import Candidate
from ..runtime import check_threads_usable
from .readiness import LIVE_PATH, READY_PATH, live_status, ready_status

__all__ = ["ReadinessMiddleware", "candidate_lifespan"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ReadinessMiddleware:
    """Answers the readiness and liveness paths itself; passes everything
    else to *app*.

    :param app: the ASGI application.
    :param candidate: the candidate, or a function returning the current one.
    :param ready_path: where to answer readiness (default ``/readyz``).
    :param live_path: where to answer liveness (default ``/livez``)."""

    def __init__(self, app: ASGIApp, candidate: Union[Candidate, Callable[[], Optional[Candidate]]],
                 ready_path: str = READY_PATH, live_path: str = LIVE_PATH) -> None:
        self.app = app
        self._get = (lambda: candidate) if isinstance(candidate, Candidate) else candidate
        self._paths = {ready_path: ready_status, live_path: live_status}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._paths.get(scope.get("path", "")) if scope["type"] == "http" else None
        if answer is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        status, body = answer(self._get())
        data = json.dumps(body).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                                (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else data})


def candidate_lifespan(candidate: Candidate) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Dict[str, Any]]]:
    """A lifespan for ``FastAPI(lifespan=...)`` / ``Starlette(lifespan=...)``:
    starts *candidate* when the server starts the application and stops it
    (releasing the lock at once, so another replica leads within
    milliseconds) when the server shuts down. The state it yields carries
    ``candidate`` (``request.state.candidate``).

    Start the server with one process per candidate (``uvicorn`` without
    ``--workers``, or one candidate per worker as here: the lifespan runs in
    each worker, after the fork)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Dict[str, Any]]:
        check_threads_usable()
        candidate.start()
        try:
            yield {"candidate": candidate}
        finally:
            # stop() waits for the job and the deposed receivers: off the loop.
            import asyncio

            await asyncio.to_thread(candidate.stop)

    return lifespan
