"""Candidates of one key with different timings (library candidates beside
``consul-leader run``, whose lock-delay follows its grace): each holder
writes its lock-delay into the key, and a lock that no lock-delay of
Consul's covered is held for the longest one seen, so a holder with a
longer lease is not overlapped by one with a shorter lock-delay."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import requests

from consul_leader import Candidate, elected
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def test_a_lock_taken_unaccounted_is_held_for_the_longest_lock_delay_of_the_keys_holders(
        consul_agent: ConsulAgent, key: str) -> None:
    slow = Candidate(key, identity="slow", address=consul_agent.address, ttl=10)
    fast = Candidate(key, identity="fast", address=consul_agent.address, ttl=1)
    led: List[float] = []
    done = threading.Event()

    def still_working(stop_event: threading.Event) -> None:
        # The slow holder's work outlives its term here (as work paused with
        # its process does): it keeps the slow candidate from taking the key
        # back, so the fast one is the next holder.
        done.wait(60)

    @fast.on_elected
    def record(sender: Any, **_: Any) -> None:
        led.append(time.monotonic())

    try:
        slow.run(still_working, block=False)
        assert slow.wait_for_leadership(30)
        fast.start()
        wait_until(lambda: fast.leader() == "slow", what="the fast candidate sees the slow one lead")
        session = requests.get(f"{consul_agent.url}/v1/kv/{key}", timeout=5).json()[0]["Session"]
        # A release the holder did not make: whoever takes the key next must
        # wait as long as the slow holder's work may run (its lease).
        requests.put(f"{consul_agent.url}/v1/kv/{key}?release={session}", timeout=5).raise_for_status()
        released = time.monotonic()
        wait_until(lambda: led, timeout=60, what="the fast candidate leads")
    finally:
        done.set()
        elected.disconnect(record)
        fast.stop()
        slow.stop()
    assert led[0] - released >= slow.timing.lease, (
        f"led {led[0] - released:.2f}s after the release; the slow holder's lease is {slow.timing.lease:.2f}s")
