"""A seeded, time-bounded fault injector over a ConsulCluster, candidate
processes and ``consul-leader run`` supervisors. One fault at a time: apply
it, undo it (SIGCONT, restart, heal), wait until the key's holder runs its
work again, pause a little, pick the next. Every fault is recorded
(``ev: fault``) with the monotonic time it was applied, so that the checker
can tell what each fault did to the election and to the work."""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import signal
import time
from typing import Any, Callable, Dict, List, Optional

import requests

from chaos.procs import CandidateProcess, SupervisorProcess, read_records, wait_until
from consul_leader.testing import ClusterAgent, ConsulCluster

log = logging.getLogger("consul_leader.chaos")

#: Longest wait for a holder that runs its work after a fault; past it the
#: run records a stall (a failure) and goes on.
RECOVERY_TIMEOUT = 45.0
#: The same wait once a stall was recorded, so that a stuck election does
#: not stretch the run by a recovery timeout per fault.
RECOVERY_TIMEOUT_AFTER_STALL = 10.0
#: How a process runs: (kind, options) -- "candidate" with receivers, or
#: "supervisor" with whether its command ignores SIGTERM.
Spec = Dict[str, Any]


class Chaos:
    """Run candidates on *key*, spread over the cluster's client agents (in
    their hosts when the cluster has hosts), and inject faults for
    *duration* seconds.

    The candidates: *n* in all, of which *supervisors* are ``consul-leader
    run`` supervisors (the first of them runs a command that ignores
    SIGTERM); of the candidate processes, one has a receiver on every signal
    that sleeps for seconds and one a receiver that raises.

    :param cluster: a started :class:`ConsulCluster` with client agents.
    :param key: the election's key.
    :param workdir: where the processes write their records.
    :param seed: the random seed; the same seed picks the same faults.
    :param n: number of candidates.
    :param supervisors: how many of them are ``consul-leader run`` supervisors.
    :param ttl: the candidates' ``ttl`` (and the supervisors' ``--ttl``).
    """

    def __init__(self, cluster: ConsulCluster, key: str, workdir: str, seed: int, n: int = 6,
                 supervisors: int = 2, ttl: float = 1.0, faults: Optional[List[str]] = None) -> None:
        assert cluster.clients, "candidates talk to client agents"
        assert n - supervisors >= 3, "one plain, one slow-receiver and one raising-receiver candidate process"
        self.cluster, self.key, self.workdir, self.ttl = cluster, key, workdir, ttl
        self.rng = random.Random(seed)
        self.seed = seed
        self.procs: List[CandidateProcess] = []
        self.agent_of: Dict[str, ClusterAgent] = {}
        self.spec_of: Dict[str, Spec] = {}
        self.events: List[Dict[str, Any]] = []
        self.stopped: Dict[str, Dict[str, Any]] = {}
        self._incarnation = 0
        self.lease = 5 / 6 * ttl
        # One timing per key: the candidates beside supervisors use the
        # lock-delay the supervisors derive from their grace, or a key
        # deleted under a supervisor's command (which may run a grace past
        # its lease) lets a candidate lead after its own, shorter one.
        self.lock_delay = SupervisorProcess.derived_lock_delay(ttl) if supervisors else ttl
        self.recovery_timeout = RECOVERY_TIMEOUT
        self.begin = self.end = time.monotonic()
        self.hosts, self.hosts_reason = self._hosts_supported()
        specs: List[Spec] = [{"kind": "supervisor", "ignore_term": i == 0} for i in range(supervisors)]
        receivers = ["slow", "raising"] + ["none"] * (n - supervisors - 2)
        specs += [{"kind": "candidate", "receivers": r} for r in receivers]
        for i, spec in enumerate(specs):
            self._spawn(cluster.clients[i % len(cluster.clients)], spec)
        self.kinds: Dict[str, Callable[[], None]] = {
            "candidate SIGKILL": self.candidate_kill,
            "candidate SIGSTOP": self.candidate_pause,
            "resign": self.resign,
            "session destroyed": self.destroy_session,
            "key deleted": self.delete_key,
            "key deleted, fresh candidate": self.delete_key_fresh_candidate,
            "raft leader killed": self.kill_raft_leader,
            "client agent restart": lambda: self.restart_client(kill=False),
            "client agent SIGKILL": lambda: self.restart_client(kill=True),
            "agent SIGSTOP": self.pause_agent,
            "agent SIGSTOP, lease lapses": self.lapse_lease,
            "supervisor SIGSTOP": self.supervisor_pause,
            "command ignores SIGTERM": self.depose_ignoring_command,
            "slow receivers": lambda: self.misbehaving_receivers("slow"),
            "raising receivers": lambda: self.misbehaving_receivers("raising"),
        }
        if self.hosts:
            self.kinds["client host partitioned"] = self.partition_client_host
            self.kinds["server minority partitioned"] = self.partition_server
        else:
            self._note(f"partition faults left out: {self.hosts_reason}")
        if faults:
            # A storm of a few kinds, to measure how often one of them breaks something.
            unknown = sorted(set(faults) - set(self.kinds))
            assert not unknown, f"unknown fault kinds {unknown}; the kinds are {sorted(self.kinds)}"
            self.kinds = {kind: fn for kind, fn in self.kinds.items() if kind in faults}

    def _hosts_supported(self) -> "tuple[bool, str]":
        if self.cluster.clients[0].host is not None:
            return True, ""
        supported, reason = ConsulCluster.hosts_supported()
        return False, reason if not supported else "the cluster was made without hosts=True"

    # -- running ------------------------------------------------------------

    def run(self, duration: float) -> List[Dict[str, Any]]:
        """Inject faults for *duration* seconds, and at least until every
        kind was applied once (first each kind in a seeded order, then kinds
        at random); stop every process (each answers a final probe) and
        return all records: the processes' and the injector's."""
        begin = self.begin = time.monotonic()
        try:
            self.wait_for_leader("the start")
            order = list(self.kinds)
            self.rng.shuffle(order)
            while order or time.monotonic() - begin < duration:
                kind = order.pop() if order else self.rng.choice(list(self.kinds))
                log.info("chaos: %s", kind)
                self.kinds[kind]()
                self.wait_for_leader(kind)
                self.wait_for_servers(kind)
                time.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            self.end = time.monotonic()
            self.wait_for_agents("the last fault")
            for p in self.procs:
                if p.identity not in self.stopped:
                    self.stopped[p.identity] = p.stop()
        return self.records()

    def records(self) -> List[Dict[str, Any]]:
        """Everything recorded so far: the run, the injector's records and the processes'."""
        run = {"ev": "run", "begin": self.begin, "end": self.end, "seed": self.seed, "ttl": self.ttl,
               "n": len(self.procs), "hosts": self.hosts}
        return ([run] + self.events + list(self.stopped.values())
                + [r for p in self.procs for r in read_records(p.out)])

    def write(self, records: List[Dict[str, Any]], path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")

    def _spawn(self, agent: ClusterAgent, spec: Spec, hold: bool = False) -> CandidateProcess:
        self._incarnation += 1
        wrap: Callable[[List[str]], List[str]] = agent.host.command if agent.host is not None else list
        p: CandidateProcess
        if spec["kind"] == "supervisor":
            p = SupervisorProcess(agent.address, self.key, f"s{self._incarnation}", self.workdir, self.ttl,
                                  ignore_term=spec["ignore_term"], wrap=wrap)
        else:
            p = CandidateProcess(agent.address, self.key, f"p{self._incarnation}", self.workdir, self.ttl,
                                 receivers=spec["receivers"], hold=hold, wrap=wrap, lock_delay=self.lock_delay)
        p.start()
        self.procs.append(p)
        self.agent_of[p.identity] = agent
        self.spec_of[p.identity] = spec
        return p

    def _fault(self, kind: str, t: float, **fields: Any) -> None:
        self.events.append({"ev": "fault", "kind": kind, "t": t, **fields})

    def _note(self, text: str) -> None:
        log.warning("chaos: %s", text)
        self.events.append({"ev": "note", "t": time.monotonic(), "text": text})

    def running(self) -> List[CandidateProcess]:
        return [p for p in self.procs if p.alive and p.identity not in self.stopped]

    # -- what Consul says ---------------------------------------------------

    def _server(self) -> ClusterAgent:
        return next(s for s in self.cluster.servers if s.running)

    def entry(self) -> Optional[Dict[str, Any]]:
        """The key's entry as some running server answers it, or None."""
        for agent in self.cluster.servers:
            if not agent.running:
                continue
            try:
                r = requests.get(f"{agent.url}/v1/kv/{self.key}", timeout=1)
            except requests.RequestException:
                continue
            if r.status_code == 200:
                return r.json()[0]  # type: ignore[no-any-return]
            if r.status_code == 404:
                return None
        return None

    def holder(self) -> Optional[CandidateProcess]:
        """The running process whose identity is in the key with a session."""
        entry = self.entry()
        if entry is None or not entry.get("Session"):
            return None
        identity = base64.b64decode(entry["Value"] or "").decode()
        return next((p for p in self.running() if p.identity == identity), None)

    def leader(self) -> Optional[CandidateProcess]:
        """The process that holds the key, if its work (job or command) runs."""
        p = self.holder()
        return p if p is not None and p.working() else None

    def wait_for_leader(self, after: str, not_: Optional[CandidateProcess] = None) -> Optional[CandidateProcess]:
        """Wait until a process holds the key and runs its work (one other
        than *not_*); past the recovery timeout record a stall."""
        t = time.monotonic()

        def found() -> Optional[CandidateProcess]:
            p = self.leader()
            return p if p is not not_ else None

        try:
            return wait_until(found, self.recovery_timeout, "a candidate leads and runs its work",  # type: ignore
                              every=0.05)
        except AssertionError:
            holder = self.holder()
            self.events.append({"ev": "stall", "t": t, "after": after, "seconds": self.recovery_timeout,
                                "holder": holder.identity if holder else None})
            log.warning("chaos: no holder running its work %gs after %s (holder %s)", self.recovery_timeout,
                        after, holder)
            self.recovery_timeout = RECOVERY_TIMEOUT_AFTER_STALL
            return None

    def servers_healthy(self) -> bool:
        """Autopilot's view: every server is alive, a voter, and caught up
        with the Raft leader's log."""
        for agent in self.cluster.servers:
            if not agent.running:
                continue
            try:
                r = requests.get(f"{agent.url}/v1/operator/autopilot/health", timeout=1)
            except requests.RequestException:
                continue
            if r.status_code in (200, 429):
                body = r.json()
                return bool(body.get("Healthy")) and len(body.get("Servers") or []) == len(self.cluster.servers)
        return False

    def wait_for_servers(self, after: str, timeout: float = 60.0) -> None:
        """Let the servers recover before the next fault: a server still
        catching up with the log after a partition, plus the Raft leader
        killed next, is two servers of three down (no quorum), a fault
        beyond what the cluster is built to survive."""
        try:
            wait_until(self.servers_healthy, timeout, "the servers are healthy", every=0.2)
        except AssertionError:
            self._note(f"the servers were not healthy {timeout:g}s after {after}")

    def agents_answer(self) -> bool:
        """Every agent answers over HTTP and knows the Raft leader, and the
        servers are healthy: a candidate can then renew its session."""
        for agent in self.cluster.agents:
            if not agent.running:
                continue
            try:
                r = requests.get(f"{agent.url}/v1/status/leader", timeout=2)
            except requests.RequestException:
                return False
            if r.status_code != 200 or not r.json():
                return False
        return self.servers_healthy()

    def wait_for_agents(self, after: str, timeout: float = 60.0) -> None:
        """Before the final probe: an agent can stay unresponsive for a while
        after a fault (a client agent that rejoined while a server was cut
        off answered nobody for 20 s), and its candidates cannot be healthy
        meanwhile; that is Consul's recovery, not a stuck candidate. Then
        give the candidates a heartbeat period to renew."""
        try:
            wait_until(self.agents_answer, timeout, "every agent answers", every=0.2)
        except AssertionError:
            self._note(f"some agent still did not answer {timeout:g}s after {after}")
        time.sleep(self.ttl)

    def _target(self) -> CandidateProcess:
        leader = self.wait_for_leader("the last fault")
        return leader or self.rng.choice(self.running())

    def steer(self, want: Callable[[CandidateProcess], bool], attempts: int = 4) -> Optional[CandidateProcess]:
        """Make a process for which *want* is true the leader: SIGSTOP the
        other followers for a moment, resign (or, for a supervisor, destroy
        the session of) whoever leads, recorded as a fault, and let the
        chosen one win. None if that did not work in *attempts*."""
        for _ in range(attempts):
            p = self.wait_for_leader("steering")
            if p is None:
                return None
            if want(p):
                return p
            wanted = [q for q in self.running() if want(q)]
            if not wanted:
                return None
            target = self.rng.choice(wanted)
            others = [q for q in self.running() if q is not target and q is not p]
            self.events.append({"ev": "steer", "t": time.monotonic(), "to": target.identity,
                                "paused": [q.identity for q in others]})
            for q in others:
                q.signal(signal.SIGSTOP)
            try:
                if isinstance(p, SupervisorProcess):
                    self.destroy_session(steer=True)
                else:
                    self._fault("resign", p.signal(signal.SIGUSR1), target=p.identity, steer=True)
                try:
                    wait_until(lambda target=target: self.leader() is target, 3 * self.ttl + 5, "the chosen one leads",
                               every=0.02)
                except AssertionError:
                    pass
            finally:
                for q in others:
                    q.signal(signal.SIGCONT)
        return None

    # -- the faults ---------------------------------------------------------

    def candidate_kill(self) -> None:
        p = self._target()
        t = p.kill()
        self._fault("candidate SIGKILL", t, target=p.identity)
        self.stopped[p.identity] = p.stop()
        self._spawn(self.agent_of[p.identity], self.spec_of[p.identity])

    def candidate_pause(self) -> None:
        p = self._target()
        # Longer than the check's TTL plus the lock-delay: another takes over
        # while it sleeps, and it must know on waking that it lost.
        pause = self.rng.uniform(self.ttl + self.lock_delay + 0.5, self.ttl + self.lock_delay + 3)
        t = p.signal(signal.SIGSTOP)
        # The bound is when every thread is seen stopped: a heartbeat round
        # may start (and succeed) between the signal and then.
        frozen = p.wait_stopped()
        self._fault("candidate SIGSTOP", t, target=p.identity, lease_bound=frozen, seconds=pause, frozen_pid=p.pid)
        time.sleep(pause)
        p.signal(signal.SIGCONT)

    def resign(self) -> None:
        p = self._target()
        if isinstance(p, SupervisorProcess):
            p = self.steer(lambda q: not isinstance(q, SupervisorProcess)) or p
        if isinstance(p, SupervisorProcess):
            return  # it cannot resign; the steering applied faults enough
        self._fault("resign", p.signal(signal.SIGUSR1), target=p.identity)

    def destroy_session(self, steer: bool = False) -> None:
        p = self._target()
        entry = self.entry()
        if entry is None or not entry.get("Session"):
            return
        holder = base64.b64decode(entry["Value"] or "").decode()
        t = time.monotonic()
        requests.put(f"{self._server().url}/v1/session/destroy/{entry['Session']}", timeout=5)
        # Once the destroy has answered, no renew of that session succeeds.
        self._fault("session destroyed", t, target=holder if holder else p.identity, lease_bound=time.monotonic(),
                    steer=steer)

    def delete_key(self) -> None:
        p = self._target()
        t = time.monotonic()
        requests.delete(f"{self._server().url}/v1/kv/{self.key}", timeout=5)
        self._fault("key deleted", t, target=p.identity)

    def delete_key_fresh_candidate(self) -> None:
        """An operator deletes the key and a candidate that never saw a
        holder starts right then (a deploy). Half the time the old leader is
        paused across the deletion for less than its lease (a GC pause), so
        that it wakes still believing it leads."""
        # A plain candidate process makes way for the fresh one, so the
        # number of candidates stays the same.
        plain = [q for q in self.running() if self.spec_of[q.identity] == {"kind": "candidate", "receivers": "none"}]
        leader = self.wait_for_leader("the last fault")
        retire = [q for q in plain if q is not leader]
        agent = self.rng.choice(self.cluster.clients)
        if retire:
            old = self.rng.choice(retire)
            agent = self.agent_of[old.identity]
            # The retired one answers a final probe like those stopped at
            # the end, so its agent gets the same time to recover first.
            self.wait_for_agents("a fault, before a candidate is retired")
            self.stopped[old.identity] = old.stop()
        fresh = self._spawn(agent, {"kind": "candidate", "receivers": "none"}, hold=True)
        wait_until(lambda: fresh.seen("ready") or not fresh.alive, 30, "the fresh candidate is ready")
        leader = self._target()
        pause = self.rng.uniform(0.3, 0.7) * self.lease if self.rng.random() < 0.5 else 0.0
        if pause:
            leader.signal(signal.SIGSTOP)
        t = time.monotonic()
        requests.delete(f"{self._server().url}/v1/kv/{self.key}", timeout=5)
        fresh.go()
        self._fault("key deleted, fresh candidate", t, target=leader.identity, fresh=fresh.identity,
                    paused=pause, **({"frozen_pid": leader.pid} if pause else {}))
        if pause:
            time.sleep(pause)
            leader.signal(signal.SIGCONT)

    def kill_raft_leader(self) -> None:
        t = time.monotonic()
        old = self.cluster.kill_leader()
        self._fault("raft leader killed", t, target=old.name)
        try:
            self.cluster.wait_for_leader(60, not_=old)
        except RuntimeError:
            self._note("the two servers left elected no Raft leader in 60 s")
        old.restart(60)

    def restart_client(self, kill: bool) -> None:
        p = self._target()
        agent = self.agent_of[p.identity]
        t = time.monotonic()
        agent.restart(60, kill=kill)
        self._fault("client agent SIGKILL" if kill else "client agent restart", t, target=p.identity,
                    agent=agent.name)

    def pause_agent(self) -> None:
        p = self._target()
        # Half the time the leader's client agent, else a server (maybe the
        # Raft leader).
        agent = self.agent_of[p.identity] if self.rng.random() < 0.5 else self.rng.choice(self.cluster.servers)
        pause = self.rng.uniform(2.0, 6.0)
        t = time.monotonic()
        agent.pause()
        self._fault("agent SIGSTOP", t, target=p.identity, agent=agent.name, seconds=pause)
        time.sleep(pause)
        agent.resume()

    def lapse_lease(self) -> None:
        """The leader's client agent pauses a little longer than the lease
        but shorter than the check's TTL plus the lock-delay: the lease lapses
        while the session may survive, and heartbeats succeed again after."""
        p = self._target()
        agent = self.agent_of[p.identity]
        pause = self.lease + 0.3
        t = time.monotonic()
        agent.pause()
        # No heartbeat round that starts from now on succeeds until resume
        # (one that started before pause() returned may have).
        self._fault("agent SIGSTOP, lease lapses", t, target=p.identity, agent=agent.name, seconds=pause,
                    lease_bound=time.monotonic())
        time.sleep(pause)
        agent.resume()

    def supervisor_pause(self) -> None:
        """SIGSTOP the leading supervisor, not its command, for longer than a
        failover takes: its lease must still end its command."""
        p = self.steer(lambda q: isinstance(q, SupervisorProcess) and not q.ignore_term) or \
            self.steer(lambda q: isinstance(q, SupervisorProcess))
        leading = p is not None
        if p is None:
            p = self.rng.choice([q for q in self.running() if isinstance(q, SupervisorProcess)])
        pause = self.rng.uniform(4.0, 7.0)
        t = p.signal(signal.SIGSTOP)
        self._fault("supervisor SIGSTOP", t, target=p.identity, seconds=pause, leading=leading)
        time.sleep(pause)
        p.signal(signal.SIGCONT)

    def depose_ignoring_command(self) -> None:
        """The supervisor whose command ignores SIGTERM leads, and its
        session is destroyed (an operator, a node marked failed): the command
        must be dead before anyone else's work begins."""
        p = self.steer(lambda q: isinstance(q, SupervisorProcess) and q.ignore_term)
        entry = self.entry()
        if p is None or entry is None or not entry.get("Session"):
            self._note("command ignores SIGTERM: its supervisor could not be made the leader")
            self._fault("command ignores SIGTERM", time.monotonic(), target=None, leading=False)
            return
        t = time.monotonic()
        requests.put(f"{self._server().url}/v1/session/destroy/{entry['Session']}", timeout=5)
        self._fault("command ignores SIGTERM", t, target=p.identity, leading=True)

    def misbehaving_receivers(self, mode: str) -> None:
        """The candidate whose receivers sleep or raise on every signal
        leads; its agent pauses for a moment (less than the lease: a failed
        heartbeat, an ``election_error``), then it resigns (``deposed``,
        ``leader_changed``)."""
        kind = f"{mode} receivers"
        p = self.steer(lambda q: self.spec_of[q.identity].get("receivers") == mode)
        leading = p is not None
        if p is None:
            # Still disturb it as a follower: its election_error receivers run.
            self._note(f"{kind}: that candidate could not be made the leader")
            p = next(q for q in self.running() if self.spec_of[q.identity].get("receivers") == mode)
        agent = self.agent_of[p.identity]
        t = time.monotonic()
        agent.pause()
        self._fault(kind, t, target=p.identity, agent=agent.name, leading=leading)
        time.sleep(self.lease / 2)
        agent.resume()
        time.sleep(self.rng.uniform(0.5, 2.0))
        if self.holder() is p:
            p.signal(signal.SIGUSR1)

    def partition_client_host(self) -> None:
        """The leader's host (its client agent and the candidates on it) is
        cut off from the servers, then healed."""
        p = self._target()
        agent = self.agent_of[p.identity]
        seconds = self.rng.uniform(12.0, 16.0)
        t = time.monotonic()
        self.cluster.partition(agent)
        # The candidates still reach their agent, but no renew reaches a
        # server from now on; one that started while the cut was being made
        # may have (a lease 1.7 ms past a bound taken before the cut).
        self._fault("client host partitioned", t, target=p.identity, agent=agent.name, seconds=seconds,
                    lease_bound=time.monotonic())
        time.sleep(seconds)
        self.cluster.heal()

    def partition_server(self) -> None:
        """One server (half the time the Raft leader) is cut off from the
        rest, then healed."""
        p = self._target()
        leader = self.cluster.leader()
        server = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(self.cluster.servers)
        seconds = self.rng.uniform(5.0, 9.0)
        t = time.monotonic()
        self.cluster.partition(server)
        self._fault("server minority partitioned", t, target=p.identity, agent=server.name, seconds=seconds,
                    raft_leader=server is leader)
        time.sleep(seconds)
        self.cluster.heal()


def records_path(name: str) -> str:
    """Where a run's raw records go: the repository root (git-ignored)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), name)
