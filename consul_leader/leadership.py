"""The terms of a :class:`~consul_leader.Candidate`, led on its election
thread: hold the lock a lock-delay when what was seen does not account for
the last holder, lead, watch the lock while leading (the lease, the term
limit, the lock check), and end the term through the term engine
(:class:`~consul_leader.term.Tenure`, blocking: the election thread waits
for the job and the ``deposed`` receivers before the release).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import signals
from .decisions import AfterTerm, lock_check
from .entry import KeyEntry
from .errors import ConsulLeaderError
from .events import Reason
from .follower import KeyWatch
from .interrupt import clear_wake, wake
from .job import JobRunner
from .lockdelay import LockAttempt
from .seat import Seat
from .session import Clock, Session
from .term import Stage, Tenure, Term, log_fields

if TYPE_CHECKING:
    from .candidate import Candidate

__all__ = ["Leadership", "Part"]

log = logging.getLogger("consul_leader")


class Part:
    """What the two parts of a Candidate's election (its thread,
    :class:`~consul_leader.campaign.Campaign`, and its terms,
    :class:`Leadership`) share: the candidate's settings, its seat, and how
    its threads coordinate.

    :param candidate: the candidate (its settings, and the sender of its signals).
    :param seat: the candidate's seat in the key's election.
    :param lock: the candidate's state lock.
    :param stopping: set when the candidate leaves (or gives up).
    :param clock: the candidate's clock.
    :param dispatcher: the candidate's signal thread.
    :param term_hook: returns the hook to call as a term begins, if any.
    :param notify: wakes whoever waits for a change of leadership or state.
    """

    def __init__(self, candidate: Candidate, seat: Seat, lock: threading.RLock, stopping: threading.Event,
                 clock: Clock, dispatcher: signals.Dispatcher,
                 term_hook: Callable[[], Callable[[int, float], None] | None], notify: Callable[[], None]) -> None:
        self.candidate = candidate
        self.seat = seat
        self.key = candidate.key
        self.identity = candidate.identity
        self.timing = candidate.timing
        self.client = candidate.client
        self._lock = lock
        self._stopping = stopping
        self._clock = clock
        self._dispatcher = dispatcher
        self._term_hook = term_hook
        self._notify = notify

    def _fields(self, event: str, **fields: Any) -> dict[str, Any]:
        """The ``extra=`` of a transition's log record, for structured logging."""
        return log_fields(self.key, self.identity, event, **fields)


class Leadership(Part):
    """The terms of one candidate, one at a time, on its election thread
    (see :class:`Part` for what it is made with).

    :param report: tells of a failed request.
    """

    def __init__(self, candidate: Candidate, seat: Seat, lock: threading.RLock, stopping: threading.Event,
                 clock: Clock, dispatcher: signals.Dispatcher,
                 term_hook: Callable[[], Callable[[int, float], None] | None], notify: Callable[[], None],
                 report: Callable[[BaseException | None], None]) -> None:
        super().__init__(candidate, seat, lock, stopping, clock, dispatcher, term_hook, notify)
        self._report = report
        #: The last term's runner, until its job has returned.
        self.runner: JobRunner | None = None
        self.ending = False  # the election thread is ending a term
        self.holding: Term | None = None  # the term whose lock _hold watches
        self._holder: threading.Thread | None = None  # the thread that watches it
        # A term's release failed: its session still holds the key, and
        # nobody else can take it until this one lets it go.
        self.unreleased: Term | None = None
        # A lock held before leading it (its session and acquisition), while
        # held: stopped meanwhile, the candidate gives it up (Campaign.leave).
        self.held_off: tuple[Session, LockAttempt] | None = None
        # The election thread ends its terms itself, waiting for the job and
        # the deposed receivers before the release.
        self.tenure = Tenure(self.client, clock, self.timing.check_ttl, dispatcher, lock, blocking=True,
                             notify=notify, stepped=self._stepped, finished=self._finished, release_attempts=2)

    def step_down(self, reason: Reason) -> bool:
        """End the current term from any thread: leadership turns off now;
        the election thread does the rest (see :meth:`_end_term`)."""
        term = self.seat.term
        return term is not None and self.tenure.step_down(term, reason)

    def lead(self, session: Session, held_since: float, attempt: LockAttempt, seen: KeyEntry | None) -> None:
        """Lead from a lock taken no earlier than *held_since* by *attempt*,
        until the term ends; every way out goes through :meth:`_end_term`.
        *seen*: the key as last read before the acquisition; unless the lock
        follows it, hold the lock one lock-delay first (see
        :meth:`LockAttempt.hold_off`)."""
        assert attempt.modify_index is not None and session.id is not None
        # Until it is known that no hold is due (or the hold is over), a
        # stop() gives the key up without a release (Campaign.leave): the
        # roster read and the flags rewrite below are requests that a stop
        # cuts short.
        self.held_off = (session, attempt)
        hold, why, contenders = self.seat.hold_off(attempt, seen, session.id, self._clock())
        noted = self.seat.note_hold(session.id, attempt, hold)
        if noted is None:
            self.held_off = None
            return  # the key changed under us: look again
        attempt = noted
        if hold > 0:
            # Stopped during the hold: as above (this thread may still
            # make requests; its waits are cut short).
            self.held_off = (session, attempt)
            if not self._lock_delay_wait(hold, why):
                return
        self.held_off = None
        if contenders:
            self.seat.roster.forget(contenders)  # what crashed candidates left: their work is over by now
        session.set_leading(self.key, held_since, roster=self.seat.roster)
        try:
            # After a hold-off the lease from the acquisition may still run,
            # but the key may have been deleted and taken by another during
            # the hold: read it (a round while leading does) before leading.
            # Without a hold, an idle follower's last round may be too old.
            # A lease that would run out before the round set_leading()
            # kicks could renew it (a slow agent) is renewed first.
            round_time = self.candidate.heartbeat_stats.last_duration or 0.0
            held = (hold == 0 and session.lease_remaining() > 2 * round_time) or session.beat()
        except BaseException:
            session.set_leading(None)
            raise
        if not held:
            session.set_leading(None)
            return  # lost between the acquisition and the check: no term
        watch = KeyWatch(self.client, self.key)
        assert attempt.modify_index is not None
        watch.index = attempt.modify_index  # block from our acquisition on
        term = Term(self.seat, session, attempt, self._clock())
        with self._lock:
            if self._stopping.is_set():
                # stop() ran while we were acquiring: it found no term to end.
                session.set_leading(None)
                self.seat.release_unled(session, attempt)
                return
            self.seat.term = term
            self.ending = True  # from here on, _end_term runs whatever happens
        reason = Reason.ERROR  # unless _hold says otherwise
        try:
            hook = self._term_hook()
            if hook is not None:
                try:
                    hook(term.fencing_token, session.lease_deadline)
                except Exception:
                    log.exception("the term hook of %s raised", self.identity)
            self.tenure.lead(term, latest=True, extra=self._fields("elected", fencing_token=term.fencing_token))
            self.tenure.start_runner(term, session.lease_remaining, on_lease_end=lambda: self._stepped(term))
            self.runner = term.runner
            reason = self._hold(session, term, watch)
        finally:
            self._end_term(term, reason)

    def _lock_delay_wait(self, hold: float, why: str) -> bool:
        """The last holder may still work, with no lock-delay to keep us out
        (*why*): hold the lock *hold* seconds before leading, as Consul
        would have made us wait. True to go on leading; False if stopped
        meanwhile."""
        log.info("%s took %r %s; holding it %.2fs before leading (lock-delay %gs)", self.identity, self.key,
                 why, hold, self.timing.lock_delay)
        # Stopped meanwhile: the key is given up without a release (see
        # Seat.drop_held_lock).
        return not self._stopping.wait(hold)

    def _hold(self, session: Session, term: Term, watch: KeyWatch) -> Reason:
        """Watch the lock while leading; return why the term ended."""
        end = None if self.candidate.term_limit is None else term.started + self.candidate.term_limit
        self.holding, self._holder = term, threading.current_thread()
        try:
            return self._watch_lock(session, term, watch, end)
        finally:
            self.holding = None

    def _watch_lock(self, session: Session, term: Term, watch: KeyWatch, end: float | None) -> Reason:
        while True:
            clear_wake()  # before looking: a wake from now on cuts the read below short
            if term.reason is not None:  # stepped down by resign(), stop() or the job
                return term.reason
            if not session.lease_valid():
                return Reason.LEASE_EXPIRED
            if end is not None and self._clock() >= end:
                return Reason.TERM_LIMIT
            wait = self.timing.heartbeat
            if end is not None:
                wait = max(0.01, min(wait, end - self._clock()))
            try:
                entry = watch.read(wait)
            except ConsulLeaderError as exc:
                if term.reason is not None:
                    return term.reason  # woken
                if not session.lease_valid():
                    return Reason.LEASE_EXPIRED  # woken by the lease watchdog, or the agent hangs
                # Not a lost lock by itself: the lease decides.
                self._report(exc)
                self._stopping.wait(min(self.timing.heartbeat / 2, max(session.lease_remaining(), 0.01)))
                continue
            if term.reason is not None:
                return term.reason
            assert session.id is not None
            lost = lock_check(entry, session.id, self.identity)
            if lost is not None:
                return lost

    def _end_term(self, term: Term, reason: Reason) -> None:
        """The one way out of a term, on the election thread (see
        :meth:`Tenure.end <consul_leader.term.Tenure.end>`)."""
        clear_wake()  # a wake that ended _hold must not fail the release below
        try:
            self.tenure.vacate(term, reason)
            term.session.set_leading(None)
            self.tenure.end(term)
        finally:
            term.stage = Stage.DONE
            self.runner = None
            self.ending = False

    def _finished(self, term: Term, after: AfterTerm, released: bool) -> None:
        if not released:
            # Its session still holds the key, and nobody else can take it
            # until this one lets it go: the next round releases it.
            self.unreleased = term

    def _stepped(self, term: Term) -> None:
        """*term* was stepped down, or its lease ran out: get the election
        thread out of its blocking query on the key to end it now, even if
        it waits on a frozen agent."""
        holder = self._holder
        if holder is not None and holder is not threading.current_thread() and self.holding is term:
            wake(holder)
