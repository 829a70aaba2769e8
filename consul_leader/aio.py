"""asyncio on the threaded core: waiting for leadership, leadership events
and leader-only coroutines, without ever blocking the event loop.

The election itself runs on the candidate's own threads, as everywhere else;
nothing here is a second election engine. A wait runs in a short-lived
thread that re-checks every :data:`SLICE` seconds whether its awaiting task
was cancelled, so a cancelled wait leaves no thread behind for longer than
that. Events arrive through the library's signals (delivered on the
candidate's signal thread) and are handed to the loop with
``call_soon_threadsafe``: no thread at all.

::

    from consul_leader import Candidate
    from consul_leader.aio import events_async, leader_only_async, wait_for_leadership_async

    candidate = Candidate("service/leader").start()

    async def main():
        if await wait_for_leadership_async(candidate, timeout=10):
            ...
        async for event in events_async(candidate):
            print(event.kind)

.. versionadded:: 0.2
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Coroutine, Optional, ParamSpec, TypeVar

from . import signals
from .errors import ConfigurationTypeError, ConsulUnavailable
from .events import EventKind, LeadershipEvent
from .validation import check_bool, check_timeout

if TYPE_CHECKING:
    from .candidate import Candidate
    from .follower import Follower
    from .participant import Participant

__all__ = ["SLICE", "events_async", "leader_only_async", "wait_for_leader_async", "wait_for_leadership_async"]

P = ParamSpec("P")
R = TypeVar("R")

#: The longest a wait's helper thread blocks before checking whether the
#: awaiting task was cancelled (seconds).
SLICE = 0.1


async def _wait_in_thread(step: Callable[[float], bool], timeout: Optional[float], what: str) -> bool:
    """Await ``step(slice)`` (a blocking call that returns True when done,
    False when *slice* seconds passed) in a helper thread, in slices, until
    it returns True or *timeout* passed. Exceptions from *step* are raised
    here; cancelling the awaiting task ends the thread within one slice."""
    loop = asyncio.get_running_loop()
    future: "asyncio.Future[bool]" = loop.create_future()
    cancelled = threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout

    def settle(result: bool, error: Optional[BaseException]) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        result, error = False, None
        try:
            while not cancelled.is_set():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if step(SLICE if remaining is None else min(SLICE, remaining)):
                    result = True
                    break
                if remaining is not None and remaining <= SLICE:
                    break
            else:
                return  # nobody awaits the answer any more
        except BaseException as exc:  # handed to the awaiting task, raised there
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop was closed meanwhile: nobody to tell

    thread = threading.Thread(target=work, name=f"consul-leader-async {what}", daemon=True)
    thread.start()
    try:
        return await future
    finally:
        cancelled.set()


async def wait_for_leadership_async(candidate: "Participant", timeout: Optional[float] = None) -> bool:
    """Await until *candidate* leads; False if *timeout* passed first. The
    event loop keeps running meanwhile; cancelling the awaiting task ends the
    wait (its helper thread within :data:`SLICE` seconds).

    :param candidate: a started :class:`~consul_leader.Candidate`.
    :param timeout: seconds to wait at most; None waits for as long as it takes.
    :raises NotRunning: the candidate is not started, or stopped meanwhile.
    :raises LockHeld: ``wait=False`` and another candidate holds the lock.
    :raises PermissionDenied: the ACL token cannot run this election."""
    timeout = check_timeout("timeout", timeout)
    if candidate.is_leader():
        return True
    if timeout == 0:
        return candidate.wait_for_leadership(0)  # answers at once; raises what the blocking call raises
    return await _wait_in_thread(candidate.wait_for_leadership, timeout, f"wait {candidate.key}")


async def wait_for_leader_async(follower: "Follower", timeout: Optional[float] = None) -> Optional[str]:
    """Await :meth:`Follower.wait_for_leader() <consul_leader.Follower.wait_for_leader>`
    without blocking the loop: until the key has been read once, then the
    leader's identity (None if nobody leads).

    :param follower: a started :class:`~consul_leader.Follower`.
    :param timeout: seconds to wait for the first read; None for no limit.
    :raises NotRunning: the follower was not started.
    :raises ConsulUnavailable: Consul did not answer within *timeout*.
    :raises PermissionDenied: the ACL token may not read the key."""
    timeout = check_timeout("timeout", timeout)

    def answered(seconds: float) -> bool:
        try:
            follower.wait_for_leader(seconds)
        except ConsulUnavailable:
            return False  # not within this slice: the wait goes on until *timeout*
        return True

    # Raises NotRunning before start(), answers at once otherwise.
    if not follower.wait_for_first_read(0) and timeout != 0:
        await _wait_in_thread(answered, timeout, f"follow {follower.key}")
    return follower.wait_for_leader(0)  # the answer, or why there is none


async def events_async(candidate: "Participant") -> AsyncIterator[LeadershipEvent]:
    """Yield a :class:`~consul_leader.LeadershipEvent` for every change of
    *candidate*'s leadership and every error, from the call on, until the
    candidate stops: the asynchronous :meth:`Candidate.events()
    <consul_leader.Candidate.events>`.

    The events come from the ``elected``, ``deposed`` and ``election_error``
    signals, handed to the loop from the candidate's signal thread; no
    thread waits on the iterator's behalf, so leaving the ``async for``
    (``break``, cancellation) leaves nothing behind.

    Before the candidate starts, it waits for the start (as
    :meth:`~consul_leader.Candidate.events` does); for a stopped candidate
    it ends at once.

    :param candidate: a :class:`~consul_leader.Candidate`.

    .. versionchanged:: 0.2
       Waits for a candidate not yet started instead of raising
       :class:`~consul_leader.NotRunning`."""
    if candidate.state == "stopped":
        return
    loop = asyncio.get_running_loop()
    queue: "asyncio.Queue[LeadershipEvent]" = asyncio.Queue()

    def hand_over(event: LeadershipEvent) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:
            pass  # the loop is closed: the iteration is over

    def on_elected(sender: Any, fencing_token: Optional[int] = None, **extra: Any) -> None:
        hand_over(LeadershipEvent(EventKind.ELECTED, fencing_token=fencing_token))

    def on_deposed(sender: Any, reason: Optional[str] = None, **extra: Any) -> None:
        hand_over(LeadershipEvent(EventKind.DEPOSED, reason=reason))

    def on_error(sender: Any, error: Optional[BaseException] = None, **extra: Any) -> None:
        hand_over(LeadershipEvent(EventKind.ERROR, error=error))

    receivers = ((signals.elected, on_elected), (signals.deposed, on_deposed),
                 (signals.election_error, on_error))
    for signal, receiver in receivers:
        signal.connect(receiver, sender=candidate, weak=False)
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), 0.25)
            except asyncio.TimeoutError:
                if candidate.state in ("new", "running"):
                    continue
                # Stopping: the last term's deposed is delivered before the
                # stop completes; wait for that, then hand out what is left.
                await asyncio.to_thread(_until_stopped, candidate)
                while not queue.empty():
                    yield queue.get_nowait()
                return
            yield event
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver, sender=candidate)


def _until_stopped(candidate: "Participant") -> None:
    # events() of a stopped candidate ends at once; of a stopping one, once
    # the stop has finished, after the last deposed receivers ran.
    for _ in candidate.events():
        pass


def leader_only_async(func: Callable[P, Awaitable[R]], *, raise_not_leader: bool = False,
                      candidate: "Optional[Candidate]" = None) -> Callable[P, Coroutine[Any, Any, Optional[R]]]:
    """Wrap a coroutine function so that awaiting it runs it only while
    leading: the asynchronous :func:`~consul_leader.leader_only`. The wrapper
    is an ``async def`` (``inspect.iscoroutinefunction`` is True); awaited on
    a follower it gives None, or raises :class:`~consul_leader.NotLeader`
    with *raise_not_leader*. Leadership is checked when the call starts; a
    long coroutine that must stop when the term ends should check
    ``candidate.is_leader()`` between steps.

    :param func: an ``async def`` function.
    :param raise_not_leader: raise instead of returning None.
    :param candidate: the candidate to ask; default: the process's default
        candidate at call time."""
    check_bool("raise_not_leader", raise_not_leader)
    if not callable(func):
        raise ConfigurationTypeError(f"@leader_only decorates a callable, got {type(func).__name__}")
    from . import decorators

    return decorators.wrap_async(func, raise_not_leader=raise_not_leader, candidate=candidate)

