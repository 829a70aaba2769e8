"""Review: a waiter first in line that cannot write blocks the line.

The waiting line has each waiter block on the one ahead of it, and only
the first in line watch the lock. A first waiter whose agent still passes
its check (agent-local) and still gossips, but cannot reach the servers for
anything else (their RPC port firewalled from its host, an expired
certificate for server RPC: its reads and writes answer 500), keeps its
line entry as long as its session lives, which is the session TTL after
its last renew, and Consul may wait twice that. The leader leaves cleanly;
the healthy waiter behind it did not even try, and nobody led. The
resign handover fix (``SitOut.unclaimed``) covers only the resigner.

Since then a waiter that finds the lock free for a check TTL with the
waiters ahead still in line tries itself (``WaitingLine.wait_turn``'s
*patience*): the second led 11.8 s after the leader left (its blocking
query on the waiter ahead runs up to 3 TTLs before it looks at the lock).
Still open against this test's 2 s: the waiter next in line could watch
the lock's whole folder (the lock and the line, one blocking query), so
that it sees the lock free at once and waits only a short patience."""

from __future__ import annotations

import time
from typing import Optional

from garbling_proxy import Answer, ConsulProxy

from consul_leader import Candidate
from consul_leader.testing import ConsulAgent

from conftest import wait_until


class CutFromServers(ConsulProxy):
    """Once :attr:`cut`, answers everything but the agent-local check pass
    with Consul's answer when the servers cannot be reached."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.cut = False

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        if self.cut and not path.startswith("/v1/agent/check/pass/"):
            return Answer(500, b"rpc error making call: EOF", "text/plain")
        return None


def test_a_first_waiter_cut_from_the_servers_does_not_keep_a_healthy_waiter_from_leading(
        consul_agent: ConsulAgent, key: str) -> None:
    with CutFromServers(consul_agent.url) as proxy:
        leader = Candidate(key, identity="leader", address=consul_agent.address)
        first = Candidate(key, identity="first", address=proxy.address)
        second = Candidate(key, identity="second", address=consul_agent.address)
        try:
            leader.start()
            assert leader.wait_for_leadership(30)
            first.start()
            wait_until(lambda: first.leader() == "leader", what="the first waiter to wait")
            time.sleep(0.5)
            second.start()
            wait_until(lambda: second.leader() == "leader", what="the second waiter to wait")
            time.sleep(0.5)
            proxy.cut = True
            left = time.monotonic()
            leader.stop()  # a clean handover: released with its mark
            deadline = left + 40
            while time.monotonic() < deadline and not second.is_leader() and not first.is_leader():
                time.sleep(0.05)
            took = time.monotonic() - left
        finally:
            proxy.cut = False
            second.stop()
            first.stop()
            leader.stop()
    print(f"second led {took:.2f}s after the leader left")
    assert took < 2.0, f"nobody led for {took:.2f}s after the leader left, with a healthy waiter beside"
