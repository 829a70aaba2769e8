"""A candidate's health as a probe sees it: :class:`Health`, from
:meth:`Candidate.health() <consul_leader.Candidate.health>`; the Prometheus
metrics of :mod:`consul_leader.metrics` read it too; and the heartbeat's
counters it is made from (:class:`HeartbeatStats`)."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from .errors import ConsulLeaderError

__all__ = ["HeartbeatStats", "Health"]


class HeartbeatStats:
    """Counters of heartbeat rounds, shared by the successive sessions of one
    candidate so that they survive a session being replaced. Read by
    :meth:`Candidate.health() <consul_leader.Candidate.health>` and
    :mod:`consul_leader.metrics`; written by the heartbeat.

    :ivar rounds: heartbeat rounds that succeeded.
    :ivar failures: heartbeat rounds that failed.
    :ivar seconds_total: time spent in the successful rounds, in seconds.
    :ivar last_duration: how long the last successful round took, or None.
    :ivar last_ok: monotonic time at which the last successful round (or the
        session's creation) started: the agent had a passing check then.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rounds = 0
        self.failures = 0
        self.seconds_total = 0.0
        self.last_duration: float | None = None
        self.last_ok = -math.inf

    def ok(self, started: float, ended: float) -> None:
        """Record a successful round that ran from *started* to *ended*."""
        with self._lock:
            self.rounds += 1
            self.seconds_total += ended - started
            self.last_duration = ended - started
            self.last_ok = max(self.last_ok, started)

    def failed(self) -> None:
        """Record a failed round."""
        with self._lock:
            self.failures += 1


@dataclass(frozen=True)
class Health:
    """A snapshot of a candidate's health, from :meth:`Candidate.health`.

    :ivar ok: True when the election thread runs and the last good heartbeat
        is younger than the check's TTL, i.e. Consul sees this candidate's
        check passing. False before the first heartbeat, after :meth:`Candidate.stop`,
        when the thread died, and while Consul cannot be reached.
    :ivar running: the candidate is started, not stopped, and its thread lives.
    :ivar is_leader: what :meth:`Candidate.is_leader` answered.
    :ivar last_heartbeat_age: seconds since the last good heartbeat round
        started; None if there was none yet.
    :ivar lease_remaining: seconds left of the leader's lease; 0.0 when not leading.
    :ivar heartbeat_failures: failed heartbeat rounds since the candidate started.
    :ivar last_error: the last error talking to Consul, if the election has not
        succeeded in a round since.
    """

    ok: bool
    running: bool
    is_leader: bool
    last_heartbeat_age: float | None
    lease_remaining: float
    heartbeat_failures: int
    last_error: str | None

    @classmethod
    def of(cls, *, running: bool, stats: HeartbeatStats, lease_deadline: float, now: float, check_ttl: float,
           last_error: ConsulLeaderError | None) -> Health:
        """The snapshot for a candidate in this state (no request made)."""
        age = now - stats.last_ok if stats.last_ok > -math.inf else None
        lease = lease_deadline - now
        return cls(ok=running and age is not None and age < check_ttl, running=running, is_leader=lease > 0,
                   last_heartbeat_age=age, lease_remaining=max(lease, 0.0), heartbeat_failures=stats.failures,
                   last_error=None if last_error is None else str(last_error))
