"""One term: from the lock taken and led to the lock released, written once.

Every term walks the same stages, in this order and never back:
:attr:`Stage.LEADING` (``is_leader()`` may be True; whoever steps down
first, from any thread, sets :attr:`Term.reason` and turns the flag off),
:attr:`Stage.JOINING` (the job told to stop and waited for), then
:attr:`Stage.DELIVERING` (``deposed`` sent and its receivers waited for),
:attr:`Stage.RELEASING` and :attr:`Stage.DONE`. The safety of the work rests
on that order: the lock is released only once the job returned and the
``deposed`` receivers ran.

:class:`Tenure` walks them. Its drivers (a
:class:`~consul_leader.Candidate`, whose election thread may block on a
job, and an :class:`~consul_leader.Elector`, whose one worker must never
wait for a job) differ only in how they are scheduled, which each gives it
(see :class:`Tenure`): the rules live here alone, the way tenacity's
``BaseRetrying.iter()`` decides for all of its drivers.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from . import signals
from .client import ConsulClient
from .decisions import AfterTerm, after_term, released_entry
from .errors import ConsulLeaderError, ConsulUnavailable
from .events import Broadcast, EventKind, LeadershipEvent, Reason
from .interrupt import clear_wake
from .job import Job, JobRunner
from .lockdelay import LockAttempt, release_mark
from .seat import Seat
from .session import Clock, Session

__all__ = ["Stage", "Tenure", "Term", "announce_elected", "announce_ended", "log_elected", "log_ended",
           "log_fields", "term_runner"]

log = logging.getLogger("consul_leader")


class Stage(enum.Enum):
    """Where a term is in its life (see the module's docs for who moves it)."""

    LEADING = "leading"
    JOINING = "joining"
    DELIVERING = "delivering"
    RELEASING = "releasing"
    DONE = "done"

    def past(self, other: Stage) -> bool:
        """True if this stage comes after *other*."""
        order = list(Stage)
        return order.index(self) > order.index(other)


class Term:
    """One term of one key, from its acquisition on.

    :param session: the session that holds the lock.
    :param attempt: the acquisition that took it.
    :param started: when it was led, on the participant's clock.
    """

    __slots__ = ("seat", "session", "fencing_token", "lock_index", "create_index", "started", "reason", "runner",
                 "stage", "job_done")

    def __init__(self, seat: Seat, session: Session, attempt: LockAttempt, started: float) -> None:
        assert attempt.modify_index is not None
        #: The key's seat: whose term this is.
        self.seat = seat
        self.session = session
        #: The key's ModifyIndex at the acquisition.
        self.fencing_token = attempt.modify_index
        self.lock_index = attempt.lock_index or 0
        self.create_index = attempt.create_index or 0
        self.started = started
        #: Set once, by whoever ends the term first (resign, stop, the job,
        #: the lease watchdog, the watch of the lock).
        self.reason: Reason | None = None
        self.runner: JobRunner | None = None
        self.stage = Stage.LEADING
        #: The job's thread has ended (or never started and never will).
        self.job_done = False

    def lease_remaining(self) -> float:
        """Seconds left of this term's lease (<= 0: over): the session's."""
        return self.session.lease_remaining()


class Tenure:
    """The life of a driver's terms, from the lead to the release.

    Each driver gives it its scheduling: *blocking* says whether the thread
    that ends a term may wait for its job and its ``deposed`` receivers (a
    Candidate's election thread does), or must go on and let the job's own
    thread, then the signal thread, carry the ending on (an Elector's worker
    serves every key, and one slow job must not hold up another key's
    handover); *post* runs the release on the driver's thread once the
    receivers ran; *stepped* tells the driver that a term was stepped down
    from some thread ("wake me"); *notify* wakes whoever waits for a change
    of leadership; *finished* takes what the release left.

    :param client: the driver's Consul client.
    :param clock: the driver's clock.
    :param check_ttl: how long a participant that stepped down sits out at most.
    :param dispatcher: the driver's signal thread.
    :param lock: the driver's state lock (one for all the keys of an Elector).
    :param release_attempts: how many times a release that got no answer is
        sent before it is left to the driver to retry."""

    def __init__(self, client: ConsulClient, clock: Clock, check_ttl: float, dispatcher: signals.Dispatcher,
                 lock: threading.RLock, *, blocking: bool, notify: Callable[[], None],
                 stepped: Callable[[Term], None], post: Callable[[Callable[[], None]], None] | None = None,
                 finished: Callable[[Term, AfterTerm, bool], None] | None = None,
                 stopping: Callable[[], bool] = lambda: False, release_attempts: int = 1) -> None:
        assert blocking or post is not None
        self.client = client
        self.clock = clock
        self.check_ttl = check_ttl
        self.dispatcher = dispatcher
        self.lock = lock
        self.blocking = blocking
        self._notify = notify
        self._stepped = stepped
        self._post = post
        self._finished = finished
        self._stopping = stopping
        self._attempts = release_attempts

    # -- LEADING --------------------------------------------------------------

    def lead(self, term: Term, *, latest: bool, **extra: Any) -> None:
        """*term* leads: the flag on, ``elected`` queued, the waiters told.
        The driver made sure, under :attr:`lock`, that it may lead.

        :param latest: send ``leader_changed`` as the latest state only."""
        seat = term.seat
        log_elected(seat.identity, seat.key, term, **extra)
        with self.lock:
            if term.reason is None:  # else stepped down already (from a term hook, say): the flag stays off
                seat.term = term
            seat.view.leader = seat.identity
            # Queued under the lock: a step-down from another thread queues
            # deposed, and must queue it after.
            announce_elected(self.dispatcher, seat.events, seat.sender, term, latest=latest)
        self._notify()

    def start_runner(self, term: Term, lease_remaining: Callable[[], float], *, on_lease_end: Callable[[], None],
                     job: Job | None = None) -> None:
        """Watch *term*'s lease, and run the seat's job if there is one."""
        runner = term_runner(job if job is not None else term.seat.job, lease_remaining, term.seat.sender,
                             functools.partial(self.step_down, term), on_lease_end=on_lease_end,
                             on_exit=functools.partial(self._job_exited, term))
        with self.lock:
            # A step-down from another thread either came before, and the
            # job never starts, or comes after and finds the runner to stop.
            if term.reason is not None:
                return
            term.runner = runner
            # Started under the lock too: an ending reads whether the job started.
            runner.watch_lease()
            runner.start()

    def step_down(self, term: Term, reason: Reason) -> bool:
        """End *term* for *reason*, from any thread, once: the flag turns off
        now and the job is told to stop; the driver carries the ending on.

        :returns: False if the term had already been stepped down."""
        with self.lock:
            if term.reason is not None:
                return False
            self.vacate(term, reason)
            runner = term.runner
        if runner is not None:
            runner.stop()
        self._stepped(term)
        return True

    def vacate(self, term: Term, reason: Reason) -> Reason:
        """The flag off, and *reason* the term's unless it had one (with
        :attr:`lock` held, or from the one thread that ends terms)."""
        with self.lock:
            if term.seat.term is term:
                term.seat.term = None  # is_leader() is False from here on
            if term.reason is None:
                term.reason = reason
            return term.reason

    # -- JOINING and DELIVERING -------------------------------------------------

    def end(self, term: Term) -> None:
        """Carry the ending of a stepped-down *term* on as far as this thread
        may: wait for the job (blocking) or leave it to the job's thread,
        then deliver ``deposed`` and release after its receivers. Each
        stage once, whichever thread comes."""
        with self.lock:
            assert term.reason is not None
            first = term.stage is Stage.LEADING
            if first:
                term.stage = Stage.JOINING
            if term.stage is not Stage.JOINING:
                return
            runner = term.runner
            # Asked on every call, not only the first: the watchdog and the
            # driver both carry an ending on, and the second must wait too.
            if not self.blocking and runner is not None and runner.started and not term.job_done:
                if first and not runner.on_thread():  # the job that returned: it is about to exit
                    log.info("waiting for the job of %r to return before releasing it", term.seat.key)
                return
            if not self.blocking:
                term.stage = Stage.DELIVERING
        if self.blocking and runner is not None:
            runner.stop()
            runner.join()  # the next term's work must not start beside this one's
        seat = term.seat
        announce_ended(self.dispatcher, seat.events, seat.sender, term,
                       extra=log_fields(seat.key, seat.identity, "deposed", fencing_token=term.fencing_token,
                                        reason=str(term.reason)))
        # The deposed receivers stop what on_elected started: the release
        # waits for them, before anyone else can start it.
        if self.blocking:
            self.dispatcher.flush(f"the deposed receivers of {seat.identity}")
            self._notify()
            self.release(term)
        else:
            assert self._post is not None
            self.dispatcher.call(self._notify)
            self.dispatcher.call(self._post, functools.partial(self.release, term))

    def _job_exited(self, term: Term) -> None:
        # Also when the lease ran out before the job could start.
        with self.lock:
            term.job_done = True
            ended = term.reason is not None
        if ended and not self.blocking:  # else the step-down still to come carries the ending on
            self.end(term)

    # -- RELEASING --------------------------------------------------------------

    def release(self, term: Term) -> None:
        """Release *term*'s lock if its end calls for it, guarded by its
        fencing token (a late release cannot free a later term), and hand
        the driver what follows; the term is done."""
        reason = term.reason
        assert reason is not None
        term.stage = Stage.RELEASING
        # Its work is over: a lock right after this one has nothing of ours to wait for.
        term.seat.view.own_lock = (term.create_index, term.lock_index)
        released = True
        try:
            after = after_term(reason, term.lock_index, self.clock(), self.check_ttl)
            if after.release and not term.session.lost.is_set():
                released = self._unlock(term, reason)
            elif term.seat.also_lock and not term.session.lost.is_set():
                self._release_also(term)
            if after.sit_out is not None:
                term.seat.sit_out = after.sit_out
            if self._finished is not None:
                self._finished(term, after, released)
        finally:
            term.stage = Stage.DONE

    def release_again(self, term: Term) -> None:
        """Send the release of *term*, whose release failed, once more.

        :raises ConsulLeaderError: it failed again (the driver retries)."""
        session = term.session
        assert session.id is not None
        self._released(term, self._send_unlock(term))

    def _send_unlock(self, term: Term) -> int | None:
        """Release *term*'s lock, guarded by its fencing token, with what was
        locked with it (in the same transaction: once the key is free, the
        next leader's acquisition needs them free too); the key's
        ModifyIndex after the release, or None if the session did not hold it."""
        seat, session = term.seat, term.session
        assert session.id is not None
        return self.client.unlock(seat.key, session.id, release_mark(session.id, term.lock_index),
                                  index=term.fencing_token, also_unlock=[key for key, _ in seat.also_lock])

    def _release_also(self, term: Term) -> None:
        """The key is gone or another's (the lock was lost with the session
        alive: the key deleted), but what was locked with it is still this
        session's: release it, or ``consul lock`` and every candidate that
        locks it too (``lock_with``) stay out for as long as the session lives."""
        session = term.session
        assert session.id is not None
        for other, _ in term.seat.also_lock:
            try:
                self.client.release(other, session.id)
            except ConsulLeaderError as exc:
                log.warning("could not release %r, taken with %r (%s); the session's end frees it", other,
                            term.seat.key, exc)

    def _released(self, term: Term, at: int | None) -> None:
        seat = term.seat
        assert term.session.id is not None
        seat.released_at = at
        if at is not None:
            # Our own release, seen free: the next lock follows it, and is led at once.
            seat.view.seen = released_entry(seat.key, term.session.id, term.lock_index, term.create_index, at)

    def _unlock(self, term: Term, reason: Reason) -> bool:
        seat, session = term.seat, term.session
        assert session.id is not None
        for attempt in range(1, self._attempts + 1):
            clear_wake()  # a wake meant for the term's watch must not fail its release
            try:
                at = self._send_unlock(term)
            except ConsulLeaderError as exc:
                if isinstance(exc, ConsulUnavailable) and attempt < self._attempts:
                    continue
                log.warning("could not release %r after %s (%s); %s", seat.key, reason, exc,
                            "destroying the session frees it" if self._stopping() else "trying again")
                return False
            if at is None and reason.voluntary:
                log.warning("releasing %r after %s: Consul says session %s did not hold it", seat.key, reason,
                            session.id)
            self._released(term, at)
            return True
        return False


def announce_elected(dispatcher: signals.Dispatcher, events: Broadcast[LeadershipEvent], sender: Any, term: Term,
                     *, latest: bool) -> None:
    """Queue a new term's ``elected`` and ``leader_changed`` signals and publish its event.

    :param sender: the signals' sender (the Candidate, or the Candidacy of the key).
    :param latest: send ``leader_changed`` as the latest state only (see
        :meth:`Dispatcher.send_latest <consul_leader.signals.Dispatcher.send_latest>`)."""
    dispatcher.send(signals.elected, sender, fencing_token=term.fencing_token)
    send_leader = dispatcher.send_latest if latest else dispatcher.send
    send_leader(signals.leader_changed, sender, leader=sender.identity)
    events.publish(LeadershipEvent(EventKind.ELECTED, fencing_token=term.fencing_token))


def announce_ended(dispatcher: signals.Dispatcher, events: Broadcast[LeadershipEvent], sender: Any, term: Term,
                   **extra: Any) -> None:
    """*term*'s job returned: tell the log, queue ``deposed`` and publish its
    event (the term moves to :attr:`Stage.DELIVERING`). The caller waits for
    the receivers before the release."""
    assert term.reason is not None
    log_ended(sender.identity, sender.key, term.reason, **extra)
    term.stage = Stage.DELIVERING
    dispatcher.send(signals.deposed, sender, reason=term.reason)
    events.publish(LeadershipEvent(EventKind.DEPOSED, reason=term.reason))


def term_runner(job: Job | None, lease_remaining: Callable[[], float], sender: Any,
                step_down: Callable[[Reason], object], *, on_lease_end: Callable[[], None],
                on_exit: Callable[[], None] | None = None) -> JobRunner:
    """The :class:`JobRunner` of a term: a job that returns (or raises)
    while the term runs ends it, as a step-down of its own.

    :param sender: the participant (its identity and key name the threads).
    :param step_down: ends the term for a reason, from any thread."""

    def returned(ok: bool) -> None:
        if not ok:
            log.error("the job of %s raised while leading %r; resigning", sender.identity, sender.key)
        step_down(Reason.JOB_FINISHED if ok else Reason.JOB_FAILED)

    return JobRunner(job, lease_remaining, f"{sender.identity} {sender.key}", on_return=returned,
                     on_lease_end=on_lease_end, on_exit=on_exit)


def log_fields(key: str, identity: str, event: str, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a transition's log record, for structured logging."""
    return {"consul_leader_event": event, "key": key, "identity": identity, **fields}


def log_elected(identity: str, key: str, term: Term, **extra: Any) -> None:
    """Tell the log that *identity* leads *key* in *term*."""
    log.info("%s elected leader of %r (fencing token %d)", identity, key, term.fencing_token, **extra)


def log_ended(identity: str, key: str, reason: Reason, **extra: Any) -> None:
    """Tell the log that a term of *identity* on *key* ended for *reason*: a
    warning if it was deposed, else a step-down of its own."""
    if reason.deposed:
        log.warning("%s deposed as leader of %r: %s", identity, key, reason, **extra)
    else:
        log.info("%s stepped down as leader of %r: %s", identity, key, reason, **extra)
