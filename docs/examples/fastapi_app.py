"""A FastAPI app whose replicas elect one leader; only the leader runs the
background loop, and ``GET /readyz`` tells a load balancer which one it is.

::

    LEADER_KEY=myservice/leader uvicorn fastapi_app:app --port 8000
"""
import asyncio
import contextlib
import json
import os
import time

from fastapi import FastAPI

from consul_leader import Candidate
from consul_leader.contrib.asgi import ReadinessMiddleware

candidate = Candidate(os.environ.get("LEADER_KEY", "myservice/leader"),
                      ttl=float(os.environ.get("LEADER_TTL", "3")))


@candidate.leader_only  # awaited elsewhere, it gives None
async def refresh_cache():
    """The singleton work: here, one line per run in a shared file."""
    record = {"pid": os.getpid(), "t": time.time(), "fencing_token": candidate.fencing_token}
    path = os.environ.get("WORK_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps(record) + "\n")


async def leader_loop():
    while True:
        await candidate.wait_for_leadership_async()  # never blocks the event loop
        await refresh_cache()
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def lifespan(app):
    candidate.start()
    loop = asyncio.create_task(leader_loop())
    yield
    loop.cancel()
    # stop() releases the lock at once (another replica leads within
    # milliseconds); it waits for the deposed receivers, so off the loop.
    await asyncio.to_thread(candidate.stop)


app = FastAPI(lifespan=lifespan)
app.add_middleware(ReadinessMiddleware, candidate=candidate)  # GET /readyz, GET /livez


@app.get("/")
async def index():
    return {"identity": candidate.identity, "leader": candidate.leader()}
