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

import time
from typing import Any, Callable, Iterator, List

import pytest
import requests
from garbling_proxy import HoldingProxy, acquisition_of

from consul_leader import Candidate, Elector
from consul_leader.testing import ConsulAgent

from conftest import prime_key, wait_until


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


ENGINES = ["candidate", "elector"]


class Contender:
    """A :class:`Candidate` for ``<prefix>/k``, or the candidacy for ``k`` of
    an :class:`Elector` for *prefix*: ``c`` answers both ways, ``start``
    starts it, ``timing`` is its timing; stopped after the test."""

    def __init__(self, engine: str, prefix: str, identity: str, address: str,
                 stoppers: List[Callable[[], None]], **kwargs: Any) -> None:
        if engine == "candidate":
            self.c: Any = Candidate(f"{prefix}/k", identity=identity, address=address, ttl=3.0, **kwargs)
            self.start: Callable[[], object] = self.c.start
            self.timing = self.c.timing
            stoppers.append(self.c.stop)
        else:
            e = Elector(prefix, identity=identity, address=address, ttl=3.0, **kwargs)
            stoppers.append(e.stop)
            self.c, self.start, self.timing = e.candidate("k"), e.start, e.timing


def unseen_lock(consul_agent: ConsulAgent, proxy: HoldingProxy, key: str, start: Callable[[], object]) -> float:
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


@pytest.mark.parametrize("engine", ENGINES)
def test_a_lock_taken_without_seeing_the_key_free_waits_the_lock_delay(
        consul_agent: ConsulAgent, proxy: HoldingProxy, prefix: str, stoppers: List[Callable[[], None]],
        engine: str) -> None:
    prime_key(consul_agent.url, f"{prefix}/k")
    one = Contender(engine, prefix, "c", proxy.address, stoppers)
    led = election_times(one.c)
    let_go = unseen_lock(consul_agent, proxy, f"{prefix}/k", one.start)
    assert one.c.wait_for_leadership(30)
    assert first_election(led) - let_go >= one.timing.lock_delay, (
        f"led {first_election(led) - let_go:.2f}s after its acquisition passed someone else's term; its work may "
        f"run until {one.timing.lock_delay}s after its session ended")


@pytest.mark.parametrize("engine", ENGINES + ["elector, key written meanwhile"])
def test_a_candidate_stopped_while_it_waits_on_an_unseen_lock_leaves_the_next_one_waiting_too(
        consul_agent: ConsulAgent, proxy: HoldingProxy, prefix: str, stoppers: List[Callable[[], None]],
        engine: str) -> None:
    # Released, the key would look freshly let go, and the next candidate,
    # seeing it free, would lead at once: inside the lock-delay the first
    # one was waiting out for the term before.
    key = f"{prefix}/k"
    prime_key(consul_agent.url, key)
    kind = engine.split(",")[0]
    first = Contender(kind, prefix, "first", proxy.address, stoppers)
    nxt = Contender(kind, prefix, "next", consul_agent.address, stoppers)
    led = election_times(first.c)
    unseen_lock(consul_agent, proxy, key, first.start)
    nxt.start()
    time.sleep(0.5)  # the next one watches the key
    next_led = election_times(nxt.c)
    if engine.endswith("written meanwhile"):
        # A plain write keeps the lock's session but moves the index that
        # the elector's delete of the key checks: it releases it instead.
        # Consul's plain write also resets LockIndex to 0, so the next
        # holder is still a first holder (LockIndex 1), and waits.
        requests.put(f"{consul_agent.url}/v1/kv/{key}", data=b"by hand", timeout=5).raise_for_status()
        time.sleep(0.2)
    stopped = time.monotonic()
    first.c.stop()
    assert nxt.c.wait_for_leadership(30)
    assert not led
    assert first_election(next_led) - stopped >= first.timing.lock_delay, (
        f"the next candidate led {first_election(next_led) - stopped:.2f}s after the first stopped during its wait")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_lock_taken_right_after_the_key_was_seen_free_is_led_without_a_lock_delay(
        consul_agent: ConsulAgent, prefix: str, stoppers: List[Callable[[], None]], engine: str) -> None:
    # The other side of the rule: a handover (the waiter saw the release)
    # and a start on a released key cost no lock-delay. lock_delay=30 makes
    # a wrongly added one plain, far beyond any scheduling noise.
    prime_key(consul_agent.url, f"{prefix}/k")
    a, b = (Contender(engine, prefix, name, consul_agent.address, stoppers, lock_delay=30) for name in "ab")
    started = time.monotonic()
    a.start()
    assert a.c.wait_for_leadership(15), "a start on a released key waited (lock_delay is 30 s)"
    assert time.monotonic() - started < 15
    b.start()
    time.sleep(0.5)  # b watches the key
    resigned = time.monotonic()
    a.c.resign()
    assert b.c.wait_for_leadership(15), "a handover waited (lock_delay is 30 s)"
    assert time.monotonic() - resigned < 15


@pytest.mark.parametrize("engine", ENGINES)
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
    one = Contender(engine, prefix, "c", consul_agent.address, stoppers)
    led = election_times(one.c)
    one.start()
    wait_until(lambda: one.c.leader() == "the old leader", what="the candidate sees the old leader")
    time.sleep(0.5)  # it waits on the key
    destroyed = time.monotonic()
    requests.put(f"{url}/v1/session/destroy/{sid}", timeout=5).raise_for_status()
    assert one.c.wait_for_leadership(30)
    assert first_election(led) - destroyed >= one.timing.lock_delay, (
        f"led {first_election(led) - destroyed:.2f}s after the old leader's session was invalidated; its work may "
        f"run until {one.timing.lock_delay}s after")
