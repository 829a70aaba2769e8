"""The simulated world around the processes: a seeded scheduler on a
virtual clock, tasks (a process's threads, as generators), the network
between a process, its agent and the Raft leader of a
:class:`~.consul.ConsulModel`, and the faults a schedule applies to them.

A task is a generator that yields what a thread would block on:
:class:`Sleep`, :class:`WaitFlag` or a :class:`Call` to Consul, and is
resumed with the answer (or has the error thrown into it). Nothing runs
at the same time; everything happens at a virtual time, in the order of
the scheduler's queue, and every random draw comes from the seed, so one
seed gives one history.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Union

from .consul import ConsulModel, ModelError, NoClusterLeader

__all__ = ["Agent", "Call", "Flag", "Process", "Refused", "Scheduler", "SimError", "Sleep", "Task", "TaskGen",
           "Unavailable", "WaitFlag", "Woken", "World"]


class Scheduler:
    """The virtual clock and its queue of callbacks (a
    :class:`~.consul.Timers`). Ties are broken by the order of scheduling,
    so a run is the same every time."""

    def __init__(self) -> None:
        self._now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        #: How many callbacks ran (the simulator's measure of work).
        self.steps = 0

    def now(self) -> float:
        """The virtual time, in seconds: every process's boot clock."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run *callback* at *when* (no earlier than now)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self._now), self._seq, callback))

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run *callback* *delay* seconds from now."""
        self.call_at(self._now + delay, callback)

    def run_until(self, until: float) -> None:
        """Run every callback due up to *until*, in order."""
        queue = self._queue
        while queue and queue[0][0] <= until:
            when, _, callback = heapq.heappop(queue)
            self._now = when
            self.steps += 1
            callback()
        self._now = max(self._now, until)


class SimError(Exception):
    """A request that failed, as the engine's client would raise it."""


class Unavailable(SimError):
    """No answer in time, or the agent is gone (``ConsulUnavailable``)."""


class Refused(SimError):
    """Consul answered with an error (``500 No cluster leader``, an unknown check...)."""


class Woken(Unavailable):
    """The request was cut short by another task (the engine's
    :func:`~consul_leader.interrupt.wake`, which fails it as ``ConsulUnavailable``)."""


@dataclass
class Sleep:
    """Block for *seconds*; *stoppable*: it is a wait on the ``_stopping``
    event, which :meth:`Task.stop_waiting` ends early. Resumed with whether
    it was ended early."""

    seconds: float
    stoppable: bool = False


@dataclass
class WaitFlag:
    """Block until *flag* is set or *timeout* passes; resumed with whether it is set."""

    flag: Flag
    timeout: float | None = None


@dataclass
class Call:
    """A request to Consul, sent through the process's agent.

    :ivar run: what the request does, run where it lands (the agent or the
        Raft leader); returns the answer or raises :class:`ModelError`.
    :ivar at_agent: answered by the agent itself (checks), not the servers.
    :ivar precheck: for a write that takes a lock: what the Raft leader
        checks before committing (an error text ends it there, answered as
        *refused*); the write is applied a commit latency later.
    :ivar refused: the answer when *precheck* refuses.
    :ivar block: for a blocking query: ``(key, index, wait)``.
    :ivar timeout: the client's timeout for this request.
    """

    run: Callable[[], Any]
    at_agent: bool = False
    precheck: Callable[[], str | None] | None = None
    refused: Any = None
    block: tuple[str, int, float] | None = None
    timeout: float = 5.0


#: What a task yields.
Op = Union[Sleep, WaitFlag, Call]
#: A task's body.
TaskGen = Generator[Any, Any, Any]


class Flag:
    """A ``threading.Event`` between the tasks of one process."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[tuple[Task, int]] = []

    def is_set(self) -> bool:
        """Whether it was set."""
        return self._set

    def clear(self) -> None:
        """Unset it."""
        self._set = False

    def set(self) -> None:
        """Set it, resuming every task that waits on it."""
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, []
        for task, token in waiters:
            task.resume_later(0.0, token, True)

    def add(self, task: Task, token: int) -> None:
        """Let *task* (blocked with *token*) be resumed when it is set."""
        self._waiters.append((task, token))


class Task:
    """One thread of a simulated process, running *body*.

    :param process: the process it belongs to: while it is frozen the task
        does not run; once it is dead, never again.
    :param name: for the timeline.
    """

    def __init__(self, process: Process, body: TaskGen, name: str) -> None:
        self.process = process
        self.body = body
        self.name = name
        self.done = False
        self._token = 0  # a resume that carries an older token is void
        self._blocked: Op | None = None
        #: Marked by :meth:`wake` until :meth:`clear_wake` or the next request.
        self.woken = False

    def start(self) -> None:
        """Run it from the next moment on."""
        self.resume_later(0.0, self._token, None)

    def resume_later(self, delay: float, token: int, value: Any = None, error: BaseException | None = None) -> None:
        """Resume it *delay* seconds from now with *value* (or *error*),
        if it still waits for what *token* names."""
        self.process.world.scheduler.call_later(delay, lambda: self._resume(token, value, error))

    def wake(self) -> None:
        """As :func:`~consul_leader.interrupt.wake`: the request the task is
        blocked in fails with :class:`Woken`, and so does the next one it
        starts, unless it calls :meth:`clear_wake` first (the socket was shut
        down, and the reconnection finds the mark); sleeps and waits on
        flags go on."""
        self.woken = True
        if isinstance(self._blocked, Call) and not self.done:
            self.resume_later(0.0, self._token, None, Woken("woken"))

    def clear_wake(self) -> None:
        """As :func:`~consul_leader.interrupt.clear_wake`."""
        self.woken = False

    def stop_waiting(self) -> None:
        """End a stoppable :class:`Sleep` now (the ``_stopping`` event set)."""
        blocked = self._blocked
        if isinstance(blocked, Sleep) and blocked.stoppable and not self.done:
            self.resume_later(0.0, self._token, True)

    def _resume(self, token: int, value: Any, error: BaseException | None) -> None:
        process = self.process
        if token != self._token or self.done or process.dead:
            return
        if process.frozen:
            process.deferred.append(lambda: self._resume(token, value, error))
            return
        self._token += 1
        self._blocked = None
        try:
            op = self.body.throw(error) if error is not None else self.body.send(value)
        except StopIteration:
            self.done = True
            return
        self._block(op)

    def _block(self, op: Op) -> None:
        token = self._token
        self._blocked = op
        if isinstance(op, Sleep):
            self.resume_later(op.seconds, token, False)
        elif isinstance(op, WaitFlag):
            if op.flag.is_set():
                self.resume_later(0.0, token, True)
                return
            op.flag.add(self, token)
            if op.timeout is not None:
                self.resume_later(op.timeout, token, False)
        elif self.woken:
            # The next connection the thread opens consumes the mark and fails.
            self.woken = False
            self.resume_later(0.0, token, None, Woken("woken"))
        else:
            self.resume_later(op.timeout, token, None, Unavailable("timed out"))
            self.process.world.send(self.process.agent, op, lambda value, error: self._resume(token, value, error))


class Process:
    """A simulated process on one agent: its tasks, and whether it is
    frozen (SIGSTOP, a suspend) or dead.

    :param world: the world it runs in.
    :param agent: the agent it talks to.
    :param pid: its process ID in the records (a restart is a new one).
    """

    def __init__(self, world: World, agent: Agent, pid: int) -> None:
        self.world = world
        self.agent = agent
        self.pid = pid
        self.frozen = False
        self.dead = False
        self.deferred: list[Callable[[], None]] = []
        self.rng = random.Random(f"{world.seed}-process-{pid}")

    def spawn(self, body: TaskGen, name: str) -> Task:
        """Start a task (a thread) in this process."""
        task = Task(self, body, name)
        task.start()
        return task

    def freeze(self) -> None:
        """SIGSTOP: nothing of it runs until :meth:`thaw`."""
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: what came due meanwhile runs now, its threads in an order
        drawn from the seed (the kernel's, after a stop, is anyone's guess)."""
        self.frozen = False
        deferred, self.deferred = self.deferred, []
        self.rng.shuffle(deferred)
        for resume in deferred:
            self.world.scheduler.call_later(0.0, resume)

    def kill(self) -> None:
        """SIGKILL: it never runs again."""
        self.dead = True


@dataclass
class Agent:
    """A client agent (a node): how slow it answers, whether it is frozen
    and holds requests, and whether answers through it get lost.

    :ivar delay: extra seconds on each request through it (a slow agent).
    :ivar lose_answers: the chance that an answer through it is lost after
        the request took effect.
    """

    node: str
    delay: float = 0.0
    lose_answers: float = 0.0
    held: list[Callable[[], None]] = field(default_factory=list)
    generation: int = 0


class World:
    """The scheduler, the Consul model, the agents and the records of one run.

    :param seed: every random draw of the run comes from it.
    :param servers: how many Consul servers.
    """

    def __init__(self, seed: int, servers: int = 3) -> None:
        self.seed = seed
        self.scheduler = Scheduler()
        self.rng = random.Random(f"{seed}-network")
        self.consul = ConsulModel(self.scheduler, servers=servers, rng=random.Random(f"{seed}-consul"))
        self.agents: dict[str, Agent] = {}
        #: The records the checker reads (:mod:`consul_leader.testing.checker`).
        self.records: list[dict[str, Any]] = []

    def add_agent(self, node: str) -> Agent:
        """A client agent on a node of its own."""
        agent = Agent(node)
        self.agents[node] = agent
        self.consul.add_node(node)
        return agent

    def record(self, ev: str, **fields: Any) -> None:
        """Add a record at the current time (unless it carries its own ``t``)."""
        self.records.append({"ev": ev, "t": round(self.scheduler.now(), 6), **fields})

    def _hop(self) -> float:
        # One network hop on a quiet machine: 0.2 to 2 ms.
        return 0.0002 + self.rng.random() * 0.0018

    def send(self, agent: Agent, call: Call, reply: Callable[[Any, BaseException | None], None]) -> None:
        """Send *call* through *agent*; *reply* gets ``(answer, None)`` or
        ``(None, error)``, unless the answer is lost (then the caller's
        timeout answers)."""
        scheduler = self.scheduler
        generation = agent.generation

        def answer(value: Any, error: BaseException | None) -> None:
            if agent.generation != generation:
                return  # the agent restarted: the connection is gone
            if agent.lose_answers and self.rng.random() < agent.lose_answers:
                return
            self._through(agent, lambda: scheduler.call_later(self._hop() + agent.delay / 2,
                                                                lambda: reply(value, error)))

        def at_agent() -> None:
            if agent.generation != generation:
                reply(None, Unavailable("connection refused: the agent restarted"))
                return
            if call.at_agent:
                answer(*_outcome(call.run))
                return
            scheduler.call_later(self._hop(), at_leader)

        def at_leader() -> None:
            consul = self.consul
            if consul.leader is None:
                answer(None, Refused("No cluster leader"))
                return
            if call.block is not None:
                self._block(call.block, answer)
                return
            if call.precheck is not None:
                refused = call.precheck()
                if refused is not None:
                    answer(call.refused, None)
                    return
                # Committed a Raft round later: what happens meanwhile (an
                # invalidation) is not checked again.
                scheduler.call_later(0.002 + self.rng.random() * 0.004, lambda: answer(*_outcome(call.run)))
                return
            answer(*_outcome(call.run))

        scheduler.call_later(self._hop() + agent.delay / 2, lambda: self._through(agent, at_agent))

    def _through(self, agent: Agent, step: Callable[[], None]) -> None:
        # A frozen agent holds what passes through it until it runs again.
        if self.consul.agent_frozen(agent.node):
            agent.held.append(step)
        else:
            step()

    def thaw_agent(self, agent: Agent) -> None:
        """The agent runs again, and passes on what it held."""
        self.consul.thaw_agent(agent.node)
        held, agent.held = agent.held, []
        for step in held:
            self.scheduler.call_later(0.0, step)

    def restart_agent(self, agent: Agent) -> None:
        """The agent restarts: its connections, checks and sessions are gone."""
        agent.generation += 1
        agent.held = []
        self.consul.restart_agent(agent.node)

    def _block(self, block: tuple[str, int, float], answer: Callable[[Any, BaseException | None], None]) -> None:
        key, index, wait = block
        consul = self.consul
        current = consul.get(key)
        if current[0] > index or current[0] < index:
            answer(current, None)  # changed, or reset: at once
            return
        done = [False]

        def finish() -> None:
            if done[0]:
                return
            done[0] = True
            cancel()
            try:
                answer(consul.get(key), None)
            except NoClusterLeader as exc:
                answer(None, Refused(str(exc)))

        cancel = consul.watch(key, finish)
        self.scheduler.call_later(consul.blocking_wait(wait), finish)


def _outcome(run: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return run(), None
    except ModelError as exc:
        return None, Refused(str(exc))
    except SimError as exc:
        return None, exc
