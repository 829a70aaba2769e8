"""The end of a lease is acted on by the lease clock, whatever the sleeping
threads measured: after a suspend (the boot clock jumps, the monotonic clock
that ``Event.wait`` sleeps on does not) the job's ``stop_event`` and the
``deposed`` signal come at once, not when a long wait would have ended."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from consul_leader import Candidate, Elector, deposed
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: Long leases, so that a wait sized by the lease before the jump would
#: outlast the bound below by far (25 s at ttl=30).
TTL = 30.0

#: How late the work may be told to stop after the clock jumped: the safety
#: bound of a suspended machine waking up, not a speed figure.
BOUND = 0.5


class JumpingClock:
    """The lease clock, with a jump forward as a suspend makes it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> float:
        """Move on by *seconds*; return the real (monotonic) time of the jump."""
        self.offset += seconds
        return time.monotonic()


def make(kind: str, key: str, agent: ConsulAgent, clock: JumpingClock) -> Any:
    if kind == "candidate":
        return Candidate(key, identity="a", address=agent.address, clock=clock, ttl=TTL)
    prefix, name = key.rsplit("/", 1)
    return Elector(prefix, identity="a", address=agent.address, clock=clock, ttl=TTL).candidate(name)


def stop_all(kind: str, runner: Any) -> None:
    (runner if kind == "candidate" else runner.elector).stop()


@pytest.mark.parametrize("kind", ["candidate", "elector"])
def test_a_jump_of_the_lease_clock_stops_the_job_at_once(consul_agent: ConsulAgent, key: str, kind: str) -> None:
    clock = JumpingClock()
    stopped_at: List[float] = []

    def job(stop_event: threading.Event) -> None:
        stop_event.wait()
        stopped_at.append(time.monotonic())

    runner = make(kind, key, consul_agent, clock)
    try:
        runner.run(job, block=False)
        assert runner.wait_for_leadership(30)
        time.sleep(0.5)  # the lease watchdog is asleep, sized by the lease
        jumped = clock.jump(60.0)
        assert not runner.is_leader()
        wait_until(lambda: stopped_at, timeout=40, what="the job told to stop")
        print(f"{kind}: stop_event {stopped_at[0] - jumped:.3f}s after the boot clock jumped")
        assert stopped_at[0] - jumped < BOUND, f"stop_event came {stopped_at[0] - jumped:.2f}s after the jump"
    finally:
        stop_all(kind, runner)


def test_a_jump_of_the_lease_clock_deposes_an_elector_key_without_a_job_at_once(
        consul_agent: ConsulAgent, key: str) -> None:
    clock = JumpingClock()
    deposed_at: List[float] = []
    runner = make("elector", key, consul_agent, clock)

    @runner.on_deposed
    def record(sender: Any, **_: Any) -> None:
        deposed_at.append(time.monotonic())

    try:
        runner.elector.start()
        assert runner.wait_for_leadership(30)
        time.sleep(0.5)
        jumped = clock.jump(60.0)
        wait_until(lambda: deposed_at, timeout=40, what="the deposed signal")
        print(f"elector key without a job: deposed {deposed_at[0] - jumped:.3f}s after the boot clock jumped")
        assert deposed_at[0] - jumped < BOUND, f"deposed came {deposed_at[0] - jumped:.2f}s after the jump"
    finally:
        deposed.disconnect(record)
        stop_all("elector", runner)
