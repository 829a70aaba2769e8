"""The Candidate's contract against a real Consul agent (in one process)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, List, Tuple

import pytest
import requests
from garbling_proxy import GarblingProxy

from consul_leader import (
    Candidate,
    LockHeld,
    NotLeader,
    RequestRejected,
    deposed,
    elected,
    election_error,
    is_leader,
    leader_changed,
    leader_only,
    on_deposed,
    on_elected,
    set_default,
)
from consul_leader.testing import ConsulAgent, check_id, delete_key, destroy_session, overwrite_key, session_id

from conftest import leaders, wait_until


def kv(agent: ConsulAgent, key: str) -> Any:
    r = requests.get(f"{agent.url}/v1/kv/{key}", timeout=5)
    return r.json()[0] if r.status_code == 200 else None


def test_exactly_one_leader_among_threads_and_all_agree(make_candidate, key):
    cands = [make_candidate(key).start() for _ in range(5)]
    wait_until(lambda: len(leaders(cands)) == 1, what="one leader")
    leader = leaders(cands)[0]
    wait_until(lambda: all(c.leader() == leader.identity for c in cands), what="all agree on the leader")
    for _ in range(20):
        assert len(leaders(cands)) == 1
        time.sleep(0.05)
    assert leader.fencing_token is not None
    assert all(c.fencing_token is None for c in cands if c is not leader)


def test_resign_hands_over_and_the_resigned_candidate_can_win_again(make_candidate, key):
    a, b = make_candidate(key).start(), make_candidate(key).start()
    wait_until(lambda: len(leaders([a, b])) == 1)
    first, second = (a, b) if a.is_leader() else (b, a)
    assert first.resign() is True
    assert not first.is_leader()  # turns False before the release is even sent
    wait_until(second.is_leader, what="handover after resign")
    assert first.running
    second.stop()
    wait_until(first.is_leader, what="the resigned candidate wins again")


def test_stop_hands_over_and_releases_everything(make_candidate, key, consul_agent):
    a, b = make_candidate(key).start(), make_candidate(key).start()
    wait_until(lambda: len(leaders([a, b])) == 1)
    first, second = (a, b) if a.is_leader() else (b, a)
    sid = session_id(first)
    first.stop()
    assert not first.is_leader()
    wait_until(second.is_leader, what="handover after stop")
    info = requests.get(f"{consul_agent.url}/v1/session/info/{sid}", timeout=5).json()
    assert not info, "stop() destroys the session"
    checks = requests.get(f"{consul_agent.url}/v1/agent/checks", timeout=5).json()
    assert check_id(first) not in checks, "stop() deregisters the check"


def test_resign_when_not_leading_is_a_no_op(make_candidate, key):
    a = make_candidate(key)
    assert a.resign() is False


@pytest.mark.parametrize("fault", ["destroy session", "delete key", "overwrite key"])
def test_leader_is_deposed_at_once_and_the_election_goes_on(make_candidate, key, consul_agent, fault):
    a, b = make_candidate(key).start(), make_candidate(key).start()
    wait_until(lambda: len(leaders([a, b])) == 1)
    first = leaders([a, b])[0]
    reasons: List[str] = []
    deposed.connect(lambda s, reason: reasons.append(reason), sender=first, weak=False)
    old_token = first.fencing_token
    if fault == "destroy session":
        destroy_session(first)
    elif fault == "delete key":
        delete_key(first)
    else:
        overwrite_key(first, b"intruder")
    wait_until(lambda: reasons, timeout=10, what="deposed")
    # The watch noticed (had the lease run out first, the reason would say so).
    assert reasons[0] in ("lock lost", "key overwritten")
    wait_until(lambda: len(leaders([a, b])) == 1, what="a new term")
    new = leaders([a, b])[0]
    assert new.fencing_token > old_token


def test_fencing_tokens_strictly_increase_across_terms(make_candidate, key):
    cands = [make_candidate(key).start() for _ in range(3)]
    tokens: List[int] = []
    for _ in range(5):
        wait_until(lambda: len(leaders(cands)) == 1)
        leader = leaders(cands)[0]
        tokens.append(leader.fencing_token)
        leader.resign()
        wait_until(lambda leader=leader: not leader.is_leader())
    assert tokens == sorted(set(tokens)) and len(tokens) == 5


def test_signals_come_in_order_elected_then_deposed(make_candidate, key):
    cands = [make_candidate(key).start() for _ in range(3)]
    seen: List[Tuple[str, str]] = []
    lock = threading.Lock()
    for c in cands:
        elected.connect(lambda s, fencing_token: (lock.acquire(), seen.append((s.identity, "e")), lock.release()),
                        sender=c, weak=False)
        deposed.connect(lambda s, reason: (lock.acquire(), seen.append((s.identity, "d")), lock.release()),
                        sender=c, weak=False)
    for _ in range(4):
        wait_until(lambda: len(leaders(cands)) == 1)
        leaders(cands)[0].resign()
    for c in cands:
        c.stop()
    for c in cands:
        mine = [kind for who, kind in seen if who == c.identity]
        # alternating, starting with elected: deposed never without a prior elected
        assert mine == ["e", "d"] * (len(mine) // 2), (c.identity, mine)
    assert sum(1 for _, kind in seen if kind == "e") >= 4


def test_a_raising_receiver_is_logged_and_the_election_goes_on(make_candidate, key, caplog):
    a = make_candidate(key)

    def broken(sender, **kw):
        raise RuntimeError("receiver bug")

    elected.connect(broken, sender=a, weak=False)
    got: List[int] = []
    elected.connect(lambda s, fencing_token: got.append(fencing_token), sender=a, weak=False)
    with caplog.at_level(logging.ERROR, logger="consul_leader"):
        a.start()
        assert a.wait_for_leadership(30)
        wait_until(lambda: got, what="the second receiver ran")
    assert any("receiver bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert a.is_leader() and a.health().running


def test_leader_changed_reports_the_new_leader(make_candidate, key):
    a, b = make_candidate(key), make_candidate(key)
    seen: List[Any] = []
    leader_changed.connect(lambda s, leader: seen.append(leader), sender=b, weak=False)
    a.start()
    assert a.wait_for_leadership(30)
    b.start()
    wait_until(lambda: a.identity in seen, what="b sees a")
    a.stop()
    wait_until(b.is_leader)
    # Receivers run on the candidate's signal thread, just after is_leader() turned True.
    wait_until(lambda: b.identity in seen, what="b's receiver heard it leads")


def test_term_limit_makes_the_leader_step_down_and_others_take_turns(make_candidate, key):
    a = make_candidate(key, term_limit=1.5)
    b = make_candidate(key, term_limit=1.5)
    reasons: List[str] = []
    deposed.connect(lambda s, reason: reasons.append(reason), sender=a, weak=False)
    deposed.connect(lambda s, reason: reasons.append(reason), sender=b, weak=False)
    a.start()
    assert a.wait_for_leadership(30)
    b.start()
    wait_until(b.is_leader, timeout=30, what="b leads after a's term ends")
    wait_until(a.is_leader, timeout=30, what="a leads again after b's term ends")
    assert reasons[:2] == ["term limit", "term limit"]


def test_try_once_gives_up_when_the_lock_is_held(make_candidate, key):
    holder = make_candidate(key).start()
    assert holder.wait_for_leadership(30)
    once = make_candidate(key, wait=False).start()
    with pytest.raises(LockHeld, match="wait=False"):
        once.wait_for_leadership(30)
    wait_until(lambda: not once.running, what="the try-once candidate stops")
    assert holder.is_leader()
    with pytest.raises(LockHeld):
        make_candidate(key, wait=False).run(lambda stop: None)


def test_try_once_leads_when_the_lock_is_free(make_candidate, key):
    once = make_candidate(key, wait=False).start()
    assert once.wait_for_leadership(30)


def test_run_job_gets_a_stop_event_set_when_leadership_ends(make_candidate, key):
    a = make_candidate(key)
    started = threading.Event()
    stopped = threading.Event()

    def job(stop_event: threading.Event) -> None:
        started.set()
        stop_event.wait()
        assert not a.is_leader()  # leadership ends before the job is told
        stopped.set()

    a.run(job, block=False)
    assert started.wait(30)
    assert a.is_leader()
    a.resign()
    assert stopped.wait(10)


def test_run_job_that_returns_makes_the_candidate_resign(make_candidate, key):
    a = make_candidate(key)
    reasons: List[str] = []
    deposed.connect(lambda s, reason: reasons.append(reason), sender=a, weak=False)
    runs: List[int] = []
    a.run(lambda stop: runs.append(1), block=False)
    wait_until(lambda: reasons, what="deposed after the job returned")
    assert reasons[0] == "job finished"
    wait_until(lambda: len(runs) >= 2, what="the job runs again in the next term")


def test_run_blocks_until_stop(make_candidate, key):
    a = make_candidate(key)
    threading.Timer(1.0, a.stop).start()
    ran = threading.Event()
    a.run(lambda stop: (ran.set(), stop.wait()))
    assert ran.is_set() and not a.running


def test_events_iterator_yields_elected_and_deposed(make_candidate, key):
    a = make_candidate(key)
    got: List[Any] = []

    def consume() -> None:
        for event in a.events():
            got.append(event)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.1)
    a.start()
    assert a.wait_for_leadership(30)
    a.resign()
    wait_until(lambda: len(got) >= 2)
    a.stop()
    t.join(10)
    assert not t.is_alive(), "the iterator ends when the candidate stops"
    assert got[0].kind == "elected" and got[0].fencing_token > 0
    assert got[1].kind == "deposed" and got[1].reason == "resigned"


def test_decorators_bound_to_a_candidate(make_candidate, key):
    a = make_candidate(key)
    calls: List[str] = []

    @a.leader_only
    def work() -> str:
        return "done"

    @a.leader_only(raise_not_leader=True)
    def strict() -> str:
        return "done"

    a.on_elected(lambda s, fencing_token: calls.append("elected"))
    a.on_deposed(lambda s, reason: calls.append("deposed"))
    assert work() is None
    with pytest.raises(NotLeader):
        strict()
    a.start()
    assert a.wait_for_leadership(30)
    wait_until(lambda: calls == ["elected"])
    assert work() == "done" and strict() == "done"
    a.resign()
    wait_until(lambda: calls == ["elected", "deposed"])
    assert work() is None


def test_bare_decorators_use_the_default_candidate(make_candidate, key):
    set_default(None)
    calls: List[str] = []

    @leader_only
    def work() -> str:
        return "done"

    @on_elected
    def up(sender, fencing_token):
        calls.append(f"elected {sender.identity}")

    @on_deposed
    def down(sender, reason):
        calls.append(f"deposed {sender.identity}")

    try:
        assert work() is None and is_leader() is False
        a = make_candidate(key)
        other = make_candidate(key + "-other")
        a.start()  # the first started becomes the default
        other.start()
        assert a.wait_for_leadership(30) and other.wait_for_leadership(30)
        wait_until(lambda: calls == [f"elected {a.identity}"], what="only the default's signal is handled")
        assert work() == "done" and is_leader() is True
        set_default(other)
        a.resign()
        time.sleep(0.3)
        assert calls == [f"elected {a.identity}"], "a is no longer the default"
        other.resign()
        wait_until(lambda: calls[-1] == f"deposed {other.identity}")
    finally:
        set_default(None)


def test_wait_for_leadership_times_out_while_another_leads(make_candidate, key):
    a = make_candidate(key).start()
    assert a.wait_for_leadership(30)
    b = make_candidate(key).start()
    assert b.wait_for_leadership(0.5) is False


def test_consul_down_at_start_is_retried_and_reported_then_elected(key):
    agent = ConsulAgent()
    errors: List[BaseException] = []
    c = Candidate(key, address=agent.address, ttl=1)
    election_error.connect(lambda s, error: errors.append(error), sender=c, weak=False)
    try:
        c.start()
        wait_until(lambda: len(errors) >= 2, what="errors reported while the agent is down")
        assert c.health().running
        agent.start()
        assert c.wait_for_leadership(60)
        assert "cannot reach the Consul agent" in str(errors[0])
    finally:
        c.stop()
        agent.__exit__(None, None, None)


def test_agent_restart_deposes_then_a_new_session_wins(key):
    agent = ConsulAgent().start()
    c = Candidate(key, address=agent.address, ttl=1)
    reasons: List[str] = []
    deposed.connect(lambda s, reason: reasons.append(reason), sender=c, weak=False)
    try:
        c.start()
        assert c.wait_for_leadership(30)
        old_session = session_id(c)
        agent.restart()
        wait_until(lambda: reasons, what="deposed after the agent restarted")
        assert c.wait_for_leadership(60)
        assert session_id(c) != old_session
    finally:
        c.stop()
        agent.__exit__(None, None, None)


def test_job_hears_the_lease_end_even_while_the_agent_hangs(key):
    agent = ConsulAgent().start()
    c = Candidate(key, address=agent.address, ttl=1, timeout=30)
    stopped = threading.Event()
    seen_leader_at_stop: List[bool] = []

    def job(stop_event: threading.Event) -> None:
        stop_event.wait()
        seen_leader_at_stop.append(c.is_leader())
        stopped.set()

    try:
        c.run(job, block=False)
        assert c.wait_for_leadership(30)
        agent.pause()  # every request now hangs (timeout=30 s), the lease is 0.83 s
        assert stopped.wait(10), "the job was not told to stop while the agent hung"
        assert seen_leader_at_stop == [False]
        assert c.health().running
    finally:
        agent.resume()
        c.stop()
        agent.__exit__(None, None, None)


def test_run_on_a_candidate_that_already_leads_starts_the_job_for_this_term(make_candidate, key):
    a = make_candidate(key).start()
    assert a.wait_for_leadership(30)
    ran = threading.Event()
    a.run(lambda stop: (ran.set(), stop.wait()), block=False)
    assert ran.wait(10)


def test_the_default_passes_on_when_the_default_candidate_stops(make_candidate, key):
    set_default(None)
    try:
        first = make_candidate(key).start()
        second = make_candidate(key + "-2").start()
        assert second.wait_for_leadership(30)
        first.stop()
        assert is_leader() is True, "the running candidate is now the default"
        set_default(first)
        assert is_leader() is False, "an explicit choice sticks"
    finally:
        set_default(None)


def test_a_request_consul_rejects_as_invalid_again_and_again_is_final(make_candidate, key):
    # Consul 1.8 answers 400 to keys with characters newer than its Unicode
    # tables; Python calls them printable, so only Consul can say no.
    errors: List[BaseException] = []
    c = make_candidate(key + "-\U0001F972")  # an emoji of Unicode 13 (2020)
    election_error.connect(lambda s, error: errors.append(error), sender=c, weak=False)
    c.start()
    with pytest.raises(RequestRejected, match="refused the request as invalid"):
        c.wait_for_leadership(30)
    wait_until(lambda: not c.running, what="the candidate gives up")
    # Three answers in a row (one alone may come from a proxy on the way).
    assert len(errors) == 3 and all(isinstance(e, RequestRejected) for e in errors)


def test_a_resigned_leader_writes_nothing_while_the_next_one_leads(consul_agent, make_candidate, key):
    # During its sit-out the resigned leader blocks on the key from its own
    # release: it neither reads the key again nor, once the other has taken
    # it, sends an acquire that can only fail (a Raft write in the middle of
    # the handover); it only stands in line again.
    with GarblingProxy(consul_agent.url) as proxy:
        a = make_candidate(key, address=proxy.address).start()
        assert a.wait_for_leadership(30)
        b = make_candidate(key).start()
        wait_until(lambda: b.leader() == a.identity, what="b waits on a")
        seen: List[Tuple[str, str]] = []
        proxy.garble = lambda method, path: bool(seen.append((method, path)))
        a.resign()
        assert b.wait_for_leadership(10)
        time.sleep(1.0)  # what a does while b leads
        writes = [(m, p.split("?")[0].rsplit("/", 2)[-2]) for m, p in seen
                  if m != "GET" and "/agent/check/pass/" not in p and "/session/renew/" not in p]
        reads = [p for m, p in seen if m == "GET" and "/v1/kv/" in p and "index=" not in p and "/.waiting/" not in p]
        assert writes == [("PUT", "v1"), ("PUT", ".waiting")], f"the release, then a place in line; got {writes}"
        assert reads == [], f"no read of the key outside blocking queries; got {reads}"
        assert not a.is_leader() and b.is_leader()
