"""One key of an :class:`~consul_leader.Elector`: a
:class:`~consul_leader.Candidacy` has the per-key API of a
:class:`~consul_leader.Candidate`, and asks its elector (through
:class:`KeyHost`) for the rest: the worker that takes, leads and releases
its key, the clock, the threads' health.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Protocol

from .client import ConsulClient
from .errors import ConsulLeaderError, NotRunning
from .events import Reason
from .health import Health
from .job import Job
from .keys import KeySeat, KeyTerm
from .participant import Participant
from .validation import check_bool, check_job

if TYPE_CHECKING:
    from .elector import Elector

__all__ = ["Candidacy", "KeyHost"]


class KeyHost(Protocol):
    """What a :class:`Candidacy` asks of its elector."""

    def add(self, seat: KeySeat) -> None:
        """Take part in *seat*'s key (the candidacy is new)."""

    def clock(self) -> float:
        """The elector's clock."""

    def changed(self) -> threading.Condition:
        """Notified whenever a key's leadership or the elector's state may have changed."""

    def phase(self) -> str:
        """``"new"``, ``"running"``, ``"stopping"`` or ``"stopped"``: the elector's."""

    def last_error(self) -> ConsulLeaderError | None:
        """The last error talking to Consul, until a turn of the worker succeeds."""

    def step_down(self, term: KeyTerm, reason: Reason) -> bool:
        """End *term* for *reason*, from any thread."""

    def withdraw(self, seat: KeySeat) -> None:
        """Have the worker withdraw the key of *seat*."""

    def start_job(self, seat: KeySeat) -> None:
        """Have the worker start *seat*'s job in a term already running."""

    def on_own_thread(self) -> bool:
        """True on one of the elector's threads (its worker, a job, the signal thread)."""

    def worker_alive(self) -> bool:
        """True while the elector's worker thread runs."""


class Candidacy(Participant):
    """One key of an :class:`Elector`, with the API of a
    :class:`~consul_leader.Candidate` (made by :meth:`Elector.candidate`).
    It is the sender of its ``elected``, ``deposed`` and ``leader_changed``
    signals.

    .. versionadded:: 0.2
    """

    _seat: KeySeat

    def __init__(self, elector: Elector, key: str, identity: str, host: KeyHost) -> None:
        self.elector = elector
        self.key = key
        self.identity = identity
        self._host = host
        self._seat = KeySeat(self, key, identity, elector.client, elector.timing.lock_delay)
        host.add(self._seat)

    def __repr__(self) -> str:
        return f"<Candidacy {self.key!r} identity={self.identity!r}{' leader' if self.is_leader() else ''}>"

    @property
    def client(self) -> ConsulClient:
        """The elector's Consul client."""
        return self.elector.client

    @property
    def running(self) -> bool:
        """True while the elector runs and this key was not withdrawn."""
        return self.elector.running and not self._seat.withdrawn

    @property
    def session_id(self) -> str | None:
        """The ID of the session this key is held with: its elector's.

        .. versionadded:: 0.2"""
        return self.elector.session_id

    @property
    def check_id(self) -> str | None:
        """The ID of the TTL health check of its elector's session.

        .. versionadded:: 0.2"""
        return self.elector.check_id

    def is_leader(self) -> bool:
        """True while this key is held *and* its own lease holds (a cheap read)."""
        term = self._term
        return term is not None and not term.lapsed and self._host.clock() < term.lease_end()

    def resign(self) -> bool:
        """Step down as :meth:`Candidate.resign() <consul_leader.Candidate.resign>` does:
        the flag off now, the lock released after the job returned and the
        ``deposed`` receivers ran; this key runs again after sitting out.

        :returns: True if it was leading."""
        term = self._term
        return term is not None and self._host.step_down(term, Reason.RESIGNED)

    def stop(self) -> None:
        """Withdraw this key from the election: end its term as
        :meth:`Candidate.stop() <consul_leader.Candidate.stop>` does and
        release it; the elector and its other keys go on. From the job or a
        receiver, returns without waiting."""
        host = self._host
        host.withdraw(self._seat)
        if host.on_own_thread() or not self.elector.running:
            return
        changed = host.changed()
        with changed:
            while self._seat.state != "withdrawn" and host.worker_alive():
                changed.wait(0.05)

    def run(self, job: Job, *, block: bool = True) -> None:
        """Run ``job(stop_event)`` each time this key is won, as
        :meth:`Candidate.run() <consul_leader.Candidate.run>` does. Starts
        the elector if needed; with *block*, waits until it stops."""
        self._seat.job = check_job(job)
        check_bool("block", block)
        self.elector.start()
        self._host.start_job(self._seat)
        if block:
            self.elector.wait_stopped()

    @property
    def state(self) -> str:
        """``"new"`` (its elector not started), ``"running"``, ``"stopping"``
        (its elector stops, or this key is being withdrawn: the last term is
        ending) or ``"stopped"`` (withdrawn, or its elector stopped).

        .. versionadded:: 0.2"""
        phase = self._host.phase()
        if self._seat.state == "withdrawn" or phase == "stopped":
            return "stopped"
        if phase == "new":
            return "new"
        return "stopping" if phase == "stopping" or self._seat.withdrawn else "running"

    def health(self) -> Health:
        """A watchdog's view of this key, as :meth:`Candidate.health()
        <consul_leader.Candidate.health>` gives it: the elector's threads
        and heartbeat (shared by all its keys), this key's lease. A cheap
        read that makes no request.

        .. versionadded:: 0.2"""
        elector, host = self.elector, self._host
        term = self._term
        lease_end = term.lease_end() if term is not None and not term.lapsed else -math.inf
        return Health.of(running=self.running and host.worker_alive(), stats=elector.heartbeat_stats,
                         now=host.clock(), check_ttl=elector.timing.check_ttl, lease_deadline=lease_end,
                         last_error=host.last_error())

    @property
    def _term(self) -> KeyTerm | None:
        return self._seat.key_term

    def _changed_condition(self) -> threading.Condition:
        return self._host.changed()

    def _raise_if_hopeless(self) -> None:
        if not self.running:
            raise NotRunning(f"{self!r} is not running; start() its Elector first")
