"""APScheduler 3.x on the leader only (consul_leader.contrib.apscheduler):
in one process, two schedulers on two candidates (only the leader's jobs
run; a deposed scheduler's running job returns before the next leader's
first run); then the documented example (docs/examples/apscheduler_app.py)
in a real gunicorn fleet of three workers, with and without --preload:
each slot of a 1-second job runs in exactly one process, the schedule
continues in another worker after SIGKILL of the leading one, and a
graceful worker exit hands over without repeating a slot."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator, List

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from fleet import Server

from consul_leader import Candidate
from consul_leader.contrib.apscheduler import run_on_leader
from consul_leader.testing import ConsulAgent, free_ports

from conftest import PYTHON, ROOT, wait_until

EXAMPLES = os.path.join(ROOT, "docs", "examples")
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_only_the_leaders_scheduler_runs_and_a_running_job_ends_first(
        make_candidate: Callable[..., Candidate], key: str) -> None:
    runs: List[Dict[str, Any]] = []
    lock = threading.Lock()
    schedulings = []

    def job(name: str) -> None:
        start = time.monotonic()
        time.sleep(0.4)  # long enough for a resign to land in the middle
        with lock:
            runs.append({"name": name, "start": start, "end": time.monotonic()})

    for name in ("a", "b"):
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(job, "interval", seconds=0.5, start_date=EPOCH, args=[name], id="job")
        schedulings.append(run_on_leader(scheduler, make_candidate(key, ttl=1, identity=name)))
    try:
        wait_until(lambda: any(s.candidate.is_leader() for s in schedulings), 15, "a leader")
        first, = [s for s in schedulings if s.candidate.is_leader()]
        second, = [s for s in schedulings if s is not first]
        wait_until(lambda: len(runs) >= 3, 15, "three runs")
        assert {r["name"] for r in runs} == {first.candidate.identity}
        wait_until(lambda: bool(first.running_jobs()), 5, "a job running")
        first.candidate.resign()
        wait_until(lambda: any(r["name"] == second.candidate.identity for r in runs), 15, "the next leader's run")
        last_old = max(r["end"] for r in runs if r["name"] == first.candidate.identity)
        first_new = min(r["start"] for r in runs if r["name"] == second.candidate.identity)
        # The deposed receiver waited for the running job before the lock was released.
        assert last_old < first_new
        assert not first.running_jobs()
    finally:
        for s in schedulings:
            s.shutdown()


def records(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.endswith("\n")]


def pids_since(path: str, t: float) -> List[int]:
    return sorted({r["pid"] for r in records(path) if r["t"] >= t})


@pytest.fixture
def gunicorn_fleet(consul_agent: ConsulAgent, key: str, tmp_path: Any, request: pytest.FixtureRequest
                   ) -> Iterator[Dict[str, Any]]:
    log = str(tmp_path / "runs.jsonl")
    port = free_ports(1)[0]
    argv = [PYTHON, "-m", "gunicorn", "--workers", "3", "--bind", f"127.0.0.1:{port}", "--graceful-timeout", "10",
            "-c", "apscheduler_gunicorn.conf.py", "apscheduler_app:app"]
    if request.param:
        argv.insert(3, "--preload")
    server = Server(argv, port, {"LEADER_KEY": key, "CONSUL_HTTP_ADDR": consul_agent.address, "LEADER_TTL": "1",
                                 "WORK_LOG": log}, cwd=EXAMPLES)
    try:
        yield {"server": server, "log": log}
    finally:
        server.stop()


@pytest.mark.parametrize("gunicorn_fleet", [True, False], ids=["preload", "no-preload"], indirect=True)
def test_a_gunicorn_fleet_runs_each_slot_once(gunicorn_fleet: Dict[str, Any]) -> None:
    server: Server = gunicorn_fleet["server"]
    log: str = gunicorn_fleet["log"]
    wait_until(lambda: len(records(log)) >= 2, 60, "the first runs")
    t0 = time.time()
    time.sleep(2.5)
    leader, = pids_since(log, t0)

    killed_at = time.time()
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: [p for p in pids_since(log, killed_at) if p != leader], 30, "runs in another worker")
    second = next(r for r in records(log) if r["t"] >= killed_at and r["pid"] != leader)
    sigkill_gap = second["t"] - killed_at
    time.sleep(2.0)
    assert pids_since(log, second["t"]) == [second["pid"]]

    termed_at = time.time()
    os.kill(second["pid"], signal.SIGTERM)  # a graceful worker exit (worker_exit hook)
    wait_until(lambda: [p for p in pids_since(log, termed_at) if p != second["pid"]], 30,
               "runs in a third worker")
    third = next(r for r in records(log) if r["t"] >= termed_at and r["pid"] != second["pid"])
    time.sleep(1.5)
    assert server.alive, server.output()

    runs = records(log)
    slots = [r["slot"] for r in runs]
    assert len(slots) == len(set(slots)), "a slot ran twice"
    # One process at a time: slot after slot, the running pid changes only at the two handovers.
    by_slot = sorted(runs, key=lambda r: r["slot"])
    changes = [(a["pid"], b["pid"]) for a, b in zip(by_slot, by_slot[1:]) if a["pid"] != b["pid"]]
    assert changes == [(leader, second["pid"]), (second["pid"], third["pid"])], changes
    # Slots are missing only around the SIGKILL (the failover window).
    missing = sorted(set(range(int(by_slot[0]["slot"]), int(by_slot[-1]["slot"]) + 1)) - {int(s) for s in slots})
    assert all(killed_at - 1.5 <= m <= second["slot"] for m in missing), (missing, killed_at, second)
    graceful_missing = [m for m in missing if m > second["slot"]]
    assert not graceful_missing
    print(f"\napscheduler fleet: {len(runs)} runs, {len(set(r['pid'] for r in runs))} pids, "
          f"SIGKILL -> next run {sigkill_gap:.2f}s ({len(missing)} slots skipped), "
          f"SIGTERM -> next run {third['t'] - termed_at:.2f}s (next slot {third['slot'] - termed_at:+.2f}s)")
