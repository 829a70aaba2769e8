"""Readiness (/readyz: 200 on the leader, 503 elsewhere) and liveness
(/livez: 200 while the heartbeat is current) answered over real HTTP: the
stdlib server of consul_leader.contrib.readiness against library
candidates, then fleets of two real processes for each integration (a plain
worker, Flask under gunicorn, Django's runserver), where exactly one
answers ready and the other takes over after SIGKILL of the leader."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable, Dict, Iterator, List

import pytest
import requests
from fleet import Server, answers, ready_ones

from consul_leader import Candidate
from consul_leader.contrib.readiness import serve_readiness
from consul_leader.testing import ConsulAgent, free_ports

from conftest import HERE, PYTHON, ROOT, wait_until

EXAMPLES = os.path.join(ROOT, "docs", "examples")


def test_serve_readiness_for_library_candidates(make_candidate: Callable[..., Candidate], key: str) -> None:
    first = make_candidate(key, ttl=1, identity="first").start()
    assert first.wait_for_leadership(15)
    second = make_candidate(key, ttl=1, identity="second").start()
    with serve_readiness(first, 0, host="127.0.0.1") as a, serve_readiness(second, 0, host="127.0.0.1") as b:
        wait_until(lambda: second.health().ok, 15, "the second candidate's first heartbeat")
        ra, rb = requests.get(a.url + "/readyz", timeout=5), requests.get(b.url + "/readyz", timeout=5)
        assert (ra.status_code, rb.status_code) == (200, 503)
        assert ra.headers["Content-Type"] == "application/json"
        assert ra.json() == {"ready": True, "identity": "first", "leader": "first", "key": key,
                             "fencing_token": first.fencing_token}
        assert rb.json()["ready"] is False and rb.json()["leader"] == "first"
        for server in (a, b):
            live = requests.get(server.url + "/livez", timeout=5)
            assert live.status_code == 200 and live.json()["live"] is True, live.json()
        assert requests.get(a.url + "/metrics", timeout=5).status_code == 404
        assert requests.head(a.url + "/readyz", timeout=5).status_code == 200

        first.stop()  # hands over at once
        assert requests.get(a.url + "/readyz", timeout=5).status_code == 503
        dead = requests.get(a.url + "/livez", timeout=5)
        assert dead.status_code == 503 and dead.json()["running"] is False
        wait_until(lambda: requests.get(b.url + "/readyz", timeout=5).status_code == 200, 15, "the handover")


def test_serve_readiness_without_a_candidate_yet() -> None:
    with serve_readiness(lambda: None, 0, host="127.0.0.1") as server:
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 503
        assert requests.get(server.url + "/livez", timeout=5).status_code == 503
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/readyz", timeout=2)


def _plain(port: int, env: Dict[str, str]) -> Server:
    return Server([PYTHON, os.path.join(EXAMPLES, "readiness_worker.py")], port,
                  {**env, "HEALTH_PORT": str(port), "LEADER_TTL": "1"})


def _flask(port: int, env: Dict[str, str]) -> Server:
    return Server([PYTHON, "-m", "gunicorn", "--workers", "1", "--bind", f"127.0.0.1:{port}",
                   "flask_app:create_app()"], port,
                  {**env, "FLASK_CONSUL_LEADER_KEY": env["LEADER_KEY"], "FLASK_CONSUL_LEADER_TTL": "1"},
                  cwd=EXAMPLES)


def _django(port: int, env: Dict[str, str]) -> Server:
    return Server([PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"], port,
                  {**env, "DJANGO_SETTINGS_MODULE": "leaderproject.settings"},
                  cwd=os.path.join(HERE, "djangoproject"))


@pytest.fixture
def servers() -> Iterator[List[Server]]:
    made: List[Server] = []
    yield made
    for server in made:
        server.stop()


@pytest.mark.parametrize("kind", ["plain", "flask", "django"])
def test_one_replica_of_a_fleet_is_ready(kind: str, consul_agent: ConsulAgent, key: str,
                                         servers: List[Server]) -> None:
    start = {"plain": _plain, "flask": _flask, "django": _django}[kind]
    env = {"LEADER_KEY": key, "CONSUL_HTTP_ADDR": consul_agent.address}
    servers.extend(start(port, env) for port in free_ports(2))
    # A Flask worker starts its candidate on its first request: the probe's.
    wait_until(lambda: all(code in (200, 503) for code in answers(servers)), 60, "both servers to answer")
    wait_until(lambda: len(ready_ones(servers)) == 1, 30, "one ready replica")
    wait_until(lambda: all(s.get("/livez")[0] == 200 for s in servers), 15, "both live")
    leader, = ready_ones(servers)
    other, = [s for s in servers if s is not leader]
    status, body = leader.get("/readyz")
    assert body["ready"] is True and body["key"] == key and body["leader"] == body["identity"]
    status, body = other.get("/readyz")
    assert status == 503 and body["ready"] is False and body["leader"] == leader.get("/readyz")[1]["identity"]

    killed = leader.kill(signal.SIGKILL)
    wait_until(lambda: other.get("/readyz")[0] == 200, 30, "the other replica to turn ready")
    failover = time.monotonic() - killed
    assert len(ready_ones(servers)) == 1
    print(f"{kind}: ready replica after SIGKILL of the leader: {failover:.2f}s")
