"""Two candidates on one agent, the leader paused (SIGSTOP) for longer than the
reap window plus Consul's reaper interval, then resumed.

While it is paused, its check goes critical, its session is invalidated,
the other one leads, and its instance is removed (by Consul's reaper or by
the live one's clean-up). The clean-up must never touch the live one's
instance or check (that would invalidate its session), and the resumed
process must run again with an instance of its own, without deposing the
leader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, List

import pytest
import requests

from consul_leader import Candidate, deposed
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, python_env, wait_until

PROC = str(Path(__file__).parent / "chaos" / "candidate_proc.py")


def records(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def instances(agent: ConsulAgent) -> dict:
    services = requests.get(f"{agent.url}/v1/agent/services", timeout=5).json()
    return {sid: s for sid, s in services.items() if s.get("Service") == "consul-leader"}


# A pause of 95 s is only a wait: run with `pytest -m slow`, not in the default suite.
@pytest.mark.slow
def test_a_leader_paused_beyond_the_reap_window_comes_back_as_a_waiter_and_the_live_leader_is_untouched(
        consul_agent: ConsulAgent, key: str, tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    proc = subprocess.Popen([PYTHON, PROC, "--address", consul_agent.address, "--key", key, "--identity", "p",
                             "--out", str(out), "--ttl", "3"], env=python_env())
    q = Candidate(key, identity="q", address=consul_agent.address)
    q_deposed: List[Any] = []

    def on_deposed(sender: Any, **kwargs: Any) -> None:
        if sender is q:
            q_deposed.append(kwargs.get("reason"))

    deposed.connect(on_deposed)
    try:
        wait_until(lambda: any(r["ev"] == "up" for r in records(out)), timeout=30, what="p to lead")
        p_instances = set(instances(consul_agent))
        q.start()
        wait_until(lambda: q.leader() == "p", what="q to see p lead")
        os.kill(proc.pid, signal.SIGSTOP)
        paused = time.monotonic()
        assert q.wait_for_leadership(30)
        q_instance = set(instances(consul_agent)) - p_instances
        assert len(q_instance) == 1
        # 60s reap window + Consul's reaper (about 30s) + slack.
        wait_until(lambda: not (p_instances & set(instances(consul_agent))), timeout=120,
                   what="p's instance to be removed while p is paused")
        print(f"p's instance was removed {time.monotonic() - paused:.1f}s after the pause")
        time.sleep(max(0.0, 95 - (time.monotonic() - paused)))
        os.kill(proc.pid, signal.SIGCONT)
        wait_until(lambda: len(instances(consul_agent)) == 2, timeout=30, what="p to register a new instance")
        time.sleep(10)  # p's and q's clean-up look at each other meanwhile
        now = instances(consul_agent)
        checks = requests.get(f"{consul_agent.url}/v1/agent/checks", timeout=5).json()
        views = [r.get("leader") for r in records(out) if r["ev"] == "view"]
    finally:
        deposed.disconnect(on_deposed)
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        q.stop()
    assert q_deposed == [], f"the live leader was deposed: {q_deposed}"
    assert q_instance <= set(now), "the live leader's instance was removed"
    assert all(checks[c]["Status"] == "passing" for c in now), {c: checks[c]["Status"] for c in now}
    assert views and views[-1] == "q", f"p's view of the leader after resuming: {views}"
