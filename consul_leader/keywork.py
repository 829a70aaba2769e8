"""What an :class:`~consul_leader.Elector`'s worker does with its keys:
take a free key, hold it a lock-delay when what was seen does not account
for the last holder, lead it, withdraw it, and end its terms through the
term engine (:class:`~consul_leader.term.Tenure`, not blocking: the worker
serves every key, so a term's ending waits for its job on the job's own
thread, and its release is posted back to the worker after the
``deposed`` receivers ran).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

from . import signals
from .client import ConsulClient
from .decisions import AfterTerm
from .entry import KeyEntry
from .errors import ConsulLeaderError, RequestRejected, SessionLost
from .events import Reason
from .keys import KeySeat, KeyTerm, PrefixView
from .lockdelay import LockAttempt, holder_flags, release_mark
from .session import Clock, Session, Timing
from .term import Tenure, Term

__all__ = ["KeyWork"]

log = logging.getLogger("consul_leader")


class KeyWork:
    """The worker's handling of an elector's keys (on the worker thread,
    except :meth:`step_down` and :meth:`lapse`, from any thread).

    :param client: the elector's Consul client.
    :param prefix: the prefix.
    :param timing: the elector's timing.
    :param clock: the elector's clock.
    :param lock: the elector's state lock.
    :param stopping: set when the elector stops.
    :param dispatcher: the elector's signal thread.
    :param post: runs a message on the worker thread.
    :param session: the elector's session, if any.
    :param ensure_session: the elector's live session, made if need be.
    :param notify: wakes whoever waits for a change of leadership or state.
    """

    def __init__(self, client: ConsulClient, prefix: str, timing: Timing, clock: Clock, lock: threading.RLock,
                 stopping: threading.Event, dispatcher: signals.Dispatcher,
                 post: Callable[[Callable[[], None]], None], session: Callable[[], Session | None],
                 ensure_session: Callable[[], Session], notify: Callable[[], None]) -> None:
        self.client = client
        self.timing = timing
        self._clock = clock
        self._lock = lock
        self._stopping = stopping
        self._dispatcher = dispatcher
        self._session = session
        self._ensure_session = ensure_session
        self._notify = notify
        self.view = PrefixView(client, prefix, timing, clock, lock, dispatcher, post, self.step_down)
        # The worker serves every key: a term's ending never waits there
        # for a job, and its release is posted back to it.
        self._tenure = Tenure(client, clock, timing.check_ttl, dispatcher, lock, blocking=False,
                              notify=lambda: self._dispatcher.call(self._notify),
                              stepped=lambda t: self._tenure.end(t), post=post, finished=self._finished,
                              stopping=stopping.is_set)

    def step_down(self, term: KeyTerm, reason: Reason) -> bool:
        """End *term* from any thread: its flag turns off now, and its
        ending goes on in this thread (see :meth:`Tenure.end
        <consul_leader.term.Tenure.end>`), not through the worker: a term
        without a job has no watchdog, and the worker may be in a request
        that its lease no longer bounds."""
        return self._tenure.step_down(term, reason)

    def lease_left(self) -> float | None:
        """End the terms whose lease is over, so that their ``deposed``
        receivers are told before the worker waits on anything; return the
        time until the earliest other lease of the keys led ends (None: no
        key is). Asked by each request of the worker as it starts (its
        bound), by the backoff, and before waiting for a heartbeat round."""
        now = self._clock()
        earliest = math.inf
        over: list[KeyTerm] = []
        with self._lock:
            for seat in self.view.seats.values():
                term = seat.key_term
                if term is None or term.reason is not None or term.lapsed:
                    continue
                end = term.lease_end()
                if now >= end:
                    over.append(term)
                else:
                    earliest = min(earliest, end)
        for term in over:
            self.lapse(term)
        return None if earliest == math.inf else earliest - now

    def on_lost(self, session: Session) -> None:
        """*session* is gone: its terms lost their locks, its lock-delay waits end."""
        self.view.full = True
        for seat in self.view.all():
            term = seat.key_term
            if term is not None and term.session is session:
                self.step_down(term, Reason.LOCK_LOST)
            if seat.delay_wait is not None and seat.delay_wait[2] is session:
                seat.delay_wait, seat.state = None, "idle"

    def start_job(self, seat: KeySeat) -> None:
        """:meth:`Candidacy.run() <consul_leader.Candidacy.run>` gave a job: a term already running runs it too."""
        term = seat.key_term
        if term is not None:
            self._start_term_runner(term)

    def stop_terms(self) -> None:
        # Every term first: a release that fails must not keep the others going.
        for seat in self.view.all():
            if seat.key_term is not None:
                self.step_down(seat.key_term, Reason.STOPPED)
        for seat in self.view.all():
            self._drop_delay_wait(seat)

    def withdraw(self, seat: KeySeat) -> None:
        seat.withdrawn = True
        if seat.key_term is not None:
            self.step_down(seat.key_term, Reason.STOPPED)
        self._drop_delay_wait(seat)
        if seat.state == "idle":
            entry = self.view.entries.get(seat.key)
            session = self._session()
            if entry is not None and session is not None and entry.session == session.id:
                self._release_left(seat)  # an earlier release failed: the key is still this session's
            else:
                self._forget(seat)

    def _forget(self, seat: KeySeat) -> None:
        with self._lock:
            seat.state = "withdrawn"
            self.view.seats.pop(seat.key, None)
        seat.roster.leave()  # its terms are over: nothing of ours can still be working on it
        seat.events.close()
        self._dispatcher.call(self._notify)

    def _release_left(self, seat: KeySeat) -> None:
        """A withdrawn key whose release failed: release it again, then forget it."""
        session = self._session()
        if session is not None and session.id is not None and not session.lost.is_set() and \
                not self._stopping.is_set():
            entry = self.view.entries.get(seat.key)
            self.client.release(seat.key, session.id,
                                release_mark(session.id, entry.lock_index if entry is not None else None))
        self._forget(seat)

    def _drop_delay_wait(self, seat: KeySeat) -> None:
        if seat.delay_wait is None:
            return
        _, attempt, session = seat.delay_wait
        try:
            seat.drop_held_lock(session, attempt)
        except ConsulLeaderError as exc:
            if not self._stopping.is_set():
                # The wait stays, and the sweep releases it again: the
                # session lives on and would hold the key for good.
                raise
            log.warning("could not release %r (%s); Consul frees it when the session ends", seat.key, exc)
        seat.delay_wait, seat.state, seat.contenders, seat.asked_with = None, "idle", None, None

    def sweep(self, seats: Iterable[KeySeat]) -> float:
        """Lapsed leases, lock-delay waits that ended, and free keys to
        take, among *seats*; returns when to look again. A request
        that fails for one key does not keep the others from being looked
        at: the first failure is raised once every key was."""
        now = self._clock()
        soon = math.inf
        failure: ConsulLeaderError | None = None
        for seat in seats:
            try:
                soon = min(soon, self._look_at(seat, now))
            except ConsulLeaderError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return soon

    def _look_at(self, seat: KeySeat, now: float) -> float:
        """One key of :meth:`sweep`; when to look at it again."""
        term = seat.key_term
        if term is not None:
            if term.lapsed or now >= term.lease_end():
                self.lapse(term)
                return math.inf
            return term.lease_end()
        if seat.withdrawn and seat.state == "idle":
            self._release_left(seat)
        elif seat.delay_wait is not None:
            if seat.withdrawn:
                self.withdraw(seat)  # its release failed: again
            elif self._stopping.is_set():
                self._drop_delay_wait(seat)
            elif now >= seat.delay_wait[0]:
                return self._lead_after_wait(seat)
            else:
                return seat.delay_wait[0]
        elif seat.state == "idle" and not seat.withdrawn and not self._stopping.is_set():
            return self._maybe_acquire(seat, now)
        return math.inf

    def _maybe_acquire(self, seat: KeySeat, now: float) -> float:
        """Try to take *seat*'s key if it looks free; the time to look again."""
        entry = self.view.entries.get(seat.key)
        if seat.sit_out is not None and seat.sit_out.taken_since(entry):
            seat.sit_out = None  # someone else took it since we stepped down
        holder = entry.session if entry is not None else None
        current = self._session()
        own = current.id if current is not None and not current.lost.is_set() else None
        if entry is not None and holder is not None and (holder != own or entry.modify_index <= seat.released):
            return math.inf  # the watch tells when it is free (ours: a listing from before the release)
        # Held by this session while no term nor lock-delay wait has it:
        # an acquisition whose answer was lost, a term's start or release
        # cut short by a failed request. Nobody else can take it: acquiring
        # it again makes it a term.
        if holder and seat.sit_out is not None:
            # Stepped down, and the release failed: release it again, as
            # the step-down meant, rather than lead it again after the
            # sit-out (nobody could take it meanwhile).
            assert entry is not None and own is not None
            # A failure is retried by the worker's next turn.
            self.client.unlock(seat.key, own, release_mark(own, entry.lock_index), index=entry.modify_index)
            seat.released = entry.modify_index
            return math.inf
        if seat.sit_out is not None:
            if not seat.sit_out.over(entry, now):
                return seat.sit_out.until
            seat.sit_out = None
        if now < seat.not_before:
            return seat.not_before
        if not self.view.index or seat.tried_index >= self.view.index:
            # Not listed yet, or refused as held at this index: wait for the
            # watch. Only a lock taken right after a listing showed the key
            # free is led at once (LockAttempt.follows).
            return math.inf
        session = self._ensure_session()
        assert session.id is not None
        seen = entry
        if holder is not None and holder == session.id and seat.asked_with is not None:
            # Our own lock with neither a term nor a wait: an acquisition
            # whose answer was lost, or whose hold or term could not begin.
            # Judge it by what that acquisition saw, not by our own lock
            # (which would be led at once, beside the last holder's work).
            seen = seat.asked_with
        seat.asked_with = seen
        asked_at = self._clock()
        try:
            seat.roster.join(session.id)  # once per session; again only if that failed
            attempt = self.client.acquire(seat.key, seat.identity.encode("utf-8"), session.id,
                                          flags=holder_flags(int(time.time() * 1000), self.timing.lock_delay),
                                          also_lock=seat.lock_also(session.id))
        except SessionLost:
            session.lost.set()
            self.on_lost(session)
            raise
        except RequestRejected as exc:
            log.error("giving up %r: %s", seat.key, exc)
            self.withdraw(seat)
            return math.inf
        if attempt.modify_index is None:
            if attempt.delayed:
                seat.not_before = seat.refused_for_lock_delay(self._clock(), poll=False)
                return seat.not_before
            seat.refused_since = None
            seat.tried_index = self.view.index
            return math.inf
        seat.refused_since = None
        hold, why, contenders = seat.hold_off(attempt, seen, session.id, self._clock())
        if hold > 0:
            log.info("%s took %r %s; holding it %.2fs before leading (lock-delay %gs)", seat.identity,
                     seat.key, why, hold, self.timing.lock_delay)
            until = self._clock() + hold
            # Recorded before the flags rewrite: if that fails, the wait
            # stays (and a withdrawal or stop gives the key up as a held one).
            seat.delay_wait, seat.state, seat.contenders = (until, attempt, session), "delay-wait", contenders
            noted = seat.note_hold(session.id, attempt, hold)
            if noted is None:  # the key changed under us: the watch tells
                seat.delay_wait, seat.state, seat.contenders, seat.asked_with = None, "idle", None, None
                return math.inf
            seat.delay_wait = (until, noted, session)
            return until
        if contenders:
            seat.roster.forget(contenders)
        return self._lead(seat, session, asked_at, attempt)

    def _lead_after_wait(self, seat: KeySeat) -> float:
        """The lock-delay wait ended: prove the key still ours, then lead;
        the time to look again."""
        assert seat.delay_wait is not None
        _, attempt, session = seat.delay_wait
        t0 = self._clock()
        _, raw = self.client.get_key(seat.key)  # if it fails, the wait stays and the sweep proves it again
        contenders, seat.delay_wait, seat.state, seat.contenders = seat.contenders, None, "idle", None
        entry = KeyEntry.parse_optional(raw)
        if entry is not None and entry.session == session.id and not session.lost.is_set():
            if contenders:
                seat.roster.forget(contenders)  # what crashed candidates left: their work is over by now
            return self._lead(seat, session, t0, attempt)
        seat.asked_with = None
        return math.inf

    def _lead(self, seat: KeySeat, session: Session, held_since: float, attempt: LockAttempt) -> float:
        """Start a term on the key just taken; the time to look again: its
        lease's end, which the worker's timer acts on for a key without a
        job (nothing else may wake the worker before: the watch and the
        heartbeat's proof may wait on a frozen agent)."""
        if not session.lease_valid():
            # This round may first wait for the heartbeat's, which can sit in
            # a request to a hung agent for a whole timeout: every lease of
            # the session is over, so end those terms before waiting.
            self.lease_left()
            session.beat()  # an idle session's last round may be too old
        term = KeyTerm(seat, session, attempt, self._clock(),
                        min(session.lease_deadline, held_since + self.timing.lease))
        assert session.id is not None
        seat.asked_with = None  # it is led, or let go, from here on
        if self._clock() >= term.deadline or seat.withdrawn or self._stopping.is_set():
            seat.release_unled(session, attempt)
            return math.inf
        seat.state = "leading"
        self._tenure.lead(term, latest=False)
        self._start_term_runner(term)
        return term.lease_end()

    def _start_term_runner(self, term: KeyTerm) -> None:
        """Run the key's job for *term*, with a lease watchdog: at the
        lease's end the job is told to stop and, once it returned, the
        ``deposed`` receivers are, even while this worker sits in a request
        to a frozen agent."""
        if term.seat.job is None or term.runner is not None:
            return
        self._tenure.start_runner(term, lambda: term.lease_end() - self._clock(),
                                  on_lease_end=lambda: self.lapse(term))

    def lapse(self, term: KeyTerm) -> None:
        """*term*'s lease ran out: it stays out, and its ending goes on in
        the calling thread (the step-down's), not through the worker, which
        may be stuck in a request to a frozen agent."""
        with self._lock:
            term.lapsed = True
        self.step_down(term, Reason.LEASE_EXPIRED)

    def _finished(self, term: Term, after: AfterTerm, released: bool) -> None:
        """*term*'s release (or the failure of it) on the worker: the key
        is looked at again, and forgotten if it was withdrawn."""
        assert isinstance(term, KeyTerm)
        seat = term.key_seat
        if released:
            seat.released = term.fencing_token
        seat.state = "idle"
        self.view.dirty.add(seat)
        if seat.withdrawn and released:
            self._forget(seat)
        self._dispatcher.call(self._notify)
