"""Mixed timings on one key when the next holder never saw the long-lease
holder's flags: the key deleted under ``consul-leader run``'s holder, or
released by someone else (whose write leaves flags 0). A holder's flags
carry its lock-delay, but a candidate that starts after they are gone has
seen no holder; the key's roster still shows run's lock-delay (8 s at its
defaults, its command allowed 5 s of grace after SIGTERM), and the fresh
candidate holds that long. No pause is needed: run's supervisor notices at
once and does exactly what its grace allows.

Real agent, real processes; times on CLOCK_BOOTTIME, shared by every process.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import List

import pytest
import requests
from cli_runs import Runs

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, wait_until


def boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def life(cli: Runs, name: str, *options: str, key: str) -> subprocess.Popen[str]:
    return cli.start("run", *options, "--identity", name, key, "--", PYTHON, "-S", str(cli.life), name=name)


@pytest.mark.parametrize("fault", ["delete", "release"])
def test_a_fresh_library_candidate_does_not_start_its_job_while_a_run_command_with_a_longer_grace_still_runs(
        cli: Runs, key: str, consul_agent: ConsulAgent, fault: str) -> None:
    # consul-leader run at its defaults: ttl 3s, lease 2.5s, grace 5s,
    # lock-delay 8s. Its command shrugs off SIGTERM, so it lives the whole
    # grace after the supervisor learns its term is over: that is allowed.
    life(cli, "a", key=key)
    _, a_pid = cli.started("a")
    url = f"http://{consul_agent.address}/v1/kv/{key}"
    entry = requests.get(url, timeout=5).json()[0]
    assert entry["Flags"] >> 48 == 8000, "run writes its 8s lock-delay into the key's flags"
    faulted = boot()
    if fault == "delete":
        # An operator deletes the key (consul kv delete): Consul sets no lock-delay.
        requests.delete(url, timeout=5).raise_for_status()
    else:
        # Someone else releases run's session (consul kv put -release): no lock-delay, flags 0.
        requests.put(f"{url}?release={entry['Session']}", timeout=5).raise_for_status()
    starts: List[float] = []

    def job(stop_event: threading.Event) -> None:
        starts.append(boot())
        stop_event.wait()

    # A library candidate with its defaults (lock-delay 3s), started after
    # the fault (a deploy, a restart): it has seen no holder of the key.
    fresh = Candidate(key, identity="fresh", address=consul_agent.address)
    try:
        fresh.run(job, block=False)
        wait_until(lambda: starts, timeout=40, what="the fresh candidate's job to start")
        a_end = cli.last_alive("a", a_pid)
    finally:
        fresh.stop()
    print(f"run's command ended {a_end - faulted:.2f}s after the {fault}; the fresh candidate's job started "
          f"{starts[0] - faulted:.2f}s after it")
    assert a_end < starts[0], (
        f"{fault}: the fresh candidate's job started {starts[0] - faulted:.2f}s after the {fault}, while run's "
        f"command lived until {a_end - faulted:.2f}s: overlap {a_end - starts[0]:.3f}s")


def test_a_fresh_run_with_a_shorter_grace_does_not_start_its_command_while_an_older_runs_still_runs(
        cli: Runs, key: str, consul_agent: ConsulAgent) -> None:
    # Two consul-leader run of one key, as during a rollout that shortens
    # the grace: a at the defaults (grace 5s, lock-delay 8s), b with
    # --ttl 1s --grace 1s. The key is deleted under a; b starts afterwards.
    a = life(cli, "a", key=key)
    _, a_pid = cli.started("a")
    url = f"http://{consul_agent.address}/v1/kv/{key}"
    deleted = boot()
    requests.delete(url, timeout=5).raise_for_status()
    life(cli, "b", "--ttl", "1s", "--grace", "1s", key=key)
    a_end = cli.last_alive("a", a_pid)
    # a may lead again once its command ended (the roster shows that b never
    # led): stop it, and b's turn comes.
    a.send_signal(signal.SIGTERM)
    a.wait(60)
    b_start, _ = cli.started("b")
    print(f"a's command ended {a_end - deleted:.2f}s after the delete; b's started {b_start - deleted:.2f}s after it")
    assert a_end < b_start, f"the two commands overlapped for {a_end - b_start:.3f}s"
