"""One fault schedule: candidates on their agents, faults drawn from the
seed one after another, and the run's records checked by the chaos run's
checker (:func:`consul_leader.testing.checker.check`) plus the liveness
bounds of :data:`BOUNDS`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...session import Timing
from .. import checker
from .candidate import SimCandidate
from .consul import NoClusterLeader
from .world import Agent, World

__all__ = ["BOUNDS", "KINDS", "Outcome", "bound", "simulate", "timeline"]

#: Seconds after the first lock-delay that the first fault comes, so that
#: a leader is working by then.
FIRST_FAULT = 5.0

#: How many candidates a schedule grows to at most (fresh ones join).
MAX_CANDIDATES = 5


def bound(kind: str, timing: Timing, leading: bool = True) -> float:
    """The liveness bound of a fault: within this many seconds after the
    fault was undone, some candidate works again, if a healthy one exists.

    A handover (resign, stop) takes round trips, bounded here by a second.
    A lock freed with the leader's session still alive or gone at once
    (released or deleted by someone else, the session destroyed, its agent
    restarted) waits one lock-delay: Consul's or the one the next holder
    holds. A leader that died waits for its check's TTL after its last
    pass (up to a heartbeat before) and then the lock-delay. Anything else
    (a pause, a suspend, a slow or frozen agent) may cost both lock-delays
    and two heartbeats; a Raft election or lost answers a lease more, as a
    request cut off by them runs to its timeout. Each is counted in the
    longest timing among the candidates, and includes one more second.

    :param leading: whether the fault's target led when it was applied (a
        candidate stopped while it holds a lock it did not lead yet
        destroys its session, so the next one waits a lock-delay)."""
    if kind in ("resign", "stop + restart") and leading:
        return 1.0
    if kind in ("release by another", "key deleted + fresh candidate", "session destroyed",
                "session destroyed + raft leader change", "leader agent restart"):
        return timing.lock_delay + 1.0
    if kind == "leader SIGKILL":
        return timing.check_ttl + timing.heartbeat + timing.lock_delay + 1.0
    slowest = timing.check_ttl + 2 * timing.lock_delay + 2 * timing.heartbeat + 1.0
    if kind in ("raft leader lost", "answers lost"):
        return slowest + timing.lease
    return slowest


#: The fault kinds, each with what it does to the world.
KINDS = ("leader SIGSTOP", "leader agent SIGSTOP", "leader SIGKILL", "leader suspend", "slow leader agent",
         "release by another", "key deleted + fresh candidate", "session destroyed", "leader agent restart",
         "raft leader lost", "session destroyed + raft leader change", "answers lost", "resign",
         "stop + restart", "leader SIGSTOP + release by another", "leader SIGSTOP + key deleted + fresh candidate")

#: After a term that ended involuntarily and that its holder's own
#: release closed (its session still alive), someone leads within this
#: many seconds (a deposed leader must not hold its own key again from a
#: read older than its term), unless a fault is under way.
HANDOVER_BOUND = 1.0

#: The simulated client's timeout for a request (the engine's default).
REQUEST_TIMEOUT = 5.0

#: The liveness bound of each kind at the default timing (ttl=3), for the docs' table.
BOUNDS = {kind: bound(kind, Timing.from_ttl(3.0)) for kind in KINDS}


@dataclass
class Outcome:
    """One schedule's result.

    :ivar seed: the seed that made it.
    :ivar records: what happened, in the checker's records.
    :ivar report: the checker's report.
    :ivar steps: how many scheduler steps it took.
    :ivar simulated: how many simulated seconds it ran.
    """

    seed: int
    records: list[dict[str, Any]]
    report: checker.Report
    steps: int
    simulated: float

    @property
    def ok(self) -> bool:
        """True if the checker found nothing wrong."""
        return self.report.ok


class _Run:
    def __init__(self, seed: int, seconds: float, ttl: float, candidates: int, storm: bool,
                 mixed: bool | None) -> None:
        self.storm = storm
        self.world = World(seed)
        self.rng = random.Random(f"{seed}-faults")
        self.seconds = seconds
        self.key = "service/sim/leader"
        self.agents = [self.world.add_agent(f"node-{i}") for i in range(candidates)]
        # Mixed timings on one key, in a third of the schedules: the
        # candidates of the first node run with three times the ttl, as
        # ``consul-leader run`` beside library candidates does.
        self.timings = {agent.node: Timing.from_ttl(ttl) for agent in self.agents}
        draw = self.rng.random() < 1 / 3
        if draw if mixed is None else mixed:
            self.timings[self.agents[0].node] = Timing.from_ttl(ttl * 3)
        #: The longest timing: the liveness bounds are counted in it.
        self.timing = max(self.timings.values(), key=lambda t: t.check_ttl)
        self.candidates: list[SimCandidate] = []
        self.leading = False
        self.pid = 1000
        for agent in self.agents:
            self.spawn(agent)

    def spawn(self, agent: Agent) -> SimCandidate:
        self.pid += 1
        c = SimCandidate(self.world, agent, self.pid, self.key, f"{agent.node}:{self.pid}", self.timings[agent.node])
        self.candidates.append(c)
        c.start()
        return c

    def respawn(self, agent: Agent) -> None:
        self.spawn(agent)

    def alive(self) -> list[SimCandidate]:
        return [c for c in self.candidates if not c.dead]

    def leader(self) -> SimCandidate | None:
        entry = self.world.consul.peek(self.key)
        for c in self.alive():
            if entry is not None and entry.session is not None and c.session_id == entry.session:
                return c
        return None

    def target(self) -> SimCandidate:
        alive = self.alive()
        if not alive:  # a storm killed them all: a new one, on the agent of the last
            return self.spawn(self.candidates[-1].agent)
        return self.leader() or self.rng.choice(alive)

    def later(self, seconds: float, action: Callable[[], None]) -> None:
        self.world.scheduler.call_later(seconds, action)

    def fault(self, kind: str, until: float, **fields: Any) -> None:
        self.world.record("fault", kind=kind, undone=round(until, 6), leading=self.leading,
                          bound=round(bound(kind, self.timing, self.leading), 6), **fields)

    def operator(self, request: Callable[[], object]) -> bool:
        # What an operator sends is refused while no Raft leader is elected.
        try:
            request()
        except NoClusterLeader:
            self.world.record("note", text="the operator's request was refused: no Raft leader")
            return False
        return True

    def lease_bound(self, now: float, seconds: float) -> dict[str, float]:
        # A pause shorter than the lease may end with the lease still valid:
        # only a longer one bounds the term (the checker's rule (c)).
        # In a storm another fault may thaw it early: no bound then.
        return {"lease_bound": now} if seconds > self.timing.lease and not self.storm else {}

    def apply(self, kind: str) -> float:
        """Apply *kind* now; return when it is undone."""
        world, consul, rng = self.world, self.world.consul, self.rng
        now = world.scheduler.now()
        c = self.target()
        self.leading = c.is_leader()
        agent = c.agent
        if c.frozen and ("SIGSTOP" in kind or "suspend" in kind):
            # Stopped already (a storm): a second stop would thaw it with the
            # first one's end, which no real schedule does.
            self.world.record("note", text=f"{kind} left out: {c.identity} is stopped already")
            return now
        seconds = rng.choice((0.3, 1.0, 2.0, 4.0, 8.0)) * rng.uniform(0.5, 1.0)
        until = now + seconds
        if kind == "leader SIGSTOP":
            c.freeze()
            self.later(seconds, c.thaw)
            self.fault(kind, until, target=c.identity, frozen_pid=c.pid, seconds=seconds,
                       **self.lease_bound(now, seconds))
        elif kind == "leader agent SIGSTOP":
            consul.freeze_agent(agent.node)
            self.later(seconds, lambda: world.thaw_agent(agent))
            self.fault(kind, until, target=c.identity, seconds=seconds)
        elif kind == "leader suspend":
            # The machine sleeps: the process and its agent stop, the boot
            # clock (the virtual time) goes on.
            c.freeze()
            consul.freeze_agent(agent.node)

            def wake() -> None:
                world.thaw_agent(agent)
                c.thaw()

            self.later(seconds, wake)
            self.fault(kind, until, target=c.identity, frozen_pid=c.pid, seconds=seconds,
                       **self.lease_bound(now, seconds))
        elif kind == "leader SIGKILL":
            c.kill()
            self.later(seconds, lambda: self.respawn(agent))
            self.fault(kind, until, target=c.identity, lease_bound=now)
        elif kind == "stop + restart":
            c.stop()
            self.later(seconds, lambda: self.respawn(agent))
            self.fault(kind, until, target=c.identity)
        elif kind == "resign":
            c.resign()
            until = now
            self.fault(kind, until, target=c.identity)
        elif kind == "slow leader agent":
            agent.delay = 0.35
            self.later(seconds, lambda: setattr(agent, "delay", 0.0))
            self.fault(kind, until, target=c.identity, seconds=seconds)
        elif kind == "answers lost":
            agent.lose_answers = 0.3
            self.later(seconds, lambda: setattr(agent, "lose_answers", 0.0))
            self.fault(kind, until, target=c.identity, seconds=seconds)
        elif kind == "release by another":
            if c.session_id is not None:
                # ?release= with an empty body: Consul sets no lock-delay.
                self.operator(lambda: consul.release(self.key, c.session_id or ""))
            until = now
            self.fault(kind, until, target=c.identity)
        elif kind == "session destroyed":
            done = c.session_id is not None and self.operator(lambda: consul.destroy_session(c.session_id or ""))
            until = now
            self.fault(kind, until, target=c.identity, **({"lease_bound": now} if done else {}))
        elif kind == "session destroyed + raft leader change":
            # A new Raft leader elected before it applied the invalidation
            # (or restored from a snapshot) enforces no lock-delay for it.
            old = consul.leader
            done = c.session_id is not None and old is not None
            if c.session_id is not None and old is not None:
                consul.destroy_session(c.session_id)
                consul.lose_leader()
                new = (old + 1) % len(consul.servers)
                snapshot = rng.random() < 0.3
                self.later(0.001, lambda: consul.elect(new, from_snapshot=snapshot))
            until = now + 0.001
            self.fault(kind, until, target=c.identity, **({"lease_bound": now} if done else {}))
        elif kind == "leader agent restart":
            world.restart_agent(agent)
            until = now
            self.fault(kind, until, target=c.identity)
        elif kind == "raft leader lost":
            old = consul.leader if consul.leader is not None else 0
            consul.lose_leader()
            seconds = rng.uniform(0.2, 3.0)
            until = now + seconds
            new = rng.randrange(len(consul.servers))
            snapshot = rng.random() < 0.2
            self.later(seconds, lambda: consul.elect(new, from_snapshot=snapshot))
            self.fault(kind, until, old=old, new=new, snapshot=snapshot)
        elif kind in ("leader SIGSTOP + release by another", "leader SIGSTOP + key deleted + fresh candidate"):
            # The leader cannot notice for its lease: only the next holder's
            # hold-off keeps their work apart.
            c.freeze()
            seconds = rng.uniform(0.1, 1.0) * self.timing.check_ttl
            until = now + seconds
            self.later(seconds, c.thaw)
            if kind.endswith("release by another"):
                if c.session_id is not None:
                    self.operator(lambda: consul.release(self.key, c.session_id or ""))
            else:
                self.operator(lambda: consul.delete(self.key))
                if len(self.alive()) < MAX_CANDIDATES:
                    self.spawn(rng.choice(self.agents))
            self.fault(kind, until, target=c.identity, frozen_pid=c.pid, seconds=seconds,
                       **self.lease_bound(now, seconds))
        elif kind == "key deleted + fresh candidate":
            self.operator(lambda: consul.delete(self.key))
            if len(self.alive()) < MAX_CANDIDATES:
                self.spawn(rng.choice(self.agents))
            until = now
            self.fault(kind, until, target=c.identity)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return until

    def run(self, kinds: tuple[str, ...]) -> None:
        world = self.world
        scheduler = world.scheduler
        world.record("run", begin=0.0, end=self.seconds, ttl=self.timing.check_ttl, seed=world.seed, storm=self.storm)
        # The first fault once the first holder of the new key led (it
        # holds the lock a lock-delay first).
        t = FIRST_FAULT + self.timing.lock_delay
        while True:
            scheduler.run_until(t)
            kind = self.rng.choice(kinds)
            undone = self.apply(kind)
            if self.storm:
                t = scheduler.now() + self.rng.uniform(0.1, 3.0)
            else:
                t = undone + bound(kind, self.timing) + self.rng.uniform(0.5, 3.0)
            if t > self.seconds:
                break
        scheduler.run_until(self.seconds)


def _after_effect(kind: str) -> float:
    # How long a fault's effects outlive it: an answer lost before it was
    # undone is waited for until the request's timeout.
    return REQUEST_TIMEOUT + 0.5 if kind == "answers lost" else 0.0


def _stalls(records: list[dict[str, Any]], end: float, storm: bool) -> list[dict[str, Any]]:
    """A ``stall`` record for each fault after which no candidate worked
    within its bound (for half a second at least, from no later than the
    bound), where the run went on long enough to tell; and for each
    involuntary end its holder's release closed, outside any fault, after
    which nobody led within :data:`HANDOVER_BOUND`."""
    work = checker.works(records)
    faults = [r for r in records if r["ev"] == "fault"]
    stalls = []
    for f in faults:
        undone, limit = f["undone"], f["bound"]
        # Left out: the run ended before it could tell, or another fault,
        # or the recovery from one, overlapped (a storm).
        if undone + limit + 0.5 > end or any(g is not f and g["t"] <= undone + limit
                                             and g["undone"] + g["bound"] >= f["t"] for g in faults):
            continue
        if not any(max(w.start, undone) <= undone + limit and w.end >= max(w.start, undone) + 0.5 for w in work):
            stalls.append({"ev": "stall", "t": undone, "seconds": limit, "after": f["kind"]})
    ups = [r["t"] for r in records if r["ev"] == "up"]
    for r in records:
        if r["ev"] != "released" or r["voluntary"] or r["t"] + HANDOVER_BOUND > end:
            continue
        # In a storm, the recovery from any fault may still run.
        if any(f["t"] - HANDOVER_BOUND <= r["t"] <= f["undone"] + (f["bound"] if storm else _after_effect(f["kind"]))
               for f in faults):
            continue
        if not any(r["t"] < t <= r["t"] + HANDOVER_BOUND for t in ups):
            stalls.append({"ev": "stall", "t": r["t"], "seconds": HANDOVER_BOUND,
                           "after": f"{r['id']}'s release after {r['reason']}"})
    return stalls


def simulate(seed: int, seconds: float = 180.0, ttl: float = 3.0, candidates: int = 3,
             kinds: tuple[str, ...] = KINDS, storm: bool = False, mixed: bool | None = None) -> Outcome:
    """Run one schedule of *seconds* simulated seconds from *seed*, and check it.

    :param ttl: the candidates' ``ttl`` (every duration follows from it).
    :param candidates: how many candidates start, each on an agent of its own.
    :param kinds: the fault kinds to draw from.
    :param storm: faults every 0.1 to 3 s, without waiting for the last
        one's recovery: overlapping faults, checked for safety (and for
        liveness only where a fault's bound passed before the next one).
    :param mixed: whether the first node's candidates run with three times
        the ttl (None: drawn, in a third of the schedules)."""
    run = _Run(seed, seconds, ttl, candidates, storm, mixed)
    run.run(kinds)
    records = run.world.records
    records.extend(_stalls(records, seconds, storm))
    report = checker.check(records, run.timing.lease)
    return Outcome(seed, records, report, run.world.scheduler.steps, seconds)


def timeline(outcome: Outcome) -> str:
    """The records of a schedule, one a line, with what the checker found
    and the timeline of each overlap."""
    lines = [json.dumps(r, sort_keys=True) for r in outcome.records
             if r["ev"] not in ("work-alive",)]
    lines.append(outcome.report.problems())
    lines.append(checker.explain(outcome.records, outcome.report))
    return "\n".join(lines)
