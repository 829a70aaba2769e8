"""The waiting line: with many candidates on one key, a release wakes one
waiter, not all of them, and the lock goes to the waiters in the order they
came (ZooKeeper's lock recipe, on Consul KV: ``<key>/.waiting/<session>``).

What is asserted is what anyone can see from outside: the requests the
candidates send (counted by a proxy in front of the agent), who leads in
which order, and the entries of the line in Consul's KV store. A frozen or
killed waiter costs at most its check's TTL, never the election."""

from __future__ import annotations

import base64
import collections
import logging
import signal
import threading
import uuid
from typing import Any, Dict, Iterator, List

import pytest
import requests
from chaos.procs import CandidateProcess, candidate_processes
from garbling_proxy import GarblingProxy
from security_helpers import acl_agent, documented_policy, make_token, node_name

from consul_leader import Candidate, elected
from consul_leader.testing import ConsulAgent

from conftest import candidate_factory, leaders, wait_until

#: Waiters on one key in the herd test: enough that waking all of them
#: shows in the counts, few enough for a small machine.
HERD = 12


def line(url: str, key: str) -> List[Dict[str, Any]]:
    """The live entries of the line for *key*, first first."""
    r = requests.get(f"{url}/v1/kv/{key}/.waiting/", params={"recurse": "1"}, timeout=5)
    if r.status_code == 404:
        return []
    r.raise_for_status()
    return sorted((e for e in r.json() if e.get("Session")), key=lambda e: e["CreateIndex"])


def all_entries(url: str, key: str) -> List[Dict[str, Any]]:
    """Every entry of the line for *key*, with a session or not, first first."""
    r = requests.get(f"{url}/v1/kv/{key}/.waiting/", params={"recurse": "1"}, timeout=5)
    return [] if r.status_code == 404 else sorted(r.json(), key=lambda e: e["CreateIndex"])


def test_a_release_wakes_one_waiter_and_the_lock_goes_round_in_line_order(consul_agent: ConsulAgent,
                                                                           key: str) -> None:
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def count(method: str, path: str) -> bool:
        kind = "txn" if path.startswith("/v1/txn") else "kv" if path.startswith("/v1/kv/") else "other"
        with lock:
            counts[kind] += 1
        return False  # forward every request

    def snapshot() -> Dict[str, int]:
        with lock:
            return dict(counts)

    won: List[str] = []
    with GarblingProxy(consul_agent.url) as proxy:
        proxy.garble = count
        with candidate_factory(consul_agent, address=proxy.address, ttl=3.0) as make:
            order: List[Candidate] = []
            for i in range(HERD):
                c = make(key, identity=f"c{i:02d}")
                elected.connect(lambda sender, **kw: won.append(sender.identity), sender=c, weak=False)
                c.start()
                if i == 0:
                    assert c.wait_for_leadership(30)
                else:  # one at a time, so that the line's order is the order of start
                    wait_until(lambda i=i: len(line(consul_agent.url, key)) == i, 30, f"c{i:02d} in line")
                order.append(c)
            assert [e["Value"] for e in line(consul_agent.url, key)] == [_b64(c.identity) for c in order[1:]]

            per_handover: List[Dict[str, int]] = []
            leader = order[0]
            for _ in range(HERD):
                before = snapshot()
                assert leader.resign()
                wait_until(lambda old=leader: len(leaders(order)) == 1 and leaders(order)[0] is not old, 30,
                           "another candidate leads")
                # The resigned leader sits out, then stands at the end of the line.
                wait_until(lambda: len(line(consul_agent.url, key)) == HERD - 1, 30, "the line whole again")
                after = snapshot()
                per_handover.append({k: after.get(k, 0) - before.get(k, 0) for k in ("txn", "kv")})
                leader = leaders(order)[0]
            # (a stopping leader lets its successor in: stopping them all
            # at the end elects more, down the line)
            won_in_turn = list(won)
    print(f"requests per handover with {HERD - 1} waiting: {per_handover}")
    txns = [h["txn"] for h in per_handover]
    # Only the first in line tries: two transactions per handover, the
    # release and the acquire (a retry after a lost race may add one now
    # and then). Without the line every waiter wakes and reads the key, and
    # those that did not lose the last race try the transaction too.
    assert sum(txns) <= 2 * HERD + 2, txns
    kv = [h["kv"] for h in per_handover]
    assert sum(kv) / len(kv) < 1.5 * (HERD - 1), kv
    # Fairness: each one led once, in the order it came, then the first again.
    assert won_in_turn == [c.identity for c in order] + [order[0].identity], " ".join(won_in_turn)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- faults, on separate processes --------------------------------------------

TTL = 1.0


@pytest.fixture
def spawn(consul_agent: ConsulAgent, key: str) -> Iterator[Any]:
    with candidate_processes(consul_agent.address, key, TTL) as start:
        yield start


def _start_in_line(spawn: Any, url: str, key: str, n: int) -> List[CandidateProcess]:
    """A leader and *n* - 1 waiters, standing in line in the order of the list."""
    procs = [spawn("p0")]
    wait_until(lambda: procs[0].leading() is not None, 30, "p0 leads")
    for i in range(1, n):
        procs.append(spawn(f"p{i}"))
        wait_until(lambda i=i: len(line(url, key)) == i, 30, f"p{i} in line")
    return procs


def test_a_frozen_first_in_line_costs_at_most_its_check_ttl_and_not_its_turn(
        spawn: Any, consul_agent: ConsulAgent, key: str) -> None:
    leader, frozen, second, third = _start_in_line(spawn, consul_agent.url, key, 4)
    frozen.signal(signal.SIGSTOP)
    try:
        leader.signal(signal.SIGUSR1)  # resign, while the first in line cannot take the lock
        wait_until(lambda: leader.leading() is None, 30, "the leader resigned")
        # The frozen one's session ends with its check's TTL; its entry then
        # has no session, and the next in line moves up and takes the lock.
        # The resigned leader, back from sitting out, stands behind them all.
        wait_until(lambda: any(p.leading() is not None for p in (leader, second, third)), TTL + 15,
                   "a new leader")
        assert second.leading() is not None, [p.identity for p in (leader, second, third) if p.leading()]
    finally:
        frozen.signal(signal.SIGCONT)
    # Back, it makes a new session and stands at the end of the line.
    wait_until(lambda: [e["Value"] for e in line(consul_agent.url, key)] == [_b64("p3"), _b64("p0"), _b64("p1")],
               30, "the thawed candidate at the end of the line")


def test_a_killed_waiter_in_the_middle_of_the_line_is_skipped_and_its_entry_removed(
        spawn: Any, consul_agent: ConsulAgent, key: str) -> None:
    leader, first, killed, last = _start_in_line(spawn, consul_agent.url, key, 4)
    killed.kill()
    # Its session ends with its check's TTL; the one behind it then moves up
    # and removes the entry that no session holds any more.
    wait_until(lambda: [e["Value"] for e in all_entries(consul_agent.url, key)] == [_b64("p1"), _b64("p3")],
               TTL + 15, "the killed waiter's entry removed")
    leader.stop()
    wait_until(lambda: first.leading() is not None, 30, "the first in line leads")
    first.stop()
    wait_until(lambda: last.leading() is not None, 30, "the last in line leads after it")


# -- a token that may write only the lock key ---------------------------------

@pytest.fixture(scope="module")
def acl_consul() -> Iterator[ConsulAgent]:
    with acl_agent() as a:
        yield a


def test_a_token_that_may_write_only_the_key_waits_without_the_line_and_says_so_once(
        acl_consul: ConsulAgent, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_ADDR"):
        monkeypatch.delenv(name, raising=False)
    prefix = f"acl/{uuid.uuid4().hex[:8]}"
    key = f"{prefix}/leader"
    rules = documented_policy(prefix, node_name(acl_consul)).replace(f'key_prefix "{prefix}/"', f'key "{key}"')
    assert f'key "{key}"' in rules
    token, _ = make_token(acl_consul, rules)
    caplog.set_level(logging.WARNING, logger="consul_leader")
    with candidate_factory(acl_consul, ttl=1.0, token=token) as make:
        first = make(key, identity="first").start()
        assert first.wait_for_leadership(30)
        waiting = [make(key, identity=f"w{i}").start() for i in range(2)]

        def warned() -> List[str]:
            return [r.getMessage() for r in caplog.records if "waiting line" in r.getMessage()]

        wait_until(lambda: len(warned()) == 2, 30, "each waiting candidate says why it waits without the line")
        first.stop()
        wait_until(lambda: len(leaders(waiting)) == 1, 30, "a waiting candidate leads")
        leaders(waiting)[0].stop()
        wait_until(lambda: any(c.is_leader() for c in waiting), 30, "the last candidate leads")
        assert len(warned()) == 2, warned()  # once per candidate, not per wait
