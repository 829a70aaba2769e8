"""A lone candidate whose agent answers only ``500`` for 4 s (longer than
its 3 s check TTL: an overloaded agent, a broken proxy) loses its session:
the agent lets the check go critical, Consul invalidates the session and
keeps the key for the 3 s lock-delay, which ends about 6 s after the last
pass. The candidate comes back as the outage ends and leads again soon
after the lock-delay ends: a refusal for a lock-delay is retried a few
times within it (not a whole lock-delay after each refusal), a retry's
backoff ends as soon as the heartbeat finds the session gone, and the last
lock before its new one being its own, it holds nothing back. Before, it
led about 9 s after the last pass (10 s at worst)."""

from __future__ import annotations

import time
from typing import Optional

from garbling_proxy import Answer, ConsulProxy

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent


class Outage(ConsulProxy):
    """Answers ``500 No cluster leader`` to everything for *window* seconds
    from the first check pass after :attr:`armed` is set."""

    def __init__(self, upstream: str, window: float) -> None:
        super().__init__(upstream)
        self.window = window
        self.armed = False
        self.last_pass: Optional[float] = None

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        if self.armed and self.last_pass is None and path.startswith("/v1/agent/check/pass/"):
            self.last_pass = time.monotonic()
            return None
        if self.last_pass is not None and time.monotonic() < self.last_pass + self.window:
            return Answer(500, b"No cluster leader", "text/plain")
        return None


def test_a_lone_candidate_leads_again_soon_after_the_lock_delay_of_its_lost_session_ends(
        consul_agent: ConsulAgent, key: str) -> None:
    with Outage(consul_agent.url, 4.0) as proxy:
        a = Candidate(key, identity="a", address=proxy.address)  # ttl 3s: check TTL 3s, lock-delay 3s
        try:
            a.start()
            assert a.wait_for_leadership(30)
            proxy.armed = True
            deadline = time.monotonic() + 10
            while proxy.last_pass is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proxy.last_pass is not None
            while a.is_leader() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not a.is_leader(), "the outage did not end the term"
            assert a.wait_for_leadership(60)
            led = time.monotonic() - proxy.last_pass
        finally:
            a.stop()
    # Consul invalidated the session at most a check TTL after the last pass
    # (3s), and its lock-delay ended 3s after that.
    free_by = a.timing.check_ttl + a.timing.lock_delay
    print(f"led again {led:.2f}s after the last pass; the lock-delay ended by {free_by:.2f}s")
    assert led < free_by + 1.0, (f"led again {led:.2f}s after the last pass, {led - free_by:.2f}s after Consul's "
                                 f"lock-delay ended at the latest")
