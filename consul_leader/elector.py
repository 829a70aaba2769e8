"""Many elections in one process: an :class:`Elector` runs for every key
under one prefix on one Consul session, with four threads in all.

The heartbeat thread keeps the session (one TTL check) alive and, in the
same round, reads the prefix once to prove which keys this session still
holds: each key's lease is extended only by such a read. A watch thread
holds one blocking query on the prefix and sees every key's holder at once.
A worker thread takes free keys, starts terms and releases locks
(:mod:`consul_leader.keywork`, over the keys as :mod:`consul_leader.keys`
holds them); the ending of a term waits for its job without blocking it, so
one slow job never delays another key's handover. Receivers run on the
fourth, the signal thread. Each key's public API is its
:class:`~consul_leader.Candidacy` (:mod:`consul_leader.candidacy`). See
"Many elections in one process" in the docs.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
from collections.abc import Callable
from typing import Any

from . import process, signals
from .candidacy import Candidacy
from .client import ConsulClient
from .config import ConsulConfig
from .errors import ConfigurationError, ConfigurationTypeError, ConsulLeaderError, NotRunning
from .events import Reason
from .follower import PrefixWatch
from .footprint import DEFAULT_DEREGISTER_AFTER, DEFAULT_SERVICE
from .health import HeartbeatStats
from .interrupt import interrupt
from .job import LEASE_CLOCK_SLICE
from .keys import KeySeat, KeyTerm
from .keywork import KeyWork
from .outage import Outage
from .participant import HoldsSession, live_session
from .runtime import check_threads_usable
from .session import Clock, Session, Timing, lease_clock
from .validation import check_identity, check_key, check_number, check_service, default_identity

__all__ = ["Candidacy", "Elector"]

log = logging.getLogger("consul_leader")


class Elector(HoldsSession):
    """Runs for many keys under *prefix* in one process, on one Consul
    session, one health check, and four threads (heartbeat, watch, worker,
    signals), that is at most three connections to the agent whatever the
    number of keys. Hand out keys with :meth:`candidate`.

    :param prefix: the KV prefix of the keys, e.g. ``"service/shards/"``.
    :param identity: the default identity of the keys; ``"<hostname>:<pid>"``.
    :param wait: the longest blocking query on the prefix, in seconds.

    The connection, timing and footprint arguments (*consul*, *address*,
    *token*, *datacenter*, *verify*, *cert*, *ttl*, *lock_delay*, *lease*,
    *heartbeat*, *session_ttl*, *timeout*, *clock*, *service*,
    *deregister_after*) are those of :class:`~consul_leader.Candidate`, and
    hold for every key.

    .. versionadded:: 0.2
    """

    def __init__(self, prefix: str, *, identity: str | None = None, consul: Any = None, address: str | None = None,
                 token: str | None = None, datacenter: str | None = None, verify: None | bool | str = None,
                 cert: None | str | tuple[str, str] = None, ttl: float = 3.0, lock_delay: float | None = None,
                 lease: float | None = None, heartbeat: float | None = None, session_ttl: float | None = None,
                 timeout: float = 5.0, wait: float = 30.0, clock: Clock | None = None,
                 service: str = DEFAULT_SERVICE, deregister_after: float = DEFAULT_DEREGISTER_AFTER) -> None:
        # A folder may be written as one ("service/shards/"), as the docs do.
        folder = prefix[:-1] if isinstance(prefix, str) and prefix.endswith("/") else prefix
        self.prefix = check_key(folder) + "/"
        self.service = check_service(service)
        self.deregister_after = check_number("deregister_after", deregister_after, 60, 86400)
        self.identity = default_identity() if identity is None else check_identity(identity)
        self.timing = Timing.from_ttl(ttl, heartbeat=heartbeat, lease=lease, lock_delay=lock_delay,
                                      session_ttl=session_ttl)
        self.client = ConsulClient(ConsulConfig.resolve(consul=consul, address=address, token=token,
                                                        datacenter=datacenter, verify=verify, cert=cert,
                                                        timeout=timeout))
        self._wait = check_number("wait", wait, 0.01, 600)
        if clock is not None and not callable(clock):
            raise ConfigurationTypeError(f"clock must be a function returning seconds, got {type(clock).__name__}")
        self._clock: Clock = lease_clock if clock is None else clock
        self._state = "new"
        self._outage = Outage(log, f"election for the keys under {self.prefix!r}")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        # The worker's messages: bound methods, run in order on the worker thread.
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._session: Session | None = None
        self._worker: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._next_timer = math.inf
        self._dispatcher = signals.Dispatcher(f"consul-leader-signals {self.identity} {self.prefix}")
        self._work = self._make_work()
        self._host = _Host(self)
        self.heartbeat_stats = HeartbeatStats()
        # The last error talking to Consul, until a turn of the worker succeeds.
        self._last_error: ConsulLeaderError | None = None
        process.register(self, self._after_fork_in_child)

    def __repr__(self) -> str:
        return f"<Elector {self.prefix!r} {len(self._work.view.seats)} keys {self._state}>"

    def __enter__(self) -> Elector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def candidate(self, name: str, *, identity: str | None = None) -> Candidacy:
        """Run for the key *name* (under the prefix, or a full key that
        starts with it); returns its :class:`Candidacy`.

        :raises ConfigurationError: the key is invalid or already taken part in."""
        key = check_key(name if name.startswith(self.prefix) else self.prefix + name)
        who = self.identity if identity is None else check_identity(identity)
        with self._lock:
            if key in self._work.view.seats:
                raise ConfigurationError(f"this elector already runs for {key!r}")
            candidacy = Candidacy(self, key, who, self._host)  # which adds its seat
            self._work.view.added = True
        self._post(self._work.view.look_at_every_key)
        return candidacy

    def candidacies(self) -> list[Candidacy]:
        """The keys this elector runs for."""
        return [seat.sender for seat in self._work.view.all()]

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._state == "running" and not self._stopping.is_set()

    def _held_session(self) -> Session | None:
        return self._session  # the one session all the keys are held with

    def is_leader(self) -> bool:
        """True if any of its keys is led (for the process hooks)."""
        return any(c.is_leader() for c in self.candidacies())

    def start(self) -> Elector:
        """Start the threads. Idempotent.

        :raises NotRunning: the elector was stopped; make a new one.
        :raises ConfigurationError: this process cannot run the elector's
            threads (gevent, uWSGI without threads), as for a Candidate."""
        check_threads_usable()
        with self._lock:
            if self._state == "running":
                return self
            if self._state == "stopped":
                raise NotRunning(f"{self!r} was stopped; create a new Elector to run again")
            self._state = "running"
            who = f"{self.identity} {self.prefix}"
            self._worker = threading.Thread(target=self._work_loop, name=f"consul-leader {who}", daemon=True)
            self._watch = threading.Thread(target=self._watch_loop, name=f"consul-leader-watch {who}", daemon=True)
            self._worker.start()
            self._watch.start()
        log.info("%s runs for the keys under %r", self.identity, self.prefix)
        return self

    def stop(self) -> None:
        """End every term (jobs joined, ``deposed`` delivered, locks
        released), destroy the session and end the threads. Idempotent; from
        a job or a receiver, returns without waiting."""
        with self._lock:
            if self._state != "running":
                self._state = "stopped"
                return
            self._stopping.set()
        self._post(self._work.stop_terms)
        if self._on_own_thread():
            return
        self.wait_stopped()

    def wait_stopped(self) -> None:
        """Block until the elector stopped (another thread's :meth:`stop`)."""
        worker = self._worker
        while worker is not None and worker.is_alive():
            worker.join(1.0)

    # -- threads other than the worker ------------------------------------

    def _on_own_thread(self) -> bool:
        runners = [s.term.runner for s in self._work.view.all() if s.term is not None and s.term.runner is not None]
        return self._dispatcher.on_thread() or threading.current_thread() is self._worker or \
            any(r.on_thread() for r in runners)

    def _worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _watch_loop(self) -> None:
        # Only the entries that changed go to the worker, and the listing
        # itself is dropped at once.
        watch = PrefixWatch(self.client, self.prefix, self._wait)
        while not self._stopping.is_set():
            try:
                changes = watch.changes()
            except ConsulLeaderError as exc:
                if self._stopping.is_set():
                    return
                self._report(exc)
                self._stopping.wait(min(1.0, self.timing.heartbeat))
                continue
            self._post(functools.partial(self._work.view.on_changes, changes))

    def _report(self, error: ConsulLeaderError) -> None:
        self._last_error = error
        self._outage.failed(error)
        self._dispatcher.send(signals.election_error, self, error=error)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- the worker thread --------------------------------------------------

    def _work_loop(self) -> None:
        # A key without a job has no lease watchdog of its own: the worker
        # acts for it, so no request of the worker may outlive a lease.
        self.client.limit_requests(self._work.lease_left)
        backoff = 0.0
        while True:
            # In slices while a timer runs: it is on the lease clock, which
            # moves on during a suspend while this wait does not.
            timeout = max(0.0, min(self._next_timer - self._clock(), 60.0))
            if self._next_timer != math.inf:
                timeout = min(timeout, LEASE_CLOCK_SLICE)
            # A new list each turn: a timer that wakes the worker with
            # nothing queued must not handle the last batch again (a term's
            # ending carried on twice released its key before its job returned).
            items: list[Callable[[], None]] = []
            try:
                items.append(self._queue.get(timeout=timeout))
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            try:
                self._handle_all(items)
                if self._stopping.is_set() and all(s.state in ("idle", "withdrawn") for s in self._work.view.all()):
                    break
                if not self._stopping.is_set():
                    self._ensure_session()  # a waiting process keeps one too: ready to lead at once
                every, seats = self._work.view.due(self._clock(), self._next_timer)
                soon = self._work.sweep(seats)
                self._next_timer = soon if every else min(self._next_timer, soon)
                backoff = 0.0
                self._last_error = None
                self._outage.ok()
            except ConsulLeaderError as exc:
                self._report(exc)
                backoff = min(max(backoff * 2, 0.1), self.timing.check_ttl)
                self._back_off(backoff)
            except Exception:
                log.exception("unexpected error in the election for the keys under %r; retrying", self.prefix)
                self._back_off(self.timing.check_ttl)
        self._finish()

    def _back_off(self, seconds: float) -> None:
        """Look at every key again in *seconds*, or at the earliest lease's
        end if sooner: for a key without a job, this timer is what acts on
        it (a lease already over is ended here)."""
        left = self._work.lease_left()
        self._next_timer = self._clock() + (seconds if left is None else min(seconds, left))
        self._work.view.full = True

    def _finish(self) -> None:
        watch = self._watch
        if watch is not None:
            interrupt(watch)  # it sits in a long blocking query
            watch.join(self.client.config.timeout + 1)
        # Every term is over, nothing of ours can still be working: off
        # every key's roster, in a few requests rather than one a key.
        entries = [entry for seat in self._work.view.all() if (entry := seat.roster.take_entry())]
        try:
            self.client.delete_keys(entries)
        except ConsulLeaderError as exc:
            log.debug("could not leave the rosters of %d keys: %s", len(entries), exc)
        if self._session is not None:
            self._session.close()
        with self._lock:
            self._state = "stopped"
            for seat in self._work.view.seats.values():
                seat.events.close()
        self._dispatcher.call(self._notify)
        process.withdraw_default(self)
        log.info("%s left the election for the keys under %r", self.identity, self.prefix)

    def _post(self, message: Callable[[], None]) -> None:
        """Have the worker thread run *message* (a bound method, with its
        arguments bound), after the messages posted before it."""
        self._queue.put(message)

    def _handle_all(self, items: list[Callable[[], None]]) -> None:
        """Every message of a batch, even when one of them fails: a lost
        release would hold its key forever. The first failure is raised
        after the others ran."""
        failure: Exception | None = None
        for item in items:
            try:
                item()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    # -- the worker's messages -------------------------------------------------

    def _ensure_session(self) -> Session:
        session = live_session(self._session, self._new_session)
        if session is not self._session:
            # Always at the leader's rate (about one request a second): a key
            # won is led at once, without a round of its own on the handover path.
            session.set_busy(True)
            self._session = session
        return session

    def _new_session(self) -> Session:
        made: list[Session] = []
        session = Session(self.client, self.timing, f"consul-leader {self.identity} {self.prefix}",
                          on_error=self._report, stats=self.heartbeat_stats, clock=self._clock,
                          on_lost=lambda s: self._post(functools.partial(self._work.on_lost, s)),
                          on_round=lambda t0: self._work.view.prove(made[0], t0),
                          meta={"identity": self.identity, "prefix": self.prefix},
                          service=self.service, deregister_after=self.deregister_after)
        made.append(session)
        return session

    def _make_work(self, seats: dict[str, KeySeat] | None = None) -> KeyWork:
        work = KeyWork(self.client, self.prefix, self.timing, self._clock, self._lock, self._stopping,
                       self._dispatcher, self._post, lambda: self._session, self._ensure_session, self._notify)
        if seats is not None:
            work.view.seats = seats
        return work

    def _after_fork_in_child(self) -> None:
        # Only the forking thread lives on in the child: the others may have
        # held the lock or been half-way through the queue or the dispatcher
        # at the fork, and would hold them for ever. Everything that
        # coordinates threads is made anew; the session, the terms and the
        # lock-delay waits are the parent's and are forgotten without a
        # request, so the child leads nothing, releases nothing, and its
        # stop() returns at once.
        if self._session is not None:
            self._session.abandon()
        self._session = None
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._queue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._stopping.set()
        self._worker = self._watch = None
        self._dispatcher = signals.Dispatcher(f"consul-leader-signals {self.identity} {self.prefix}")
        self._state = "stopped"
        self.client = ConsulClient(self.client.config)
        seats = self._work.view.seats
        for seat in seats.values():
            seat.forget_parent()
        self._work = self._make_work(seats)


class _Host:
    """What a :class:`Candidacy` asks of its elector (see
    :class:`~consul_leader.candidacy.KeyHost`)."""

    def __init__(self, elector: Elector) -> None:
        self._elector = elector

    def add(self, seat: KeySeat) -> None:
        self._elector._work.view.seats[seat.key] = seat

    def clock(self) -> float:
        return self._elector._clock()

    def changed(self) -> threading.Condition:
        return self._elector._changed

    def phase(self) -> str:
        elector = self._elector
        if elector._state != "running":
            return elector._state
        return "stopping" if elector._stopping.is_set() else "running"

    def last_error(self) -> ConsulLeaderError | None:
        return self._elector._last_error

    def step_down(self, term: KeyTerm, reason: Reason) -> bool:
        return self._elector._work.step_down(term, reason)

    def withdraw(self, seat: KeySeat) -> None:
        self._elector._post(functools.partial(self._elector._work.withdraw, seat))

    def start_job(self, seat: KeySeat) -> None:
        self._elector._post(functools.partial(self._elector._work.start_job, seat))

    def on_own_thread(self) -> bool:
        return self._elector._on_own_thread()

    def worker_alive(self) -> bool:
        return self._elector._worker_alive()
