"""Many elections in one process: an :class:`Elector` runs for every key
under one prefix on one Consul session, with four threads in all.

The heartbeat thread keeps the session (one TTL check) alive and, in the
same round, reads the prefix once to prove which keys this session still
holds: each key's lease is extended only by such a read. A watch thread
holds one blocking query on the prefix and sees every key's holder at once.
A worker thread takes free keys, starts terms and releases locks; the ending
of a term waits for its job without blocking it, so one slow job never
delays another key's handover. Receivers run on the fourth, the signal
thread. See "Many elections in one process" in the docs.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

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
    retry_after_lock_delay,
)
from .entry import KeyEntry
from .errors import (
    ConfigurationError,
    ConfigurationTypeError,
    ConsulLeaderError,
    NotRunning,
    RequestRejected,
    SessionLost,
)
from .events import Broadcast, LeadershipEvent, Reason
from .follower import PrefixChanges, PrefixWatch
from .footprint import DEFAULT_DEREGISTER_AFTER, DEFAULT_SERVICE
from .health import Health
from .interrupt import interrupt
from .job import LEASE_CLOCK_SLICE, Job
from .lockdelay import (
    LockAttempt,
    holder_flags,
    lock_delay_to_hold,
    release_mark,
)
from .outage import Outage
from .participant import Participant
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
    check_service,
    default_identity,
)

__all__ = ["Candidacy", "Elector"]

log = logging.getLogger("consul_leader")
F = TypeVar("F", bound=Callable[..., Any])


class _KeyTerm(Term):
    """A term of one of an elector's keys: its lease is the session's, and
    the last read of the prefix that showed the key this session's."""

    __slots__ = ("candidacy", "deadline", "lapsed", "job_done")

    def __init__(self, candidacy: Candidacy, session: Session, attempt: LockAttempt, started: float,
                 deadline: float) -> None:
        super().__init__(session, attempt, started)
        self.candidacy = candidacy
        self.deadline = deadline  # the lease from the last read that showed the key ours (at most the session's)
        self.lapsed = False  # a lapsed lease stays lapsed
        self.job_done = False

    def lease_end(self) -> float:
        """When this key's lease ends: the session's, and the last read that showed the key ours."""
        return min(self.deadline, self.session.lease_deadline)


class Candidacy(Participant):
    """One key of an :class:`Elector`, with the API of a
    :class:`~consul_leader.Candidate` (made by :meth:`Elector.candidate`).
    It is the sender of its ``elected``, ``deposed`` and ``leader_changed``
    signals.

    .. versionadded:: 0.2
    """

    def __init__(self, elector: Elector, key: str, identity: str) -> None:
        self.elector = elector
        self.key = key
        self.identity = identity
        self._term: _KeyTerm | None = None
        self._state = "idle"  # idle, delay-wait, leading, withdrawn; owned by the worker thread
        self._withdrawn = False
        self._not_before = -math.inf  # a lock-delay runs until then
        self._refused_since: float | None = None  # first refused for a lock-delay, in a row
        self._tried_index = -1  # refused as held while the prefix was at this index
        self._modified = -1  # the ModifyIndex of the key's entry last looked at
        self._sit_out: SitOut | None = None
        # A lock taken that must be held a while before it is led
        # (LockAttempt.hold_off): until then.
        self._delay_wait: tuple[float, LockAttempt, Session] | None = None
        self._released = -1  # the fencing token of the last term whose key was released
        self._view = KeyView()  # what the elector has seen of this key
        # This key's entry on its roster (see roster.py).
        self._roster = Roster(elector.client, key, identity, elector.timing.lock_delay)
        self._events: Broadcast[LeadershipEvent] = Broadcast()
        self._job: Job | None = None

    def __repr__(self) -> str:
        return f"<Candidacy {self.key!r} identity={self.identity!r}{' leader' if self.is_leader() else ''}>"

    @property
    def client(self) -> ConsulClient:
        """The elector's Consul client."""
        return self.elector.client

    @property
    def running(self) -> bool:
        """True while the elector runs and this key was not withdrawn."""
        return self.elector.running and not self._withdrawn

    def is_leader(self) -> bool:
        """True while this key is held *and* its own lease holds (a cheap read)."""
        term = self._term
        return term is not None and not term.lapsed and self.elector._clock() < term.lease_end()

    def resign(self) -> bool:
        """Step down as :meth:`Candidate.resign() <consul_leader.Candidate.resign>` does:
        the flag off now, the lock released after the job returned and the
        ``deposed`` receivers ran; this key runs again after sitting out.

        :returns: True if it was leading."""
        term = self._term
        return term is not None and self.elector._step_down(term, Reason.RESIGNED)

    def stop(self) -> None:
        """Withdraw this key from the election: end its term as
        :meth:`Candidate.stop() <consul_leader.Candidate.stop>` does and
        release it; the elector and its other keys go on. From the job or a
        receiver, returns without waiting."""
        elector = self.elector
        elector._post(functools.partial(elector._withdraw, self))
        if elector._on_own_thread() or not elector.running:
            return
        with elector._changed:
            while self._state != "withdrawn" and elector._worker_alive():
                elector._changed.wait(0.05)

    def run(self, job: Job, *, block: bool = True) -> None:
        """Run ``job(stop_event)`` each time this key is won, as
        :meth:`Candidate.run() <consul_leader.Candidate.run>` does. Starts
        the elector if needed; with *block*, waits until it stops."""
        self._job = check_job(job)
        check_bool("block", block)
        self.elector.start()
        self.elector._post(functools.partial(self.elector._start_job, self))
        if block:
            self.elector.wait_stopped()

    @property
    def state(self) -> str:
        """``"new"`` (its elector not started), ``"running"``, ``"stopping"``
        (its elector stops, or this key is being withdrawn: the last term is
        ending) or ``"stopped"`` (withdrawn, or its elector stopped).

        .. versionadded:: 0.2"""
        elector = self.elector
        if self._state == "withdrawn" or elector._state == "stopped":
            return "stopped"
        if elector._state == "new":
            return "new"
        return "stopping" if elector._stopping.is_set() or self._withdrawn else "running"

    def health(self) -> Health:
        """A watchdog's view of this key, as :meth:`Candidate.health()
        <consul_leader.Candidate.health>` gives it: the elector's threads
        and heartbeat (shared by all its keys), this key's lease. A cheap
        read that makes no request.

        .. versionadded:: 0.2"""
        elector = self.elector
        term = self._term
        worker = elector._worker
        lease_end = term.lease_end() if term is not None and not term.lapsed else -math.inf
        return Health.of(running=self.running and worker is not None and worker.is_alive(),
                         stats=elector.heartbeat_stats, now=elector._clock(), check_ttl=elector.timing.check_ttl,
                         lease_deadline=lease_end, last_error=elector._last_error)

    def _changed_condition(self) -> threading.Condition:
        return self.elector._changed

    def _raise_if_hopeless(self) -> None:
        if not self.running:
            raise NotRunning(f"{self!r} is not running; start() its Elector first")

    def _forget_parent(self) -> None:
        # In a forked child, from the elector's own after-fork step.
        self._term = None
        self._delay_wait = None
        self._state = "idle"
        # The entry is the parent's: the child must never take it off the roster.
        self._roster = Roster(self.elector.client, self.key, self.identity, self.elector.timing.lock_delay)
        self._events = Broadcast()
        self._events.close()


class Elector:
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
        self._candidacies: dict[str, Candidacy] = {}
        self._entries: dict[str, KeyEntry] = {}
        self._index = 0
        self._session: Session | None = None
        self._worker: threading.Thread | None = None
        self._watch: threading.Thread | None = None
        self._next_timer = math.inf
        self._full = True  # look at every key at the next turn
        self._dirty: set[Candidacy] = set()  # keys to look at at the next turn
        self._added = False  # a key was added since the worker last looked at every key's entry
        self._dispatcher = signals.Dispatcher(f"consul-leader-signals {self.identity} {self.prefix}")
        self.heartbeat_stats = HeartbeatStats()
        # The last error talking to Consul, until a turn of the worker succeeds.
        self._last_error: ConsulLeaderError | None = None
        process.register(self, self._after_fork_in_child)

    def __repr__(self) -> str:
        return f"<Elector {self.prefix!r} {len(self._candidacies)} keys {self._state}>"

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
            if key in self._candidacies:
                raise ConfigurationError(f"this elector already runs for {key!r}")
            candidacy = self._candidacies[key] = Candidacy(self, key, who)
            self._added = True
        self._post(self._look_at_every_key)
        return candidacy

    def candidacies(self) -> list[Candidacy]:
        """The keys this elector runs for."""
        with self._lock:
            return list(self._candidacies.values())

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._state == "running" and not self._stopping.is_set()

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
        self._post(self._stop_terms)
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
        runners = [c._term.runner for c in self.candidacies() if c._term is not None and c._term.runner is not None]
        return self._dispatcher.on_thread() or threading.current_thread() is self._worker or \
            any(r.on_thread() for r in runners)

    def _worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _step_down(self, term: _KeyTerm, reason: Reason) -> bool:
        """End *term* from any thread: its flag turns off now, and its
        ending goes on here (see :meth:`_continue_end`)."""
        with self._lock:
            if term.reason is not None:
                return False
            term.reason = reason
            if term.candidacy._term is term:
                term.candidacy._term = None
            runner = term.runner  # read under the lock: _start_term_runner sets it under the lock
        if runner is not None:
            runner.stop()
        # Not through the worker: a term without a job has no watchdog, and
        # the worker may be in a request that its lease no longer bounds
        # (the term left the leases that bound the worker's requests).
        self._continue_end(term)
        return True

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
            self._post(functools.partial(self._on_changes, changes))

    def _prove(self, session: Session, t0: float) -> None:
        """A heartbeat round of *session* (started at *t0*, the check
        passed): one read of the prefix extends each key's lease that it
        shows still held by this session, and ends the others."""
        with self._lock:
            terms = [c._term for c in self._candidacies.values()
                     if c._term is not None and c._term.session is session]
        if not terms:
            return
        index, raw = self.client.get_prefix(self.prefix)
        entries = {key: KeyEntry.parse(one) for key, one in raw.items()}
        now = self._clock()
        ended: list[tuple[_KeyTerm, Reason]] = []
        with self._lock:
            for term in terms:
                if term.reason is not None or term.lapsed:
                    continue
                if now >= term.deadline:
                    term.lapsed = True
                    ended.append((term, Reason.LEASE_EXPIRED))
                    continue
                assert session.id is not None
                lost = lock_check(entries.get(term.candidacy.key), session.id, term.candidacy.identity)
                if lost is not None:
                    ended.append((term, lost))
                else:
                    term.deadline = min(session.lease_deadline, t0 + self.timing.lease)
        for term, reason in ended:
            self._step_down(term, reason)
        self._post(functools.partial(self._on_listing, index, entries))

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
        self.client.limit_requests(self._lease_left)
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
                if self._stopping.is_set() and all(c._state in ("idle", "withdrawn") for c in self.candidacies()):
                    break
                if not self._stopping.is_set():
                    self._ensure_session()  # a waiting process keeps one too: ready to lead at once
                # Every key when a timer is due; otherwise only those whose
                # entry changed or that became idle: a handover costs the
                # same with 1 key or 1,000.
                if self._full or self._clock() >= self._next_timer:
                    self._full = False
                    if self._added and self._index:
                        # Its entry may never change again: the watch would not hand it over.
                        self._added = False
                        self._observe_all(self._index)
                    self._dirty.clear()
                    self._next_timer = self._sweep(self.candidacies())
                elif self._dirty:
                    some, self._dirty = self._dirty, set()
                    self._next_timer = min(self._next_timer, self._sweep(some))
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
        left = self._lease_left()
        self._next_timer = self._clock() + (seconds if left is None else min(seconds, left))
        self._full = True

    def _lease_left(self) -> float | None:
        """End the terms whose lease is over, so that their ``deposed``
        receivers are told before the worker waits on anything; return the
        time until the earliest other lease of the keys led ends (None: no
        key is). Asked by each request of the worker as it starts (its
        bound), by the backoff, and before waiting for a heartbeat round."""
        now = self._clock()
        earliest = math.inf
        over: list[_KeyTerm] = []
        with self._lock:
            for candidacy in self._candidacies.values():
                term = candidacy._term
                if term is None or term.reason is not None or term.lapsed:
                    continue
                end = term.lease_end()
                if now >= end:
                    over.append(term)
                else:
                    earliest = min(earliest, end)
        for term in over:
            self._lapse(term)
        return None if earliest == math.inf else earliest - now

    def _finish(self) -> None:
        watch = self._watch
        if watch is not None:
            interrupt(watch)  # it sits in a long blocking query
            watch.join(self.client.config.timeout + 1)
        # Every term is over, nothing of ours can still be working: off
        # every key's roster, in a few requests rather than one a key.
        entries = [entry for candidacy in self.candidacies() if (entry := candidacy._roster.take_entry())]
        try:
            self.client.delete_keys(entries)
        except ConsulLeaderError as exc:
            log.debug("could not leave the rosters of %d keys: %s", len(entries), exc)
        if self._session is not None:
            self._session.close()
        with self._lock:
            self._state = "stopped"
            for candidacy in self._candidacies.values():
                candidacy._events.close()
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

    def _on_changes(self, changes: PrefixChanges) -> None:
        """The watch's listing: only the entries that changed since its last one."""
        if changes.reset:
            self._apply_listing(changes.index, changes.changed, reset=True)
        elif changes.index >= self._index:
            self._apply(changes.index, changes.changed, changes.removed)

    def _on_listing(self, index: int, entries: dict[str, KeyEntry]) -> None:
        """A full listing (the heartbeat's read)."""
        if index >= self._index:
            self._apply_listing(index, entries, False)

    def _look_at_every_key(self) -> None:
        self._full = True

    def _on_lost(self, session: Session) -> None:
        """*session* is gone: its terms lost their locks, its lock-delay waits end."""
        self._full = True
        for candidacy in self.candidacies():
            term = candidacy._term
            if term is not None and term.session is session:
                self._step_down(term, Reason.LOCK_LOST)
            if candidacy._delay_wait is not None and candidacy._delay_wait[2] is session:
                candidacy._delay_wait, candidacy._state = None, "idle"

    def _start_job(self, candidacy: Candidacy) -> None:
        """:meth:`Candidacy.run` gave a job: a term already running runs it too."""
        term = candidacy._term
        if term is not None:
            self._start_term_runner(term)

    def _stop_terms(self) -> None:
        # Every term first: a release that fails must not keep the others going.
        for candidacy in self.candidacies():
            if candidacy._term is not None:
                self._step_down(candidacy._term, Reason.STOPPED)
        for candidacy in self.candidacies():
            self._drop_delay_wait(candidacy)

    def _withdraw(self, candidacy: Candidacy) -> None:
        candidacy._withdrawn = True
        if candidacy._term is not None:
            self._step_down(candidacy._term, Reason.STOPPED)
        self._drop_delay_wait(candidacy)
        if candidacy._state == "idle":
            entry = self._entries.get(candidacy.key)
            if entry is not None and self._session is not None and entry.session == self._session.id:
                self._release_left(candidacy)  # an earlier release failed: the key is still this session's
            else:
                self._forget(candidacy)

    def _forget(self, candidacy: Candidacy) -> None:
        with self._lock:
            candidacy._state = "withdrawn"
            self._candidacies.pop(candidacy.key, None)
        candidacy._events.close()
        self._dispatcher.call(self._notify)

    def _release_left(self, candidacy: Candidacy) -> None:
        """A withdrawn key whose release failed: release it again, then forget it."""
        session = self._session
        if session is not None and session.id is not None and not session.lost.is_set() and \
                not self._stopping.is_set():
            self.client.release(candidacy.key, session.id, release_mark(session.id))
        self._forget(candidacy)

    def _drop_delay_wait(self, candidacy: Candidacy) -> None:
        if candidacy._delay_wait is None:
            return
        _, attempt, session = candidacy._delay_wait
        assert session.id is not None and attempt.modify_index is not None
        try:
            # Not released but deleted: released, it would be led at once by
            # the next candidate, which saw it free, inside the lock-delay
            # that Consul did not set for a leader it was deleted under, or
            # whose session ended as we took it. Absent, its next holder is
            # its first, and waits too.
            if not self.client.delete_key_if_index(candidacy.key, attempt.modify_index):
                self.client.release(candidacy.key, session.id)
        except ConsulLeaderError as exc:
            if not self._stopping.is_set():
                # The wait stays, and the sweep releases it again: the
                # session lives on and would hold the key for good.
                raise
            log.warning("could not release %r (%s); Consul frees it when the session ends", candidacy.key, exc)
        candidacy._delay_wait, candidacy._state = None, "idle"

    def _apply_listing(self, index: int, entries: dict[str, KeyEntry], reset: bool) -> None:
        """A full listing: apply what differs from the one known."""
        known = self._entries
        changed = {key: entry for key, entry in entries.items()
                   if (old := known.get(key)) is None or old.modify_index != entry.modify_index}
        self._apply(index, changed, known.keys() - entries.keys(), reset)

    def _apply(self, index: int, changed: dict[str, KeyEntry], removed: Iterable[str], reset: bool = False) -> None:
        """The prefix at *index*: *changed* entries, *removed* keys, every
        other key as it was; look at the keys of ours among them."""
        if index < self._index and not reset:
            return
        if not self._index:
            self._full = True  # the first listing: every key, absent ones too, can be tried now
        self._index = index
        for key in removed:
            self._entries.pop(key, None)
            candidacy = self._candidacies.get(key)
            if candidacy is not None:
                self._observe(candidacy, None, index)
        for key, entry in changed.items():
            self._entries[key] = entry
            candidacy = self._candidacies.get(key)
            if candidacy is not None:
                self._observe(candidacy, entry, index)

    def _observe_all(self, index: int) -> None:
        """Every key as last listed (a key added since was never looked at)."""
        for candidacy in self.candidacies():
            self._observe(candidacy, self._entries.get(candidacy.key), index)

    def _observe(self, candidacy: Candidacy, entry: KeyEntry | None, index: int) -> None:
        modified = entry.modify_index if entry is not None else 0
        if modified == candidacy._modified:
            return  # unchanged since the last look
        candidacy._modified = modified
        self._dirty.add(candidacy)
        if candidacy._view.observe(entry, self._clock()):
            self._dispatcher.send(signals.leader_changed, candidacy, leader=candidacy._view.leader)
        term = candidacy._term
        if term is not None and term.reason is None and index >= term.fencing_token:
            assert term.session.id is not None
            lost = lock_check(entry, term.session.id, candidacy.identity)
            if lost is not None:
                self._step_down(term, lost)
        waiting = candidacy._delay_wait
        if waiting is not None and index >= (waiting[1].modify_index or 0) and \
                (entry is None or entry.session != waiting[2].id):
            candidacy._delay_wait, candidacy._state = None, "idle"

    def _sweep(self, candidacies: Iterable[Candidacy]) -> float:
        """Lapsed leases, lock-delay waits that ended, and free keys to
        take, among *candidacies*; returns when to look again. A request
        that fails for one key does not keep the others from being looked
        at: the first failure is raised once every key was."""
        now = self._clock()
        soon = math.inf
        failure: ConsulLeaderError | None = None
        for candidacy in candidacies:
            try:
                soon = min(soon, self._look_at(candidacy, now))
            except ConsulLeaderError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return soon

    def _look_at(self, candidacy: Candidacy, now: float) -> float:
        """One key of :meth:`_sweep`; when to look at it again."""
        term = candidacy._term
        if term is not None:
            if term.lapsed or now >= term.lease_end():
                self._lapse(term)
                return math.inf
            return term.lease_end()
        if candidacy._withdrawn and candidacy._state == "idle":
            self._release_left(candidacy)
        elif candidacy._delay_wait is not None:
            if candidacy._withdrawn:
                self._withdraw(candidacy)  # its release failed: again
            elif self._stopping.is_set():
                self._drop_delay_wait(candidacy)
            elif now >= candidacy._delay_wait[0]:
                return self._lead_after_wait(candidacy)
            else:
                return candidacy._delay_wait[0]
        elif candidacy._state == "idle" and not candidacy._withdrawn and not self._stopping.is_set():
            return self._maybe_acquire(candidacy, now)
        return math.inf

    def _maybe_acquire(self, candidacy: Candidacy, now: float) -> float:
        """Try to take *candidacy*'s key if it looks free; the time to look again."""
        entry = self._entries.get(candidacy.key)
        if candidacy._sit_out is not None and candidacy._sit_out.taken_since(entry):
            candidacy._sit_out = None  # someone else took it since we stepped down
        holder = entry.session if entry is not None else None
        own = self._session.id if self._session is not None and not self._session.lost.is_set() else None
        if entry is not None and holder is not None and (holder != own or entry.modify_index <= candidacy._released):
            return math.inf  # the watch tells when it is free (ours: a listing from before the release)
        # Held by this session while no term nor lock-delay wait has it:
        # an acquisition whose answer was lost, a term's start or release
        # cut short by a failed request. Nobody else can take it: acquiring
        # it again makes it a term.
        if holder and candidacy._sit_out is not None:
            # Stepped down, and the release failed: release it again, as
            # the step-down meant, rather than lead it again after the
            # sit-out (nobody could take it meanwhile).
            assert entry is not None and own is not None
            # A failure is retried by the worker's next turn.
            self.client.unlock(candidacy.key, own, release_mark(own, entry.lock_index), index=entry.modify_index)
            candidacy._released = entry.modify_index
            return math.inf
        if candidacy._sit_out is not None:
            if not candidacy._sit_out.over(entry, now):
                return candidacy._sit_out.until
            candidacy._sit_out = None
        if now < candidacy._not_before:
            return candidacy._not_before
        if not self._index or candidacy._tried_index >= self._index:
            # Not listed yet, or refused as held at this index: wait for the
            # watch. Only a lock taken right after a listing showed the key
            # free is led at once (LockAttempt.follows).
            return math.inf
        session = self._ensure_session()
        assert session.id is not None
        asked_at = self._clock()
        try:
            candidacy._roster.join(session.id)  # once per session; again only if that failed
            attempt = self.client.acquire(candidacy.key, candidacy.identity.encode("utf-8"), session.id,
                                          flags=holder_flags(int(time.time() * 1000), self.timing.lock_delay),
                                          also_lock=candidacy._roster.with_lock(session.id))
        except SessionLost:
            session.lost.set()
            self._on_lost(session)
            raise
        except RequestRejected as exc:
            log.error("giving up %r: %s", candidacy.key, exc)
            self._withdraw(candidacy)
            return math.inf
        if attempt.modify_index is None:
            if attempt.delayed:
                # One lock-delay from the first refusal in a row, not from each.
                now = self._clock()
                if candidacy._refused_since is None:
                    candidacy._refused_since = now
                candidacy._not_before = retry_after_lock_delay(
                    now, lock_delay_to_hold(self.timing.lock_delay, candidacy._view.longest_delay),
                    candidacy._refused_since)
                return candidacy._not_before
            candidacy._refused_since = None
            candidacy._tried_index = self._index
            return math.inf
        candidacy._refused_since = None
        now = self._clock()
        hold, why = candidacy._view.hold_off(attempt, entry, session.id, now, self.timing.lock_delay)
        if hold > 0 and not candidacy._view.follows(attempt, entry, session.id):
            # No lock-delay of Consul's covered this lock: the roster tells
            # whether anyone else can still be working, and for how long.
            hold, why = hold_with_roster(candidacy._view, attempt, entry, session.id, hold, why,
                                         candidacy._roster.read(session.id), shared=is_consul_lock_key(candidacy.key))
        if hold > 0:
            log.info("%s took %r %s; holding it %.2fs before leading (lock-delay %gs)", candidacy.identity,
                     candidacy.key, why, hold, self.timing.lock_delay)
            until = now + hold
            candidacy._delay_wait, candidacy._state = (until, attempt, session), "delay-wait"
            return until
        return self._lead(candidacy, session, asked_at, attempt)

    def _lead_after_wait(self, candidacy: Candidacy) -> float:
        """The lock-delay wait ended: prove the key still ours, then lead;
        the time to look again."""
        assert candidacy._delay_wait is not None
        _, attempt, session = candidacy._delay_wait
        t0 = self._clock()
        _, raw = self.client.get_key(candidacy.key)  # if it fails, the wait stays and the sweep proves it again
        candidacy._delay_wait, candidacy._state = None, "idle"
        entry = KeyEntry.parse_optional(raw)
        if entry is not None and entry.session == session.id and not session.lost.is_set():
            return self._lead(candidacy, session, t0, attempt)
        return math.inf

    def _ensure_session(self) -> Session:
        session = self._session
        if session is not None and not session.lost.is_set():
            return session
        if session is not None:
            session.close()
        made: list[Session] = []
        session = Session(self.client, self.timing, f"consul-leader {self.identity} {self.prefix}",
                          on_error=self._report, stats=self.heartbeat_stats, clock=self._clock,
                          on_lost=lambda s: self._post(functools.partial(self._on_lost, s)),
                          on_round=lambda t0: self._prove(made[0], t0),
                          meta={"identity": self.identity, "prefix": self.prefix},
                          service=self.service, deregister_after=self.deregister_after)
        made.append(session)
        session.open()
        # Always at the leader's rate (about one request a second): a key
        # won is led at once, without a round of its own on the handover path.
        session.set_busy(True)
        self._session = session
        return session

    def _lead(self, candidacy: Candidacy, session: Session, held_since: float, attempt: LockAttempt) -> float:
        """Start a term on the key just taken; the time to look again: its
        lease's end, which the worker's timer acts on for a key without a
        job (nothing else may wake the worker before: the watch and the
        heartbeat's proof may wait on a frozen agent)."""
        if not session.lease_valid():
            # This round may first wait for the heartbeat's, which can sit in
            # a request to a hung agent for a whole timeout: every lease of
            # the session is over, so end those terms before waiting.
            self._lease_left()
            session.beat()  # an idle session's last round may be too old
        term = _KeyTerm(candidacy, session, attempt, self._clock(),
                        min(session.lease_deadline, held_since + self.timing.lease))
        assert session.id is not None
        if self._clock() >= term.deadline or candidacy._withdrawn or self._stopping.is_set():
            self.client.release(candidacy.key, session.id)
            return math.inf
        log_elected(candidacy.identity, candidacy.key, term)
        with self._lock:
            candidacy._term, candidacy._state = term, "leading"
            candidacy._view.leader = candidacy.identity
            # Queued under the lock: a step-down from another thread (resign,
            # the heartbeat's proof) queues deposed, and must queue it after.
            announce_elected(self._dispatcher, candidacy._events, candidacy, term, latest=False)
        self._dispatcher.call(self._notify)
        self._start_term_runner(term)
        return term.lease_end()

    def _start_term_runner(self, term: _KeyTerm) -> None:
        """Run the key's job for *term*, with a lease watchdog: at the
        lease's end the job is told to stop and, once it returned, the
        ``deposed`` receivers are, even while this worker sits in a request
        to a frozen agent."""
        if term.candidacy._job is None or term.runner is not None:
            return

        def exited() -> None:  # also when the lease ran out before the job could start
            with self._lock:
                term.job_done = True
                ended = term.reason is not None
            if ended:  # else the step-down still to come carries the ending on, and finds the job done
                self._continue_end(term)

        runner = term_runner(term.candidacy._job, lambda: term.lease_end() - self._clock(), term.candidacy,
                             functools.partial(self._step_down, term), on_lease_end=lambda: self._lapse(term),
                             on_exit=exited)
        with self._lock:
            # A step-down from another thread (resign, the heartbeat's
            # proof) either came before, and the job never starts, or comes
            # after and finds the runner to stop.
            if term.reason is not None:
                return
            term.runner = runner
            # Started under the lock too: the watchdog's ending of the term
            # reads whether the job started.
            runner.watch_lease()
            runner.start()

    def _lapse(self, term: _KeyTerm) -> None:
        """*term*'s lease ran out: it stays out, and its ending goes on in
        the calling thread (the step-down's), not through the worker, which
        may be stuck in a request to a frozen agent."""
        with self._lock:
            term.lapsed = True
        self._step_down(term, Reason.LEASE_EXPIRED)

    def _continue_end(self, term: _KeyTerm) -> None:
        """The one way out of a term, without blocking the worker: wait for
        the job (its own thread goes on when it returned), then deliver
        ``deposed``; the signal thread queues the release after it. From
        whichever thread stepped down, the job's thread or the lease
        watchdog: each step once."""
        with self._lock:
            assert term.reason is not None
            first = term.stage is Stage.LEADING
            if first:
                term.stage = Stage.JOINING
            if term.stage is not Stage.JOINING:
                return
            # Asked on every call, not only the first: the watchdog and the
            # worker both carry an ending on, and the second must wait too.
            if term.runner is not None and term.runner.started and not term.job_done:
                if first and not term.runner.on_thread():  # the job that returned: it is about to exit
                    log.info("waiting for the job of %r to return before releasing it", term.candidacy.key)
                return
            term.stage = Stage.DELIVERING
        candidacy = term.candidacy
        announce_ended(self._dispatcher, candidacy._events, candidacy, term)
        self._dispatcher.call(self._notify)
        # Queued behind the deposed receivers: they stop what on_elected
        # started before anyone else can start it.
        self._dispatcher.call(self._post, functools.partial(self._release, term))

    def _release(self, term: _KeyTerm) -> None:
        candidacy, reason = term.candidacy, term.reason
        assert reason is not None and term.session.id is not None
        term.stage = Stage.RELEASING
        released = True
        after = after_term(reason, term.lock_index, self._clock(), self.timing.check_ttl)
        if after.release and not term.session.lost.is_set():
            try:
                self.client.unlock(candidacy.key, term.session.id, release_mark(term.session.id, term.lock_index),
                                   index=term.fencing_token)
            except ConsulLeaderError as exc:
                # The session lives on for the other keys: the key is taken
                # back and led again, or, withdrawn, released again.
                released = False
                log.warning("could not release %r after %s (%s); %s", candidacy.key, reason, exc,
                            "destroying the session frees it" if self._stopping.is_set() else "trying again")
        if released:
            candidacy._released = term.fencing_token
        if after.sit_out is not None:
            candidacy._sit_out = after.sit_out
        candidacy._state = "idle"
        self._dirty.add(candidacy)
        term.stage = Stage.DONE
        if candidacy._withdrawn and released:
            self._forget(candidacy)
        self._dispatcher.call(self._notify)

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
        for candidacy in self._candidacies.values():
            candidacy._forget_parent()
