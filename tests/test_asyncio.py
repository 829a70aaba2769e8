"""asyncio on the threaded core: awaiting leadership, leadership events and
leader-only coroutines never block the event loop (a 10 ms ticker keeps
ticking while they wait), cancelled waits leave no thread behind, and an
``async def`` under leader_only stays a coroutine function that awaits to
None (or raises NotLeader) on a follower.

The tests go through the Candidate and Follower methods, which call the
functions of consul_leader.aio; leader_only_async is also called directly.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any, Callable, List, Optional

import pytest

from consul_leader import Candidate, EventKind, Follower, NotLeader, NotRunning, leader_only
from consul_leader.aio import SLICE, leader_only_async
from consul_leader.testing import ConsulAgent

from conftest import wait_until


def _wait_for_leadership(candidate: Candidate, timeout: Optional[float] = None) -> Any:
    return candidate.wait_for_leadership_async(timeout)


def _events(candidate: Candidate) -> Any:
    return candidate.events_async()


def _wait_for_leader(follower: Follower, timeout: Optional[float] = None) -> Any:
    return follower.wait_for_leader_async(timeout)


class Ticker:
    """A task that wakes every 10 ms and records the longest gap between
    two wake-ups: a blocked loop shows up as a gap of the blocking's length."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap = 0.0
        self._task: Optional[asyncio.Task[None]] = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            self.ticks += 1

    def __enter__(self) -> "Ticker":
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def helper_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("consul-leader-async")]


def test_waiting_for_leadership_keeps_the_loop_ticking(make_candidate: Callable[..., Candidate], key: str) -> None:
    holder = make_candidate(key, ttl=1).start()
    assert holder.wait_for_leadership(15)
    waiter = make_candidate(key, ttl=1).start()

    async def main() -> None:
        with Ticker() as ticker:
            # Held elsewhere: the wait runs out, and the ticker ran all along.
            assert await _wait_for_leadership(waiter, 1.0) is False
            assert ticker.ticks >= 20, ticker.ticks  # a blocked loop would show 0-1
            waiting = asyncio.get_running_loop().create_task(_wait_for_leadership(waiter))
            await asyncio.sleep(0.3)
            ticks = ticker.ticks
            assert not waiting.done()
            holder.stop()  # hands over: the waiting task wakes up
            assert await asyncio.wait_for(waiting, 15) is True
            assert ticker.ticks > ticks
        # The gap bound is a blocked-loop detector (a blocked wait shows
        # seconds), far from any speed claim.
        assert ticker.longest_gap < 0.9, ticker.longest_gap

    asyncio.run(main())
    assert waiter.is_leader()


def test_a_cancelled_wait_leaves_no_thread_behind(make_candidate: Callable[..., Candidate], key: str) -> None:
    holder = make_candidate(key, ttl=1).start()
    assert holder.wait_for_leadership(15)
    waiter = make_candidate(key, ttl=1).start()

    async def main() -> None:
        tasks = [asyncio.get_running_loop().create_task(_wait_for_leadership(waiter)) for _ in range(5)]
        await asyncio.sleep(0.3)
        assert len(helper_threads()) >= 5
        for task in tasks:
            task.cancel()
        for task in tasks:
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    wait_until(lambda: not helper_threads(), timeout=10 * SLICE + 5, what="the helper threads to end")
    assert not waiter.is_leader()


def test_waiting_raises_what_the_blocking_wait_raises(make_candidate: Callable[..., Candidate], key: str) -> None:
    never_started = make_candidate(key, ttl=1)
    with pytest.raises(NotRunning):
        asyncio.run(_wait_for_leadership(never_started, 1))
    with pytest.raises(NotRunning):
        asyncio.run(_wait_for_leadership(never_started, 0))

    holder = make_candidate(key, ttl=1).start()
    assert holder.wait_for_leadership(15)
    stopping = make_candidate(key, ttl=1, identity="other").start()

    async def stop_while_waiting() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, lambda: threading.Thread(target=stopping.stop).start())
        await _wait_for_leadership(stopping)

    with pytest.raises(NotRunning):
        asyncio.run(stop_while_waiting())


def test_events_async_sees_elected_and_deposed_without_blocking(make_candidate: Callable[..., Candidate],
                                                                key: str) -> None:
    candidate = make_candidate(key, ttl=1).start()
    seen: List[Any] = []

    async def main() -> None:
        with Ticker() as ticker:
            async def resign_when_elected() -> None:
                await _wait_for_leadership(candidate, 15)
                await asyncio.sleep(0.2)
                candidate.resign()
                await asyncio.sleep(0.2)
                await asyncio.to_thread(candidate.stop)

            stopper = asyncio.get_running_loop().create_task(resign_when_elected())
            async for event in _events(candidate):
                seen.append(event)
            await stopper
            assert ticker.ticks > 20
            assert ticker.longest_gap < 0.9, ticker.longest_gap

    asyncio.run(main())
    kinds = [e.kind for e in seen if e.kind != EventKind.ERROR]
    # The iteration may begin after the first election; it ends with the stop.
    assert kinds[-2:] == [EventKind.DEPOSED, EventKind.ELECTED] or kinds[-1] == EventKind.DEPOSED, kinds
    assert EventKind.DEPOSED in kinds
    assert [e.reason for e in seen if e.kind == EventKind.DEPOSED][0] == "resigned"


def test_leaving_events_async_early_disconnects(make_candidate: Callable[..., Candidate], key: str) -> None:
    candidate = make_candidate(key, ttl=1).start()

    async def main() -> None:
        async def first() -> Any:
            async for event in _events(candidate):
                return event
            return None

        task = asyncio.get_running_loop().create_task(first())
        event = await asyncio.wait_for(task, 15)
        assert event.kind == EventKind.ELECTED and event.fencing_token == candidate.fencing_token
        # Cancelled while idle: nothing of the iteration is left behind.
        idle = asyncio.get_running_loop().create_task(first())
        await asyncio.sleep(0.3)
        idle.cancel()
        with pytest.raises(asyncio.CancelledError):
            await idle

    asyncio.run(main())
    assert not helper_threads()


def test_events_async_before_start_waits_for_the_start_as_events_does(make_candidate: Callable[..., Candidate],
                                                                      key: str) -> None:
    candidate = make_candidate(key, ttl=1)

    async def main() -> Any:
        first = asyncio.get_running_loop().create_task(_events(candidate).__anext__())
        await asyncio.sleep(0.6)  # several polls of a candidate not yet started
        assert not first.done()
        await asyncio.to_thread(candidate.start)
        return await asyncio.wait_for(first, 15)

    event = asyncio.run(main())
    assert event.kind == EventKind.ELECTED and event.fencing_token == candidate.fencing_token
    candidate.stop()

    async def after_stop() -> List[Any]:
        return [e async for e in _events(candidate)]

    assert asyncio.run(asyncio.wait_for(after_stop(), 5)) == []


def test_waiting_for_a_leader_as_a_follower(consul_agent: ConsulAgent, make_candidate: Callable[..., Candidate],
                                            key: str) -> None:
    leader = make_candidate(key, ttl=1, identity="the-leader").start()
    assert leader.wait_for_leadership(15)
    follower = Follower(key, address=consul_agent.address)
    with pytest.raises(NotRunning):
        asyncio.run(_wait_for_leader(follower, 1))
    with follower:
        async def main() -> Optional[str]:
            with Ticker():
                return await _wait_for_leader(follower, 15)

        assert asyncio.run(main()) == "the-leader"


def test_leader_only_on_a_coroutine_function(make_candidate: Callable[..., Candidate], key: str) -> None:
    leader = make_candidate(key, ttl=1).start()
    assert leader.wait_for_leadership(15)
    follower = make_candidate(key, ttl=1).start()
    calls: List[str] = []

    async def job(name: str) -> str:
        await asyncio.sleep(0)
        calls.append(name)
        return name

    on_leader = leader_only_async(job, candidate=leader)
    on_follower = leader_only_async(job, candidate=follower)
    strict = leader_only_async(job, candidate=follower, raise_not_leader=True)
    assert all(inspect.iscoroutinefunction(f) for f in (on_leader, on_follower, strict))
    assert on_leader.__name__ == "job"

    async def main() -> None:
        assert await on_leader("a") == "a"
        assert await on_follower("b") is None
        with pytest.raises(NotLeader):
            await strict("c")

    asyncio.run(main())
    assert calls == ["a"]


def test_leader_only_decorator_dispatches_coroutine_functions(make_candidate: Callable[..., Candidate],
                                                              key: str) -> None:
    """The @leader_only decorator (module-level and the method) on an async def."""
    follower_of_nobody = make_candidate(key, ttl=1)

    async def job() -> int:
        return 1

    wrapped = leader_only(candidate=follower_of_nobody)(job)
    assert inspect.iscoroutinefunction(wrapped)
    assert inspect.iscoroutinefunction(follower_of_nobody.leader_only(job))
    assert asyncio.run(wrapped()) is None
