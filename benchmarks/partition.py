"""The leader's host cut off from the servers, side by side with ``consul lock``.

A cluster of hosts (:class:`consul_leader.testing.ConsulCluster` with
``hosts=True``: three servers and two client agents, each in its own network
namespace). For each contender, the process that leads runs on the first
client's host and a second one waits on the second client's host; then the
first host is cut off (:meth:`~consul_leader.testing.ConsulCluster.partition`):
its processes still reach their agent, the agent no longer reaches the servers.

Contenders, all with their defaults, on their own keys, cut off together:

``consul-leader`` (library)
    a :class:`~consul_leader.Candidate` in a process that records
    ``is_leader()`` every 10 ms;
``consul-leader run``
    the CLI supervising a command;
``consul lock``
    from the cluster's own Consul binary, supervising the same command.

The command records its own start and then an "alive" time every 5 ms, so
"stopped" is when it last lived (it was killed), not when a supervisor says
so. Times are ``time.monotonic()``, one clock for every process and every
network namespace. Measured from the cut: when the old leader stops (flag
False / command gone), when the new one starts (flag True / command started),
and how long both ran at once.

``python -m benchmarks.partition`` runs this part alone (needs root and
``ip netns``); ``python -m benchmarks.run`` runs it with the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

from consul_leader.testing import ClusterAgent, ConsulCluster

from .contenders import CLI, LIBRARY, LOCK, ROOT, _env

CONTENDERS = (LIBRARY, CLI, LOCK)
#: How long after the cut to wait for both events (``consul lock`` kills its
#: child after about 40 s).
WINDOW = 120.0


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the processes on the hosts ---------------------------------------------


def child_main(out: str) -> None:
    """The supervised command: its start, then alive every 5 ms until killed."""
    with open(out, "a", buffering=1) as fh:
        fh.write(f"start {time.monotonic():.6f}\n")
        while True:
            fh.write(f"alive {time.monotonic():.6f}\n")
            time.sleep(0.005)


def candidate_main(address: str, key: str, identity: str, out: str) -> None:
    """A library candidate with defaults, recording its belief every 10 ms."""
    from consul_leader import Candidate

    candidate = Candidate(key, address=address, identity=identity).start()
    stopping: List[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with open(out, "a", buffering=1) as fh:
        while not stopping:
            fh.write(f"{'leader' if candidate.is_leader() else 'follower'} {time.monotonic():.6f}\n")
            time.sleep(0.01)
    candidate.stop()


class Contender:
    """One process of a contender on *agent*'s host, and what it recorded."""

    def __init__(self, kind: str, agent: ClusterAgent, key: str, role: str, workdir: str, consul: str) -> None:
        assert agent.host is not None
        self.kind, self.role = kind, role
        slug = kind.replace(" ", "-")
        self.out = os.path.join(workdir, f"{slug}-{role}.rec")
        child = [sys.executable, "-m", "benchmarks.partition", "child", self.out]
        if kind == LIBRARY:
            argv = [sys.executable, "-m", "benchmarks.partition", "candidate", agent.address, key, role, self.out]
        elif kind == CLI:
            argv = [sys.executable, "-m", "consul_leader", "run", "--address", agent.address, "--identity", role,
                    key, "--", *child]
        else:
            argv = [consul, "lock", f"-http-addr={agent.address}", key, " ".join(child)]
        log = open(os.path.join(workdir, f"{slug}-{role}.log"), "wb")
        self.process = subprocess.Popen(agent.host.command(argv), cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=log, start_new_session=True)
        log.close()

    def records(self) -> List[Tuple[str, float]]:
        try:
            with open(self.out, encoding="ascii") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2:
                try:
                    found.append((parts[0], float(parts[1])))
                except ValueError:
                    pass
        return found

    def leading_spans(self) -> List[Tuple[float, float]]:
        """When it ran the work (or believed it led), as (start, end) spans."""
        spans: List[Tuple[float, float]] = []
        start: Optional[float] = None
        last = 0.0
        for what, t in self.records():
            if what == "start" and start is not None:  # a later term's command
                spans.append((start, last))
                start = None
            if what in ("start", "leader"):
                if start is None:
                    start = t
            elif what == "follower" and start is not None:
                spans.append((start, t))
                start = None
            last = t
        if start is not None:
            spans.append((start, last))
        return spans

    def leads(self) -> bool:
        """The candidate's last word was "leader", or the command lived
        within the last 0.25 s (it writes every 5 ms until killed)."""
        records = self.records()
        if not records:
            return False
        if self.kind == LIBRARY:
            return records[-1][0] == "leader"
        return time.monotonic() - records[-1][1] < 0.25

    def started(self) -> bool:
        return bool(self.records()) or self.kind != LIBRARY and self.process.poll() is None

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in _pids_writing(self.out):
            os.kill(pid, signal.SIGKILL)


def _pids_writing(path: str) -> List[int]:
    """A command whose supervisor was stopped may outlive it (``consul lock``
    leaves its child): find it by the file it records to."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if path.encode() in fh.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return [p for p in pids if p != os.getpid()]


# -- one cut ------------------------------------------------------------------


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"partition benchmark: not within {timeout}s: {what}")
        time.sleep(0.05)


def one_cut(cluster: ConsulCluster, workdir: str, window: float = WINDOW) -> Dict[str, Dict[str, Any]]:
    """Start every contender (old on the first client, new on the second),
    cut the first client's host off, and measure. Returns, per contender,
    seconds from the cut: ``old_stop``, ``new_start``, ``overlap``, and the
    spans of both for the timeline (None where it did not happen in *window*)."""
    near, far = cluster.clients[0], cluster.clients[1]
    tag = uuid.uuid4().hex[:8]
    consul = cluster.servers[0].binary
    olds = {k: Contender(k, near, f"bench/partition-{tag}/{k.replace(' ', '-')}", "old", workdir, consul)
            for k in CONTENDERS}
    news: Dict[str, Contender] = {}
    try:
        for kind, old in olds.items():
            # consul lock gives up when the agent cannot make a session yet.
            _wait(lambda old=old: old.leads() or old.process.poll() is not None, 90, f"{kind} leads on {near.name}")
            if old.process.poll() is not None:
                raise RuntimeError(f"{kind} on {near.name} exited with {old.process.returncode}")
        for kind in CONTENDERS:
            news[kind] = Contender(kind, far, f"bench/partition-{tag}/{kind.replace(' ', '-')}", "new", workdir,
                                   consul)
        for kind, new in news.items():
            _wait(new.started, 30, f"{kind} waits on {far.name}")
        time.sleep(3.0)  # every waiter settles into its blocking query, sessions renewed
        cut = time.monotonic()
        cluster.partition(near)
        deadline = cut + window
        while time.monotonic() < deadline:
            if all(not olds[k].leads() and news[k].leading_spans() for k in CONTENDERS):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        results: Dict[str, Dict[str, Any]] = {}
        end = time.monotonic()
        for kind in CONTENDERS:
            old_spans, new_spans = olds[kind].leading_spans(), news[kind].leading_spans()
            stopped = not olds[kind].leads()
            old_stop = old_spans[-1][1] - cut if old_spans and stopped else None
            new_start = new_spans[0][0] - cut if new_spans else None
            old_end = old_spans[-1][1] if old_spans else cut
            overlap = max(0.0, old_end - new_spans[0][0]) if new_spans else 0.0
            results[kind] = {
                "old_stop": old_stop, "new_start": new_start, "overlap": overlap,
                "old_spans": [(a - cut, b - cut) for a, b in old_spans],
                "new_spans": [(a - cut, b - cut) for a, b in new_spans],
                "window": end - cut,
            }
            say(f"partition {kind}: old stops {_s(old_stop)}, new starts {_s(new_start)}, "
                f"both running {overlap:.2f}s")
        return results
    finally:
        for contender in list(olds.values()) + list(news.values()):
            contender.stop()
        cluster.heal()


def _s(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:.2f}s"


def measure(runs: int, workdir: str) -> Dict[str, List[Dict[str, Any]]]:
    """*runs* cuts on one cluster of hosts; per contender, one result per cut.

    :raises RuntimeError: hosts cannot be made here (the reason says why)."""
    ok, why = ConsulCluster.hosts_supported()
    if not ok:
        raise RuntimeError(f"partition benchmark needs network namespaces: {why}")
    samples: Dict[str, List[Dict[str, Any]]] = {k: [] for k in CONTENDERS}
    # Consul's own defaults (raft_multiplier 5 included), as users run it.
    with ConsulCluster(servers=3, clients=2, hosts=True, raft_multiplier=5) as cluster:
        attempts = 0
        while len(samples[LIBRARY]) < runs and attempts < runs + 2:
            attempts += 1
            _wait(lambda: _healthy(cluster), 120, "every agent alive again after the heal")
            rundir = os.path.join(workdir, f"partition-{attempts}")
            os.makedirs(rundir)
            try:
                measured = one_cut(cluster, rundir)
            except RuntimeError as exc:
                say(f"partition run {attempts} failed, tried again: {exc}")
                continue
            for kind, result in measured.items():
                samples[kind].append(result)
    return samples


def _healthy(cluster: ConsulCluster, steady: float = 3.0) -> bool:
    """For *steady* seconds on end, every agent has a passing serfHealth and
    every client agent knows all servers alive and reaches the Raft leader:
    until then a session on the healed node cannot be made (``consul lock``
    then gives up with "No known Consul servers")."""
    deadline = time.monotonic() + steady
    while time.monotonic() < deadline:
        checks = cluster.servers[0].get("/v1/health/state/any") or []
        serf = {c["Node"]: c["Status"] for c in checks if c.get("CheckID") == "serfHealth"}
        if not all(serf.get(agent.name) == "passing" for agent in cluster.agents):
            return False
        for client in cluster.clients:
            members = {m["Name"]: m["Status"] for m in client.get("/v1/agent/members") or []}
            if any(members.get(s.name) != 1 for s in cluster.servers) or not client.get("/v1/status/leader"):
                return False
        time.sleep(0.2)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["child"]:
        child_main(args[1])
        return 0
    if args[:1] == ["candidate"]:
        candidate_main(*args[1:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="cuts to make (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the records and logs of every process")
    opts = parser.parse_args(args)
    workdir = tempfile.mkdtemp(prefix="consul-leader-bench-")
    try:
        print(json.dumps(measure(opts.runs, workdir), indent=1))
    finally:
        if opts.keep:
            say(f"records and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
