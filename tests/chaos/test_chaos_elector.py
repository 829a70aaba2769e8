"""Chaos over many keys in one process: three processes, each an Elector
for the same 100 keys (half of them running a job, the other half work that
their elected and deposed receivers start and stop), under seeded random faults:
SIGKILL and restart, SIGSTOP past the lease, the session destroyed, keys
resigned, a graceful restart, a key deleted. Every key is one election for
the checker (``chaos.checker.check``, as it is): no two processes believed
they led a key at once, no two jobs of a key ran at once, tokens only grow
(flag and work), no term outlived its lease after a fault that stops its
heartbeat, no process was elected before the last leader's deposed
receivers ran (``chaos.checker.late_deposed``), every process healthy and
consistent at the end.

``CHAOS_ELECTOR_DURATION`` (seconds, default 45) and ``CHAOS_SEED`` set the run.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import statistics
import tempfile
import time
import uuid
from typing import Any, Dict, List

import requests

from chaos.checker import check, explain, late_deposed
from chaos.procs import CandidateProcess
from consul_leader.testing import ConsulAgent

from conftest import PYTHON

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = 100
TTL = 1.0


def by_key(records: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """Each key's records plus the records of the whole run (``run``,
    ``fault``, ``stopped``, ...): one election each, for the checker."""
    shared = [r for r in records if "key" not in r and r.get("ev") not in ("final", "exit")]
    keys: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if "key" in r:
            keys.setdefault(r["key"], []).append(r)
    exits = [r for r in records if r.get("ev") == "exit"]
    return {key: shared + exits + own for key, own in keys.items()}


class Proc(CandidateProcess):
    """An ``elector_proc.py`` child: an Elector for the run's keys."""

    kind = "elector"

    def __init__(self, agent: ConsulAgent, prefix: str, identity: str, workdir: str) -> None:
        super().__init__(agent.address, prefix, identity, workdir, ttl=TTL)
        self.start()

    def argv(self) -> List[str]:
        return [PYTHON, os.path.join(HERE, "elector_proc.py"), "--address", self.address, "--prefix", self.key,
                "--keys", str(KEYS), "--identity", self.identity, "--out", self.out, "--ttl", str(self.ttl)]

    def stop(self, timeout: float = 60.0) -> Dict[str, Any]:
        """As a candidate process's, with longer to release a hundred keys."""
        return super().stop(timeout)


class ElectorChaos:
    def __init__(self, agent: ConsulAgent, workdir: str, seed: int) -> None:
        self.agent, self.workdir, self.rng = agent, workdir, random.Random(seed)
        self.prefix = f"chaos-elector/{uuid.uuid4().hex[:8]}"
        self.serial = 0
        self.procs: List[Proc] = []
        self.events: List[Dict[str, Any]] = []
        self.stopped: Dict[str, Dict[str, Any]] = {}

    def spawn(self) -> Proc:
        self.serial += 1
        p = Proc(self.agent, self.prefix, f"e{self.serial}", self.workdir)
        self.procs.append(p)
        return p

    def running(self) -> List[Proc]:
        return [p for p in self.procs if p.alive and p.identity not in self.stopped]

    def fault(self, kind: str, t: float, **fields: Any) -> None:
        self.events.append({"ev": "fault", "kind": kind, "t": t, **fields})

    def sessions_of(self, identity: str) -> List[str]:
        sessions = requests.get(f"{self.agent.url}/v1/session/list", timeout=5).json()
        return [s["ID"] for s in sessions if s["Name"].startswith(f"consul-leader {identity} ")]

    def target(self) -> Proc:
        """Mostly the process that leads the most keys (the faults then
        move many elections at once), sometimes any."""
        running = self.running()
        entries = requests.get(f"{self.agent.url}/v1/kv/{self.prefix}/?recurse", timeout=5).json() or []
        led: Dict[str, int] = {}
        for e in entries:
            if e.get("Session"):
                who = base64.b64decode(e["Value"] or "").decode()
                led[who] = led.get(who, 0) + 1
        if self.rng.random() < 0.7:
            return max(running, key=lambda p: led.get(p.identity, 0))
        return self.rng.choice(running)

    # -- the faults -----------------------------------------------------------

    def sigkill(self) -> None:
        p = self.target()
        p.killed = True
        self.fault("elector SIGKILL", p.signal(signal.SIGKILL), target=p.identity)
        p.proc.wait()
        self.stopped[p.identity] = p.stop()
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.spawn()

    def sigstop(self) -> None:
        p = self.target()
        pause = self.rng.uniform(2 * TTL + 0.5, 2 * TTL + 3)
        t = p.signal(signal.SIGSTOP)
        # A process of a hundred jobs runs on a moment after the signal:
        # its freeze (and the last heartbeat it may have sent) is when every
        # thread is seen stopped.
        frozen = p.wait_stopped()
        self.fault("elector SIGSTOP", frozen, target=p.identity, lease_bound=frozen, seconds=pause,
                   frozen_pid=p.proc.pid, signalled=t)
        time.sleep(pause)
        p.signal(signal.SIGCONT)

    def destroy_session(self) -> None:
        p = self.target()
        t = time.monotonic()
        for sid in self.sessions_of(p.identity):
            requests.put(f"{self.agent.url}/v1/session/destroy/{sid}", timeout=5)
        self.fault("session destroyed", t, target=p.identity, lease_bound=time.monotonic())

    def resign(self) -> None:
        p = self.target()
        self.fault("resign a tenth of the keys", p.signal(signal.SIGUSR1), target=p.identity)

    def restart(self) -> None:
        p = self.target()
        self.fault("elector SIGTERM and restart", time.monotonic(), target=p.identity)
        self.stopped[p.identity] = p.stop()
        self.spawn()

    def delete_key(self) -> None:
        key = f"{self.prefix}/k{self.rng.randrange(KEYS):03d}"
        t = time.monotonic()
        requests.delete(f"{self.agent.url}/v1/kv/{key}", timeout=5)
        self.fault("key deleted", t)

    def run(self, duration: float) -> List[Dict[str, Any]]:
        kinds = [self.sigkill, self.sigstop, self.destroy_session, self.resign, self.restart, self.delete_key]
        self.begin = time.monotonic()
        for _ in range(3):
            self.spawn()
        time.sleep(5.0)  # every key's first holder waits one lock-delay
        order = list(kinds)
        self.rng.shuffle(order)
        try:
            while time.monotonic() - self.begin < duration or order:
                fault = order.pop() if order else self.rng.choice(kinds)
                fault()
                time.sleep(self.rng.uniform(1.0, 3.0))
            time.sleep(3 * TTL + 2)  # the last fault's failover
        finally:
            self.end = time.monotonic()
            for p in self.procs:
                if p.identity not in self.stopped:
                    self.stopped[p.identity] = p.stop()
        return self.records()

    def records(self) -> List[Dict[str, Any]]:
        run = {"ev": "run", "begin": self.begin, "end": getattr(self, "end", time.monotonic())}
        return [run] + self.events + list(self.stopped.values()) + [r for p in self.procs for r in p.records()]


def test_chaos_over_a_hundred_keys_in_one_process() -> None:
    duration = float(os.environ.get("CHAOS_ELECTOR_DURATION", "45"))
    seed = int(os.environ.get("CHAOS_SEED", str(random.randrange(10 ** 6))))
    workdir = tempfile.mkdtemp(prefix="consul-leader-chaos-elector-")
    with ConsulAgent() as agent:
        chaos = ElectorChaos(agent, workdir, seed)
        try:
            records = chaos.run(duration)
        except BaseException:
            print(agent.log_tail(80))
            raise
    path = os.path.join(workdir, "records.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    elections = by_key(records)
    assert len(elections) == KEYS
    last_fault = max(r["t"] for r in records if r.get("ev") == "fault")
    lease = next(r["lease"] for r in records if r.get("ev") == "start")
    problems = []
    timelines: List[str] = []
    failovers: Dict[str, List[float]] = {}
    work_failovers: Dict[str, List[float]] = {}
    for key, own in sorted(elections.items()):
        report = check(own, lease)
        late = late_deposed(own)
        if not report.ok or late:
            problems.append(f"{key}: {report.problems() if not report.ok else ''} {late or ''}")
            if len(timelines) < 3:
                timelines.append(f"{key}:\n{explain(own, report)}")
        elif not any(w.end > last_fault for w in report.work):
            problems.append(f"{key}: no work after the last fault")
        for kind, took in report.failovers.items():
            failovers.setdefault(kind, []).extend(took)
        for kind, took in report.work_failovers.items():
            work_failovers.setdefault(kind, []).extend(took)
    faults = sorted({r["kind"] for r in records if r.get("ev") == "fault"})
    rows = [f"{'fault (keys that failed over)':<34}{'flag: n':>8}{'p50':>7}{'max':>7}"
            f"{'work: n':>9}{'p50':>7}{'max':>7}"]
    for kind in faults:
        cells = ""
        for got in (failovers.get(kind, []), work_failovers.get(kind, [])):
            cells += (f"{len(got):>8}{statistics.median(got):>7.2f}{max(got):>7.2f}" if got
                      else f"{0:>8}{'-':>7}{'-':>7}")
        rows.append(f"{kind:<34}{cells}")
    print(f"\nchaos over {KEYS} keys: seed={seed} duration={duration:g}s records={path}\n" + "\n".join(rows))
    if timelines:
        print("\n".join(timelines))
    assert not problems, "\n".join(problems[:10])
