"""The Flask extension: configured from app.config, one candidate per worker
process started on its first request, a /leader health URL; in-process with
the test client, and a real gunicorn with --preload and several workers where
exactly one worker of the fleet leads, also after SIGKILL of the leader.

The app is the documented example, docs/examples/flask_app.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import requests
from chaos.procs import wait_until
from fleet import Output

from consul_leader import Candidate, ConfigurationError, get_default, set_default
from consul_leader.testing import ConsulAgent, free_ports

from conftest import PYTHON, ROOT, python_env

sys.path.insert(0, os.path.join(ROOT, "docs", "examples"))
import flask_app  # noqa: E402  (the documented example)

EXAMPLES = os.path.join(ROOT, "docs", "examples")


@pytest.fixture
def make_app(consul_agent: ConsulAgent, key: str) -> Iterator[Callable[..., Any]]:
    """Build the example app against the test agent; stop its candidates after."""
    set_default(None)  # earlier tests may leave a stopped default candidate behind
    made: List[Candidate] = []

    def make(**config: Any) -> Any:
        config.setdefault("CONSUL_LEADER_KEY", key)
        config.setdefault("CONSUL_LEADER_ADDRESS", consul_agent.address)
        config.setdefault("CONSUL_LEADER_TTL", 1)
        app = flask_app.create_app(config)
        made.append(flask_app.leader.candidate_for(app))
        return app

    yield make
    for candidate in made:
        candidate.stop()
    set_default(None)


@pytest.mark.parametrize("config, names", [
    ({"CONSUL_LEADER_KEY": None}, ["CONSUL_LEADER_KEY is required"]),
    ({"CONSUL_LEADER_TTLL": 3}, ["CONSUL_LEADER_TTLL", "not a consul-leader setting", "CONSUL_LEADER_TTL"]),
    ({"CONSUL_LEADER_TTL": 0}, ["CONSUL_LEADER_TTL=0", "ttl"]),
    ({"CONSUL_LEADER_KEY": "/leading/slash"}, ["CONSUL_LEADER_KEY='/leading/slash'", "must not start with '/'"]),
    ({"CONSUL_LEADER_START": "sometimes"}, ["CONSUL_LEADER_START='sometimes'", "'request'"]),
])
def test_a_bad_setting_is_refused_with_its_name(make_app: Callable[..., Any], config: Dict[str, Any],
                                                names: List[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_app(**config)
    for name in names:
        assert name in str(info.value)


def test_the_candidate_starts_on_the_first_request_and_the_health_url_reports_it(
        make_app: Callable[..., Any]) -> None:
    app = make_app()
    candidate = flask_app.leader.candidate_for(app)
    assert not candidate.running  # building the app (maybe in a preloading master) runs for nothing
    client = app.test_client()
    first = client.get("/leader").get_json()
    assert first["running"] is True and first["pid"] == os.getpid() and first["identity"] == candidate.identity
    assert candidate.wait_for_leadership(15)
    status = client.get("/leader").get_json()
    assert status["is_leader"] is True and status["leader"] == candidate.identity
    assert status["fencing_token"] == candidate.fencing_token and isinstance(status["fencing_token"], int)


def test_leader_only_work_runs_only_while_this_process_leads(make_app: Callable[..., Any],
                                                              make_candidate: Callable[..., Candidate],
                                                              key: str) -> None:
    app = make_app()
    client = app.test_client()
    client.get("/leader")
    candidate = flask_app.leader.candidate_for(app)
    assert get_default() is candidate  # the first started in this process: what bare @leader_only asks
    assert candidate.wait_for_leadership(15)
    assert client.post("/report").get_json() == {"sent": f"report sent by {candidate.identity}"}

    other = make_candidate(key, ttl=1).start()
    candidate.resign()
    assert other.wait_for_leadership(15)
    assert client.post("/report").get_json() == {"sent": None}
    wait_until(lambda: client.get("/leader").get_json()["leader"] == other.identity, 15, "the app sees the other lead")

    other.stop()
    assert candidate.wait_for_leadership(15)
    assert client.post("/report").get_json()["sent"] == f"report sent by {candidate.identity}"


def test_manual_start_leaves_starting_to_the_application(make_app: Callable[..., Any]) -> None:
    app = make_app(CONSUL_LEADER_START="manual")
    candidate = flask_app.leader.candidate_for(app)
    assert app.test_client().get("/leader").get_json()["running"] is False
    assert flask_app.leader.start(app) is candidate and candidate.running
    assert candidate.wait_for_leadership(15)


# -- a real gunicorn fleet -----------------------------------------------------------------------------------


def children_of(pid: int) -> List[int]:
    """The live child processes of *pid*, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


class Fleet:
    """A real gunicorn master with *workers* sync workers, serving *app*."""

    def __init__(self, app: str, workers: int, env: Dict[str, str], cwd: str) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "--preload", "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}",
             "--graceful-timeout", "5", app], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)
        self._output = Output(self.proc)

    def output(self) -> str:
        return self._output.text()

    def worker_pids(self) -> List[int]:
        return children_of(self.proc.pid)

    def statuses(self, path: str, rounds: int = 3, parallel: int = 12) -> Dict[int, Dict[str, Any]]:
        """The latest answer of each worker to GET *path*: many requests in
        parallel, so that every sync worker gets some."""
        seen: Dict[int, Dict[str, Any]] = {}

        def ask() -> None:
            try:
                answer = requests.get(self.url + path, timeout=5, headers={"Connection": "close"}).json()
            except (requests.RequestException, ValueError):
                return
            seen[answer["pid"]] = answer

        for _ in range(rounds):
            threads = [threading.Thread(target=ask) for _ in range(parallel)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return seen

    def one_leader(self, path: str) -> Optional[Dict[str, Any]]:
        """The status of the one leading worker, once every current worker
        answered, exactly one says it leads and all name it; else None."""
        workers = self.worker_pids()
        if len(workers) != self.workers:
            return None
        seen = self.statuses(path)
        if set(workers) - set(seen):
            return None
        current = [seen[pid] for pid in workers]
        leaders = [s for s in current if s["is_leader"]]
        if len(leaders) != 1 or any(s["leader"] != leaders[0]["identity"] for s in current):
            return None
        return leaders[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def consul_session_names(agent: ConsulAgent) -> List[str]:
    return [s["Name"] for s in requests.get(f"{agent.url}/v1/session/list", timeout=5).json()]


def test_gunicorn_preload_fleet_has_exactly_one_leading_worker_also_after_sigkill(consul_agent: ConsulAgent,
                                                                                   key: str) -> None:
    env = python_env()
    env.update(CONSUL_HTTP_ADDR=consul_agent.address, FLASK_CONSUL_LEADER_KEY=key, FLASK_CONSUL_LEADER_TTL="2")
    fleet = Fleet("flask_app:create_app()", 3, env, EXAMPLES)
    try:
        first = wait_until(lambda: fleet.one_leader("/leader"), 60, "one leader among the 3 workers", every=0.2)
        master = f"{socket.gethostname()}:{fleet.proc.pid}"
        assert first["pid"] in fleet.worker_pids() and first["identity"] != master
        # The master built the app (--preload) but never ran for election.
        names = consul_session_names(consul_agent)
        assert not any(name.endswith(f" {master}") for name in names)
        assert sum(name.startswith(f"consul-leader {key} ") for name in names) == 3

        os.kill(first["pid"], signal.SIGKILL)
        second = wait_until(lambda: (s := fleet.one_leader("/leader")) and s["pid"] != first["pid"] and s,
                            60, "a new single leader after SIGKILL of the leading worker", every=0.2)
        assert second["fencing_token"] > first["fencing_token"]
    except BaseException:
        print(fleet.output())
        raise
    finally:
        fleet.stop()
