"""What happens in an election, as values: why a term ended, the kinds of
:class:`LeadershipEvent`, and the fan-out that hands each event to every
iterator of :meth:`Candidate.events() <consul_leader.Candidate.events>` or
:meth:`Follower.changes() <consul_leader.Follower.changes>`.
"""

from __future__ import annotations

import enum
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Broadcast", "EventKind", "LeadershipEvent", "Reason"]

T = TypeVar("T")


class Reason(str, enum.Enum):
    """Why a term ended: the ``reason=`` of the :data:`~consul_leader.deposed`
    signal and of a ``"deposed"`` :class:`LeadershipEvent`. A :class:`str`,
    so ``reason == "resigned"`` works.

    .. versionadded:: 0.2
    """

    #: :meth:`Candidate.resign() <consul_leader.Candidate.resign>` was called.
    RESIGNED = "resigned"
    #: :meth:`Candidate.stop() <consul_leader.Candidate.stop>` was called (or the process exits).
    STOPPED = "stopped"
    #: The term lasted ``term_limit`` seconds.
    TERM_LIMIT = "term limit"
    #: The job given to :meth:`Candidate.run() <consul_leader.Candidate.run>` returned while leading.
    JOB_FINISHED = "job finished"
    #: The job raised while leading.
    JOB_FAILED = "job failed"
    #: The lock is no longer this candidate's: its session is gone, or the
    #: key was deleted or taken.
    LOCK_LOST = "lock lost"
    #: Someone wrote another value into the key.
    KEY_OVERWRITTEN = "key overwritten"
    #: No heartbeat proved the lock within the lease (Consul unreachable, the
    #: process or its agent paused). A term whose lease ran out is over, even
    #: if a late heartbeat then succeeds.
    LEASE_EXPIRED = "lease expired"
    #: An unexpected error in the election thread ended the term (logged
    #: with its traceback); the candidate runs again.
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    @property
    def voluntary(self) -> bool:
        """This candidate chose to step down (it sits out one check TTL
        before running again, unless someone else takes the lock first)."""
        return self in (Reason.RESIGNED, Reason.STOPPED, Reason.TERM_LIMIT, Reason.JOB_FINISHED,
                        Reason.JOB_FAILED)

    @property
    def must_release(self) -> bool:
        """The session may still hold the lock, so the term's end releases it."""
        return self is not Reason.LOCK_LOST

    @property
    def deposed(self) -> bool:
        """Leadership was taken away rather than given up: logged as a warning."""
        return self in (Reason.LOCK_LOST, Reason.KEY_OVERWRITTEN, Reason.LEASE_EXPIRED, Reason.ERROR)


class EventKind(str, enum.Enum):
    """The kinds of :class:`LeadershipEvent`; a :class:`str` like :class:`Reason`.

    .. versionadded:: 0.2
    """

    #: The candidate became leader; the event carries ``fencing_token``.
    ELECTED = "elected"
    #: A term ended; the event carries ``reason``.
    DEPOSED = "deposed"
    #: Talking to Consul failed; the event carries ``error``. The candidate retries.
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LeadershipEvent:
    """One change seen by :meth:`Candidate.events() <consul_leader.Candidate.events>`.

    :ivar kind: an :class:`EventKind` (``"elected"``, ``"deposed"`` or ``"error"``).
    :ivar fencing_token: with ``"elected"``, the term's fencing token.
    :ivar reason: with ``"deposed"``, a :class:`Reason`.
    :ivar error: with ``"error"``, the exception.
    """

    kind: str
    fencing_token: int | None = None
    reason: str | None = None
    error: BaseException | None = None


class Broadcast(Generic[T]):
    """Hands every published item to every subscribed iterator, in order;
    :meth:`close` ends them all. Publishing never blocks.

    .. versionadded:: 0.2
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[queue.SimpleQueue[T | None]] = []
        self._closed = False

    def publish(self, item: T) -> None:
        """Give *item* to every current subscriber."""
        with self._lock:
            for q in self._queues:
                q.put(item)

    def close(self) -> None:
        """End every subscriber's iteration, now and later."""
        with self._lock:
            self._closed = True
            for q in self._queues:
                q.put(None)

    def reopen(self) -> None:
        """Accept subscribers again after :meth:`close` (a forked child)."""
        with self._lock:
            self._closed = False
            self._queues = []

    def subscribe(self, first: T | None = None) -> Iterator[T]:
        """Iterate over the items published from now on (after *first*, if
        given), until :meth:`close`."""
        q: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        with self._lock:
            self._queues.append(q)
            if first is not None:
                q.put(first)
            if self._closed:
                q.put(None)
        return self._drain(q)

    def _drain(self, q: queue.SimpleQueue[T | None]) -> Iterator[T]:
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                yield item
        finally:
            with self._lock:
                if q in self._queues:
                    self._queues.remove(q)
