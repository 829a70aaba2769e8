"""A Consul session kept alive by a heartbeat thread, and the timing rules
that make leadership a lease.

The session is bound to ``serfHealth`` and to a TTL check of its own, so a
process that stops heart-beating loses its lock after the check's TTL, far
sooner than a session TTL (at least 10 s, reaped at up to twice that) would
allow. The session TTL stays as a backstop for an agent cut off from the
servers. The check belongs to a service instance of the session's own
(:mod:`consul_leader.footprint`), which Consul removes after a crash.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .client import ConsulClient
from .errors import ConfigurationError, ConsulLeaderError, PermissionDenied, SessionLost
from .footprint import DEFAULT_DEREGISTER_AFTER, DEFAULT_SERVICE, Instance, Leftovers
from .health import HeartbeatStats
from .outage import Outage
from .validation import check_number as _number

if TYPE_CHECKING:
    from .roster import Roster

log = logging.getLogger("consul_leader")

Clock = Callable[[], float]

if hasattr(time, "CLOCK_BOOTTIME"):
    def lease_clock() -> float:
        """The clock leases are measured on: monotonic, and (on Linux) still
        running while the machine is suspended, so that a laptop or VM that
        wakes up does not believe a lease that ran out while it slept."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)
else:  # pragma: no cover - not Linux
    lease_clock = time.monotonic


@dataclass(frozen=True)
class Timing:
    """The durations of an election, in seconds. Build it with :meth:`from_ttl`.

    :ivar check_ttl: TTL of the candidate's health check; a process that stops
        heart-beating loses its lock this long after its last heartbeat.
    :ivar heartbeat: time between heartbeat rounds while leading.
    :ivar lease: how long after the start of its last good heartbeat round a
        leader still believes it leads. Always shorter than ``check_ttl``,
        ``session_ttl`` and ``lock_delay``, so a leader knows it lost
        leadership before anyone else can win it.
    :ivar lock_delay: Consul's lock-delay: after a session is invalidated,
        nobody may take its lock for this long.
    :ivar session_ttl: the session's own TTL, a backstop (Consul: 10 s to 24 h).
    """

    check_ttl: float
    heartbeat: float
    lease: float
    lock_delay: float
    session_ttl: int

    @classmethod
    def from_ttl(cls, ttl: float = 3.0, *, heartbeat: float | None = None, lease: float | None = None,
                 lock_delay: float | None = None, session_ttl: float | None = None) -> Timing:
        """Derive every duration from one *ttl* knob; any of them can be set.

        Defaults: ``heartbeat = ttl/3`` (at most ``lease/2.5``), ``lock_delay = min(ttl, 60)``,
        ``session_ttl = max(10, 2*ttl)``, ``lease = 5/6 * min(ttl, lock_delay,
        session_ttl)``. At ``ttl=3``: heartbeat 1 s, lease 2.5 s, lock-delay 3 s,
        session TTL 10 s, and a crashed leader is replaced in about 6 s.

        :raises ConfigurationError: a value out of range, or the safety rule
            ``heartbeat < lease < min(check_ttl, session_ttl, lock_delay)`` broken.
        """
        ttl = _number("ttl", ttl, 0.5, 3600)
        lock_delay = min(ttl, 60.0) if lock_delay is None else _number("lock_delay", lock_delay, 0, 60)
        if session_ttl is None:
            session_ttl = max(10, math.ceil(2 * ttl))
        session_ttl = _number("session_ttl", session_ttl, 10, 86400)
        if session_ttl != int(session_ttl):
            raise ConfigurationError(f"session_ttl must be a whole number of seconds, got {session_ttl!r}")
        bound = min(ttl, lock_delay, session_ttl)
        lease = bound * 5 / 6 if lease is None else _number("lease", lease, 0.1, 86400)
        if not lease < bound:
            raise ConfigurationError(
                f"lease={lease:g}s must be shorter than min(ttl={ttl:g}s, lock_delay={lock_delay:g}s, "
                f"session_ttl={session_ttl:g}s) = {bound:g}s; otherwise a paused leader could still "
                f"believe it leads after another candidate won. Lower lease or raise the others.")
        if heartbeat is None:
            heartbeat = min(bound / 3, lease / 2.5)
            if heartbeat < 0.05:
                # Name what the caller gave, not the heartbeat derived from it.
                raise ConfigurationError(
                    f"lease={lease:g}s and min(ttl={ttl:g}s, lock_delay={lock_delay:g}s, session_ttl="
                    f"{session_ttl:g}s) = {bound:g}s are too short: heartbeats would have to run every "
                    f"{heartbeat:.3g}s (at least 0.05s); raise lock_delay, lease or ttl.")
        heartbeat = _number("heartbeat", heartbeat, 0.05, 3600)
        if not heartbeat * 2 <= lease:
            raise ConfigurationError(
                f"heartbeat={heartbeat:g}s must be at most half of lease={lease:g}s, so that one late "
                f"heartbeat does not end the lease; lower heartbeat or raise ttl.")
        return cls(check_ttl=ttl, heartbeat=heartbeat, lease=lease, lock_delay=lock_delay,
                   session_ttl=int(session_ttl))

    @property
    def margin(self) -> float:
        """How much sooner than anyone else could win the lease ends."""
        return min(self.check_ttl, self.lock_delay, self.session_ttl) - self.lease

    @property
    def idle_heartbeat(self) -> float:
        """Time between heartbeat rounds while not leading: rarer, to keep an
        idle follower cheap, yet well within the check's TTL."""
        return max(self.heartbeat, self.check_ttl * 0.6)


#: How long a new leader's first heartbeat round waits (at most half the
#: lease left), so that it does not compete with the start of the term.
_QUIET_AFTER_ELECTION = 0.05


class Session:
    """A Consul session bound to ``serfHealth`` and a TTL check of its own,
    with a daemon heartbeat thread that passes the check and renews it.

    The lease: :attr:`lease_deadline` is the earliest of ``t0 + lease``,
    where ``t0`` is the time at which the last round *started* in which the
    check pass succeeded and, while leading, the key was seen still locked by
    this session; and the last renew's start plus ``session_ttl - margin``.

    :param client: the Consul client.
    :param timing: the election's durations.
    :param name: the session's name, as Consul shows it.
    :param on_lost: called once, from the heartbeat thread, when the session
        is found gone.
    :param on_error: called with each failed heartbeat's exception.
    :param clock: the lease clock (injectable for tests); default :func:`lease_clock`.
    :param stats: where to count heartbeat rounds; default a new one.
    :param on_round: called on the heartbeat thread at the end of every
        successful round, with the time the round started: where an owner of
        several locks (:class:`~consul_leader.Elector`) proves each of them.
        An exception it raises fails the round.
    :param service: the name of the service the session's instance is
        registered under.
    :param deregister_after: seconds after which Consul removes the instance
        once its check is critical (Consul's least is 60).
    :param meta: what the instance's ``Meta`` shows beside the host, pid and
        version (``identity``, ``key``).
    """

    def __init__(self, client: ConsulClient, timing: Timing, name: str, *,
                 on_lost: Callable[[Session], None] = lambda s: None,
                 on_error: Callable[[ConsulLeaderError], None] = lambda e: None,
                 clock: Clock = lease_clock, stats: HeartbeatStats | None = None,
                 on_round: Callable[[float], None] | None = None, service: str = DEFAULT_SERVICE,
                 deregister_after: float = DEFAULT_DEREGISTER_AFTER, meta: dict[str, str] | None = None) -> None:
        self.client = client
        self._on_round = on_round
        self.timing = timing
        self.name = name
        self.id: str | None = None
        self.instance = Instance.new(service, deregister_after, meta)
        #: The TTL check the session binds to (its instance's).
        self.check_id = self.instance.check_id
        self._leftovers = Leftovers(client, service, deregister_after)
        self._outage = Outage(log, f"heartbeat of session {name!r}")
        # When to look for leftovers again (a window after the last look
        # found some); None: not needed.
        self._look_again: float | None = None
        self.lost = threading.Event()
        self._on_lost = on_lost
        self._on_error = on_error
        self._clock = clock
        self.stats = HeartbeatStats() if stats is None else stats
        self._passed_at = -math.inf
        self._renewed_at = -math.inf
        self._lock_key: str | None = None
        self._roster: Roster | None = None  # see set_leading
        self._held_at = -math.inf
        #: Monotonic time until which this session's lease holds.
        self.lease_deadline = -math.inf
        self._leading = False
        # A term's lease, once it ran out, stays out: a late round must not
        # revive a term whose work was already told to stop.
        self._lease_started = False
        self._lapsed = False
        self._closed = threading.Event()
        self._kick = threading.Event()
        # A kicked round waits until then (set_leading: see there).
        self._beat_after = -math.inf
        self._beat_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Session {self.id} check={self.check_id} lost={self.lost.is_set()}>"

    def open(self) -> str:
        """Register the check, create the session and start heart-beating.

        :raises ConsulLeaderError: Consul could not be reached or refused."""
        t0 = self._clock()
        # Leftovers are looked for from the first heartbeat round on, once
        # the catalog has this instance (it tells this agent's node).
        self._look_again = t0
        instance = self.instance
        self.client.register_service(instance.id, instance.service, instance.check_id, self.timing.check_ttl,
                                     deregister_after=instance.deregister_after, meta=instance.meta,
                                     notes="consul-leader candidate heartbeat",
                                     check_name=f"consul-leader: {self.name}")
        try:
            self.id = self.client.create_session(self.name, ["serfHealth", self.check_id],
                                                 self.timing.lock_delay, self.timing.session_ttl)
        except BaseException:
            self._forget_check()
            raise
        self._passed_at = self._renewed_at = t0
        self._update_deadline()
        self.stats.ok(t0, self._clock())
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"consul-leader-heartbeat {self.name}",
                                        daemon=True)
        self._thread.start()
        log.debug("session %s created (check %s)", self.id, self.check_id)
        return self.id

    def set_leading(self, key: str | None, held_since: float = -math.inf,
                    roster: Roster | None = None) -> None:
        """Switch to the leader's heartbeat for the lock on *key*, taken no
        earlier than *held_since* (monotonic), or back to the idle rate (None).

        While leading, every round also reads the key: heartbeats succeed
        even after an operator deleted the key, so only a round that saw the
        lock still held by this session may extend the lease.

        :param roster: the leader's roster entry: the same read sees
            whether it is still this session's, and a round puts it back if
            it is gone (an operator deleted
            ``consul-leader/``), so that the key's next first holder sees
            that someone led it.

        Going back to idle does not wait for a round in progress: that round
        may hang on a frozen agent for a whole request timeout, and the end
        of a term must not (the term's end no longer reads the lease)."""
        if key is None:
            self._lock_key = None
            self._roster = None
            self._leading = False
            self._lease_started = self._lapsed = False
            return
        with self._beat_lock:
            self._lock_key = key
            self._roster = roster
            self._held_at = held_since
            self._leading = True
            self._lease_started = self._lapsed = False
            self._update_deadline()
            # Switch to the leader's rate now, but let the first round wait
            # while the new term starts (its requests and the job's start
            # would queue behind it): the lease, proved by the acquisition,
            # still has most of its length.
            self._beat_after = self._clock() + min(_QUIET_AFTER_ELECTION, max(self.lease_remaining() / 2, 0.0))
        self._kick.set()

    def set_busy(self, busy: bool) -> None:
        """Beat at the leader's rate (True) or the idle rate, without a lock
        key of the session's own: for an owner of several locks, which
        proves them in ``on_round``. True also runs a round now."""
        self._leading = busy or self._lock_key is not None
        if busy:
            self._kick.set()

    @property
    def lapsed(self) -> bool:
        """True once the lease of the current lock ran out; it stays out
        until :meth:`set_leading` starts another."""
        return self._lapsed

    def beat(self) -> bool:
        """Run one heartbeat round now: pass the check, renew the session when
        a third of its TTL has passed and, while leading, read the key to see
        that the lock is still this session's. True if the lock is held (or
        not leading); the lease then runs from this round's start.

        :raises SessionLost: the session or its check no longer exists."""
        with self._beat_lock:
            assert self.id is not None
            t0 = self._clock()
            self.client.pass_check(self.check_id, self.instance.service)
            self._passed_at = t0
            if t0 - self._renewed_at >= self.timing.session_ttl / 3:
                self.client.renew_session(self.id)
                self._renewed_at = t0
            held = True
            if self._lock_key is not None:
                roster = self._roster
                found = self.client.locked_by([self._lock_key] + ([roster.led_entry(self.id)[0]] if roster else []),
                                              self.id)
                held = found[0]
                if held:
                    self._held_at = t0
                    if roster is not None and not found[1]:
                        roster.put_back(self.id)
            self._update_deadline()
            if self._on_round is not None:
                self._on_round(t0)
            self.stats.ok(t0, self._clock())
            return held

    def lease_valid(self) -> bool:
        """True while the lease holds (a cheap read)."""
        return self._clock() < self.lease_deadline

    def lease_remaining(self) -> float:
        """Seconds left of the lease (negative once it ran out)."""
        return self.lease_deadline - self._clock()

    def _update_deadline(self) -> None:
        # Each way the lock can pass to another starts no earlier than: the
        # check's TTL after its last pass; the session's TTL after its last
        # renew; an invalidation after the last read that showed the lock
        # still ours, plus the lock-delay. The lease ends, with the same
        # margin, before the first of them.
        timing = self.timing
        deadline = min(self._passed_at + timing.lease, self._renewed_at + timing.session_ttl - timing.margin)
        if self._lock_key is not None:
            deadline = min(deadline, self._held_at + timing.lease)
            now = self._clock()
            if self._lease_started and now >= self.lease_deadline:
                self._lapsed = True
            if self._lapsed:
                deadline = -math.inf
            elif deadline > now:
                self._lease_started = True
        self.lease_deadline = deadline

    def _heartbeat_loop(self) -> None:
        started = self._clock()
        while not self._closed.is_set():
            period = self.timing.heartbeat if self._leading else self.timing.idle_heartbeat
            # The cadence runs from each round's start: a round slowed by its
            # agent must not push the next one back by its own length, or
            # the lease (measured from round starts) runs out between them.
            self._kick.wait(max(0.0, started + period - self._clock()))
            self._kick.clear()
            hold = self._beat_after - self._clock()
            if hold > 0 and not self._closed.is_set():
                self._kick.wait(hold)  # kicked again (set_busy, close): go on at once
                self._kick.clear()
            self._beat_after = -math.inf
            if self._closed.is_set():
                break
            started = self._clock()
            try:
                self.beat()
                self._outage.ok()
            except SessionLost as exc:
                self.stats.failed()
                log.warning("session %s is gone (%s)", self.id, exc)
                self.lost.set()
                self.lease_deadline = -math.inf
                self._on_lost(self)
                return
            except ConsulLeaderError as exc:
                self.stats.failed()
                self._outage.failed(exc)
                self._on_error(exc)
            except Exception:  # a bug must not silently end the heartbeat
                log.exception("unexpected error in the heartbeat of session %s", self.id)
            if self._look_again is not None and self._clock() >= self._look_again:
                # On a thread of its own: its three requests must not push
                # the next round back (behind a slow agent the lease would
                # run out between rounds).
                self._look_again = None
                threading.Thread(target=self._look_for_leftovers, daemon=True,
                                 name=f"consul-leader-leftovers {self.name}").start()

    def _look_for_leftovers(self) -> None:
        now = self._clock()
        try:
            delay = self._leftovers.look(now, self.instance.id)
        except Exception:  # clean-up must never end quietly: say so, and look again later
            log.exception("unexpected error looking for what crashed candidates left")
            delay = self._leftovers.window
        if delay is not None and not self._closed.is_set():
            self._look_again = now + delay

    def close(self, *, destroy: bool = True) -> None:
        """Stop heart-beating, destroy the session (releasing what it holds)
        and deregister its service instance. Errors are logged, not raised:
        what is left goes critical, and Consul removes it after
        ``deregister_after``."""
        with self._beat_lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._kick.set()
        self.lease_deadline = -math.inf
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.client.config.timeout * 2 + 1)
        if destroy and self.id is not None and not self.lost.is_set():
            try:
                self.client.destroy_session(self.id)
            except ConsulLeaderError as exc:
                log.warning("could not destroy session %s: %s", self.id, exc)
        if destroy:
            self._forget_check()

    def abandon(self) -> None:
        """Forget the session without touching Consul: used in a forked child,
        where the session belongs to the parent."""
        self._closed.set()
        self._kick.set()
        self.lease_deadline = -math.inf

    def _forget_check(self) -> None:
        instance = self.instance
        try:
            self.client.deregister_service(instance.id, instance.service)
        except PermissionDenied as exc:
            log.warning("could not deregister service instance %s: %s. It goes critical and Consul removes it "
                        "%gs later.", instance.id, exc, instance.deregister_after)
        except ConsulLeaderError as exc:
            log.debug("could not deregister service instance %s: %s", instance.id, exc)
