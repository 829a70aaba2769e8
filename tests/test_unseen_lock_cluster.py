"""End to end: the real Consul race behind "a lock not seen released waits
one lock-delay", with the library's own candidates.

Consul checks a key's lock-delay on the Raft leader before it commits an
acquisition (see tests/test_lock_delay_race.py). Here a candidate's
acquisition is sent while another session S holds the key (S stands in for
a leader whose work still runs for the rest of its lease); a proxy holds it
back while both Raft followers are stopped, S is destroyed (appended, not
committed), then the acquisition is let go (appended after the destroy).
When the followers continue, both commit in that order and the candidate
wins the key with no lock-delay from Consul. It must not lead before S's
lock-delay has passed: until then S's work may still run.

tests/test_unseen_lock.py stages the same with a session that has no
lock-delay; these run the actual race: nothing here is a stand-in for
Consul's behaviour.

When such an acquisition's answer is lost, the candidate later finds the key
held by its own session. Taking it again is refused while the holder's
lock-delay runs (Consul refuses even the session that holds the key), so it
is led only after that lock-delay; but a Candidate then waited, in line,
for the key's holder to let go: itself, so nobody ever led again. The same
happens to a Candidate whose release failed twice after it resigned.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, List, Optional

import pytest
import requests
from garbling_proxy import Answer, FailingProxy, HoldingProxy, acquisition_of

from consul_leader import Candidate, Elector
from consul_leader.testing import ClusterAgent, ConsulAgent, ConsulCluster

TTL = 3.0  # the candidates' lock-delay is min(ttl, 60): 3 s


@pytest.fixture(scope="module")
def cluster() -> Iterator[ConsulCluster]:
    # raft_multiplier 5: a Raft leader that hears from no follower keeps
    # leading for 2.5 s, ample for the moment the followers are stopped.
    with ConsulCluster(servers=3, raft_multiplier=5) as made:
        yield made


def session_with_lock_delay(url: str, lock_delay: float) -> str:
    r = requests.put(f"{url}/v1/session/create", json={"LockDelay": f"{lock_delay}s", "Checks": []}, timeout=10)
    r.raise_for_status()
    return str(r.json()["ID"])


def entry(url: str, key: str) -> Any:
    r = requests.get(f"{url}/v1/kv/{key}", timeout=10)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()[0]


def last_log_index(server: ClusterAgent) -> int:
    stats = server.get("/v1/agent/self", timeout=10)
    assert stats is not None, f"{server.name} does not answer"
    return int(stats["Stats"]["raft"]["last_log_index"])


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0, poll: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(poll)


def invalidated_under_the_acquisition(cluster: ConsulCluster, leader: ClusterAgent, proxy: HoldingProxy,
                                      holder: str) -> float:
    """With the candidate's acquisition held in *proxy*: stop both
    followers, destroy *holder* (appended to the leader's log), let the
    acquisition go (appended after it), continue the followers. Returns the
    time just before they continued: the destroy is applied, and the
    holder's lock-delay starts, no earlier than that."""
    followers = [s for s in cluster.servers if s is not leader]
    with ThreadPoolExecutor(1) as pool:
        for follower in followers:
            follower.pause()
        try:
            before = last_log_index(leader)
            destroyed = pool.submit(requests.put, f"{leader.url}/v1/session/destroy/{holder}", timeout=30)
            wait_for(lambda: last_log_index(leader) > before, "the destroy is in the leader's log")
            appended = last_log_index(leader)
            proxy.let_go()
            wait_for(lambda: last_log_index(leader) > appended, "the acquisition is in the leader's log after it")
            continued = time.monotonic()
        finally:
            for follower in followers:
                follower.resume()
        assert destroyed.result().status_code == 200, destroyed.result().text
    return continued


def election_times(c: Any) -> List[float]:
    led: List[float] = []
    c.on_elected(lambda sender, fencing_token: led.append(time.monotonic()))
    return led


def test_a_candidate_started_while_the_key_is_held_does_not_lead_inside_the_lock_delay_of_a_holder_invalidated_as_its_acquisition_was_on_its_way(  # noqa: E501
        cluster: ConsulCluster, stoppers: List[Callable[[], None]]) -> None:
    leader = cluster.wait_for_leader()
    key = f"test/unseen-review-{uuid.uuid4().hex[:8]}/leader"
    c = Candidate(key, identity="c", address=leader.address, ttl=TTL)  # only for its timing
    lock_delay = c.timing.lock_delay
    holder = session_with_lock_delay(leader.url, lock_delay)
    assert requests.put(f"{leader.url}/v1/kv/{key}?acquire={holder}", data=b"s", timeout=10).json() is True
    held_at = int(entry(leader.url, key)["LockIndex"])

    with HoldingProxy(leader.url) as proxy:
        proxy.hold = acquisition_of(key)
        c = Candidate(key, identity="c", address=proxy.address, ttl=TTL)
        stoppers.append(c.stop)
        led = election_times(c)
        try:
            c.start()  # its first round reads the key (held) and sends an acquisition anyway
            wait_for(proxy.held.is_set, "the candidate's acquisition on its way", poll=0.01)
            continued = invalidated_under_the_acquisition(cluster, leader, proxy, holder)
        finally:
            proxy.let_go()
        wait_for(lambda: (entry(leader.url, key) or {}).get("Session") not in (None, holder),
                 "the candidate's acquisition took the key", poll=0.01)
        now = entry(leader.url, key)
        assert now["LockIndex"] == held_at + 1, "the race was not run: someone else took the key in between"
        assert c.wait_for_leadership(30)
    wait_for(lambda: bool(led), "the elected receiver", poll=0.01)  # it runs just after is_leader() turns True
    assert led[0] - continued >= lock_delay, (
        f"led {led[0] - continued:.2f}s after the holder's destroy was committed; its work may run until "
        f"{lock_delay}s after that")


def test_an_elector_does_not_lead_inside_the_lock_delay_of_a_holder_invalidated_as_its_acquisition_was_on_its_way(
        cluster: ConsulCluster, stoppers: List[Callable[[], None]]) -> None:
    # The elector's acquisition follows a listing that showed the key free;
    # S takes the key before it arrives and is destroyed under it.
    leader = cluster.wait_for_leader()
    prefix = f"test/unseen-review-{uuid.uuid4().hex[:8]}"
    key = f"{prefix}/k"
    throwaway = session_with_lock_delay(leader.url, 0)
    assert requests.put(f"{leader.url}/v1/kv/{key}?acquire={throwaway}", data=b"", timeout=10).json() is True
    requests.put(f"{leader.url}/v1/session/destroy/{throwaway}", timeout=10).raise_for_status()
    free_at = int(entry(leader.url, key)["LockIndex"])

    with HoldingProxy(leader.url) as proxy:
        proxy.hold = acquisition_of(key)
        e = Elector(prefix, identity="e", address=proxy.address, ttl=TTL)
        stoppers.append(e.stop)
        lock_delay = e.timing.lock_delay
        k = e.candidate("k")
        led = election_times(k)
        try:
            e.start()
            wait_for(proxy.held.is_set, "the elector's acquisition on its way", poll=0.01)
            holder = session_with_lock_delay(leader.url, lock_delay)
            assert requests.put(f"{leader.url}/v1/kv/{key}?acquire={holder}", data=b"s", timeout=10).json() is True
            continued = invalidated_under_the_acquisition(cluster, leader, proxy, holder)
        finally:
            proxy.let_go()
        wait_for(lambda: (entry(leader.url, key) or {}).get("Session") not in (None, holder),
                 "the elector's acquisition took the key", poll=0.01)
        assert entry(leader.url, key)["LockIndex"] == free_at + 2
        assert k.wait_for_leadership(30)
    wait_for(lambda: bool(led), "the elected receiver", poll=0.01)  # it runs just after is_leader() turns True
    assert led[0] - continued >= lock_delay, (
        f"led {led[0] - continued:.2f}s after the holder's destroy was committed; its work may run until "
        f"{lock_delay}s after that")


class AnswerLost(HoldingProxy):
    """Holds back the picked request as :class:`HoldingProxy` does, then
    passes it on but answers ``500 No cluster leader``: Consul did it, the
    client never hears (an HTTP timeout on a slow commit does the same)."""

    def intercept(self, method: str, path: str, body: bytes) -> Optional[Answer]:
        picked = not self.held.is_set() and self.hold(method, path, body)
        super().intercept(method, path, body)
        if picked:
            return Answer(500, b"No cluster leader", "text/plain", forwarded=True, delay=0.5)
        return None


@pytest.mark.parametrize("engine", ["candidate", "elector"])
def test_a_lock_won_unseen_whose_answer_was_lost_is_led_once_the_lock_delay_passed_not_before(
        cluster: ConsulCluster, stoppers: List[Callable[[], None]], engine: str) -> None:
    # The unseen acquisition wins (the race above) but its answer is lost;
    # the candidate then finds the key held by its own session and takes it
    # again. That second acquisition follows an entry "held by this session",
    # yet the lock was won by the first one, unseen: the lock-delay wait is
    # still owed.
    leader = cluster.wait_for_leader()
    prefix = f"test/unseen-review-{uuid.uuid4().hex[:8]}"
    key = f"{prefix}/k"
    lock_delay = Candidate(key, identity="x", address=leader.address, ttl=TTL).timing.lock_delay
    throwaway = session_with_lock_delay(leader.url, 0)
    assert requests.put(f"{leader.url}/v1/kv/{key}?acquire={throwaway}", data=b"", timeout=10).json() is True
    requests.put(f"{leader.url}/v1/session/destroy/{throwaway}", timeout=10).raise_for_status()
    holder = ""
    if engine == "candidate":
        # Held when the candidate reads it: its first acquisition is unseen.
        holder = session_with_lock_delay(leader.url, lock_delay)
        assert requests.put(f"{leader.url}/v1/kv/{key}?acquire={holder}", data=b"s", timeout=10).json() is True

    with AnswerLost(leader.url) as proxy:
        proxy.hold = acquisition_of(key)
        c: Any
        if engine == "candidate":
            c = Candidate(key, identity="c", address=proxy.address, ttl=TTL)
            stoppers.append(c.stop)
            start = c.start
        else:
            e = Elector(prefix, identity="c", address=proxy.address, ttl=TTL)
            stoppers.append(e.stop)
            c = e.candidate("k")
            start = e.start
        led = election_times(c)
        try:
            start()
            wait_for(proxy.held.is_set, "the acquisition on its way", poll=0.01)
            if engine == "elector":
                # Free when the elector listed it: taken and lost under its acquisition.
                holder = session_with_lock_delay(leader.url, lock_delay)
                assert requests.put(f"{leader.url}/v1/kv/{key}?acquire={holder}", data=b"s",
                                    timeout=10).json() is True
            continued = invalidated_under_the_acquisition(cluster, leader, proxy, holder)
        finally:
            proxy.let_go()
        wait_for(lambda: (entry(leader.url, key) or {}).get("Session") not in (None, holder),
                 "the held acquisition took the key", poll=0.01)
        # Taken again, it is refused: the holder's lock-delay runs now, and
        # Consul refuses even the session that holds the key. Once it ended,
        # it must lead: nobody else can take the key its session holds.
        assert c.wait_for_leadership(30), (
            f"not leading {time.monotonic() - continued:.0f}s after its session took the key, which it still holds "
            f"({entry(leader.url, key).get('Session')}): it waits for itself to let go")
    wait_for(lambda: bool(led), "the elected receiver", poll=0.01)  # it runs just after is_leader() turns True
    assert led[0] - continued >= lock_delay, (
        f"led {led[0] - continued:.2f}s after the holder's destroy was committed; its work may run until "
        f"{lock_delay}s after that")


def test_a_candidate_whose_release_failed_after_resigning_does_not_keep_the_key_from_everyone(
        consul_agent: ConsulAgent, key: str, stoppers: List[Callable[[], None]]) -> None:
    # Its release answered "500 No cluster leader" twice (a Raft election
    # takes longer than its two tries); its session lives on, renewed by its
    # heartbeat, so the key stays its own. It must not then wait, in line,
    # for the key's holder to let go: that holder is itself, and nobody else
    # can ever lead.
    with FailingProxy(consul_agent.url) as proxy:
        a = Candidate(key, identity="a", address=proxy.address, ttl=TTL)
        stoppers.append(a.stop)
        b = Candidate(key, identity="b", address=consul_agent.address, ttl=TTL)
        stoppers.append(b.stop)
        a.start()
        assert a.wait_for_leadership(30)
        b.start()
        wait_for(lambda: b.leader() == "a", "b sees a lead", poll=0.01)

        def unlock(method: str, path: str, body: bytes) -> Optional[str]:
            if method == "PUT" and path.startswith("/v1/txn") and b'"unlock"' in body and len(proxy.failed) < 2:
                return "before"
            return None

        proxy.fail = unlock
        assert a.resign()
        wait_for(lambda: len(proxy.failed) == 2, "both tries of the release failed", poll=0.01)
        proxy.fail = lambda method, path, body: None
        led = b.wait_for_leadership(30) or a.wait_for_leadership(1)
        holder = (entry(consul_agent.url, key) or {}).get("Session")
        assert led, f"nobody leads 30 s after a's release failed; the key is held by session {holder}"
