"""Shared fixtures: one real Consul dev agent per test session, a fresh key
prefix per test, and the agent's log printed when a test fails."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest
import requests

from consul_leader import Candidate
from consul_leader.lockdelay import release_mark
from consul_leader.testing import ConsulAgent

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="session")
def consul_agent() -> Iterator[ConsulAgent]:
    with ConsulAgent() as agent:
        yield agent


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix no other test uses."""
    return f"test/{request.node.name[:60]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def key(prefix: str, consul_agent: ConsulAgent) -> str:
    """A fresh lock key that has been held and released once, so that the
    first candidate does not wait the lock-delay a never-locked key costs."""
    key = f"{prefix}/leader"
    prime_key(consul_agent.url, key)
    return key


def prime_key(url: str, key: str) -> None:
    """Lock and release *key* once with a throwaway session (no lock-delay):
    the key then looks like one a leader released."""
    sid = requests.put(f"{url}/v1/session/create", json={"LockDelay": "0s"}, timeout=5).json()["ID"]
    try:
        assert requests.put(f"{url}/v1/kv/{key}?acquire={sid}", data=b"", timeout=5).json() is True
        requests.put(f"{url}/v1/kv/{key}?release={sid}", data=release_mark(sid, 1), timeout=5).raise_for_status()
    finally:
        requests.put(f"{url}/v1/session/destroy/{sid}", timeout=5)


@contextlib.contextmanager
def candidate_factory(agent: ConsulAgent, **defaults: object) -> Iterator[Callable[..., Candidate]]:
    """Yield ``make(key, **kwargs)`` building candidates against *agent*
    (numbered identities, *defaults* for the other arguments); every one
    made is stopped afterwards."""
    made: List[Candidate] = []
    counter = itertools.count()

    def make(key: str, **kwargs: object) -> Candidate:
        kwargs = {"address": agent.address, "identity": f"cand-{next(counter)}", **defaults, **kwargs}
        c = Candidate(key, **kwargs)  # type: ignore[arg-type]
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def make_candidate(consul_agent: ConsulAgent) -> Iterator[Callable[..., Candidate]]:
    """Build candidates against the session's agent; all are stopped after
    the test."""
    with candidate_factory(consul_agent) as make:
        yield make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        agent = item.funcargs.get("consul_agent") if hasattr(item, "funcargs") else None
        if isinstance(agent, ConsulAgent):
            report.sections.append(("consul agent log (tail)", agent.log_tail(80)))


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Tests that only wait for time to pass (Consul's reap window) set their
    scene up first and check it last, so that the suite runs meanwhile.
    Tests under ``tests/findings/`` show open findings: they fail on the
    current code, and run with ``make findings``, not in the suite."""
    for item in items:
        if "/findings/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.open_finding)
    first = [i for i in items if i.get_closest_marker("runs_first")]
    last = [i for i in items if i.get_closest_marker("runs_last")]
    middle = [i for i in items if i not in first and i not in last]
    items[:] = first + middle + last


def python_env() -> dict:
    """Environment for child Python processes that import this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll *predicate* until it is true; fail the test after *timeout* s.
    (A bound on waiting, not a speed assertion.)"""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.01)


def leaders(candidates: List[Candidate]) -> List[Candidate]:
    return [c for c in candidates if c.is_leader()]


@pytest.fixture
def cli(consul_agent: ConsulAgent, tmp_path: Path) -> Iterator[Any]:
    """``consul-leader`` processes against the session's agent (see
    tests/cli_runs.py); whatever still runs at the end is killed."""
    from cli_runs import Runs  # not at the top: cli_runs imports this module

    runs = Runs(consul_agent, tmp_path)
    yield runs
    runs.close()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server for the module's tests (tests/broker.py)."""
    from broker import redis_server  # not at the top: broker imports this module

    with redis_server() as url:
        yield url


def paused_leader_run(argv: List[str], out: str, *, ready: Callable[[], object], fault: Callable[[], object],
                      start: Callable[[], object], is_leader: Callable[[], bool],
                      pause: float) -> Tuple[float, List[float], List[float]]:
    """A leader frozen while a fault hands its key to a fresh contender.

    Runs *argv* (a process that appends the time to *out* whenever it
    believes it leads) until *ready*, SIGSTOPs it, runs *fault* and *start*
    (the fresh contender), SIGCONTs it *pause* seconds later, and samples
    *is_leader* every millisecond until the contender has led for half a
    second. Returns the time of the SIGSTOP, the contender's leading times
    and the old leader's."""
    proc = subprocess.Popen(argv, env=python_env())
    led: List[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            t = time.monotonic()
            if is_leader():
                led.append(t)
            time.sleep(0.001)

    try:
        wait_until(lambda: os.path.exists(out) and os.path.getsize(out) > 0, timeout=30, what="the old leader leads")
        wait_until(ready, timeout=30, what="the old leader is ready")
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGSTOP)
        fault()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            start()
            time.sleep(pause)
            proc.send_signal(signal.SIGCONT)
            wait_until(lambda: bool(led), timeout=30, what="the fresh contender leads")
            time.sleep(0.5)
        finally:
            done.set()
            sampler.join()
    finally:
        proc.kill()
        proc.wait()
    with open(out) as fh:
        old = [float(line) for line in fh if line.strip()]
    os.unlink(out)
    return stopped_at, led, old


@pytest.fixture
def stoppers() -> Iterator[List[Callable[[], None]]]:
    """Stop functions to call after the test, each on a thread of its own
    and for at most 20 s (a test that failed may have left one unable to)."""
    made: List[Callable[[], None]] = []
    yield made
    for stop in made:
        stopper = threading.Thread(target=stop, daemon=True)
        stopper.start()
        stopper.join(20)
