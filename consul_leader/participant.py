"""The public API of one participant in one key's election, written once:
a :class:`~consul_leader.Candidate` (its own session and threads) and an
:class:`~consul_leader.Elector`'s :class:`~consul_leader.Candidacy` (one key
of many on a shared session) answer the same questions the same way. Also
what every holder of a session (a Candidate, an Elector) offers and keeps:
the session's ids (:class:`HoldsSession`) and a live session
(:func:`live_session`)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import aio, decorators, signals
from .client import ConsulClient
from .events import LeadershipEvent
from .roster import Contender, contenders_of
from .session import Session, lease_clock
from .validation import check_timeout

if TYPE_CHECKING:
    from .seat import Seat

__all__ = ["HoldsSession", "Participant", "live_session"]

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")


class Participant:
    """What every participant in a key's election offers: the leadership
    reads, the waits (blocking and asyncio), the events and the decorators.
    Subclasses provide :meth:`is_leader`, :attr:`state`, the condition that
    :meth:`wait_for_leadership` waits on, and why waiting is hopeless.

    .. versionadded:: 0.2
    """

    key: str
    identity: str
    # The key's seat: its term, what was seen of it, its events (see consul_leader.term).
    _seat: Seat

    def is_leader(self) -> bool:
        """True while this participant holds the lock *and* its lease holds."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True between the start and the stop."""
        raise NotImplementedError

    def stop(self) -> None:
        """Leave the election (see the subclass)."""
        raise NotImplementedError

    @property
    def state(self) -> str:
        """``"new"``, ``"running"``, ``"stopping"`` or ``"stopped"``."""
        raise NotImplementedError

    def _changed_condition(self) -> threading.Condition:
        """Notified whenever leadership or the state may have changed."""
        raise NotImplementedError

    def _raise_if_hopeless(self) -> None:
        """Raise what makes waiting for leadership pointless (not running, a final error)."""
        raise NotImplementedError

    def contenders(self) -> list[Contender]:
        """Every candidate of this key, as kazoo's ``Election.contenders()``
        and Curator's ``getParticipants()`` list them, in the order they
        joined: identity, host, pid, since when, whether it leads, and
        whether its process still heart-beats (a crashed one stays listed,
        not alive, until a later leader has waited out its lock-delay).
        Reads Consul (two requests).

        :raises ConsulLeaderError: Consul could not be read.

        .. versionadded:: 0.2"""
        client: ConsulClient = getattr(self, "client")  # noqa: B009 - Candidate's attribute, Candidacy's property
        return contenders_of(client, self.key)

    def leader(self) -> str | None:
        """The identity of the current leader as last observed (this
        participant's own while it leads), or None."""
        if self.is_leader():
            return self.identity
        return self._seat.view.leader

    @property
    def fencing_token(self) -> int | None:
        """While leading, the key's ModifyIndex at this term's acquisition: a
        Raft index that every later term exceeds. Pass it to the systems you
        write to, and have them refuse smaller ones. None when not leading."""
        term = self._seat.term
        return term.fencing_token if term is not None and self.is_leader() else None

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this participant leads; False if *timeout* passed first.

        :param timeout: seconds to wait at most; None waits for as long as it takes.
        :raises NotRunning: not started, or stopped meanwhile.
        :raises LockHeld: ``wait=False`` and another candidate holds the lock.
        :raises PermissionDenied: the ACL token cannot run this election."""
        timeout = check_timeout("timeout", timeout)
        # Real seconds, whatever clock the election runs on.
        deadline = None if timeout is None else lease_clock() + timeout
        changed = self._changed_condition()
        with changed:
            while not self.is_leader():
                self._raise_if_hopeless()
                remaining = None if deadline is None else deadline - lease_clock()
                if remaining is not None and remaining <= 0:
                    return False
                # Short slices: the lease can start without a notify.
                changed.wait(0.05 if remaining is None else min(remaining, 0.05))
            return True

    async def wait_for_leadership_async(self, timeout: float | None = None) -> bool:
        """Await until this participant leads; False if *timeout* passed first.
        The event loop keeps running meanwhile (the asyncio form of
        :meth:`wait_for_leadership`, which raises the same errors).

        :param timeout: seconds to wait at most; None waits for as long as it takes.

        .. versionadded:: 0.2"""
        return await aio.wait_for_leadership_async(self, timeout)

    def events_async(self) -> AsyncIterator[LeadershipEvent]:
        """``async for event in participant.events_async()``: the asyncio form
        of :meth:`events`; it never blocks the loop. Like :meth:`events`,
        before the start it waits for the start.

        .. versionadded:: 0.2"""
        return aio.events_async(self)

    def events(self) -> Iterator[LeadershipEvent]:
        """Yield a :class:`LeadershipEvent` for every change of this
        participant's leadership and every error (like the elected channel
        of Docker's ``leadership`` package), from the call on, until it stops."""
        return self._seat.events.subscribe()

    @overload
    def leader_only(self, func: Callable[P, Coroutine[Any, Any, R]], *,
                    raise_not_leader: bool = ...) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def leader_only(self, func: Callable[P, R], *, raise_not_leader: bool = ...) -> Callable[P, R | None]: ...

    @overload
    def leader_only(self, func: None = ..., *, raise_not_leader: bool = ...) -> decorators.LeaderOnly: ...

    def leader_only(self, func: Callable[..., Any] | None = None, *, raise_not_leader: bool = False) -> Any:
        """Decorator: run the function only while this participant leads; see
        :func:`consul_leader.leader_only`.

        :param func: the function (when used bare, ``@candidate.leader_only``).
        :param raise_not_leader: raise :class:`~consul_leader.NotLeader` instead
            of returning None."""
        return decorators.leader_only(func, raise_not_leader=raise_not_leader, candidate=self)

    def on_elected(self, func: F) -> F:
        """Decorator: call ``func(sender, fencing_token=...)`` when this
        participant is elected; returns *func* unchanged.

        :param func: the receiver; it runs on the signal thread.
            ``elected.disconnect(func)`` undoes it; it does not keep the
            participant alive."""
        return signals.connect_for(signals.elected, func, self)

    def on_deposed(self, func: F) -> F:
        """Decorator: call ``func(sender, reason=...)`` when this participant
        stops leading; returns *func* unchanged.

        :param func: the receiver; it runs on the signal thread.
            ``deposed.disconnect(func)`` undoes it; it does not keep the
            participant alive."""
        return signals.connect_for(signals.deposed, func, self)


def live_session(current: Session | None, make: Callable[[], Session]) -> Session:
    """*current* while Consul still knows it; else a new session from
    *make*, opened (and *current* closed): what both drivers keep, leading
    or waiting, so that a key won is led without a session to make first.

    :raises ConsulLeaderError: the new session could not be opened."""
    if current is not None and not current.lost.is_set():
        return current
    if current is not None:
        current.close()
    session = make()
    session.open()
    return session


class HoldsSession:
    """The read-only ids of the Consul session a participant holds its
    locks with, for operators and :mod:`consul_leader.testing`: a
    :class:`~consul_leader.Candidate` and an :class:`~consul_leader.Elector`
    each have one session."""

    def _held_session(self) -> Session | None:
        raise NotImplementedError

    @property
    def session_id(self) -> str | None:
        """The ID of the session, as ``consul`` commands and the HTTP API
        name it; None before one was made.

        .. versionadded:: 0.2"""
        session = self._held_session()
        return None if session is None else session.id

    @property
    def check_id(self) -> str | None:
        """The ID of the TTL health check the session is bound to, on its
        agent; None before one was made.

        .. versionadded:: 0.2"""
        session = self._held_session()
        return None if session is None else session.check_id
