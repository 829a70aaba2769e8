"""The FastAPI example (docs/examples/fastapi_app.py) in a real fleet of
three uvicorn processes: exactly one runs the async leader-only loop and
answers /readyz with 200; after SIGKILL of the leader another one runs it
(the killed one's last run comes before the next one's first); SIGTERM of
the leader hands over at once (uvicorn's shutdown runs the lifespan, which
stops the candidate). The handover times are printed, not asserted."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, Iterator, List

import pytest
from fleet import Server, answers, ready_ones

from consul_leader.testing import ConsulAgent, free_ports

from conftest import PYTHON, ROOT, wait_until

EXAMPLES = os.path.join(ROOT, "docs", "examples")


def runs(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.endswith("\n")]


@pytest.fixture
def fleet(consul_agent: ConsulAgent, key: str, tmp_path: Any) -> Iterator[Dict[str, Any]]:
    work_log = str(tmp_path / "work.jsonl")
    env = {"LEADER_KEY": key, "CONSUL_HTTP_ADDR": consul_agent.address, "LEADER_TTL": "1", "WORK_LOG": work_log}
    servers = [Server([PYTHON, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port", str(port),
                       "--log-level", "warning"], port, env, cwd=EXAMPLES) for port in free_ports(3)]
    try:
        yield {"servers": servers, "log": work_log}
    finally:
        for server in servers:
            server.stop()


def pids_running_between(log: str, start: float, end: float) -> List[int]:
    return sorted({r["pid"] for r in runs(log) if start <= r["t"] <= end})


def test_one_uvicorn_process_runs_the_loop_and_another_takes_over(fleet: Dict[str, Any]) -> None:
    servers: List[Server] = fleet["servers"]
    log = fleet["log"]
    wait_until(lambda: all(code in (200, 503) for code in answers(servers)), 60, "three uvicorn processes")
    wait_until(lambda: len(ready_ones(servers)) == 1, 30, "one leader")
    leader, = ready_ones(servers)
    t0 = time.time()
    time.sleep(1.5)
    assert pids_running_between(log, t0, time.time()) == [leader.proc.pid], servers
    assert sorted(answers(servers)) == [200, 503, 503]

    # SIGKILL: the lock is free once the check's TTL ran out.
    killed_at = time.time()
    leader.kill(signal.SIGKILL)
    leader.proc.wait(5)
    wait_until(lambda: pids_running_between(log, killed_at, time.time()), 30, "the loop in another process")
    after_kill = [r for r in runs(log) if r["t"] >= killed_at]
    second_pid = after_kill[0]["pid"]
    assert second_pid != leader.proc.pid
    assert max(r["t"] for r in runs(log) if r["pid"] == leader.proc.pid) < after_kill[0]["t"]
    sigkill_failover = after_kill[0]["t"] - killed_at
    second, = [s for s in servers if s.proc.pid == second_pid]
    wait_until(lambda: second.get("/readyz")[0] == 200, 10, "the new leader ready")
    time.sleep(1.0)
    assert pids_running_between(log, killed_at, time.time()) == [second_pid]
    assert after_kill[0]["fencing_token"] > runs(log)[0]["fencing_token"]

    # SIGTERM: the lifespan stops the candidate, which releases the lock at once.
    termed_at = time.time()
    second.kill(signal.SIGTERM)
    wait_until(lambda: [r for r in runs(log) if r["t"] >= termed_at and r["pid"] != second_pid], 30,
               "the loop in the third process")
    third_first = next(r for r in runs(log) if r["t"] >= termed_at and r["pid"] != second_pid)
    assert max(r["t"] for r in runs(log) if r["pid"] == second_pid) < third_first["t"]
    # uvicorn re-raises the signal once its shutdown (the lifespan's end) is done.
    assert second.proc.wait(15) in (0, -signal.SIGTERM)
    last, = [s for s in servers if s.alive]
    assert last.proc.pid == third_first["pid"] and last.get("/readyz")[0] == 200
    print(f"\nfastapi fleet: SIGKILL -> next run {sigkill_failover:.2f}s; "
          f"SIGTERM -> next run {(third_first['t'] - termed_at) * 1000:.0f} ms "
          f"(last run of the old leader to first of the new: "
          f"{(third_first['t'] - max(r['t'] for r in runs(log) if r['pid'] == second_pid)) * 1000:.0f} ms)")
