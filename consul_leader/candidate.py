"""The Candidate: runs for election on a Consul key in a background thread.

This module is its public API and its state (new, running, stopped). Its
election thread is :mod:`consul_leader.campaign` (a session, the waiting
line, the lock taken in one transaction), which leads each term through
:mod:`consul_leader.leadership` and ends it the one way every term ends
(:class:`consul_leader.term.Tenure`): the job told to stop and waited for,
``deposed`` delivered, then the lock released. See the "Safety" part of the
docs for why :meth:`Candidate.is_leader` is a lease and not a flag, and why
the work of two terms never overlaps.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from . import process, signals
from .campaign import Campaign
from .client import ConsulClient
from .config import ConsulConfig
from .errors import (
    ConfigurationError,
    ConfigurationTypeError,
    LockHeld,
    NotRunning,
    PermissionDenied,
)
from .events import LeadershipEvent, Reason
from .footprint import DEFAULT_DEREGISTER_AFTER, DEFAULT_SERVICE
from .health import Health, HeartbeatStats
from .job import Job
from .participant import HoldsSession, Participant
from .process import stop_on_signals
from .runtime import check_threads_usable
from .seat import Seat
from .session import Clock, Session, Timing, lease_clock
from .term import log_fields
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

__all__ = ["Candidate", "Health", "LeadershipEvent", "stop_on_signals"]

log = logging.getLogger("consul_leader")


class Candidate(Participant, HoldsSession):
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
        # Called on the election thread with (fencing token, lease deadline)
        # the moment a term begins, before anything else: where
        # ``consul-leader run`` asks its watchdog process to start the
        # command, so that no thread switch lies on the handover path. It
        # must not block (the lease does not wait for it).
        self._term_hook: Callable[[int, float], None] | None = None
        self._reset()
        process.register(self, self._after_fork_in_child)

    def _reset(self) -> None:
        self._state = "new"  # new -> running -> stopped
        self._state_lock = threading.RLock()
        self._changed = threading.Condition(self._state_lock)
        self._stopping = threading.Event()
        old = getattr(self, "_seat", None)
        self._seat = Seat(self, self.key, self.identity, self.client, self.timing.lock_delay)
        if old is not None:
            # A job given before a fork runs in the child too, once
            # start()ed, with the locks it is taken with (not the roster
            # entry: the child is a candidate of its own).
            self._seat.job = old.job
            self._seat.also_lock = old.also_lock
        self._dispatcher = signals.Dispatcher(f"consul-leader-signals {self.identity} {self.key}")
        self.heartbeat_stats = HeartbeatStats()
        self._campaign = Campaign(self, self._seat, self._state_lock, self._stopping, self._clock, self._dispatcher,
                                  lambda: self._term_hook, self._notify, self._finish_stop, self._gave_up)

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
            self._campaign.start()
        process.offer_default(self)
        log.info("%s runs for leadership of %r (ttl=%gs, lease=%gs, lock_delay=%gs)",
                 self.identity, self.key, self.timing.check_ttl, self.timing.lease, self.timing.lock_delay,
                 extra=log_fields(self.key, self.identity, "started"))
        return self

    def is_leader(self) -> bool:
        """True while this candidate holds the lock *and* its lease holds.

        A cheap, thread-safe read: it compares a monotonic clock with the
        lease's end, so a process resumed after a pause longer than the lease
        answers False at once, before its threads have run again."""
        term = self._seat.term
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
        term = self._seat.term
        thread = self._campaign.thread
        return Health.of(running=self.running and thread is not None and thread.is_alive(),
                         stats=self.heartbeat_stats, now=self._clock(), check_ttl=self.timing.check_ttl,
                         lease_deadline=term.session.lease_deadline if term is not None else -math.inf,
                         last_error=self._campaign.last_error)

    def _held_session(self) -> Session | None:
        return self._campaign.session

    def resign(self) -> bool:
        """Step down if leading: :meth:`is_leader` turns False at once, the
        job's ``stop_event`` is set, and once the job has returned and the
        ``deposed`` receivers have run, the lock is released so another
        candidate can win. Returns without waiting for that. This candidate
        stays in the election and runs again after sitting out one check
        TTL, or as soon as someone else has taken the lock.

        :returns: True if it was leading."""
        return self._campaign.step_down(Reason.RESIGNED)

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
            ending = self._campaign.leadership.ending
        was_leading = self._campaign.step_down(Reason.STOPPED)
        if self._campaign.stop(was_leading, ending):
            self._finish_stop()

    def _finish_stop(self) -> None:
        self._campaign.leave()
        with self._state_lock:
            self._state = "stopped"
            self._changed.notify_all()
        self._seat.events.close()
        process.withdraw_default(self)
        log.info("%s left the election for %r", self.identity, self.key,
                 extra=log_fields(self.key, self.identity, "stopped"))
        self._dispatcher.close()

    def _gave_up(self) -> None:
        # The election gave up by itself (wait=False): nobody will call stop() to clean up.
        self._seat.roster.leave()  # its terms are over
        if self._campaign.session is not None:
            self._campaign.session.close()
        with self._state_lock:
            self._state = "stopped"
        self._seat.events.close()
        self._dispatcher.close()

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
        self._seat.job = check_job(job)
        check_bool("block", block)
        self.start()
        with self._state_lock:
            term = self._seat.term
            if term is not None and term.runner is not None and term.reason is None:
                term.runner.start(self._seat.job)  # already leading: this term runs the job too
        if not block:
            return
        try:
            with self._changed:
                while self._state == "running":
                    campaign = self._campaign
                    if isinstance(campaign.failure, LockHeld) or isinstance(campaign.last_error, PermissionDenied):
                        self._raise_if_hopeless()
                    self._changed.wait(0.5)
        except BaseException:
            self.stop()  # Ctrl-C or a hopeless election: leave cleanly before raising
            raise
        if self._campaign.failure is not None:
            raise self._campaign.failure

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
        election reports :class:`~consul_leader.errors.AlsoLockHeld` (see
        :meth:`health`) and tries again. Call before :meth:`start`.

        :param key: the other key.
        :param value: what to write into it.
        :raises ConfigurationError: the candidate was started already.

        .. versionadded:: 0.2"""
        if self._state != "new":
            raise ConfigurationError(f"lock_with({key!r}): call it before start()")
        self._seat.also_lock.append((check_key(key), value))

    # -- what the election thread and the waits share --------------------

    def _changed_condition(self) -> threading.Condition:
        return self._changed

    def _raise_if_hopeless(self) -> None:
        if self._campaign.failure is not None:
            raise self._campaign.failure
        if isinstance(self._campaign.last_error, PermissionDenied):
            raise self._campaign.last_error
        if self._state != "running" or self._stopping.is_set():
            raise NotRunning(f"{self!r} is not running; call start() first")

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- process life -------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        # The threads did not survive fork(); the session and the lock are the
        # parent's. Forget them without a request, so the child never believes
        # it leads nor releases the parent's lock.
        session = self._campaign.session
        if session is not None:
            session.abandon()
        was_running = self._state == "running"
        if self._default_identity:
            self.identity = default_identity()
        self.client = ConsulClient(self.client.config)
        self._reset()  # after the new identity and client: the line writes and uses them
        if was_running:
            log.debug("%r was running in the parent process; start() it again to run here", self)
