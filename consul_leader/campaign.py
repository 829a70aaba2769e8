"""A :class:`~consul_leader.Candidate`'s election thread: it keeps a
:class:`~consul_leader.session.Session` alive, takes the lock in one
transaction, waits for a free lock in the waiting line with blocking
queries, watches the lock while it leads, and ends each term itself through
the term engine (:class:`~consul_leader.term.Tenure`, blocking: this thread
waits for the job and the ``deposed`` receivers before the release).

The Candidate keeps the public API and its state; this module owns what
only the election thread does, and what it has found out on the way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import tenacity

from . import signals
from .entry import KeyEntry
from .errors import ConsulLeaderError, LockHeld, PermissionDenied, RequestRejected, SessionLost
from .events import EventKind, LeadershipEvent, Reason
from .follower import KeyWatch, LeaderInfo
from .interrupt import clear_wake, interrupt, wake
from .leadership import Leadership, Part
from .lockdelay import holder_flags
from .outage import Outage
from .participant import live_session
from .seat import Seat
from .session import Clock, Session
from .waiting import KeyWaiter

if TYPE_CHECKING:
    from .candidate import Candidate

__all__ = ["Campaign"]

log = logging.getLogger("consul_leader")

#: How long a candidate leaving the election, having released the lock,
#: waits for the next leader to take it before cleaning up (see
#: Campaign.leave); a successor usually takes it within ms.
_SUCCESSOR_WAIT = 0.1

#: How many 400 answers in a row, with no round that worked between them,
#: end an election: one may come from a proxy on the way, not from Consul.
_REJECTIONS_THAT_ARE_FINAL = 3


class Campaign(Part):
    """The election thread of one :class:`~consul_leader.Candidate`, and
    what it knows: its session, the term it watches, a release that failed
    (see :class:`~consul_leader.leadership.Part` for what it is made with).

    :param finish_stop: the end of :meth:`Candidate.stop`, when it falls to this thread.
    :param gave_up: called when the election gave up by itself (``wait=False``).
    """

    def __init__(self, candidate: Candidate, seat: Seat, lock: threading.RLock, stopping: threading.Event,
                 clock: Clock, dispatcher: signals.Dispatcher,
                 term_hook: Callable[[], Callable[[int, float], None] | None], notify: Callable[[], None],
                 finish_stop: Callable[[], None], gave_up: Callable[[], None]) -> None:
        super().__init__(candidate, seat, lock, stopping, clock, dispatcher, term_hook, notify)
        self._finish_stop = finish_stop
        self._gave_up = gave_up
        self.thread: threading.Thread | None = None
        self.session: Session | None = None
        self.finish_deferred = False  # stop() was called from the job or a receiver
        self.done = threading.Event()  # set when the thread has finished
        self.failure: ConsulLeaderError | None = None
        self.last_error: ConsulLeaderError | None = None
        self._key_checked = False
        self._cut_backoff = threading.Event()  # set to end a retry's backoff early
        # One line when the election starts failing, a reminder a minute,
        # one when it works again: not a line per retry.
        self._outage = Outage(log, f"election for {self.key!r}")
        self.waiter = KeyWaiter(self.client, self.key, self.identity, self.timing.check_ttl, clock, stopping,
                                lambda: self.session, self._observe)
        self.leadership = Leadership(candidate, seat, lock, stopping, clock, dispatcher, term_hook, notify,
                                     self._report)

    def start(self) -> None:
        """Start the election thread (with the candidate's state lock held)."""
        self.thread = threading.Thread(target=self._main, name=f"consul-leader {self.identity} {self.key}",
                                       daemon=True)
        self.thread.start()

    def step_down(self, reason: Reason) -> bool:
        """End the current term from any thread: leadership turns off now;
        this thread does the rest."""
        return self.leadership.step_down(reason)

    def stop(self, was_leading: bool, ending: bool) -> bool:
        """The candidate is stopping (its stop() stepped down). From the job
        or a receiver, leave the rest to this thread (False); else wait for
        it to end (True), and the caller finishes the stop."""
        self._cut_backoff.set()
        runner = self.leadership.runner
        inside = self._dispatcher.on_thread() or (runner is not None and runner.on_thread())
        thread = self.thread
        busy = was_leading or ending
        if inside:
            # This thread waits for our caller: it finishes the stop itself
            # once the term has ended (see _main). Cut short a long blocking
            # query it may sit in, once: it still has requests to make.
            self.finish_deferred = True
            if thread is not None and not busy:
                wake(thread)
            return False
        if thread is None or thread is threading.current_thread():
            return True
        if not busy:
            interrupt(thread)  # it may sit in a long blocking query
        # Not Thread.join(): a signal handler that raises during a join
        # makes CPython (before 3.13) take the thread for ended, and a
        # later stop() would then destroy the session beside a running job.
        # Ending a term waits for its job however long it takes (it
        # warns); otherwise the thread is at most one request away.
        self.done.wait(self.client.config.timeout + self.timing.heartbeat + 1)
        while not self.done.is_set() and (self.leadership.ending or self.leadership.runner is not None):
            self.done.wait(1.0)
        if not self.done.is_set():
            log.warning("the election thread of %s did not end in time; it holds nothing and ends by itself",
                        self.identity)
        return True

    def leave(self) -> None:
        """Give up a lock held before leading it, leave the line and the
        roster, let a successor in, and end the session."""
        held_off, self.leadership.held_off = self.leadership.held_off, None
        if held_off is not None:
            try:
                self.seat.drop_held_lock(*held_off)
            except ConsulLeaderError as exc:
                log.warning("could not give up %r as it stopped (%s); Consul frees it when the session ends",
                            self.key, exc)
        self.waiter.line.leave()  # before the session ends, so that the next waiter moves up once
        self.seat.roster.leave()  # every term is over: nothing of ours can still be working
        session = self.session
        if session is not None:
            self._let_successor_in()
            session.close()

    def _let_successor_in(self) -> None:
        """After releasing the lock on the way out, give the next leader a
        moment to take it before destroying the session and deregistering
        the check: those are writes too, and would queue beside its acquire
        (``consul lock`` destroys its session at once)."""
        index, self.seat.released_at = self.seat.released_at, None
        if index is None:
            return
        clear_wake()
        try:
            self.client.get_key(self.key, index=index, wait=_SUCCESSOR_WAIT)
        except ConsulLeaderError:
            pass  # only a courtesy

    # -- the thread ---------------------------------------------------------


    def _main(self) -> None:
        try:
            self._election()
        finally:
            self.done.set()

    def _election(self) -> None:
        rejected = 0

        def retryable(exc: BaseException) -> bool:
            # Consul answers 400 to a key it cannot take, and would again:
            # that is final. So might a proxy on the way, once: only a few
            # in a row, with nothing that worked between them, are final.
            nonlocal rejected
            if isinstance(exc, RequestRejected):
                rejected += 1
                return rejected < _REJECTIONS_THAT_ARE_FINAL
            return isinstance(exc, ConsulLeaderError)

        def round_() -> None:
            nonlocal rejected
            if not self._stopping.is_set():
                # A session lost before this round is replaced in it: only
                # a loss from now on cuts the next backoff short.
                self._cut_backoff.clear()
            self._round()
            rejected = 0
            # A round that ends a term can span an outage: only a request
            # answered after the outage began ends it.
            succeeded = self.client.last_success()
            if succeeded is not None:
                self._outage.ok(succeeded)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable),
            # Jittered, so that replicas facing a dead agent do not beat on it
            # in step; capped at one TTL, so that one whose agent is back
            # (its session may still hold the lock) resumes soon.
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=min(30.0, self.timing.check_ttl)),
            stop=tenacity.stop_when_event_set(self._stopping),
            sleep=self._pause,
            before_sleep=lambda state: self._report(state.outcome.exception()),  # type: ignore[union-attr]
            reraise=True)
        while not self._stopping.is_set():
            try:
                retrying(round_)
            except RequestRejected as exc:
                self.failure = exc  # asking again would get the same answer
                self._report(exc)
                self._stopping.set()
            except ConsulLeaderError:
                pass  # stop was requested while retrying
            except Exception:
                # Never let the thread die silently: log, tell, and go on.
                log.exception("unexpected error in the election for %r; retrying", self.key)
                self._stopping.wait(self.timing.check_ttl)
        if self.finish_deferred:
            clear_wake()
            self._finish_stop()  # stop() came from the job or a receiver and left this to us
        elif self.failure is not None:
            self._gave_up()  # wait=False: nobody will call stop() to clean up
        self._notify()

    def _pause(self, seconds: float) -> None:
        # A backoff that stop() cuts short, and so does the heartbeat
        # finding the session gone: the agent answers again, and a new
        # session is due now, not when the backoff ends.
        self._cut_backoff.wait(seconds)
        if not self._stopping.is_set():
            self._cut_backoff.clear()

    def _report(self, error: BaseException | None) -> None:
        """Tell of a failed request. Called from the election and heartbeat
        threads, so the receivers run on the signal thread."""
        if not isinstance(error, ConsulLeaderError):
            return
        self.last_error = error
        level = logging.ERROR if isinstance(error, (PermissionDenied, RequestRejected)) else logging.WARNING
        self._outage.failed(error, level=level, extra=self._fields("error", error=type(error).__name__))
        self._dispatcher.send_latest(signals.election_error, self.candidate, error=error)
        self.seat.events.publish(LeadershipEvent(EventKind.ERROR, error=error))
        self._dispatcher.call(self._notify)

    def _round(self) -> None:
        """One try: make sure of a session, take the lock or wait until it is
        free. Raises to be retried with backoff; returns to go again at once."""
        session = self._ensure_session()
        self.last_error = None
        if self._stopping.is_set():
            return
        if self.leadership.unreleased is not None:
            term = self.leadership.unreleased
            if term.session is session:
                self.leadership.tenure.release_again(term)  # raises: retried with backoff
            self.leadership.unreleased = None
        if self.seat.sit_out is not None:
            sit_out = self.seat.sit_out
            log.debug("%s sits out until someone else leads %r or %.1fs pass", self.identity, self.key,
                      sit_out.until - self._clock())
            watch = KeyWatch(self.client, self.key)
            released_at, self.seat.released_at = self.seat.released_at, None
            if released_at is not None:
                # Block from our own release on: no read of the key while
                # the others hand it over among themselves.
                watch.index = released_at
            self.waiter.wait(watch, hold_off_until=sit_out.until, sit_out=sit_out)
            self.seat.sit_out = None
            if self.candidate.wait and not sit_out.unclaimed(watch.entry if watch.index else None, self._clock()):
                # To the end of the line: those who waited go first.
                self.waiter.wait_in_line(session, watch)
            return
        if not self._key_checked:
            # Consul takes keys in a transaction's body that it refuses in a
            # URL (characters newer than its Unicode tables): find out before
            # leading, since watching needs the URL. RequestRejected is final.
            self._observe(KeyEntry.parse_optional(self.client.get_key(self.key, operation="acquire lock")[1]))
            self._key_checked = True
        assert session.id is not None
        since_ms = int(time.time() * 1000)  # wall clock: shown to people as "leader since"
        waiter = self.waiter
        raced, waiter.saw_free = waiter.saw_free, False
        seen = self.seat.view.seen
        asked_at = self._clock()
        try:
            self.seat.roster.join(session.id)  # once per session; again only if that failed
            attempt = self.client.acquire(self.key, self.identity.encode("utf-8"), session.id,
                                          flags=holder_flags(since_ms, self.timing.lock_delay),
                                          delete=waiter.line.entry, also_lock=self.seat.lock_also(session.id))
        except SessionLost:
            session.lost.set()
            raise
        took = self._clock() - asked_at
        waiter.acquired_in(took)
        if attempt.modify_index is not None:
            self.seat.refused_since = None
            waiter.lost_race = False
            waiter.line.left()  # the transaction deleted our entry: the next waiter moves up
            self.leadership.lead(session, asked_at, attempt, seen)
            return
        if attempt.delayed:
            # The last holder's session was invalidated: nobody may take the
            # lock for its lock-delay from then. Try again a few times until
            # it has surely ended, rather than spinning or overshooting.
            now = self._clock()
            retry_at = self.seat.refused_for_lock_delay(now, poll=True)
            log.debug("%s: a lock-delay runs on %r; trying again in %.2fs", self.identity, self.key, retry_at - now)
            watch = KeyWatch(self.client, self.key)
            waiter.wait(watch, hold_off_until=retry_at)
            waiter.wait_if_held(watch)
            return
        self.seat.refused_since = None
        watch = KeyWatch(self.client, self.key)
        entry = watch.read()
        self._observe(entry)
        if entry is None or entry.free:
            return  # held a moment ago, free now: the holder let go in between; try again at once
        # Seen free, tried, and someone else was faster: a crowd waits on
        # this key. Next time, let the others go first (see _wait).
        waiter.lost_race = raced
        if not self.candidate.wait:
            held_by = LeaderInfo.from_entry(entry).identity
            self.failure = LockHeld(f"{self.key!r} is held by {held_by!r} and this candidate was made with "
                                     "wait=False")
            log.info("%s", self.failure)
            self._stopping.set()
            return
        waiter.wait_in_line(session, watch)

    def _ensure_session(self) -> Session:
        self.session = live_session(self.session, lambda: Session(
            self.client, self.timing, f"consul-leader {self.key} {self.identity}", on_error=self._report,
            on_lost=self._session_lost, stats=self.candidate.heartbeat_stats, clock=self._clock,
            meta={"identity": self.identity, "key": self.key}, service=self.candidate.service,
            deregister_after=self.candidate.deregister_after))
        return self.session

    def _session_lost(self, session: Session) -> None:
        """From the heartbeat thread: a waiting candidate makes a new session
        at once instead of when its long blocking query ends (while leading,
        the watch of the lock sees the loss by itself)."""
        self._cut_backoff.set()
        thread = self.thread
        if thread is not None and self.leadership.holding is None and not self.leadership.ending:
            wake(thread)

    def _observe(self, entry: KeyEntry | None) -> None:
        if self.seat.view.observe(entry, self._clock()):
            identity = self.seat.view.leader
            log.info("leader of %r is now %r", self.key, identity,
                     extra=self._fields("leader_changed", leader=identity))
            self._dispatcher.send_latest(signals.leader_changed, self.candidate, leader=identity)

    # -- a term ---------------------------------------------------------------
