"""After a term whose lease ran out, the holder's own release accounts for
the key: the next lock, even the same candidate's, is led at once rather
than held a lock-delay with nobody leading."""

from __future__ import annotations

import threading
import time
from typing import Any, List, Tuple

from consul_leader import Candidate, deposed, elected
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: Long, so that a lock-delay paid shows far above any scheduling noise.
LOCK_DELAY = 10.0


def test_the_deposed_holder_retakes_its_released_key_without_a_lock_delay(consul_agent: ConsulAgent,
                                                                          key: str) -> None:
    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    events: List[Tuple[str, float]] = []
    candidate = Candidate(key, identity="a", address=consul_agent.address, clock=clock, lock_delay=LOCK_DELAY)

    @candidate.on_elected
    def on_elected(sender: Any, **_: Any) -> None:
        events.append(("elected", time.monotonic()))

    @candidate.on_deposed
    def on_deposed(sender: Any, reason: Any, **_: Any) -> None:
        events.append((str(reason), time.monotonic()))

    try:
        candidate.run(lambda stop_event: stop_event.wait(), block=False)
        assert candidate.wait_for_leadership(30)
        # Paused past its lease (a long GC, SIGSTOP), not past its check's
        # TTL: its session lives on, and its term's end releases the key.
        offset[0] = candidate.timing.lease + 0.1
        wait_until(lambda: len(events) >= 3, timeout=3 * LOCK_DELAY, what="a second term")
    finally:
        elected.disconnect(on_elected)
        deposed.disconnect(on_deposed)
        candidate.stop()
    (_, first), (reason, ended), (again, started) = events[:3]
    assert (reason, again) == ("lease expired", "elected")
    print(f"the deposed holder led again {started - ended:.3f}s after its term ended")
    assert started - ended < LOCK_DELAY / 2, f"led again {started - ended:.2f}s after its release: a lock-delay"


def test_after_a_paused_leaders_release_someone_leads_without_a_lock_delay_and_without_overlap(
        consul_agent: ConsulAgent, key: str) -> None:
    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    working: List[str] = []
    overlaps: List[List[str]] = []
    lock = threading.Lock()

    def job_of(name: str) -> Any:
        def job(stop_event: threading.Event) -> None:
            with lock:
                if working:
                    overlaps.append(working + [name])
                working.append(name)
            stop_event.wait()
            with lock:
                working.remove(name)
        return job

    a = Candidate(key, identity="a", address=consul_agent.address, clock=clock, lock_delay=LOCK_DELAY)
    b = Candidate(key, identity="b", address=consul_agent.address, lock_delay=LOCK_DELAY)
    try:
        a.run(job_of("a"), block=False)
        assert a.wait_for_leadership(30)
        b.run(job_of("b"), block=False)
        time.sleep(0.5)  # b waits in line
        offset[0] = a.timing.lease + 0.1
        jumped = time.monotonic()
        wait_until(lambda: a.is_leader() or b.is_leader(), timeout=3 * LOCK_DELAY, what="a new leader")
        led = time.monotonic() - jumped
    finally:
        b.stop()
        a.stop()
    assert overlaps == []
    print(f"someone led {led:.3f}s after the paused leader's release")
    assert led < LOCK_DELAY / 2, f"nobody led for {led:.2f}s after the release: a lock-delay"
