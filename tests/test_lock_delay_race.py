"""Consul enforces a key's lock-delay before it commits an acquisition, not
when it applies it: an acquisition that reaches the Raft leader while the
holder's session is being invalidated can win the key with no lock-delay.

Consul checks the lock-delay on the Raft leader, against the leader's state,
before it appends a ``lock`` to the Raft log (``kvsPreApply`` in
``agent/consul/kvs_endpoint.go``, which the txn endpoint calls too: "the
lock-delay must be enforced before commit", so that the servers' state
machines never depend on their wall clocks). The holder's invalidation (a
session destroy here; a critical check, a TTL or the node leaving alike)
sets the lock-delay only when it is applied. So an acquisition sent while
the invalidation is in the log but not yet applied passes the check (the
key is still held, no lock-delay is set), is committed after the
invalidation, is applied to a free key, and wins: the lock-delay that
should keep everyone out after the holder is lost keeps nobody out.

This is why consul-leader does not lead at once on an acquisition unless it
read the key free just before sending it (and the acquired ``LockIndex`` is
exactly one more than that free entry's): here the acquisition was sent
while the key was held, and its ``LockIndex`` is one more than the one seen,
the same as a clean takeover's.

The window is normally well under a millisecond: on a dev agent, a destroy
and an acquisition sent together from two threads give the acquisition the
key about one try in eight. Here nothing commits while both followers of a
three-server cluster are stopped (SIGSTOP): the destroy, then the
acquisition, are appended to the leader's log (its ``last_log_index``
shows each), then the followers continue and both commit in that order.
No sleeps: every step waits for what the leader reports.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest
import requests

from consul_leader.testing import ClusterAgent, ConsulCluster

# Long enough that the refused acquisition of the control test falls inside
# it on a slow machine; nobody waits it out.
LOCK_DELAY = "10s"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ConsulCluster]:
    # Consul's default raft_multiplier 5: a leader that hears from no
    # follower keeps leading for 2.5 s (0.5 s with 1), ample for the time the
    # followers are stopped here.
    with ConsulCluster(servers=3, raft_multiplier=5) as made:
        wait_for(lambda: synced(made), "every server's first catalog sync", made, timeout=30)
        yield made


def synced(cluster: ConsulCluster) -> bool:
    """Every server agent has made its first sync of its node to the catalog
    (the tagged addresses come from that sync, not from the leader's own
    registration of the member). Its agent holds its state lock while that
    write waits for a commit, and ``/v1/agent/self`` waits for that lock: a
    leader whose sync is still pending when the followers are stopped cannot
    tell its log index."""
    leader = cluster.leader()
    if leader is None:
        return False
    nodes = [leader.get(f"/v1/catalog/node/{server.name}") for server in cluster.servers]
    return all(node and node["Node"].get("TaggedAddresses") for node in nodes)


def create_session(url: str) -> str:
    # No checks: the destroy is the only thing that invalidates it.
    r = requests.put(f"{url}/v1/session/create", json={"LockDelay": LOCK_DELAY, "Checks": []}, timeout=10)
    r.raise_for_status()
    return str(r.json()["ID"])


def read(url: str, key: str) -> Dict[str, Any]:
    r = requests.get(f"{url}/v1/kv/{key}", timeout=10)
    r.raise_for_status()
    return dict(r.json()[0])


def acquire(url: str, key: str, session: str, endpoint: str) -> bool:
    """*session* acquires *key* through ``PUT /v1/kv/KEY?acquire=`` or a
    ``lock`` in ``PUT /v1/txn``; True if it got it."""
    if endpoint == "kv":
        r = requests.put(f"{url}/v1/kv/{key}?acquire={session}", data=b"contender", timeout=30)
        r.raise_for_status()
        return r.json() is True
    ops = [{"KV": {"Verb": "lock", "Key": key, "Session": session, "Value": base64.b64encode(b"contender").decode()}}]
    r = requests.put(f"{url}/v1/txn", json=ops, timeout=30)
    assert r.status_code in (200, 409), r.text  # 409: the transaction was rolled back
    return r.status_code == 200


def last_log_index(server: ClusterAgent) -> int:
    # Raft's stats wait for the leader's main loop, which a slow disk sync
    # can hold up well past the default 1 s.
    stats = server.get("/v1/agent/self", timeout=10)
    assert stats is not None, f"{server.name} does not answer"
    return int(stats["Stats"]["raft"]["last_log_index"])


def wait_for(predicate: Callable[[], bool], what: str, cluster: ConsulCluster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}\n{cluster.log_tails(15)}")
        time.sleep(0.001)


@contextlib.contextmanager
def nothing_commits(cluster: ConsulCluster) -> Iterator[ClusterAgent]:
    """Stop both followers (the leader's writes reach its own log, and no
    quorum commits them) and yield the Raft leader; the followers continue
    when the block ends, or at once through :func:`commit`."""
    leader = cluster.wait_for_leader()
    followers = [s for s in cluster.servers if s is not leader]
    for follower in followers:
        follower.pause()
    try:
        yield leader
    finally:
        for follower in followers:
            follower.resume()


def commit(cluster: ConsulCluster, leader: ClusterAgent) -> None:
    for follower in cluster.servers:
        if follower is not leader:
            follower.resume()


def destroy_in_log(pool: ThreadPoolExecutor, cluster: ConsulCluster, leader: ClusterAgent,
                   session: str) -> "Future[requests.Response]":
    """Send the destroy of *session* to *leader* and return once it is in
    the leader's log (uncommitted: the followers are stopped)."""
    before = last_log_index(leader)
    destroyed = pool.submit(requests.put, f"{leader.url}/v1/session/destroy/{session}", timeout=30)
    wait_for(lambda: last_log_index(leader) > before, "the destroy is appended to the leader's log", cluster)
    return destroyed


def held_key(cluster: ConsulCluster) -> Tuple[str, str, str, str]:
    """A new key held by one session, and another session that will
    contend for it: ``(leader URL, key, holder, contender)``."""
    url = cluster.wait_for_leader().url
    key = f"test/lock-delay-race-{uuid.uuid4().hex[:8]}/leader"
    holder, contender = create_session(url), create_session(url)
    assert acquire(url, key, holder, "kv")
    return url, key, holder, contender


@pytest.mark.parametrize("endpoint", ["kv", "txn"])
def test_acquisition_sent_before_the_holders_invalidation_commits_wins_without_lock_delay(
        cluster: ConsulCluster, endpoint: str) -> None:
    url, key, holder, contender = held_key(cluster)
    seen = read(url, key)  # what the contender knows when it sends: the key is held
    assert seen.get("Session") == holder

    # The pool is left last: a failure lets the followers continue first, so
    # that no request is left hanging.
    with ThreadPoolExecutor(2) as pool, nothing_commits(cluster) as leader:
        destroyed = destroy_in_log(pool, cluster, leader, holder)
        appended = last_log_index(leader)
        won = pool.submit(acquire, leader.url, key, contender, endpoint)
        # Appended, so it passed the lock-delay check: nothing was set yet.
        wait_for(lambda: last_log_index(leader) > appended,
                 "the acquisition is appended to the leader's log after the destroy", cluster)
        commit(cluster, leader)
        assert destroyed.result().status_code == 200, f"{destroyed.result().text}\n{cluster.log_tails(20)}"
        assert won.result() is True, "Consul refused the acquisition: it enforces the lock-delay on apply now"

    entry = read(url, key)
    assert entry.get("Session") == contender
    assert entry["LockIndex"] == seen["LockIndex"] + 1  # indistinguishable from a clean takeover


@pytest.mark.parametrize("endpoint", ["kv", "txn"])
def test_the_same_acquisition_sent_after_the_invalidation_commits_is_held_off_by_the_lock_delay(
        cluster: ConsulCluster, endpoint: str) -> None:
    url, key, holder, contender = held_key(cluster)

    with ThreadPoolExecutor(1) as pool, nothing_commits(cluster) as leader:
        destroyed = destroy_in_log(pool, cluster, leader, holder)
        commit(cluster, leader)
        assert destroyed.result().status_code == 200, f"{destroyed.result().text}\n{cluster.log_tails(20)}"
        assert acquire(leader.url, key, contender, endpoint) is False

    entry = read(url, key)
    assert "Session" not in entry, "the lock-delay answers false while the key shows no holder"
