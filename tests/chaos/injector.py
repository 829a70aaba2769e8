"""A seeded, time-bounded fault injector over a ConsulCluster and candidate
processes. One fault at a time: apply it, undo it (SIGCONT, restart), wait
until some candidate leads again, pause a little, pick the next. Every fault
is recorded (``ev: fault``) with the monotonic time it was applied, so that
the checker can tell what each fault did to the election."""

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

from chaos.procs import CandidateProcess, read_records, wait_until
from consul_leader.testing import ClusterAgent, ConsulCluster

log = logging.getLogger("consul_leader.chaos")

#: Longest wait for a leader after a fault before the run gives up on it
#: and goes on (the checker then counts the time as unavailable).
RECOVERY_TIMEOUT = 60.0


class Chaos:
    """Run *n* candidate processes on *key*, spread over the cluster's client
    agents, and inject faults for *duration* seconds.

    :param cluster: a started :class:`ConsulCluster` with client agents.
    :param key: the election's key.
    :param workdir: where the processes write their records.
    :param seed: the random seed; the same seed picks the same faults.
    :param n: number of candidate processes.
    :param ttl: the candidates' ``ttl``.
    """

    def __init__(self, cluster: ConsulCluster, key: str, workdir: str, seed: int, n: int = 5,
                 ttl: float = 1.0) -> None:
        assert cluster.clients, "candidates talk to client agents"
        self.cluster, self.key, self.workdir, self.ttl = cluster, key, workdir, ttl
        self.rng = random.Random(seed)
        self.seed = seed
        self.procs: List[CandidateProcess] = []
        self.agent_of: Dict[str, ClusterAgent] = {}
        self.events: List[Dict[str, Any]] = []
        self._incarnation = 0
        self.lease = 5 / 6 * ttl
        for i in range(n):
            self._spawn(cluster.clients[i % len(cluster.clients)])
        self.kinds: Dict[str, Callable[[], None]] = {
            "candidate SIGKILL": self.candidate_kill,
            "candidate SIGSTOP": self.candidate_pause,
            "resign": self.resign,
            "session destroyed": self.destroy_session,
            "key deleted": self.delete_key,
            "raft leader killed": self.kill_raft_leader,
            "client agent restart": lambda: self.restart_client(kill=False),
            "client agent SIGKILL": lambda: self.restart_client(kill=True),
            "agent SIGSTOP": self.pause_agent,
        }

    # -- running ------------------------------------------------------------

    def run(self, duration: float) -> List[Dict[str, Any]]:
        """Inject faults for *duration* seconds, and at least until every
        kind was applied once (first each kind in a seeded order, then kinds
        at random); stop every process and return all records: the
        processes' and the injector's."""
        begin = time.monotonic()
        try:
            self.wait_for_leader()
            order = list(self.kinds)
            self.rng.shuffle(order)
            while order or time.monotonic() - begin < duration:
                kind = order.pop() if order else self.rng.choice(list(self.kinds))
                log.info("chaos: %s", kind)
                self.kinds[kind]()
                self.wait_for_leader()
                time.sleep(self.rng.uniform(0.5, 2.0))
        finally:
            end = time.monotonic()
            for p in self.procs:
                p.stop()
        run = {"ev": "run", "begin": begin, "end": end, "seed": self.seed, "ttl": self.ttl, "n": len(self.procs)}
        return [run] + self.events + [r for p in self.procs for r in read_records(p.out)]

    def write(self, records: List[Dict[str, Any]], path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")

    def _spawn(self, agent: ClusterAgent) -> CandidateProcess:
        self._incarnation += 1
        p = CandidateProcess(agent.address, self.key, f"p{self._incarnation}", self.workdir, self.ttl).start()
        self.procs.append(p)
        self.agent_of[p.identity] = agent
        return p

    def _fault(self, kind: str, t: float, **fields: Any) -> None:
        self.events.append({"ev": "fault", "kind": kind, "t": t, **fields})

    # -- what Consul says ---------------------------------------------------

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

    def leader(self) -> Optional[CandidateProcess]:
        """The process that holds the key, if it also believes it leads."""
        entry = self.entry()
        if entry is None or not entry.get("Session"):
            return None
        identity = base64.b64decode(entry["Value"] or "").decode()
        return next((p for p in self.procs if p.identity == identity and p.proc and p.proc.poll() is None
                     and p.leading() is not None), None)

    def wait_for_leader(self) -> Optional[CandidateProcess]:
        try:
            return wait_until(self.leader, RECOVERY_TIMEOUT, "a candidate process leads", every=0.1)
        except AssertionError:
            log.warning("chaos: no leader %gs after the last fault", RECOVERY_TIMEOUT)
            return None

    def _target(self) -> CandidateProcess:
        leader = self.wait_for_leader()
        return leader or self.rng.choice([p for p in self.procs if p.proc and p.proc.poll() is None])

    # -- the faults ---------------------------------------------------------

    def candidate_kill(self) -> None:
        p = self._target()
        t = p.kill()
        self._fault("candidate SIGKILL", t, target=p.identity)
        self._spawn(self.agent_of[p.identity])

    def candidate_pause(self) -> None:
        p = self._target()
        # Longer than the check's TTL plus the lock-delay: another takes over
        # while it sleeps, and it must know on waking that it lost.
        pause = self.rng.uniform(2 * self.ttl + 0.5, 2 * self.ttl + 3)
        t = p.signal(signal.SIGSTOP)
        self._fault("candidate SIGSTOP", t, target=p.identity, lease_bound=t, seconds=pause)
        time.sleep(pause)
        p.signal(signal.SIGCONT)

    def resign(self) -> None:
        p = self._target()
        self._fault("resign", p.signal(signal.SIGUSR1), target=p.identity)

    def destroy_session(self) -> None:
        p = self._target()
        entry = self.entry()
        if entry is None or not entry.get("Session"):
            return
        holder = base64.b64decode(entry["Value"] or "").decode()
        t = time.monotonic()
        server = next(s for s in self.cluster.servers if s.running)
        requests.put(f"{server.url}/v1/session/destroy/{entry['Session']}", timeout=5)
        # Once the destroy has answered, no renew of that session succeeds.
        self._fault("session destroyed", t, target=holder if holder else p.identity, lease_bound=time.monotonic())

    def delete_key(self) -> None:
        p = self._target()
        t = time.monotonic()
        server = next(s for s in self.cluster.servers if s.running)
        requests.delete(f"{server.url}/v1/kv/{self.key}", timeout=5)
        self._fault("key deleted", t, target=p.identity)

    def kill_raft_leader(self) -> None:
        t = time.monotonic()
        old = self.cluster.kill_leader()
        self._fault("raft leader killed", t, target=old.name)
        self.cluster.wait_for_leader(60, not_=old)
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


def records_path(name: str) -> str:
    """Where a run's raw records go: the repository root (git-ignored)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), name)
