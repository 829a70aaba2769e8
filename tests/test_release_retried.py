"""F3 must hold when the release after a lapsed term had to be
retried.

The leader's agent answers only ``500`` for 5 s (an overloaded agent; a
Raft election seen through it). The lease (3 s) runs out, the job stops,
both release attempts in ``Candidate._release`` fail, and the release is
left to the election thread's next round (``_unreleased``). That round
sends it once the agent answers (after tenacity's backoff, which grew
through the outage), but unlike ``_release`` it does not note the key as
released by itself (``decisions.released_entry``): the candidate's next
lock does not follow what it saw ("without seeing it free first") and is
held a whole lock-delay (10 s here) with nobody leading, although its own
release accounted for the key. The check (TTL 10 s) and the session lived
on throughout. Issue 18's bound: the holder itself leads within 1 s after
such a release."""

from __future__ import annotations

import json
import time
from typing import Optional

from garbling_proxy import Answer, ConsulProxy

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


class Outage(ConsulProxy):
    """500s for *window* seconds from the first check pass after
    :attr:`armed`; notes when the first release of *key* after it passed."""

    def __init__(self, upstream: str, key: str, window: float) -> None:
        super().__init__(upstream)
        self.key = key
        self.window = window
        self.armed = False
        self.started: Optional[float] = None
        self.released: Optional[float] = None

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        if self.armed and self.started is None and path.startswith("/v1/agent/check/pass/"):
            self.started = time.monotonic()
            return None
        if self.started is not None and time.monotonic() < self.started + self.window:
            return Answer(500, b"No cluster leader", "text/plain")
        if self.started is not None and self.released is None and method == "PUT" and path.startswith("/v1/txn") \
                and any(op.get("KV", {}).get("Verb") == "unlock" for op in json.loads(body or b"[]")):
            self.released = time.monotonic()
        return None


def test_after_a_retried_release_of_a_lapsed_term_the_holder_leads_again_within_a_second(
        consul_agent: ConsulAgent, key: str) -> None:
    with Outage(consul_agent.url, key, 5.0) as proxy:
        a = Candidate(key, identity="a", address=proxy.address, ttl=10, lease=3)
        try:
            a.start()
            assert a.wait_for_leadership(30)
            proxy.armed = True
            wait_until(lambda: proxy.started is not None, what="the outage to begin")
            wait_until(lambda: not a.is_leader(), timeout=10, what="a's lease to run out")
            wait_until(lambda: proxy.released is not None, timeout=60, what="a's release to land")
            wait_until(a.is_leader, timeout=60, what="a to lead again")
            led = time.monotonic()
        finally:
            a.stop()
    assert proxy.started is not None and proxy.released is not None
    back = proxy.started + proxy.window
    print(f"release landed {proxy.released - back:.2f}s after the agent answered again; a led "
          f"{led - proxy.released:.2f}s after its release")
    assert led - proxy.released < 1.0, (f"a led again {led - proxy.released:.2f}s after its own release "
                                        f"({led - back:.2f}s after its agent answered again); nobody led meanwhile")
