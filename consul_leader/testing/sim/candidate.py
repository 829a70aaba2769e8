"""A simulated candidate process: one key, a session bound to its check,
the heartbeat, the election, a job per term and its lease watchdog, as
:class:`~consul_leader.Candidate` runs them, on simulated threads.

Every decision is the engine's own: :mod:`consul_leader.decisions` (the
lock check, who holds the key, what follows a term, sit-outs, the retry
after a lock-delay, the key as a release left it, what a participant has
seen of the key and how long it holds a lock: ``KeyView``) and
:mod:`consul_leader.lockdelay` (whether a lock follows what was seen, how
long to hold it, the release mark, the holder's flags). What this module
writes itself is the driver's loop: the order of requests and waits, which
follows ``candidate.py``, ``waiting.py``, ``session.py`` and ``job.py``
but is not their code (see docs/simulation.rst, "What the simulation does
not cover").
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ... import decisions, lockdelay
from ...entry import KeyEntry
from ...events import Reason
from ...job import LEASE_CLOCK_SLICE
from ...session import Timing
from ...waiting import IDLE_WAIT
from .consul import SERF_HEALTH, ModelError
from .world import Agent, Call, Flag, Process, Refused, SimError, Sleep, Task, Unavailable, WaitFlag, World

__all__ = ["SimCandidate", "lease_deadline", "wait_over"]

#: How long the first heartbeat round waits after an election (session.py).
QUIET_AFTER_ELECTION = 0.05
#: How often the chaos job looks at is_leader() while not leading.
ALIVE_EVERY = 0.05
#: Unix milliseconds at virtual time 0, for the holder's flags.
EPOCH_MS = 1_800_000_000_000

Gen = Generator[Any, Any, Any]


def lease_deadline(timing: Timing, passed_at: float, renewed_at: float, held_at: float | None) -> float:
    """When a lease proved by these rounds ends: before the check's TTL
    after its last pass, the session's TTL after its last renew (less the
    margin), or, while leading, an invalidation after the last read that
    showed the lock held plus the lock-delay (the rule of
    ``Session._update_deadline``).

    :param held_at: the start of the last round that read the lock held
        (None: not leading)."""
    deadline = min(passed_at + timing.lease, renewed_at + timing.session_ttl - timing.margin)
    return deadline if held_at is None else min(deadline, held_at + timing.lease)


def wait_over(held: bool, entry: KeyEntry | None, now: float, hold_off_until: float | None,
              sit_out: decisions.SitOut | None) -> bool:
    """Whether a waiter stops waiting on the key (the rule of
    ``KeyWaiter.wait`` in waiting.py, still inline there): without a
    hold-off, once no other session holds it; during a hold-off (a lock-delay, a sit-out),
    once it ran out or another session holds the key (wait for that one
    instead), or, for a sit-out, once someone else took the lock since.

    :param held: whether another session holds the key (:func:`~consul_leader.decisions.held_by_another`)."""
    if hold_off_until is None:
        return not held
    return held or now >= hold_off_until or (sit_out is not None and sit_out.taken_since(entry))


class SessionLost(SimError):
    """The session or its check is gone (the engine's ``SessionLost``)."""


@dataclass
class SimTerm:
    """One term: its fencing token, LockIndex and CreateIndex, and its end."""

    token: int
    lock_index: int
    create_index: int
    started: float
    reason: Reason | None = None
    #: When is_leader() turned False by a step-down (None: not yet).
    off_at: float | None = None
    stop_event: Flag | None = None
    returned: Flag | None = None
    #: Whether is_leader() was ever True in it (a term whose lease ran out
    #: while its acquisition's answer was on its way never is).
    shown: bool = False


class SimCandidate(Process):
    """One candidate process on *agent*, running for *key*.

    :param identity: what it writes into the key.
    :param timing: the durations it runs with (:meth:`Timing.from_ttl`).
    :param step: seconds of one step of its job.
    """

    #: The rules of the driver's own loop that a mutation
    #: (:mod:`.mutations`) may switch off: a lapsed lease stays out (the
    #: lapse latch), and a term's end waits for its job to return.
    LAPSE_LATCH = True
    JOIN_JOB = True
    #: After a hold-off, lead only after a heartbeat round that read the
    #: lock still held, as ``Candidate._lead`` does since the simulator
    #: found that, with mixed timings, a lock lost during a hold-off
    #: shorter than the lease was led without a look (docs/simulation.rst).
    #: False plays the engine as it was.
    REREAD_AFTER_HOLD = True

    def __init__(self, world: World, agent: Agent, pid: int, key: str, identity: str, timing: Timing,
                 step: float = 0.05) -> None:
        super().__init__(world, agent, pid)
        self.key, self.identity, self.timing, self.step = key, identity, timing, step
        self.value = identity.encode("utf-8")
        self.consul = world.consul
        self.check_id = f"consul-leader-{identity}"
        self.session_id: str | None = None
        self.lost = False
        self.stopping = False
        self.passed_at = self.renewed_at = -math.inf
        self.held_at: float | None = None
        self.deadline = -math.inf
        self.lease_started = self.lapsed = False
        self.lapse_at = -math.inf
        self.key_checked = False
        #: What it has seen of the key (the engine's own record of it).
        self.view = decisions.KeyView()
        self.sit_out: decisions.SitOut | None = None
        self.unreleased: str | None = None
        self.released_at: int | None = None
        self.term: SimTerm | None = None
        self.holding = False
        #: From a term's start to the end of its ending (the driver's _ending).
        self.ending = False
        #: The heartbeat's kick (an Event in session.py) and its quiet time.
        self.kick = Flag()
        self.beat_after = -math.inf
        self.jobs = 0
        #: The job running now, if any.
        self.working: str | None = None
        self.heartbeat: Task | None = None
        self.election: Task | None = None

    # -- what the outside sees -------------------------------------------------

    def now(self) -> float:
        """The process's boot clock."""
        return self.world.scheduler.now()

    def is_leader(self) -> bool:
        """As ``Candidate.is_leader()``: a term, not stepped down, its lease valid."""
        term = self.term
        return term is not None and term.off_at is None and self.now() < self.deadline

    def kill(self) -> None:
        """SIGKILL: its belief and its work end now (what the chaos run's
        processes last recorded)."""
        if not self.dead:
            term, work = self.term, self.working
            if term is not None and term.shown:
                end = self.now() if term.off_at is None else term.off_at
                self.world.record("down", id=self.identity, pid=self.pid, last=round(min(end, self._flag_end()), 6),
                                  reason="killed")
            if work is not None and not self.frozen:  # a frozen job did nothing since its freeze
                self.world.record("work-alive", id=self.identity, pid=self.pid, kind="job", work=work,
                                  step=self.now())
        super().kill()

    def start(self) -> None:
        """Start the election thread."""
        self.election = self.spawn(self._election(), "election")

    def resign(self) -> None:
        """Step down (``resign()``): the term ends voluntarily and sits out."""
        self._step_down(Reason.RESIGNED)

    def stop(self) -> None:
        """``stop()``: end the term, release, destroy the session, exit."""
        self.stopping = True
        ending = self.ending
        leading = self._step_down(Reason.STOPPED)
        election = self.election
        if election is not None:
            election.stop_waiting()  # the _stopping event
            if not (leading or ending):
                election.wake()  # interrupt(): out of a long blocking query

    def _step_down(self, reason: Reason) -> bool:
        term = self.term
        if term is None or term.reason is not None:
            return False
        term.reason = reason
        term.off_at = min(self.now(), self._flag_end())
        if term.stop_event is not None:
            term.stop_event.set()
        if self.election is not None and self.holding:
            self.election.wake()  # out of its blocking query on the key, to end the term now
        return True

    # -- requests ---------------------------------------------------------------

    def _read(self, index: int = 0, wait: float = 0.0) -> Call:
        key = self.key
        if index:
            return Call(lambda: None, block=(key, index, wait), timeout=wait + wait / 16 + 5.0)
        return Call(lambda: self.consul.get(key))

    # -- the session and its heartbeat (session.py) ----------------------------

    def _ensure_session(self) -> Gen:
        if self.session_id is not None and not self.lost:
            return self.session_id
        consul, node = self.consul, self.agent.node
        yield Call(lambda: consul.register_check(node, self.check_id, self.timing.check_ttl), at_agent=True)
        t0 = self.now()
        sid = yield Call(lambda: consul.create_session(node, (SERF_HEALTH, self.check_id), self.timing.lock_delay,
                                                       self.timing.session_ttl))
        self.session_id, self.lost = sid, False
        self.passed_at = self.renewed_at = t0
        self.heartbeat = self.spawn(self._heartbeat(sid), "heartbeat")
        return sid

    def _heartbeat(self, sid: str) -> Gen:
        started = self.now()
        while self.session_id == sid and not self.lost:
            period = self.timing.heartbeat if self.held_at is not None else self.timing.idle_heartbeat
            yield WaitFlag(self.kick, max(0.0, started + period - self.now()))
            self.kick.clear()
            hold = self.beat_after - self.now()
            if hold > 0:
                yield WaitFlag(self.kick, hold)  # set_leading(): a round soon, but after the term's start
                self.kick.clear()
            self.beat_after = -math.inf
            if self.session_id != sid or self.dead:
                return
            started = self.now()
            try:
                yield from self._beat(sid)
            except SessionLost:
                self.lost = True
                term = self.term
                if term is not None and term.off_at is None:
                    term.off_at = min(self.now(), self._flag_end())  # is_leader() turns False here
                self.deadline = -math.inf
                if self.election is not None and not self.holding and not self.ending:
                    self.election.wake()  # make a new session now
                return
            except SimError:
                pass

    def _beat(self, sid: str) -> Gen:
        consul, node = self.consul, self.agent.node
        t0 = self.now()

        def pass_check() -> None:
            try:
                consul.pass_check(node, self.check_id)
            except Exception as exc:
                raise SessionLost(str(exc)) from exc

        yield Call(pass_check, at_agent=True)
        self.passed_at = t0
        if t0 - self.renewed_at >= self.timing.session_ttl / 3:
            if not (yield Call(lambda: consul.renew_session(sid))):
                raise SessionLost("renew: 404")
            self.renewed_at = t0
        held = True
        if self.held_at is not None:
            _, entry = yield self._read()
            held = entry is not None and entry.session == sid
            if held:
                self.held_at = t0
        self._update_deadline()
        return held

    def _update_deadline(self) -> None:
        # The lapse latch of Session._update_deadline: once a term's lease
        # ran out, no late round revives it.
        now = self.now()
        deadline = lease_deadline(self.timing, self.passed_at, self.renewed_at, self.held_at)
        if self.held_at is not None:
            if self.lease_started and now >= self.deadline and not self.lapsed and self.LAPSE_LATCH:
                self.lapsed, self.lapse_at = True, self.deadline
            if self.lapsed:
                deadline = -math.inf
            elif deadline > now:
                self.lease_started = True
        self.deadline = deadline

    def _set_leading(self, held_since: float | None) -> None:
        self.held_at = held_since
        self.lease_started = self.lapsed = False
        if held_since is not None:
            self._update_deadline()
            self.beat_after = self.now() + min(QUIET_AFTER_ELECTION, max(self.deadline - self.now(), 0.0) / 2)
            self.kick.set()

    def _clear_wake(self) -> None:
        if self.election is not None:
            self.election.clear_wake()

    def _flag_end(self) -> float:
        return self.lapse_at if self.lapsed else self.deadline

    # -- the election (candidate.py) --------------------------------------------

    def _election(self) -> Gen:
        attempt = 0
        while not self.stopping:
            try:
                yield from self._round()
                attempt = 0
            except SimError as exc:
                if isinstance(exc, SessionLost):
                    self.lost = True
                attempt += 1
                # tenacity's wait_random_exponential(multiplier=0.1, max=min(30, 2 * ttl)), cut short by stop()
                yield Sleep(self.rng.uniform(0, min(0.1 * 2 ** attempt, 30.0, 2 * self.timing.check_ttl)),
                            stoppable=True)
        sid = self.session_id
        if sid is not None:
            consul = self.consul
            try:
                yield Call(lambda: consul.destroy_session(sid))
            except SimError:
                pass  # left for its check's TTL
        self.world.record("exit", id=self.identity, pid=self.pid)
        self.kill()

    def _observe(self, entry: KeyEntry | None) -> None:
        self.view.observe(entry, self.now())

    def _held_by_another(self, entry: KeyEntry | None) -> bool:
        return decisions.held_by_another(entry, self.session_id if not self.lost else None)

    def _round(self) -> Gen:
        sid = yield from self._ensure_session()
        if self.stopping:
            return
        consul, key = self.consul, self.key
        if self.unreleased is not None:
            if self.unreleased == sid:
                self.released_at = yield self._unlock(sid)
            self.unreleased = None
        if self.sit_out is not None:
            sit_out = self.sit_out
            watch = Watch(self)
            released_at, self.released_at = self.released_at, None
            if released_at is not None:
                watch.index = released_at
            yield from self._wait(watch, hold_off_until=sit_out.until, sit_out=sit_out)
            self.sit_out = None
            if not sit_out.unclaimed(watch.entry if watch.index else None, self.now()):
                yield from self._wait(watch)  # to the end of the line (the line itself is not simulated)
            return
        if not self.key_checked:
            self._observe((yield self._read())[1])
            self.key_checked = True
        seen = self.view.seen
        asked_at = self.now()
        flags = lockdelay.holder_flags(EPOCH_MS + int(asked_at * 1000), self.timing.lock_delay)
        ops = [{"Verb": "lock", "Key": key, "Value": self.value, "Session": sid, "Flags": flags}]

        def lock() -> lockdelay.LockAttempt:
            results, error = consul.apply(ops)
            if error is None:
                kv = results[0]
                assert kv is not None
                return lockdelay.LockAttempt(kv.modify_index, False, kv.lock_index, kv.create_index)
            if "invalid session" in error:
                raise ModelError(409, error)
            return lockdelay.LockAttempt(None, delayed=False)

        try:
            attempt = yield Call(lock, precheck=lambda: consul.precheck(ops),
                                 refused=lockdelay.LockAttempt(None, delayed=True))
        except Refused as exc:
            if "invalid session" in str(exc):
                raise SessionLost(str(exc)) from exc
            raise
        if attempt.modify_index is not None:
            yield from self._lead(sid, asked_at, attempt, seen)
            return
        if attempt.delayed:
            watch = Watch(self)
            yield from self._wait(watch, hold_off_until=decisions.retry_after_lock_delay(self.now(),
                                                                                         self.timing.lock_delay))
            if watch.index and self._held_by_another(watch.entry) and not self.stopping:
                yield from self._wait(watch)
            return
        watch = Watch(self)
        entry = yield from watch.read()
        self._observe(entry)
        if entry is None or entry.free:
            return
        yield from self._wait(watch)

    def _wait(self, watch: Watch, hold_off_until: float | None = None,
              sit_out: decisions.SitOut | None = None) -> Gen:
        entry = watch.entry if watch.index else (yield from watch.read())
        self._observe(entry)
        while not self.stopping:
            now = self.now()
            if wait_over(self._held_by_another(entry), entry, now, hold_off_until, sit_out):
                return
            wait = IDLE_WAIT if hold_off_until is None else max(hold_off_until - now, 0.01)
            try:
                entry = yield from watch.read(wait)
            except SimError:
                if self.lost:
                    self._clear_wake()
                    return  # woken by the heartbeat: make a new session now
                raise
            self._observe(entry)
            if self.session_id is None or self.lost:
                return

    # -- a term -----------------------------------------------------------------

    def _lead(self, sid: str, held_since: float, attempt: lockdelay.LockAttempt, seen: KeyEntry | None) -> Gen:
        assert attempt.modify_index is not None
        hold, _why = self.view.hold_off(attempt, seen, sid, self.now(), self.timing.lock_delay)
        if hold > 0:
            yield Sleep(hold, stoppable=True)
            if self.stopping:
                return  # no release: stop() destroys the session, and Consul sets the lock-delay
        self._set_leading(held_since)
        try:
            # candidate.py: (no hold-off and session.lease_valid()) or
            # session.beat(): after a hold-off the lock may have been lost
            # meanwhile, however long the lease (see REREAD_AFTER_HOLD).
            fresh = hold <= 0 or not self.REREAD_AFTER_HOLD
            held = (fresh and self.now() < self.deadline) or (yield from self._beat(sid))
        except BaseException:
            self._set_leading(None)
            raise
        if not held:
            self._set_leading(None)
            return
        term = SimTerm(attempt.modify_index, attempt.lock_index or 0, attempt.create_index or 0, self.now())
        self.term = term
        self.ending = True  # from here on, _end_term runs whatever happens
        if self.is_leader():
            term.shown = True
            self.world.record("up", id=self.identity, pid=self.pid, token=term.token)
        term.stop_event, term.returned = Flag(), Flag()
        self.jobs += 1
        self.spawn(self._job(term, f"{self.pid}-job{self.jobs}"), "job")
        self.spawn(self._watchdog(term), "lease watchdog")
        self.holding = True
        try:
            reason = yield from self._watch_lock(sid, term, attempt.modify_index)
        finally:
            self.holding = False
        yield from self._end_term(term, reason)

    def _watch_lock(self, sid: str, term: SimTerm, index: int) -> Gen:
        watch = Watch(self)
        watch.index = index
        while True:
            ended = self._ended(term)
            if ended is not None:
                return ended
            self._clear_wake()  # before looking: a wake from now on cuts the read below short
            try:
                entry = yield from watch.read(self.timing.heartbeat)
            except SimError:
                ended = self._ended(term)
                if ended is not None:
                    return ended
                yield Sleep(min(self.timing.heartbeat / 2, max(self.deadline - self.now(), 0.01)), stoppable=True)
                continue
            if term.reason is not None:
                return term.reason
            lost = decisions.lock_check(entry, sid, self.identity)
            if lost is not None:
                return lost

    def _ended(self, term: SimTerm) -> Reason | None:
        # Stepped down (resign, stop, the job), or the lease ran out.
        if term.reason is not None:
            return term.reason
        return None if self.now() < self.deadline else Reason.LEASE_EXPIRED

    def _end_term(self, term: SimTerm, reason: Reason) -> Gen:
        self._clear_wake()  # a wake that ended the watch must not fail the release below
        if term.reason is None:
            term.reason = reason
            term.off_at = min(self.now(), self._flag_end())
        reason = term.reason
        if term.shown:
            self.world.record("down", id=self.identity, pid=self.pid, last=round(term.off_at or self.now(), 6),
                              reason=str(reason))
        self.term = None
        self._set_leading(None)
        assert term.stop_event is not None and term.returned is not None
        term.stop_event.set()
        if self.JOIN_JOB:
            yield WaitFlag(term.returned)  # the next term's work must not start beside this one's
        after = decisions.after_term(reason, term.lock_index, self.now(), self.timing.check_ttl)
        if after.sit_out is not None:
            self.sit_out = after.sit_out
        if after.release:
            yield from self._release(term, reason)
        self.ending = False

    def _unlock(self, sid: str) -> Call:
        consul = self.consul
        ops = [{"Verb": "unlock", "Key": self.key, "Session": sid, "Value": lockdelay.release_mark(sid)}]

        def unlock() -> int | None:
            results, error = consul.apply(ops)
            kv = results[0] if error is None else None
            return None if kv is None else kv.modify_index

        return Call(unlock)

    def _release(self, term: SimTerm, reason: Reason) -> Gen:
        sid = self.session_id
        assert sid is not None
        for attempt in (1, 2):
            self._clear_wake()
            try:
                self.released_at = yield self._unlock(sid)
                if self.released_at is not None:
                    self.world.record("released", id=self.identity, pid=self.pid, token=term.token,
                                      reason=str(reason), voluntary=reason.voluntary)
                    self.view.seen = decisions.released_entry(self.key, sid, term.lock_index, term.create_index,
                                                         self.released_at)
                return
            except Unavailable:
                if attempt == 2:
                    self.unreleased = sid
            except SimError:
                self.unreleased = sid
                return

    # -- the job and its lease watchdog (job.py, tests/chaos/candidate_proc.py) -

    def _lease_over(self, term: SimTerm) -> None:
        assert term.stop_event is not None
        term.stop_event.set()
        if self.election is not None and self.holding and self.term is term:
            self.election.wake()

    def _job(self, term: SimTerm, work: str) -> Gen:
        assert term.stop_event is not None and term.returned is not None
        stop_event = term.stop_event
        try:
            if self.deadline - self.now() <= 0:
                self._lease_over(term)  # its lease ran out before it could start: not started
                return
            self.world.record("work-start", id=self.identity, pid=self.pid, kind="job", work=work,
                              token=term.token, step=self.now())
            self.working = work
            while not stop_event.is_set():
                begin = self.now()
                if not self.is_leader():
                    yield WaitFlag(stop_event, ALIVE_EVERY)
                    continue
                self.world.record("work-alive", id=self.identity, pid=self.pid, kind="job", work=work, step=begin)
                yield Sleep(self.step)
                self.world.record("work-alive", id=self.identity, pid=self.pid, kind="job", work=work, step=begin)
            self.world.record("work-end", id=self.identity, pid=self.pid, kind="job", work=work)
            self.working = None
        finally:
            term.returned.set()

    def _watchdog(self, term: SimTerm) -> Gen:
        assert term.stop_event is not None
        while not term.stop_event.is_set():
            remaining = self.deadline - self.now()
            if remaining <= 0:
                self._lease_over(term)
                return
            yield WaitFlag(term.stop_event, min(remaining, LEASE_CLOCK_SLICE))


class Watch:
    """The key watch of a driver (``KeyWatch``): the index it blocks from
    and the entry it last read."""

    def __init__(self, candidate: SimCandidate) -> None:
        self.candidate = candidate
        self.index = 0
        self.entry: KeyEntry | None = None

    def read(self, wait: float = 0.0) -> Gen:
        """Read the key: a blocking query from :attr:`index` (with *wait*),
        or a plain read while there is none."""
        index, entry = yield self.candidate._read(self.index if wait else 0, wait)
        self.index, self.entry = index, entry
        return entry
