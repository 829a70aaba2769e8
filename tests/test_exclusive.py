"""The work of two terms never overlaps: jobs run by ``run(job)``, receivers,
and the lease they rely on, under the faults that used to break it. Each
test is the regression test of one way it broke, against a real agent."""

from __future__ import annotations

import logging
import tempfile
import textwrap
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import requests
from garbling_proxy import GarblingProxy

from consul_leader import Candidate, Elector, Follower, deposed, elected, election_error
from consul_leader.client import ConsulClient, ConsulConfig
from consul_leader.session import Session, Timing
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, candidate_factory, paused_leader_run, prime_key, wait_until


class Work:
    """Jobs that record when they ran (monotonic seconds, shared by every
    process of the host) and take *linger* seconds to return once told to stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done: List[Tuple[str, Optional[int], float, float]] = []
        self.running: Dict[Tuple[str, int], Tuple[str, Optional[int], float]] = {}
        self.started = threading.Event()
        self._n = 0

    def job(self, candidate: Candidate, linger: float = 1.0) -> Callable[[threading.Event], None]:
        def job(stop: threading.Event) -> None:
            with self._lock:
                self._n += 1
                me = (candidate.identity, self._n)
                self.running[me] = (candidate.identity, candidate.fencing_token, time.monotonic())
            self.started.set()
            stop.wait()
            time.sleep(linger)
            with self._lock:
                who, token, start = self.running.pop(me)
                self.done.append((who, token, start, time.monotonic()))

        return job

    def intervals(self) -> List[Tuple[str, Optional[int], float, float]]:
        now = time.monotonic()
        with self._lock:
            return sorted(self.done + [(w, t, s, now) for w, t, s in self.running.values()], key=lambda i: i[2])

    def starts(self, who: str) -> int:
        return sum(1 for i in self.intervals() if i[0] == who)

    def overlaps(self) -> List[Any]:
        found = []
        spans = self.intervals()
        for i, a in enumerate(spans):
            for b in spans[i + 1:]:
                if b[2] < a[3]:
                    found.append((a, b))
        return found


@pytest.fixture
def own_agent() -> Iterator[ConsulAgent]:
    """An agent of the test's own, for faults that pause it."""
    with ConsulAgent() as agent:
        yield agent


@pytest.fixture
def own_candidates(own_agent: ConsulAgent) -> Iterator[Callable[..., Candidate]]:
    with candidate_factory(own_agent) as make:
        yield make


def key_entry(url: str, key: str) -> Optional[Dict[str, Any]]:
    r = requests.get(f"{url}/v1/kv/{key}", timeout=5)
    return None if r.status_code == 404 else r.json()[0]


# -- 1. a voluntary end waits for the job before the lock is released ----------

@pytest.mark.parametrize("how", ["stop", "resign", "term limit"])
def test_next_job_starts_only_after_the_last_one_returned(make_candidate: Any, key: str, how: str) -> None:
    a = make_candidate(key, term_limit=1.0 if how == "term limit" else None)
    b = make_candidate(key)
    work = Work()
    a.run(work.job(a, linger=1.0), block=False)
    assert a.wait_for_leadership(30)
    wait_until(lambda: work.starts(a.identity) == 1, what="a's job started")
    b.run(work.job(b, linger=0.0), block=False)
    if how == "stop":
        threading.Thread(target=a.stop).start()
    elif how == "resign":
        assert a.resign()
    wait_until(lambda: work.starts(b.identity) == 1, timeout=30, what="b's job started")
    assert work.overlaps() == []
    assert len([i for i in work.intervals() if i[0] == a.identity]) == 1


def test_a_job_that_does_not_return_keeps_the_lock_held(make_candidate: Any, key: str, consul_agent: ConsulAgent,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    a, b = make_candidate(key, ttl=1.0), make_candidate(key, ttl=1.0)
    let_go = threading.Event()
    a.run(lambda stop: let_go.wait(), block=False)
    assert a.wait_for_leadership(30)
    b.start()
    caplog.set_level(logging.WARNING, logger="consul_leader")
    assert a.resign()
    time.sleep(6.0)  # several check TTLs, and past the first "still runs" warning
    assert not a.is_leader() and not b.is_leader()
    entry = key_entry(consul_agent.url, key)
    assert entry is not None and entry.get("Session") and entry["Value"]  # still a's lock
    assert any("still runs" in r.getMessage() for r in caplog.records)
    let_go.set()
    wait_until(b.is_leader, timeout=30, what="b leads once a's job returned")


# -- 4. a key deleted under a leader: the next one waits the lock-delay ----------

PAUSABLE_LEADER = textwrap.dedent("""
    import sys, time
    from consul_leader import Candidate
    address, key, out = sys.argv[1:4]
    c = Candidate(key, address=address, identity="old")
    c.start()
    with open(out, "a") as fh:
        while True:
            t = time.monotonic()
            if c.is_leader():
                fh.write(f"{t}\\n")
                fh.flush()
            time.sleep(0.001)
""")


def test_key_deleted_under_a_paused_leader_then_a_fresh_candidate_never_overlaps(
        consul_agent: ConsulAgent, key: str, make_candidate: Any) -> None:
    out = tempfile.mktemp(prefix="consul-leader-old-")
    fresh = make_candidate(key)
    stopped_at, led, old = paused_leader_run(
        [PYTHON, "-c", PAUSABLE_LEADER, consul_agent.address, key, out], out, ready=lambda: True,
        fault=lambda: requests.delete(f"{consul_agent.url}/v1/kv/{key}", timeout=5).raise_for_status(),
        start=fresh.start, is_leader=fresh.is_leader, pause=1.2)
    # The old leader's lease may run until stopped_at + lease: nobody may lead before.
    assert led[0] >= stopped_at + fresh.timing.lease
    assert max(old) < led[0]


# -- 5. a lapsed lease ends the term, even if a late heartbeat succeeds ----------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_late_heartbeat_does_not_revive_a_lapsed_lease(consul_agent: ConsulAgent, key: str) -> None:
    clock = FakeClock()
    client = ConsulClient(ConsulConfig.from_args(address=consul_agent.address))
    timing = Timing.from_ttl(3.0)
    session = Session(client, timing, "lapse test", clock=clock)
    session.open()
    try:
        assert session.id is not None
        assert client.acquire(key, b"me", session.id).modify_index is not None
        session.set_leading(key, clock.now)
        assert session.beat() and session.lease_valid()
        clock.now += timing.lease + 0.1  # no round for longer than the lease
        assert not session.lease_valid()
        assert session.beat()  # the lock is still ours, and the round succeeds...
        assert not session.lease_valid() and session.lapsed  # ...but the term's lease stays over
        session.set_leading(key, clock.now)  # a new term starts a new lease
        assert session.beat() and session.lease_valid()
    finally:
        session.close()


def test_agent_paused_past_the_lease_ends_the_term_and_the_next_has_a_new_token(
        own_agent: ConsulAgent, own_candidates: Any) -> None:
    key = f"test/lapse-{uuid.uuid4().hex[:8]}/leader"
    prime_key(own_agent.url, key)
    # A check TTL far longer than the lease: the session survives the pause,
    # only the lease runs out.
    c = own_candidates(key, ttl=10.0, lease=1.0, heartbeat=0.3, timeout=0.5)
    tokens: List[int] = []
    reasons: List[str] = []
    elected.connect(lambda s, fencing_token: tokens.append(fencing_token), sender=c, weak=False)
    deposed.connect(lambda s, reason: reasons.append(reason), sender=c, weak=False)
    work = Work()
    c.run(work.job(c, linger=0.0), block=False)
    assert c.wait_for_leadership(30)
    wait_until(lambda: work.starts(c.identity) == 1, what="the job started")
    own_agent.pause()
    time.sleep(1.6)
    own_agent.resume()
    wait_until(lambda: len(tokens) >= 2 and c.is_leader(), timeout=30, what="a new term")
    assert reasons[0] == "lease expired"
    assert tokens[1] > tokens[0]
    wait_until(lambda: work.starts(c.identity) == 2, what="the new term runs the job again")
    assert work.overlaps() == []


# -- 6. no receiver runs on the heartbeat thread -------------------------------

def test_a_slow_election_error_receiver_does_not_cost_the_lease(own_agent: ConsulAgent,
                                                                own_candidates: Any) -> None:
    key = f"test/slow-receiver-{uuid.uuid4().hex[:8]}/leader"
    prime_key(own_agent.url, key)
    # Heartbeats every 1.33 s; a request gets 0.3 s: a pause of 1.8 s makes
    # at least one fail, and stays well inside the check's TTL (4 s).
    c = own_candidates(key, ttl=4.0, timeout=0.3)
    threads: List[str] = []
    reasons: List[str] = []

    def slow(sender: Any, error: Any) -> None:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            time.sleep(6.0)  # longer than the check's TTL
        raise RuntimeError("and a receiver that raises, too")

    election_error.connect(slow, sender=c, weak=False)
    deposed.connect(lambda s, reason: reasons.append(reason), sender=c, weak=False)
    c.start()
    assert c.wait_for_leadership(30)
    token = c.fencing_token
    own_agent.pause()
    time.sleep(1.8)  # a heartbeat round times out: election_error
    own_agent.resume()
    wait_until(lambda: bool(threads), timeout=10, what="election_error was sent")
    time.sleep(6.0)
    assert c.is_leader() and c.fencing_token == token and reasons == []
    assert not any(name.startswith("consul-leader-heartbeat") for name in threads)


# -- 7. a follower's thread survives garbage and long outages ---------------------

def test_follower_survives_garbled_answers_and_then_sees_the_leader(consul_agent: ConsulAgent, key: str,
                                                                     make_candidate: Any) -> None:
    with GarblingProxy(consul_agent.url) as proxy:
        proxy.garble = lambda method, path: path.startswith("/v1/kv/")
        with Follower(key, address=proxy.address) as follower:
            wait_until(lambda: proxy.garbled >= 2, timeout=30, what="the follower read garbage twice")
            proxy.garble = lambda method, path: False
            a = make_candidate(key).start()
            assert a.wait_for_leadership(30)
            wait_until(lambda: follower.leader() == a.identity, timeout=30, what="the follower sees the leader")


# -- 8. any exception while leading goes through the same ending -----------------

def test_unexpected_error_while_leading_ends_the_term_the_one_way(consul_agent: ConsulAgent, key: str,
                                                                  make_candidate: Any) -> None:
    with GarblingProxy(consul_agent.url) as proxy:
        a = make_candidate(key, address=proxy.address)
        b = make_candidate(key)
        reasons: List[str] = []
        deposed.connect(lambda s, reason: reasons.append(reason), sender=a, weak=False)
        work = Work()
        a.run(work.job(a, linger=4.0), block=False)  # lingers past the retry pause
        assert a.wait_for_leadership(30)
        b.run(work.job(b, linger=0.0), block=False)
        # The leader's watch of its key gets a 200 that is not JSON.
        proxy.garble = lambda method, path: method == "GET" and path.startswith("/v1/kv/") and "index=" in path
        wait_until(lambda: bool(reasons), timeout=30, what="a is deposed")
        proxy.garble = lambda method, path: False
        assert reasons[0] == "error"
        wait_until(lambda: work.starts(b.identity) >= 1, timeout=30, what="b runs the job")
        time.sleep(1.0)
        assert work.overlaps() == []


# -- 9. rapid resign/elect handovers never stall --------------------------------

def test_resigning_on_every_election_hands_over_without_a_stall(make_candidate: Any, key: str) -> None:
    a, b = make_candidate(key), make_candidate(key)
    log: List[Tuple[str, str, float]] = []
    enough = threading.Event()
    go = threading.Event()

    def on_elected(sender: Candidate, fencing_token: int) -> None:
        log.append(("elected", sender.identity, time.monotonic()))
        if len([e for e in log if e[0] == "elected"]) >= 60:
            enough.set()
        elif go.is_set():
            sender.resign()

    for c in (a, b):
        elected.connect(on_elected, sender=c, weak=False)
        deposed.connect(lambda s, reason: log.append(("deposed", s.identity, time.monotonic())), sender=c,
                        weak=False)
    # The resigning starts once b waits on the key: started together, b may
    # read the key free and its acquisition follow a's whole first term; it
    # cannot tell that from a term whose session ended under its
    # acquisition, and holds the lock one lock-delay (by design, and not the
    # handover this test is about).
    a.start()
    assert a.wait_for_leadership(30)
    b.start()
    wait_until(lambda: b.leader() == a.identity, what="b sees a lead")
    time.sleep(0.5)  # b waits on the key
    go.set()
    a.resign()
    assert enough.wait(120), f"only {len([e for e in log if e[0] == 'elected'])} elections"
    gaps = [nxt[2] - prev[2] for prev, nxt in zip(log, log[1:]) if prev[0] == "deposed" and nxt[0] == "elected"]
    # A stall is a whole check TTL (3 s) without a leader; a handover takes milliseconds.
    assert gaps and max(gaps) < a.timing.check_ttl / 2, sorted(gaps)[-5:]


# -- slow receivers cannot pile up: state signals keep only the latest --------

def test_slow_receivers_see_the_latest_error_and_the_term_end_waits_for_few(own_agent: ConsulAgent,
                                                                           own_candidates: Any) -> None:
    key = f"test/pile-{uuid.uuid4().hex[:8]}/leader"
    prime_key(own_agent.url, key)
    c = own_candidates(key, ttl=10.0, lease=3.0, heartbeat=0.3, timeout=0.2)
    delivered: List[Any] = []

    def slow(sender: Any, error: Any) -> None:
        delivered.append(error)
        time.sleep(1.0)

    election_error.connect(slow, sender=c, weak=False)
    errors: List[Any] = []
    events = c.events()
    threading.Thread(target=lambda: errors.extend(e for e in events if e.kind == "error"), daemon=True).start()
    c.start()
    assert c.wait_for_leadership(30)
    own_agent.pause()
    time.sleep(2.5)  # requests time out every few tenths of a second
    own_agent.resume()
    wait_until(lambda: len(errors) >= 6, timeout=10, what="several errors")
    started = time.monotonic()
    c.stop()  # waits for the receivers still queued, then releases
    took = time.monotonic() - started
    # Every error reached events(); the slow receiver got the latest ones,
    # not a backlog of one second each.
    assert len(delivered) < len(errors)
    assert took < len(errors) * 1.0, (took, len(errors), len(delivered))


# -- a waiting candidate whose session is lost makes a new one at once --------

def test_a_waiting_candidate_replaces_a_lost_session_at_once(make_candidate: Any, key: str) -> None:
    from consul_leader.testing import destroy_session, session_id

    a, b = make_candidate(key).start(), make_candidate(key)
    assert a.wait_for_leadership(30)
    b.start()
    wait_until(lambda: b.leader() == a.identity and session_id(b) is not None, what="b waits")
    old = session_id(b)
    destroy_session(b)
    # Not when its 30 s blocking query on the key ends: its heartbeat says so.
    wait_until(lambda: session_id(b) not in (None, old) and b.health().ok, timeout=10,
               what="b has a new session and a current heartbeat")
    a.stop()
    assert b.wait_for_leadership(30)


@pytest.mark.parametrize("kind", ["candidate", "elector"])
def test_a_job_that_returns_after_its_lease_ran_out_ends_the_term_as_lease_expired(
        consul_agent: ConsulAgent, key: str, kind: str) -> None:
    # The process is paused past the lease while its job is ending by
    # itself (consul-leader run's command killed by its watchdog process at
    # the lease's end); thawed, the job's thread returns before the lease
    # watchdog thread looks. The term ended as "job finished": a voluntary
    # step-down, wrongly reported, that sits the candidate out. The pause is
    # a clock that jumps just before the job returns.
    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    go = threading.Event()

    def job(stop_event: threading.Event) -> None:
        go.wait()
        offset[0] = 1000.0

    reasons: List[str] = []
    if kind == "candidate":
        runner: Any = Candidate(key, identity="a", address=consul_agent.address, clock=clock)
    else:
        prefix, name = key.rsplit("/", 1)
        elector = Elector(prefix, identity="a", address=consul_agent.address, clock=clock)
        runner = elector.candidate(name)

    @runner.on_deposed
    def record(sender: Any, reason: Any, **_: Any) -> None:
        reasons.append(str(reason))

    try:
        runner.run(job, block=False)
        assert runner.wait_for_leadership(15)
        go.set()
        wait_until(lambda: reasons, timeout=15, what="the end of the term")
        assert reasons[0] == "lease expired", reasons
    finally:
        deposed.disconnect(record)
        (runner if kind == "candidate" else elector).stop()
