"""Elector: a request that fails in the middle of a step must not leave a
key held forever, nor a term that never ends. Real agent; the failures come
from a proxy in front of it that answers chosen requests with Consul's
``500 No cluster leader`` (what a cluster electing a new server answers),
before or after passing them on."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import requests
from garbling_proxy import Fail, FailingProxy
from support.roster import left_by_a_crash

from consul_leader import Candidacy, Elector
from consul_leader.testing import ConsulAgent

from conftest import prime_key, wait_until


def via(proxy: FailingProxy, prefix: str, electors: List[Elector], ttl: float) -> Elector:
    """An elector "a" for *prefix* that talks to the agent through *proxy*."""
    e = Elector(prefix, identity="a", address=proxy.address, ttl=ttl)
    electors.append(e)
    return e


def one_key(agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector],
            ttl: float) -> Tuple[str, Elector, Candidacy]:
    """The key ``<prefix>/k``, locked and released once (no first-holder
    wait), and its candidacy in an elector "a" through *proxy*."""
    key = f"{prefix}/k"
    prime_key(agent.url, key)
    e = via(proxy, prefix, electors, ttl=ttl)
    return key, e, e.candidate("k")


@pytest.fixture
def proxy(consul_agent: ConsulAgent) -> Iterator[FailingProxy]:
    with FailingProxy(consul_agent.url) as p:
        yield p


@pytest.fixture
def electors() -> Iterator[List[Elector]]:
    made: List[Elector] = []
    yield made
    for e in made:
        stopper = threading.Thread(target=e.stop, daemon=True)
        stopper.start()
        stopper.join(20)  # a test that failed may have left it unable to stop


def holders(agent: ConsulAgent, prefix: str) -> Dict[str, str]:
    """key -> identity of its holder, as Consul sees it."""
    resp = requests.get(f"{agent.url}/v1/kv/{prefix}/?recurse", timeout=5)
    entries = resp.json() if resp.status_code == 200 else []
    return {e["Key"]: base64.b64decode(e["Value"] or "").decode() for e in entries if e.get("Session")}


def releases_of(key: str) -> Fail:
    """The release of *key* (a plain ``?release=``, or the ``unlock`` of a
    transaction), or its deletion (how a first holder lets go)."""
    def pick(method: str, path: str, body: bytes) -> Optional[str]:
        if path.startswith("/v1/txn") and method == "PUT":
            unlocks = any(op.get("KV", {}).get("Verb") == "unlock" and op["KV"].get("Key") == key
                          for op in json.loads(body or b"[]"))
            return "before" if unlocks else None
        return "before" if path.startswith(f"/v1/kv/{key}?") and (
            method == "PUT" and "release=" in path or method == "DELETE") else None
    return pick


def deposed_in_time(told: List[float], since: float, e: Elector, after: str) -> None:
    """``deposed`` reached the receivers (*told*) before anyone else could be
    elected: within the check's TTL of *since* (*after* names that moment)."""
    wait_until(lambda: told, timeout=20, what="deposed")
    assert told[0] - since < e.timing.check_ttl, (
        f"deposed {told[0] - since:.2f}s after {after}; another process could lead after {e.timing.check_ttl}s")


def in_background(fn: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_stop_ends_every_term_when_a_first_holders_release_fails(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # One key waits as its first holder (a new key), another leads with a
    # job; stop() sends the first-holder's release, which fails. The other
    # key's term must still end: stop() used to give up on every key after
    # the first failed release, so the job was never told to stop, the key
    # stayed led and stop() never returned.
    prime_key(consul_agent.url, f"{prefix}/old")
    left_by_a_crash(consul_agent.url, f"{prefix}/new", 6.0)  # so the new key's first holder waits
    e = via(proxy, prefix, electors, ttl=6.0)
    new, old = e.candidate("new"), e.candidate("old")  # the new key comes first
    told: List[float] = []

    def job(stop_event: threading.Event) -> None:
        stop_event.wait()
        told.append(time.monotonic())

    old.run(job, block=False)
    assert old.wait_for_leadership(30)
    wait_until(lambda: holders(consul_agent, prefix).get(f"{prefix}/new") == "a", what="the new key held")
    assert not new.is_leader()  # it waits the lock-delay (6 s) as the first holder
    proxy.fail = releases_of(f"{prefix}/new")
    stopper = in_background(e.stop)
    wait_until(lambda: proxy.failed, timeout=10, what="the first holder's release tried")
    wait_until(lambda: told, timeout=15, what="the other key's job told to stop (stop() gave up on it)")
    assert not old.is_leader()
    proxy.fail = lambda method, path, body: None
    stopper.join(30)
    assert not stopper.is_alive(), "stop() did not return"
    assert holders(consul_agent, prefix) == {}


def test_a_withdrawn_first_holder_whose_release_failed_is_released_later(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # Candidacy.stop() of a key that waits as its first holder: the release
    # fails once. The key must still be released while the elector runs, and
    # stop() return: the candidacy was left neither waiting nor forgotten,
    # its key held by the live session for as long as the elector ran.
    left_by_a_crash(consul_agent.url, f"{prefix}/new", 6.0)  # so the new key's first holder waits
    e = via(proxy, prefix, electors, ttl=6.0)
    new = e.candidate("new")
    e.start()
    wait_until(lambda: holders(consul_agent, prefix).get(f"{prefix}/new") == "a", what="the new key held")
    proxy.fail_once(releases_of(f"{prefix}/new"))
    withdrawer = in_background(new.stop)
    withdrawer.join(30)
    assert proxy.failed
    assert not withdrawer.is_alive(), "Candidacy.stop() did not return"
    wait_until(lambda: not holders(consul_agent, prefix), timeout=15,
               what="the withdrawn key released (it stayed held by the elector's session)")
    assert e.running


def test_a_first_holder_whose_check_of_the_key_failed_still_leads(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # At the end of the first holder's wait, the read that proves the key
    # still its own fails once. The key must still be led: it stayed held by
    # the elector's own session, and nobody led it, for as long as the
    # elector ran.
    key = f"{prefix}/new"
    left_by_a_crash(consul_agent.url, key, 2.0)  # so the new key's first holder waits
    e = via(proxy, prefix, electors, ttl=2.0)
    new = e.candidate("new")
    proxy.fail = lambda method, path, body: None if proxy.failed or not (
        method == "GET" and path.split("?")[0] == f"/v1/kv/{key}" and "recurse" not in path) else "before"
    e.start()
    assert new.wait_for_leadership(20), f"not led; Consul says {holders(consul_agent, prefix)}"
    assert proxy.failed


def test_a_key_whose_acquisition_answer_was_lost_is_led(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # Consul took the lock but the answer never arrived: the key is held by
    # the elector's session. It must be led all the same: it stayed held,
    # and nobody led it, for as long as the elector ran.
    key, e, k = one_key(consul_agent, proxy, prefix, electors, ttl=2.0)

    def lose_the_answer(method: str, path: str, body: bytes) -> Optional[str]:
        if proxy.failed or method != "PUT" or not path.startswith("/v1/txn"):
            return None
        return "after" if any(op["KV"]["Key"] == key for op in json.loads(body)) else None

    proxy.fail = lose_the_answer
    e.start()
    assert k.wait_for_leadership(20), f"not led; Consul says {holders(consul_agent, prefix)}"
    assert proxy.failed


def test_a_withdrawn_leader_whose_release_failed_is_released_later(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # Candidacy.stop() of a led key, and the release after its job returned
    # fails once: the key must still be released while the elector runs.
    # It was forgotten with the lock held by the live session, for as long
    # as the elector ran (the log said Consul would free it "when the
    # session ends").
    key, e, k = one_key(consul_agent, proxy, prefix, electors, ttl=2.0)
    other = e.candidate("other")
    k.run(lambda stop_event: stop_event.wait(), block=False)
    assert k.wait_for_leadership(30)
    proxy.fail_once(releases_of(key))
    k.stop()
    assert proxy.failed
    wait_until(lambda: key not in holders(consul_agent, prefix), timeout=15,
               what="the withdrawn key released (it stayed held by the elector's session)")
    assert e.running and other.running


def test_a_resigned_key_whose_release_failed_is_led_again(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # resign(), and the release fails once: the key must be led again (it
    # sits out, then runs again). It stayed held by the elector's live
    # session and nobody led it, for as long as the elector ran.
    key, e, k = one_key(consul_agent, proxy, prefix, electors, ttl=2.0)
    k.run(lambda stop_event: stop_event.wait(), block=False)
    assert k.wait_for_leadership(30)
    proxy.fail_once(releases_of(key))
    assert k.resign()
    wait_until(lambda: proxy.failed, timeout=10, what="the release tried")
    assert k.wait_for_leadership(20), f"not led again; Consul says {holders(consul_agent, prefix)}"


@pytest.fixture
def own_agent() -> Iterator[ConsulAgent]:
    """An agent this test may freeze."""
    with ConsulAgent() as agent:
        yield agent


def test_deposed_is_delivered_at_the_lease_end_while_the_worker_waits_on_a_frozen_agent(
        own_agent: ConsulAgent) -> None:
    # A key with a job, and work started by an on_elected receiver that the
    # on_deposed receiver stops. The worker thread sits in a request to the
    # frozen agent (the release of a resigned key, up to the 15 s request
    # timeout) while the other key's lease runs out: its job is told by the
    # lease watchdog, and deposed must reach the receivers as soon as the job
    # returned, before anyone else can be elected (the check's TTL after the
    # freeze). It came 15.0 s after the freeze, when the worker's request
    # gave up: the watchdog's ending of the term went through the worker.
    prefix = "frozen-receivers"
    for name in ("working", "idle"):
        prime_key(own_agent.url, f"{prefix}/{name}")
    e = Elector(prefix, identity="a", address=own_agent.address, ttl=3.0, timeout=15.0)
    working, idle = e.candidate("working"), e.candidate("idle")
    told: List[float] = []
    working.on_deposed(lambda sender, reason: told.append(time.monotonic()))
    working.run(lambda stop_event: stop_event.wait(), block=False)
    try:
        assert working.wait_for_leadership(30) and idle.wait_for_leadership(30)
        own_agent.pause()
        try:
            frozen = time.monotonic()
            assert idle.resign()  # the worker now sends the release and waits
            deposed_in_time(told, frozen, e, "the freeze")
        finally:
            own_agent.resume()
    finally:
        e.stop()


def test_a_deleted_key_whose_first_holder_withdrew_is_led_only_after_the_lock_delay(
        consul_agent: ConsulAgent, prefix: str, electors: List[Elector]) -> None:
    # The key is deleted under its leader (no lock-delay from Consul). The
    # next holder is its first (LockIndex 1) and waits the lock-delay before
    # leading, so that a leader that has not yet noticed (paused) is not
    # overlapped. If that first holder withdraws during its wait, the key
    # must not become an ordinary released key that the next candidate leads
    # at once: its release left LockIndex 1 behind, the next acquisition got
    # LockIndex 2 and led without waiting.
    key = f"{prefix}/k"
    prime_key(consul_agent.url, key)
    # A third leader of the key, paused (its roster entry, led): whoever
    # takes the deleted key first must wait for it.
    left_by_a_crash(consul_agent.url, key, 3.0)
    a = Elector(prefix, identity="a", address=consul_agent.address, ttl=3.0)
    b = Elector(prefix, identity="b", address=consul_agent.address, ttl=3.0)
    electors.extend([a, b])
    ka, kb = a.candidate("k"), b.candidate("k")
    a.start()
    assert ka.wait_for_leadership(30)
    b.start()
    time.sleep(0.5)  # b watches the key
    led: List[float] = []
    for c in (ka, kb):
        c.on_elected(lambda sender, fencing_token: led.append(time.monotonic()))
    deleted = time.monotonic()
    requests.delete(f"{consul_agent.url}/v1/kv/{key}", timeout=5).raise_for_status()
    wait_until(lambda: holders(consul_agent, prefix).get(key), what="a first holder")
    first = holders(consul_agent, prefix)[key]
    assert not led  # the first holder waits
    (kb if first == "b" else ka).stop()  # withdraws while it waits
    other = ka if first == "b" else kb
    assert other.wait_for_leadership(30)
    assert led[0] - deleted >= a.timing.lock_delay, (
        f"{other.identity} led {led[0] - deleted:.2f}s after the key was deleted; a leader that had not "
        f"noticed could lead until {a.timing.lease}s after its last proof")


def test_a_key_lost_while_the_worker_sends_a_slow_request_is_deposed_before_another_leads_it(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # "a" leads x with work that an on_elected receiver starts and an
    # on_deposed receiver stops (no job, so no lease watchdog). In one
    # transaction an operator deletes x and another holder lets go of y:
    # a's worker sees x lost and y free in the same change, and sends y's
    # acquisition, which the agent is slow to answer. x's deposed must reach
    # a's receivers before "b", which runs for x, is elected (one lock-delay
    # after the deletion). It came when the acquisition gave up (the 5 s
    # request timeout): a term ended by anything but its lease's end waited
    # for the worker, and the worker's requests were bounded only by the
    # leases of the keys still led.
    x, y = f"{prefix}/x", f"{prefix}/y"
    prime_key(consul_agent.url, x)
    sid = requests.put(f"{consul_agent.url}/v1/session/create", json={"LockDelay": "0s"}, timeout=5).json()["ID"]
    try:
        assert requests.put(f"{consul_agent.url}/v1/kv/{y}?acquire={sid}", data=b"z", timeout=5).json() is True
        a = via(proxy, prefix, electors, ttl=3.0)
        ax, _ = a.candidate("x"), a.candidate("y")
        b = Elector(prefix, identity="b", address=consul_agent.address, ttl=3.0)
        electors.append(b)
        bx = b.candidate("x")
        seen: List[str] = []
        at: Dict[str, float] = {}

        def note(what: str) -> None:
            seen.append(what)
            at[what] = time.monotonic()

        ax.on_elected(lambda sender, fencing_token: note("a elected"))
        ax.on_deposed(lambda sender, reason: note("a deposed"))
        bx.on_elected(lambda sender, fencing_token: note("b elected"))
        a.start()
        assert ax.wait_for_leadership(30)
        b.start()
        wait_until(lambda: bx.leader() == "a", what="b sees a lead x")
        slowed = threading.Event()

        def slow_acquisition_of_y(method: str, path: str, body: bytes) -> Optional[str]:
            if slowed.is_set() or method != "PUT" or not path.startswith("/v1/txn") or \
                    not any(op["KV"]["Key"] == y for op in json.loads(body)):
                return None
            slowed.set()
            time.sleep(a.client.config.timeout + 1)  # the agent answers after the client gave up
            return "before"

        proxy.fail = slow_acquisition_of_y
        deleted = time.monotonic()
        requests.put(f"{consul_agent.url}/v1/txn", json=[
            {"KV": {"Verb": "delete", "Key": x}},
            {"KV": {"Verb": "unlock", "Key": y, "Session": sid}},
        ], timeout=5).raise_for_status()
        wait_until(lambda: "b elected" in seen and "a deposed" in seen, timeout=20, what="b elected, a deposed")
        assert slowed.is_set()
        assert seen.index("a deposed") < seen.index("b elected"), (
            "b was elected for x while a's receivers had not been told it lost x: " +
            ", ".join(f"{what} {at[what] - deleted:+.2f}s" for what in seen if what in at))
    finally:
        requests.put(f"{consul_agent.url}/v1/session/destroy/{sid}", timeout=5)


def test_a_key_won_just_before_the_agent_froze_is_deposed_at_its_lease_end(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # A key without a job (its work started by an on_elected receiver) is
    # won, and the agent freezes right after answering the acquisition,
    # before its watch or a heartbeat round showed the key taken: the worker
    # then has nothing to do, and its timer must end the term at the lease's
    # end. deposed must reach the receivers before anyone else can be
    # elected (the check's TTL after the freeze). The timer left out the
    # term just started, and the worker slept on (up to a minute).
    key, e, k = one_key(consul_agent, proxy, prefix, electors, ttl=3.0)
    told: List[float] = []
    k.on_deposed(lambda sender, reason: told.append(time.monotonic()))
    frozen: List[float] = []
    listed: List[str] = []
    thawed = threading.Event()

    def freeze_after_the_acquisition(method: str, path: str, body: bytes) -> Optional[str]:
        listing = method == "GET" and "recurse" in path and path.startswith(f"/v1/kv/{prefix}")
        if frozen or (listing and listed):  # the listings after the first (which shows the key free): frozen
            thawed.wait(60)
            return "before"
        if listing:
            listed.append(path)
        if method == "PUT" and path.startswith("/v1/txn") and any(op["KV"]["Key"] == key for op in json.loads(body)):
            frozen.append(time.monotonic())  # answered; nothing after it is
        return None

    proxy.fail = freeze_after_the_acquisition
    e.start()
    try:
        assert k.wait_for_leadership(20)
        deposed_in_time(told, frozen[0], e, "the freeze")
    finally:
        proxy.fail = lambda method, path, body: None
        thawed.set()


def test_a_key_without_a_job_is_deposed_at_its_lease_end_while_the_worker_backs_off(
        own_agent: ConsulAgent, electors: List[Elector]) -> None:
    # "a" leads x, whose work an on_elected receiver started (no job, so no
    # lease watchdog), and runs for y, which is free but whose acquisition
    # keeps failing: the worker's backoff grows to the check's TTL. Then the
    # agent freezes, and a key is added: the worker's next request is cut
    # short at x's lease end, and it backs off again. deposed must reach x's
    # receivers before anyone else can be elected (the check's TTL after the
    # freeze). It came a whole backoff after the lease's end: the backoff
    # replaced the worker's timer, which held that end.
    prefix = "frozen-backoff"
    x, y = f"{prefix}/x", f"{prefix}/y"
    for key in (x, y):
        prime_key(own_agent.url, key)
    with FailingProxy(own_agent.url) as proxy:
        frozen: List[float] = []

        def refuse_y_then_freeze(method: str, path: str, body: bytes) -> Optional[str]:
            if not frozen and method == "PUT" and path.startswith("/v1/txn") and \
                    any(op["KV"]["Key"] == y for op in json.loads(body)):
                if len(proxy.failed) >= 8:  # the backoff is at its longest
                    own_agent.pause()
                    frozen.append(time.monotonic())
                return "before"
            return None

        proxy.fail = refuse_y_then_freeze
        a = via(proxy, prefix, electors, ttl=3.0)
        ax, _ = a.candidate("x"), a.candidate("y")  # x first: y's failure ends each sweep
        told: List[float] = []
        ax.on_deposed(lambda sender, reason: told.append(time.monotonic()))
        a.start()
        try:
            assert ax.wait_for_leadership(30)
            wait_until(lambda: frozen, timeout=30, what="the backoff grown")
            time.sleep(0.5)  # within x's lease, which the last proof (at most a heartbeat ago) extended
            a.candidate("z")
            deposed_in_time(told, frozen[0], a, "the freeze")
        finally:
            own_agent.resume()
            a.stop()


def test_a_key_without_a_job_is_deposed_at_its_lease_end_while_the_worker_waits_for_a_heartbeat_round(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # "a" leads x, whose work an on_elected receiver started (no job, so no
    # lease watchdog). The agent stops answering the heartbeat's check
    # passes, and the process pauses (a clock that jumps a lease ahead) just
    # as it wins y: to lead y, the worker waits for the heartbeat round that
    # sits in a request to the agent. x's lease is over: deposed must reach
    # its receivers before anyone else can be elected (the check's TTL after
    # its last pass). It came when that round gave up (the 5 s timeout).
    x, y = f"{prefix}/x", f"{prefix}/y"
    prime_key(consul_agent.url, x)
    prime_key(consul_agent.url, y)
    sid = requests.put(f"{consul_agent.url}/v1/session/create", json={"LockDelay": "0s"}, timeout=5).json()["ID"]
    try:
        assert requests.put(f"{consul_agent.url}/v1/kv/{y}?acquire={sid}", data=b"z", timeout=5).json() is True
        ahead = [0.0]
        a = Elector(prefix, identity="a", address=proxy.address, ttl=3.0, clock=lambda: time.monotonic() + ahead[0])
        electors.append(a)
        ax, ay = a.candidate("x"), a.candidate("y")
        told: List[float] = []
        ax.on_deposed(lambda sender, reason: told.append(time.monotonic()))
        a.start()
        assert ax.wait_for_leadership(30)
        wait_until(lambda: ay.leader() == "z", what="y seen held")
        passes_hang: List[float] = []
        thawed = threading.Event()

        def hang_passes_then_pause_on_y(method: str, path: str, body: bytes) -> Optional[str]:
            if method == "PUT" and path.startswith("/v1/agent/check/pass/"):
                passes_hang.append(time.monotonic())
                thawed.wait(60)
                return "before"
            if method == "PUT" and path.startswith("/v1/txn") and any(op["KV"]["Key"] == y for op in json.loads(body)):
                ahead[0] += a.timing.lease  # the process pauses while Consul answers
            return None

        proxy.fail = hang_passes_then_pause_on_y
        try:
            wait_until(lambda: passes_hang, timeout=10, what="a heartbeat round waiting")
            requests.put(f"{consul_agent.url}/v1/kv/{y}?release={sid}", timeout=5).raise_for_status()
            deposed_in_time(told, passes_hang[0], a, "the check's last pass")
        finally:
            proxy.fail = lambda method, path, body: None
            thawed.set()
    finally:
        requests.put(f"{consul_agent.url}/v1/session/destroy/{sid}", timeout=5)


def test_a_resigned_key_whose_release_failed_goes_to_the_other_elector(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # resign() while another elector waits for the key, and the release
    # fails once: the key must go to the other elector, as the resign
    # meant. It stayed held by the resigner's live session through its
    # sit-out (nobody led it), and then the resigner took it back and led
    # it again, for good.
    key, a, ak = one_key(consul_agent, proxy, prefix, electors, ttl=2.0)
    a.start()
    assert ak.wait_for_leadership(30)
    b = Elector(prefix, identity="b", address=consul_agent.address, ttl=2.0)
    electors.append(b)
    bk = b.candidate("k")
    b.start()
    time.sleep(0.5)  # b waits on the key
    proxy.fail_once(releases_of(key))
    assert ak.resign()
    wait_until(lambda: proxy.failed, timeout=10, what="the release tried")
    assert bk.wait_for_leadership(15), f"the other elector never led; Consul says {holders(consul_agent, prefix)}"


def test_a_key_whose_acquisition_keeps_failing_does_not_keep_the_others_from_being_led(
        consul_agent: ConsulAgent, proxy: FailingProxy, prefix: str, electors: List[Elector]) -> None:
    # Every acquisition of one key fails (as for a key the ACL token may not
    # lock): the keys after it must still be taken. The failure raised out
    # of the worker's look at the keys, and each retry failed again on the
    # same key first, so the keys after it were never tried.
    bad, good = f"{prefix}/bad", f"{prefix}/good"
    for key in (bad, good):
        prime_key(consul_agent.url, key)
    proxy.fail = lambda method, path, body: "before" if path.startswith("/v1/txn") and \
        f'"{bad}"'.encode() in body and b'"lock"' in body else None
    e = via(proxy, prefix, electors, ttl=2.0)
    bad_key, good_key = e.candidate("bad"), e.candidate("good")  # the failing key comes first
    e.start()
    assert good_key.wait_for_leadership(15), f"never led; Consul says {holders(consul_agent, prefix)}"
    assert proxy.failed and not bad_key.is_leader()
