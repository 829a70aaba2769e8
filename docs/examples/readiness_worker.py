"""A worker with no web framework that answers Kubernetes' probes:
``GET /readyz`` is 200 on the leader and 503 elsewhere, ``GET /livez`` is
200 while its election runs with a current heartbeat.

::

    LEADER_KEY=myservice/leader HEALTH_PORT=8080 python readiness_worker.py
"""
import os
import signal
import threading

from consul_leader import Candidate
from consul_leader.contrib.readiness import serve_readiness


def main():
    candidate = Candidate(os.environ.get("LEADER_KEY", "myservice/leader"),
                          ttl=float(os.environ.get("LEADER_TTL", "3")))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with candidate, serve_readiness(candidate, int(os.environ.get("HEALTH_PORT", "8080"))):
        while not done.wait(1.0):
            if candidate.is_leader():
                pass  # the singleton work goes here
    # Leaving the with-block stops the server, then the candidate: the lock
    # is released at once and another replica is ready within milliseconds.


if __name__ == "__main__":
    main()
