"""The Candidate: runs for election on a Consul key in a background thread.

The thread keeps a :class:`~consul_leader.session.Session` alive, takes the
lock in one transaction, waits for a free lock with blocking queries, watches
the lock while it leads, and ends every term the same way: the job told to
stop and waited for, ``deposed`` delivered, then the lock released. See the
"Safety" part of the docs for why :meth:`Candidate.is_leader` is a lease and
not a flag, and why the work of two terms never overlaps.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import tenacity

from . import process, signals
from .client import ConsulClient
from .config import ConsulConfig
from .decisions import (
    KeyView,
    SitOut,
    after_term,
    hold_with_roster,
    is_consul_lock_key,
    lock_check,
    released_entry,
    retry_after_lock_delay,
)
from .entry import KeyEntry
from .errors import (
    ConfigurationError,
    ConfigurationTypeError,
    ConsulLeaderError,
    ConsulUnavailable,
    LockHeld,
    NotRunning,
    PermissionDenied,
    RequestRejected,
    SessionLost,
)
from .events import Broadcast, EventKind, LeadershipEvent, Reason
from .follower import KeyWatch, LeaderInfo
from .footprint import DEFAULT_DEREGISTER_AFTER, DEFAULT_SERVICE
from .health import Health
from .interrupt import clear_wake, interrupt, wake
from .job import Job, JobRunner
from .lockdelay import (
    LockAttempt,
    holder_flags,
    lock_delay_to_hold,
    release_mark,
)
from .outage import Outage
from .participant import Participant
from .process import stop_on_signals
from .roster import Roster
from .runtime import check_threads_usable
from .session import Clock, HeartbeatStats, Session, Timing, lease_clock
from .term import Stage, Term, announce_elected, announce_ended, log_elected, term_runner
from .validation import (
    check_bool,
    check_identity,
    check_job,
    check_key,
    check_number,
    check_optional_seconds,
    check_service,
    default_identity,
)
from .waiting import KeyWaiter

__all__ = ["Candidate", "Health", "LeadershipEvent", "stop_on_signals"]

log = logging.getLogger("consul_leader")

#: How long a candidate leaving the election, having released the lock,
#: waits for the next leader to take it before cleaning up (see
#: Candidate._let_successor_in); a successor usually takes it within ms.
_SUCCESSOR_WAIT = 0.1


#: How many 400 answers in a row, with no round that worked between them,
#: end an election: one may come from a proxy on the way, not from Consul.
_REJECTIONS_THAT_ARE_FINAL = 3
# While a lock-delay keeps the key, try again at least this far apart (and
# at most eight times in one lock-delay): Consul answers such a refusal from
# the Raft leader's memory, without a Raft write.
_LOCK_DELAY_POLL = 0.25


class Candidate(Participant):
    """Runs for leadership of *key* in a background thread.

    :param key: the Consul KV key that is the lock, e.g. ``"service/beat/leader"``.
    :param identity: what this candidate writes into the key; other
        processes see it through :meth:`leader`. Default ``"<hostname>:<pid>"``.
    :param consul: an existing ``consul.Consul`` whose settings (address,
        token, TLS, datacenter) to use. consul-leader still opens its own
        connections, one per thread, each request bounded by a timeout.
    :param address: the agent, ``host:port`` or ``https://host:port``;
        default ``CONSUL_HTTP_ADDR`` or ``127.0.0.1:8500``.
    :param token: ACL token; default ``CONSUL_HTTP_TOKEN`` /
        ``CONSUL_HTTP_TOKEN_FILE``. Never logged.
    :param datacenter: the datacenter of the key and session.
    :param verify: TLS verification: a CA bundle path, True or False; default
        ``CONSUL_CACERT``.
    :param cert: client certificate (path, or ``(cert, key)``); default
        ``CONSUL_CLIENT_CERT`` / ``CONSUL_CLIENT_KEY``.
    :param ttl: the one knob for failover speed, in seconds: the health
        check's TTL. A crashed leader is replaced about ``2*ttl`` later.
    :param lock_delay: Consul's lock-delay; default ``min(ttl, 60)``.
    :param lease: how long leadership outlives the last good heartbeat;
        default derived from *ttl* (see :class:`~consul_leader.session.Timing`).
    :param heartbeat: seconds between heartbeats while leading; default ``ttl/3``.
    :param session_ttl: the session's TTL (10 s..24 h), a backstop.
    :param term_limit: resign after leading this many seconds, giving the
        others a chance (client-go's leader election has no such limit; this
        is the term limit of Docker's ``leadership`` package); None for no limit.
    :param wait: False to try once: if the lock is held, give up
        (:meth:`wait_for_leadership` and :meth:`run` raise :class:`LockHeld`).
    :param timeout: seconds allowed for any non-blocking request.
    :param clock: the clock leases, term limits, sit-outs and waits are
        measured on; default :func:`~consul_leader.session.lease_clock`.
        Tests inject one to move time on by hand.
    :param service: the service name of the instance each session registers
        on the agent, whose TTL check the session is bound to (see
        :ref:`footprint`); the ACL policy needs write on it.
    :param deregister_after: seconds after which Consul removes that
        instance once its check is critical, after a crash (at least 60,
        Consul's least).
    :raises ConfigurationError: (a :class:`ValueError`) an argument is invalid;
        the message names it and what is allowed.

    .. versionadded:: 0.1
    .. versionadded:: 0.2 *service* and *deregister_after*.
    """

    def __init__(self, key: str, *, identity: str | None = None, consul: Any = None,
                 address: str | None = None, token: str | None = None, datacenter: str | None = None,
                 verify: None | bool | str = None, cert: None | str | tuple[str, str] = None,
                 ttl: float = 3.0, lock_delay: float | None = None, lease: float | None = None,
                 heartbeat: float | None = None, session_ttl: float | None = None,
                 term_limit: float | None = None, wait: bool = True, timeout: float = 5.0,
                 clock: Clock | None = None, service: str = DEFAULT_SERVICE,
                 deregister_after: float = DEFAULT_DEREGISTER_AFTER) -> None:
        self.key = check_key(key)
        self.service = check_service(service)
        self.deregister_after = check_number("deregister_after", deregister_after, 60, 86400)
        self._default_identity = identity is None
        self.identity = default_identity() if identity is None else check_identity(identity)
        self.timing = Timing.from_ttl(ttl, heartbeat=heartbeat, lease=lease, lock_delay=lock_delay,
                                      session_ttl=session_ttl)
        self.term_limit = check_optional_seconds("term_limit", term_limit)
        if not isinstance(wait, bool):
            raise ConfigurationTypeError(f"wait must be True or False, got {wait!r}")
        self.wait = wait
        self.client = ConsulClient(ConsulConfig.resolve(consul=consul, address=address, token=token,
                                                        datacenter=datacenter, verify=verify, cert=cert,
                                                        timeout=timeout))
        if clock is not None and not callable(clock):
            raise ConfigurationTypeError(f"clock must be a function returning seconds, got {type(clock).__name__}")
        self._clock: Clock = lease_clock if clock is None else clock
        self._job: Job | None = None
        # Called on the election thread with (fencing token, lease deadline)
        # the moment a term begins, before anything else: where
        # ``consul-leader run`` asks its watchdog process to start the
        # command, so that no thread switch lies on the handover path. It
        # must not block (the lease does not wait for it).
        self._term_hook: Callable[[int, float], None] | None = None
        self._also_lock: list[tuple[str, bytes]] = []
        # One line when the election starts failing, a reminder a minute,
        # one when it works again: not a line per retry.
        self._outage = Outage(log, f"election for {self.key!r}")
        self._reset()
        process.register(self, self._after_fork_in_child)

    def _reset(self) -> None:
        self._state = "new"  # new -> running -> stopped
        self._state_lock = threading.RLock()
        self._changed = threading.Condition(self._state_lock)
        self._stopping = threading.Event()
        self._cut_backoff = threading.Event()  # set to end a retry's backoff early
        self._thread: threading.Thread | None = None
        self._session: Session | None = None
        self._term: Term | None = None
        # The last term's runner, until its job has returned.
        self._runner: JobRunner | None = None
        self._ending = False  # the election thread is ending a term
        self._finish_deferred = False  # stop() was called from the job or a receiver
        self._main_done = threading.Event()  # set when the election thread has finished
        self._holding: Term | None = None  # the term whose lock _hold watches
        # What the election thread has seen of the key; a lock taken right
        # after it was seen free is led at once (LockAttempt.follows).
        self._view = KeyView()
        # After stepping down: sit out until then, or until the key's
        # LockIndex passes the one of our term (someone else took it since).
        self._sit_out: SitOut | None = None
        # The key's ModifyIndex our last release left (None: nothing released
        # since): the sit-out blocks from there, and stop() waits there for
        # a successor before cleaning up.
        self._released_at: int | None = None
        # A term's release failed: its session still holds the key, and
        # nobody else can take it until this one lets it go.
        self._unreleased: Term | None = None
        self._failure: ConsulLeaderError | None = None
        self._last_error: ConsulLeaderError | None = None
        self._events: Broadcast[LeadershipEvent] = Broadcast()
        self._dispatcher = signals.Dispatcher(f"consul-leader-signals {self.identity} {self.key}")
        self._key_checked = False
        # A lock held before leading it (its session and acquisition), while held.
        self._held_off: tuple[Session, LockAttempt] | None = None
        # When Consul first refused an acquisition for a lock-delay, in a row.
        self._refused_since: float | None = None
        # This candidate's entry on the key's roster (see roster.py).
        self._roster = Roster(self.client, self.key, self.identity, self.timing.lock_delay)
        self._waiter = KeyWaiter(self.client, self.key, self.identity, self.timing.check_ttl, self._clock,
                                 self._stopping, lambda: self._session, self._observe)
        self.heartbeat_stats = HeartbeatStats()

    def __repr__(self) -> str:
        role = "leader" if self.is_leader() else self._state
        return f"<Candidate {self.key!r} identity={self.identity!r} {role}>"

    def __enter__(self) -> Candidate:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the public surface -------------------------------------------------

    def start(self) -> Candidate:
        """Run for election in a background thread. Idempotent; the first
        candidate started becomes the process's default (see
        :func:`~consul_leader.set_default`).

        :raises NotRunning: the candidate was stopped; make a new one.
        :raises ConfigurationError: this process cannot run the candidate's
            threads (gevent or eventlet monkey-patching, uWSGI without
            ``--enable-threads``); the message says what to do."""
        check_threads_usable()
        with self._state_lock:
            if self._state == "running":
                return self
            if self._state == "stopped":
                raise NotRunning(f"{self!r} was stopped; create a new Candidate to run again")
            self._state = "running"
            self._thread = threading.Thread(target=self._main, name=f"consul-leader {self.identity} {self.key}",
                                            daemon=True)
            self._thread.start()
        process.offer_default(self)
        log.info("%s runs for leadership of %r (ttl=%gs, lease=%gs, lock_delay=%gs)",
                 self.identity, self.key, self.timing.check_ttl, self.timing.lease, self.timing.lock_delay,
                 extra=self._log_fields("started"))
        return self

    def is_leader(self) -> bool:
        """True while this candidate holds the lock *and* its lease holds.

        A cheap, thread-safe read: it compares a monotonic clock with the
        lease's end, so a process resumed after a pause longer than the lease
        answers False at once, before its threads have run again."""
        term = self._term
        return term is not None and self._clock() < term.session.lease_deadline

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (or giving up)."""
        return self._state == "running" and not self._stopping.is_set()

    @property
    def state(self) -> str:
        """``"new"`` (not started), ``"running"``, ``"stopping"`` (a stop or
        giving up is under way: the last term is ending) or ``"stopped"``.

        .. versionadded:: 0.2"""
        state = self._state
        return "stopping" if state == "running" and self._stopping.is_set() else state

    def health(self) -> Health:
        """A watchdog's view of this candidate (for a Kubernetes probe or a
        health endpoint): is its thread alive and its heartbeat current? A
        cheap read that makes no request.

        ``ok`` turns False once no heartbeat succeeded for a check TTL, which
        is also when Consul stops counting this candidate. Since that happens
        to every replica while Consul itself is down, use ``running`` rather
        than ``ok`` for a liveness probe that restarts the process.

        .. versionadded:: 0.1
        """
        term = self._term
        thread = self._thread
        return Health.of(running=self.running and thread is not None and thread.is_alive(),
                         stats=self.heartbeat_stats, now=self._clock(), check_ttl=self.timing.check_ttl,
                         lease_deadline=term.session.lease_deadline if term is not None else -math.inf,
                         last_error=self._last_error)

    def resign(self) -> bool:
        """Step down if leading: :meth:`is_leader` turns False at once, the
        job's ``stop_event`` is set, and once the job has returned and the
        ``deposed`` receivers have run, the lock is released so another
        candidate can win. Returns without waiting for that. This candidate
        stays in the election and runs again after sitting out one check
        TTL, or as soon as someone else has taken the lock.

        :returns: True if it was leading."""
        return self._step_down(Reason.RESIGNED)

    def stop(self) -> None:
        """Leave the election: stop leading, wait for the job to return and
        the ``deposed`` receivers to run, release the lock, destroy the
        session, deregister the check and end the threads. Idempotent; safe
        from any thread, a signal handler or at exit.

        A job that does not return keeps this waiting (with a warning every
        few seconds) and keeps the lock held: two terms' jobs never run at
        once. Called from the job or a receiver, it returns without waiting;
        the election thread finishes the term and then stops."""
        with self._state_lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._stopping.set()
            self._cut_backoff.set()
            ending = self._ending
        was_leading = self._step_down(Reason.STOPPED)
        runner = self._runner
        inside = self._dispatcher.on_thread() or (runner is not None and runner.on_thread())
        thread = self._thread
        if inside:
            # The election thread waits for our caller: it finishes the stop
            # itself once the term has ended (see _main). Cut short a long
            # blocking query it may sit in, once: it still has requests to make.
            self._finish_deferred = True
            if thread is not None and not (was_leading or ending):
                wake(thread)
            return
        if thread is not None and thread is not threading.current_thread() and not (was_leading or ending):
            interrupt(thread)  # it may sit in a long blocking query
        if thread is not None and thread is not threading.current_thread():
            # Not Thread.join(): a signal handler that raises during a join
            # makes CPython (before 3.13) take the thread for ended, and a
            # later stop() would then destroy the session beside a running job.
            # Ending a term waits for its job however long it takes (it
            # warns); otherwise the thread is at most one request away.
            done = self._main_done
            done.wait(self.client.config.timeout + self.timing.heartbeat + 1)
            while not done.is_set() and (self._ending or self._runner is not None):
                done.wait(1.0)
            if not done.is_set():
                log.warning("the election thread of %s did not end in time; it holds nothing and ends by itself",
                            self.identity)
        self._finish_stop()

    def _finish_stop(self) -> None:
        held_off, self._held_off = self._held_off, None
        if held_off is not None:
            self._drop_held_lock(*held_off)
        self._waiter.line.leave()  # before the session ends, so that the next waiter moves up once
        self._roster.leave()  # every term is over: nothing of ours can still be working
        session = self._session
        if session is not None:
            self._let_successor_in()
            session.close()
        with self._state_lock:
            self._state = "stopped"
            self._changed.notify_all()
        self._events.close()
        process.withdraw_default(self)
        log.info("%s left the election for %r", self.identity, self.key, extra=self._log_fields("stopped"))
        self._dispatcher.close()

    def _let_successor_in(self) -> None:
        """After releasing the lock on the way out, give the next leader a
        moment to take it before destroying the session and deregistering
        the check: those are writes too, and would queue beside its acquire
        (``consul lock`` destroys its session at once)."""
        index, self._released_at = self._released_at, None
        if index is None:
            return
        clear_wake()
        try:
            self.client.get_key(self.key, index=index, wait=_SUCCESSOR_WAIT)
        except ConsulLeaderError:
            pass  # only a courtesy

    def run(self, job: Job, *, block: bool = True) -> None:
        """Run ``job(stop_event)`` in a worker thread each time this candidate
        is elected (client-go's ``OnStartedLeading``). When the term ends,
        ``stop_event`` is set and the job must return soon: the lock is
        handed over only after it has, so the next leader's job never runs
        beside it. If the job returns (or raises) while leading, the
        candidate resigns.

        When the lease runs out (Consul unreachable, the process paused), a
        watchdog sets ``stop_event`` at once, independently of the election
        thread; from then on another candidate may win after the lock-delay
        margin (``Timing.margin``) at the earliest, so a job must return
        within that; writes that must never overlap should carry the
        :attr:`fencing_token`.

        Starts the candidate if needed. With *block*, waits until the
        candidate stops (:meth:`stop` from another thread or a signal); if
        the wait ends in an exception (``KeyboardInterrupt`` among them), the
        candidate is stopped first.

        :param job: called as ``job(stop_event)`` with a :class:`threading.Event`.
        :param block: wait until the candidate stops; False to return at once.
        :raises LockHeld: with ``wait=False``, when the lock is held elsewhere.
        :raises PermissionDenied: when the ACL token cannot run the election."""
        self._job = check_job(job)
        check_bool("block", block)
        self.start()
        with self._state_lock:
            term = self._term
            if term is not None and term.runner is not None and term.reason is None:
                term.runner.start(self._job)  # already leading: this term runs the job too
        if not block:
            return
        try:
            with self._changed:
                while self._state == "running":
                    if isinstance(self._failure, LockHeld) or isinstance(self._last_error, PermissionDenied):
                        self._raise_if_hopeless()
                    self._changed.wait(0.5)
        except BaseException:
            self.stop()  # Ctrl-C or a hopeless election: leave cleanly before raising
            raise
        if self._failure is not None:
            raise self._failure

    def set_term_hook(self, hook: Callable[[int, float], None] | None) -> None:
        """Have ``hook(fencing_token, lease_deadline)`` called on the
        election thread the moment each term begins, before the ``elected``
        signal and before the job starts: where work that must start with no
        thread switch on the handover path is started (``consul-leader run``
        asks its watchdog process to start the command there).
        *lease_deadline* is on the candidate's clock. The hook must not
        block (the lease does not wait for it); one that raises is logged.

        :param hook: the hook, or None to remove it.

        .. versionadded:: 0.2"""
        self._term_hook = hook

    def lock_with(self, key: str, value: bytes = b"") -> None:
        """Take the lock on *key* (writing *value*) in the same transaction
        as each lock on this candidate's key, and release it when the term
        ends: a lock that another tool takes too. ``consul-leader run
        PREFIX`` locks ``consul lock PREFIX``'s ``PREFIX/.lock`` so, and
        ``consul lock`` cannot lead beside it, even with an acquisition that
        was on its way before. If another session holds *key*, the
        candidate stops and :meth:`wait_for_leadership` raises
        :class:`~consul_leader.errors.AlsoLockHeld`. Call before :meth:`start`.

        .. versionadded:: 0.2"""
        if self._state != "new":
            raise ConfigurationError(f"lock_with({key!r}): call it before start()")
        self._also_lock.append((check_key(key), value))

    # -- the election thread ------------------------------------------------

    def _changed_condition(self) -> threading.Condition:
        return self._changed

    def _raise_if_hopeless(self) -> None:
        if self._failure is not None:
            raise self._failure
        if isinstance(self._last_error, PermissionDenied):
            raise self._last_error
        if self._state != "running" or self._stopping.is_set():
            raise NotRunning(f"{self!r} is not running; call start() first")

    def _main(self) -> None:
        try:
            self._election()
        finally:
            self._main_done.set()

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
                self._failure = exc  # asking again would get the same answer
                self._report(exc)
                self._stopping.set()
            except ConsulLeaderError:
                pass  # stop was requested while retrying
            except Exception:
                # Never let the thread die silently: log, tell, and go on.
                log.exception("unexpected error in the election for %r; retrying", self.key)
                self._stopping.wait(self.timing.check_ttl)
        if self._finish_deferred:
            clear_wake()
            self._finish_stop()  # stop() came from the job or a receiver and left this to us
        elif self._failure is not None:
            # Gave up by itself (wait=False): nobody will call stop() to clean up.
            if self._session is not None:
                self._session.close()
            with self._state_lock:
                self._state = "stopped"
            self._events.close()
            self._dispatcher.close()
        with self._changed:
            self._changed.notify_all()

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
        self._last_error = error
        level = logging.ERROR if isinstance(error, (PermissionDenied, RequestRejected)) else logging.WARNING
        self._outage.failed(error, level=level, extra=self._log_fields("error", error=type(error).__name__))
        self._dispatcher.send_latest(signals.election_error, self, error=error)
        self._events.publish(LeadershipEvent(EventKind.ERROR, error=error))
        self._dispatcher.call(self._notify)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _round(self) -> None:
        """One try: make sure of a session, take the lock or wait until it is
        free. Raises to be retried with backoff; returns to go again at once."""
        session = self._ensure_session()
        self._last_error = None
        if self._stopping.is_set():
            return
        if self._unreleased is not None:
            term = self._unreleased
            if term.session is session:
                assert session.id is not None
                # Raises: retried with backoff.
                self._released_at = self._unlock(session.id, term)
                if self._released_at is not None:
                    # Our own release, late: the next lock follows it (F3).
                    self._view.seen = released_entry(self.key, session.id, term.lock_index, term.create_index,
                                                     self._released_at)
            self._unreleased = None
        if self._sit_out is not None:
            sit_out = self._sit_out
            log.debug("%s sits out until someone else leads %r or %.1fs pass", self.identity, self.key,
                      sit_out.until - self._clock())
            watch = KeyWatch(self.client, self.key)
            released_at, self._released_at = self._released_at, None
            if released_at is not None:
                # Block from our own release on: no read of the key while
                # the others hand it over among themselves.
                watch.index = released_at
            self._waiter.wait(watch, hold_off_until=sit_out.until, sit_out=sit_out)
            self._sit_out = None
            if self.wait and not sit_out.unclaimed(watch.entry if watch.index else None, self._clock()):
                # To the end of the line: those who waited go first.
                self._waiter.wait_in_line(session, watch)
            return
        if not self._key_checked:
            # Consul takes keys in a transaction's body that it refuses in a
            # URL (characters newer than its Unicode tables): find out before
            # leading, since watching needs the URL. RequestRejected is final.
            self._observe(KeyEntry.parse_optional(self.client.get_key(self.key, operation="acquire lock")[1]))
            self._key_checked = True
        assert session.id is not None
        since_ms = int(time.time() * 1000)  # wall clock: shown to people as "leader since"
        waiter = self._waiter
        raced, waiter.saw_free = waiter.saw_free, False
        seen = self._view.seen
        asked_at = self._clock()
        try:
            self._roster.join(session.id)  # once per session; again only if that failed
            attempt = self.client.acquire(self.key, self.identity.encode("utf-8"), session.id,
                                          flags=holder_flags(since_ms, self.timing.lock_delay),
                                          delete=waiter.line.entry,
                                          also_lock=self._roster.with_lock(session.id) + self._also_lock)
        except SessionLost:
            session.lost.set()
            raise
        took = self._clock() - asked_at
        waiter.acquired_in(took)
        if attempt.modify_index is not None:
            self._refused_since = None
            waiter.lost_race = False
            waiter.line.left()  # the transaction deleted our entry: the next waiter moves up
            self._lead(session, asked_at, attempt, seen)
            return
        if attempt.delayed:
            # The last holder's session was invalidated: nobody may take the
            # lock for its lock-delay from then. Try again a few times until
            # it has surely ended, rather than spinning or overshooting.
            now = self._clock()
            if self._refused_since is None:
                self._refused_since = now
            lock_delay = lock_delay_to_hold(self.timing.lock_delay, self._view.longest_delay)
            retry_at = retry_after_lock_delay(now, lock_delay, self._refused_since,
                                              poll=max(_LOCK_DELAY_POLL, lock_delay / 8))
            log.debug("%s: a lock-delay runs on %r; trying again in %.2fs", self.identity, self.key, retry_at - now)
            watch = KeyWatch(self.client, self.key)
            waiter.wait(watch, hold_off_until=retry_at)
            waiter.wait_if_held(watch)
            return
        self._refused_since = None
        watch = KeyWatch(self.client, self.key)
        entry = watch.read()
        self._observe(entry)
        if entry is None or entry.free:
            return  # held a moment ago, free now: the holder let go in between; try again at once
        # Seen free, tried, and someone else was faster: a crowd waits on
        # this key. Next time, let the others go first (see _wait).
        waiter.lost_race = raced
        if not self.wait:
            held_by = LeaderInfo.from_entry(entry).identity
            self._failure = LockHeld(f"{self.key!r} is held by {held_by!r} and this candidate was made with "
                                     "wait=False")
            log.info("%s", self._failure)
            self._stopping.set()
            return
        waiter.wait_in_line(session, watch)

    def _ensure_session(self) -> Session:
        session = self._session
        if session is not None and not session.lost.is_set():
            return session
        if session is not None:
            session.close()
        session = Session(self.client, self.timing, f"consul-leader {self.key} {self.identity}",
                          on_error=self._report, on_lost=self._session_lost, stats=self.heartbeat_stats,
                          clock=self._clock, meta={"identity": self.identity, "key": self.key},
                          service=self.service, deregister_after=self.deregister_after)
        session.open()
        self._session = session
        return session

    def _session_lost(self, session: Session) -> None:
        """From the heartbeat thread: a waiting candidate makes a new session
        at once instead of when its long blocking query ends (while leading,
        the watch of the lock sees the loss by itself)."""
        self._cut_backoff.set()
        thread = self._thread
        if thread is not None and self._holding is None and not self._ending:
            wake(thread)

    def _observe(self, entry: KeyEntry | None) -> None:
        if self._view.observe(entry, self._clock()):
            identity = self._view.leader
            log.info("leader of %r is now %r", self.key, identity,
                     extra=self._log_fields("leader_changed", leader=identity))
            self._dispatcher.send_latest(signals.leader_changed, self, leader=identity)

    # -- a term ---------------------------------------------------------------

    def _lead(self, session: Session, held_since: float, attempt: LockAttempt, seen: KeyEntry | None) -> None:
        """Lead from a lock taken no earlier than *held_since* by *attempt*,
        until the term ends; every way out goes through :meth:`_end_term`.
        *seen*: the key as last read before the acquisition; unless the lock
        follows it, hold the lock one lock-delay first (see
        :meth:`LockAttempt.hold_off`)."""
        assert attempt.modify_index is not None and session.id is not None
        hold, why = self._view.hold_off(attempt, seen, session.id, self._clock(), self.timing.lock_delay)
        contenders = None
        if hold > 0 and not self._view.follows(attempt, seen, session.id):
            # No lock-delay of Consul's covered this lock: the roster tells
            # whether anyone else can still be working, and for how long.
            contenders = self._roster.read(session.id)
            hold, why = hold_with_roster(self._view, attempt, seen, session.id, hold, why, contenders,
                                         shared=is_consul_lock_key(self.key))
        if hold > self.timing.lock_delay:
            # Held for another holder's longer lock-delay: write it into the
            # key's flags, so that whoever takes the key after this session
            # ends (a crash during the hold) holds it as long.
            rewritten = self.client.set_flags_if_index(self.key, self.identity.encode("utf-8"),
                                                       holder_flags(int(time.time() * 1000), hold),
                                                       attempt.modify_index)
            if rewritten is None:
                return  # the key changed under us: look again
            # The term's fencing token from here on.
            attempt = LockAttempt(rewritten, attempt.delayed, attempt.lock_index, attempt.create_index)
        if hold > 0:
            # Stopped during the hold, stop() gives the key up (its thread
            # may still make requests; this one's are cut short).
            self._held_off = (session, attempt)
            if not self._lock_delay_wait(hold, why):
                return
            self._held_off = None
        if contenders:
            self._roster.forget(contenders)  # what crashed candidates left: their work is over by now
        session.set_leading(self.key, held_since)
        try:
            # After a hold-off the lease from the acquisition may still run,
            # but the key may have been deleted and taken by another during
            # the hold: read it (a round while leading does) before leading.
            # Without a hold, an idle follower's last round may be too old.
            # A lease that would run out before the round set_leading()
            # kicks could renew it (a slow agent) is renewed first.
            round_time = self.heartbeat_stats.last_duration or 0.0
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
        term = Term(session, attempt, self._clock())
        with self._state_lock:
            if self._stopping.is_set():
                # stop() ran while we were acquiring: it found no term to end.
                session.set_leading(None)
                self.client.release(self.key, session.id)
                return
            self._term = term
            self._ending = True  # from here on, _end_term runs whatever happens
        reason = Reason.ERROR  # unless _hold says otherwise
        try:
            hook = self._term_hook
            if hook is not None:
                try:
                    hook(term.fencing_token, session.lease_deadline)
                except Exception:
                    log.exception("the term hook of %s raised", self.identity)
            self._view.leader = self.identity
            log_elected(self.identity, self.key, term,
                        extra=self._log_fields("elected", fencing_token=term.fencing_token))
            announce_elected(self._dispatcher, self._events, self, term, latest=True)
            self._notify()
            with self._state_lock:
                self._start_term_runner(term)
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
        # Stopped meanwhile: the caller gives the key up without a release
        # (see _drop_held_lock).
        return not self._stopping.wait(hold)

    def _drop_held_lock(self, session: Session, attempt: LockAttempt) -> None:
        """Stopped while holding a lock before leading it: delete the key
        (only as this acquisition left it) rather than release it or let
        the session's end free it. Either would let the next candidate
        follow at once or after this one's own lock-delay, not the longer
        one this hold was for (another holder's, from the roster); a
        deleted key's next lock is a first lock, which reads the roster."""
        assert session.id is not None and attempt.modify_index is not None
        try:
            if not self.client.delete_key_if_index(self.key, attempt.modify_index):
                self.client.release(self.key, session.id)
        except ConsulLeaderError as exc:
            log.warning("could not give up %r as it stopped (%s); Consul frees it when the session ends",
                        self.key, exc)

    def _hold(self, session: Session, term: Term, watch: KeyWatch) -> Reason:
        """Watch the lock while leading; return why the term ended."""
        end = None if self.term_limit is None else term.started + self.term_limit
        self._holding = term
        try:
            return self._watch_lock(session, term, watch, end)
        finally:
            self._holding = None

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
        """The one way out of a term: leadership off, the job stopped and
        waited for, ``deposed`` delivered, then the lock released."""
        clear_wake()  # a wake that ended _hold must not fail the release below
        try:
            with self._state_lock:
                if self._term is term:
                    self._term = None  # is_leader() is False from here on
                if term.reason is None:
                    term.reason = reason
                reason = term.reason
            term.stage = Stage.JOINING
            session = term.session
            session.set_leading(None)
            runner = term.runner
            if runner is not None:
                runner.stop()
                runner.join()  # the next term's work must not start beside this one's
            self._runner = None
            self._view.own_lock = (term.create_index, term.lock_index)
            after = after_term(reason, term.lock_index, self._clock(), self.timing.check_ttl)
            if after.sit_out is not None:
                self._sit_out = after.sit_out
            fields = self._log_fields("deposed", fencing_token=term.fencing_token, reason=str(reason))
            announce_ended(self._dispatcher, self._events, self, term, extra=fields)
            # The deposed receivers stop what on_elected started: let them
            # finish before anyone else can start it.
            self._dispatcher.flush(f"the deposed receivers of {self.identity}")
            self._notify()
            term.stage = Stage.RELEASING
            if after.release:
                self._release(term, reason)
        finally:
            term.stage = Stage.DONE
            self._ending = False

    def _release(self, term: Term, reason: Reason) -> None:
        session = term.session
        assert session.id is not None
        for attempt in (1, 2):
            clear_wake()  # a wake meant for the term's watch must not fail its release
            try:
                self._released_at = self._unlock(session.id, term)
                if self._released_at is None and reason.voluntary:
                    log.warning("releasing %r after %s: Consul says session %s did not hold it", self.key, reason,
                                session.id)
                elif self._released_at is not None:
                    self._view.seen = released_entry(self.key, session.id, term.lock_index, term.create_index,
                                                self._released_at)
                return
            except ConsulUnavailable as exc:
                if attempt == 2:
                    log.warning("could not release %r after %s (%s); trying again", self.key, reason, exc)
                    self._unreleased = term
            except ConsulLeaderError as exc:
                log.warning("could not release %r after %s (%s); trying again", self.key, reason, exc)
                self._unreleased = term
                return

    def _unlock(self, session_id: str, term: Term) -> int | None:
        """Release the term's lock, guarded by its fencing token, and what
        was locked with it; the key's ModifyIndex after the release, or None
        if the session did not hold it."""
        # In the same transaction: once the key is free, the next leader's
        # acquisition needs them free too.
        return self.client.unlock(self.key, session_id, release_mark(session_id, term.lock_index),
                                  index=term.fencing_token,
                                  also_unlock=[key for key, _ in self._also_lock])

    def _step_down(self, reason: Reason) -> bool:
        """End the current term from any thread: leadership turns off now;
        the election thread does the rest (see :meth:`_end_term`)."""
        with self._state_lock:
            term = self._term
            if term is None or term.reason is not None:
                return False
            term.reason = reason
            self._term = None  # is_leader() is False before anything else happens
        if term.runner is not None:
            term.runner.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and self._holding is term:
            wake(thread)  # out of its blocking query on the key, to end the term now
        return True

    # -- the job ------------------------------------------------------------

    def _start_term_runner(self, term: Term) -> None:
        """Watch *term*'s lease, and run the job if there is one (with the
        state lock held)."""

        def lease_ended() -> None:
            thread = self._thread
            if thread is not None and self._holding is term:
                wake(thread)  # end the term now, even if the thread waits on a frozen agent

        runner = term_runner(self._job, term.session.lease_remaining, self, self._step_down,
                             on_lease_end=lease_ended)
        term.runner = self._runner = runner
        runner.watch_lease()
        runner.start()

    def _log_fields(self, event: str, **fields: Any) -> dict[str, Any]:
        """The ``extra=`` of a transition's log record, for structured logging."""
        return {"consul_leader_event": event, "key": self.key, "identity": self.identity, **fields}

    # -- process life -------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The threads did not survive fork(); the session and the lock are the
        # parent's. Forget them without a request, so the child never believes
        # it leads nor releases the parent's lock.
        session = self._session
        if session is not None:
            session.abandon()
        was_running = self._state == "running"
        if self._default_identity:
            self.identity = default_identity()
        self.client = ConsulClient(self.client.config)
        self._reset()  # after the new identity and client: the line writes and uses them
        if was_running:
            log.debug("%r was running in the parent process; start() it again to run here", self)
