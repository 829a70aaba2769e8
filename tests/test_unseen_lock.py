"""A lock taken without first seeing the key free is led only after one
lock-delay; one taken right after the key was seen free is led at once.

Why: Consul checks a key's lock-delay when an acquisition reaches the Raft
leader, before the write is committed, not when it is applied. An
acquisition sent while another session holds the key passes that check (no
lock-delay runs yet); if that session is invalidated before the
acquisition is committed, the acquisition finds the key free and wins, with
no lock-delay at all, while the last holder's work may still run for the
rest of its lease. Our chaos run saw it once (a client agent killed and
restarted under a leader, and a candidate on the same agent retrying after
an error). A candidate cannot tell that from an ordinary release it did
not see, so every lock that does not directly follow a free key it read
waits one lock-delay, as a key's first holder does.

The race inside Consul cannot be timed from outside; these tests make the
same situation deterministic with a proxy that holds the candidate's
acquisition back while another session takes the key and loses it (its
session destroyed with no lock-delay, which is what Consul's early check
amounts to for an acquisition already past it)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest
import requests
from garbling_proxy import Hold, HoldingProxy

from consul_leader import Candidate, Elector
from consul_leader.testing import ConsulAgent

from conftest import prime_key, wait_until


def acquisition_of(key: str) -> Hold:
    """Picks the transaction that locks *key* (how candidates acquire)."""
    def pick(method: str, path: str, body: bytes) -> bool:
        if method != "PUT" or not path.startswith("/v1/txn"):
            return False
        return any(op.get("KV", {}).get("Verb") == "lock" and op["KV"].get("Key") == key
                   for op in json.loads(body or b"[]"))
    return pick


def taken_and_lost(url: str, key: str) -> None:
    """Another session takes *key* and loses it, with no lock-delay."""
    sid = requests.put(f"{url}/v1/session/create", json={"LockDelay": "0s"}, timeout=5).json()["ID"]
    assert requests.put(f"{url}/v1/kv/{key}?acquire={sid}", data=b"someone else", timeout=5).json() is True
    requests.put(f"{url}/v1/session/destroy/{sid}", timeout=5).raise_for_status()


def lock_index(url: str, key: str) -> int:
    return int(requests.get(f"{url}/v1/kv/{key}", timeout=5).json()[0]["LockIndex"])


def election_times(c: Any) -> List[float]:
    """When *c* (a Candidate or Candidacy) is elected, from now on."""
    led: List[float] = []
    c.on_elected(lambda sender, fencing_token: led.append(time.monotonic()))
    return led


def first_election(led: List[float]) -> float:
    """The first election (its receiver runs on the signal thread, just
    after ``is_leader()`` turned True)."""
    wait_until(lambda: bool(led), what="the elected receiver")
    return led[0]


@pytest.fixture
def proxy(consul_agent: ConsulAgent) -> Iterator[HoldingProxy]:
    with HoldingProxy(consul_agent.url) as p:
        yield p
        p.let_go()


@pytest.fixture
def stoppers() -> Iterator[List[Callable[[], None]]]:
    made: List[Callable[[], None]] = []
    yield made
    for stop in made:
        stopper = threading.Thread(target=stop, daemon=True)
        stopper.start()
        stopper.join(20)


def elector_for(prefix: str, identity: str, address: str, stoppers: List[Callable[[], None]],
                **kwargs: Any) -> Elector:
    e = Elector(prefix, identity=identity, address=address, ttl=3.0, **kwargs)
    stoppers.append(e.stop)
    return e


def unseen_lock(consul_agent: ConsulAgent, proxy: HoldingProxy, key: str, start: Callable[[], None]) -> float:
    """*start* a candidate for *key* (free, LockIndex 1) through *proxy*;
    while its acquisition is on its way, another session takes the key and
    loses it. Returns when the acquisition was let go."""
    proxy.hold = acquisition_of(key)
    start()
    wait_until(proxy.held.is_set, what="the candidate's acquisition on its way")
    taken_and_lost(consul_agent.url, key)
    let_go = time.monotonic()
    proxy.let_go()
    wait_until(lambda: lock_index(consul_agent.url, key) == 3, what="the held acquisition took the lock")
    return let_go


def test_a_candidate_that_took_the_lock_without_seeing_it_free_waits_the_lock_delay(
        consul_agent: ConsulAgent, proxy: HoldingProxy, key: str, stoppers: List[Callable[[], None]]) -> None:
    c = Candidate(key, identity="c", address=proxy.address, ttl=3.0)
    stoppers.append(c.stop)
    led = election_times(c)
    let_go = unseen_lock(consul_agent, proxy, key, c.start)
    assert c.wait_for_leadership(30)
    assert first_election(led) - let_go >= c.timing.lock_delay, (
        f"led {first_election(led) - let_go:.2f}s after its acquisition passed someone else's term; its work may "
        f"run until {c.timing.lock_delay}s after its session ended")


def test_an_elector_that_took_a_key_without_seeing_it_free_waits_the_lock_delay(
        consul_agent: ConsulAgent, proxy: HoldingProxy, prefix: str, stoppers: List[Callable[[], None]]) -> None:
    key = f"{prefix}/k"
    prime_key(consul_agent.url, key)
    e = elector_for(prefix, "e", proxy.address, stoppers)
    k = e.candidate("k")
    led = election_times(k)
    let_go = unseen_lock(consul_agent, proxy, key, e.start)
    assert k.wait_for_leadership(30)
    assert first_election(led) - let_go >= e.timing.lock_delay, (
        f"led {first_election(led) - let_go:.2f}s after its acquisition passed someone else's term; its work may "
        f"run until {e.timing.lock_delay}s after its session ended")


@pytest.mark.parametrize("engine", ["candidate", "elector", "elector, key written meanwhile"])
def test_a_candidate_stopped_while_it_waits_on_an_unseen_lock_leaves_the_next_one_waiting_too(
        consul_agent: ConsulAgent, proxy: HoldingProxy, prefix: str, stoppers: List[Callable[[], None]],
        engine: str) -> None:
    # Released, the key would look freshly let go, and the next candidate,
    # seeing it free, would lead at once: inside the lock-delay the first
    # one was waiting out for the term before.
    key = f"{prefix}/k"
    prime_key(consul_agent.url, key)
    if engine == "candidate":
        first: Any = Candidate(key, identity="first", address=proxy.address, ttl=3.0)
        stoppers.append(first.stop)
        start, stop, timing = first.start, first.stop, first.timing
        nxt: Any = Candidate(key, identity="next", address=consul_agent.address, ttl=3.0)
        stoppers.append(nxt.stop)
        start_next = nxt.start
    else:
        e = elector_for(prefix, "first", proxy.address, stoppers)
        first = e.candidate("k")
        start, stop, timing = e.start, first.stop, e.timing
        n = elector_for(prefix, "next", consul_agent.address, stoppers)
        nxt = n.candidate("k")
        start_next = n.start
    led = election_times(first)
    unseen_lock(consul_agent, proxy, key, start)
    start_next()
    time.sleep(0.5)  # the next one watches the key
    next_led = election_times(nxt)
    if engine.endswith("written meanwhile"):
        # A plain write keeps the lock's session but moves the index that
        # the elector's delete of the key checks: it releases it instead.
        # Consul's plain write also resets LockIndex to 0, so the next
        # holder is still a first holder (LockIndex 1), and waits.
        requests.put(f"{consul_agent.url}/v1/kv/{key}", data=b"by hand", timeout=5).raise_for_status()
        time.sleep(0.2)
    stopped = time.monotonic()
    stop()
    assert nxt.wait_for_leadership(30)
    assert not led
    assert first_election(next_led) - stopped >= timing.lock_delay, (
        f"the next candidate led {first_election(next_led) - stopped:.2f}s after the first stopped during its wait")


@pytest.mark.parametrize("engine", ["candidate", "elector"])
def test_a_lock_taken_right_after_the_key_was_seen_free_is_led_without_a_lock_delay(
        consul_agent: ConsulAgent, prefix: str, stoppers: List[Callable[[], None]], engine: str) -> None:
    # The other side of the rule: a handover (the waiter saw the release)
    # and a start on a released key cost no lock-delay. lock_delay=30 makes
    # a wrongly added one plain, far beyond any scheduling noise.
    key = f"{prefix}/k"
    prime_key(consul_agent.url, key)
    made: List[Any] = []
    for name in ("a", "b"):
        if engine == "candidate":
            c: Any = Candidate(key, identity=name, address=consul_agent.address, ttl=3.0, lock_delay=30)
            stoppers.append(c.stop)
            made.append((c, c.start))
        else:
            e = elector_for(prefix, name, consul_agent.address, stoppers, lock_delay=30)
            made.append((e.candidate("k"), e.start))
    (a, start_a), (b, start_b) = made
    started = time.monotonic()
    start_a()
    assert a.wait_for_leadership(15), "a start on a released key waited (lock_delay is 30 s)"
    assert time.monotonic() - started < 15
    start_b()
    time.sleep(0.5)  # b watches the key
    resigned = time.monotonic()
    a.resign()
    assert b.wait_for_leadership(15), "a handover waited (lock_delay is 30 s)"
    assert time.monotonic() - resigned < 15


@pytest.mark.parametrize("engine", ["candidate", "elector"])
def test_a_key_freed_by_an_invalidation_is_led_only_a_lock_delay_after_it_was_seen_free(
        consul_agent: ConsulAgent, prefix: str, stoppers: List[Callable[[], None]], engine: str) -> None:
    # Consul keeps lock-delays in each server's memory, set as the server
    # applies the invalidation: a Raft leader elected before it applied it
    # (or restored from a snapshot) lets an acquisition in at once, and the
    # acquisition follows the free entry read, as after a release. Here the
    # holder's session has no lock-delay at all, which is what such a
    # leader amounts to; the entry still shows it was invalidated (it keeps
    # the holder's value), and the candidates' own lock-delay must keep
    # them from leading while that holder's lease may run.
    key = f"{prefix}/k"
    prime_key(consul_agent.url, key)
    url = consul_agent.url
    sid = requests.put(f"{url}/v1/session/create", json={"LockDelay": "0s"}, timeout=5).json()["ID"]
    assert requests.put(f"{url}/v1/kv/{key}?acquire={sid}", data=b"the old leader", timeout=5).json() is True
    if engine == "candidate":
        c: Any = Candidate(key, identity="c", address=consul_agent.address, ttl=3.0)
        stoppers.append(c.stop)
        start, timing = c.start, c.timing
    else:
        e = elector_for(prefix, "c", consul_agent.address, stoppers)
        c = e.candidate("k")
        start, timing = e.start, e.timing
    led = election_times(c)
    start()
    wait_until(lambda: c.leader() == "the old leader", what="the candidate sees the old leader")
    time.sleep(0.5)  # it waits on the key
    destroyed = time.monotonic()
    requests.put(f"{url}/v1/session/destroy/{sid}", timeout=5).raise_for_status()
    assert c.wait_for_leadership(30)
    assert first_election(led) - destroyed >= timing.lock_delay, (
        f"led {first_election(led) - destroyed:.2f}s after the old leader's session was invalidated; its work may run "
        f"until {timing.lock_delay}s after")
