"""Network partitions against a real cluster: every agent on a host of its
own (:class:`consul_leader.testing.ConsulCluster` with ``hosts=True``), each
candidate a process on its client agent's host.

Cut off with its agent, the leader still talks to the agent, but the agent
no longer reaches the servers: the split brain where a lock that trusts its
agent keeps a second leader running. The candidate must stop believing it
leads before anybody else is elected, whatever the timings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

from consul_leader.testing import ClusterAgent, ConsulCluster

# A candidate in its own process; it records (monotonic time, is_leader())
# every 10 ms. CLOCK_MONOTONIC is one clock for every network namespace.
CHILD = r"""
import signal, sys, time
from consul_leader import Candidate

address, key, identity, path = sys.argv[1:5]
candidate = Candidate(key, address=address, identity=identity).start()
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
with open(path, "a", buffering=1) as out:
    while not stopping:
        out.write(f"{time.monotonic():.6f} {int(candidate.is_leader())}\n")
        time.sleep(0.01)
candidate.stop()
"""

Samples = List[Tuple[float, bool]]


def _install_iproute2() -> None:
    """The ``ip`` command comes from Debian's iproute2 where it is missing."""
    if shutil.which("ip") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "iproute2"], env=env, capture_output=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ConsulCluster]:
    _install_iproute2()
    ok, why = ConsulCluster.hosts_supported()
    if not ok:
        pytest.skip(why)
    with ConsulCluster(servers=3, clients=2, hosts=True) as made:
        yield made


class Child:
    """A candidate process on *agent*'s host, recording its belief."""

    def __init__(self, agent: ClusterAgent, key: str, identity: str, workdir: Path) -> None:
        assert agent.host is not None
        self.path = workdir / f"{identity}.samples"
        self.process = subprocess.Popen(
            agent.host.command([sys.executable, "-c", CHILD, agent.address, key, identity, str(self.path)]),
            stdin=subprocess.DEVNULL, stderr=open(workdir / f"{identity}.log", "wb"))

    def samples(self) -> Samples:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[1] in ("0", "1"):
                out.append((float(parts[0]), parts[1] == "1"))
        return out

    def leads(self, after: float = 0.0) -> bool:
        found = [flag for t, flag in self.samples() if t > after]
        return bool(found) and found[-1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, cluster: ConsulCluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}\n{cluster.log_tails(15)}")
        time.sleep(0.05)


def belief_intervals(samples: Samples) -> List[Tuple[float, float]]:
    """Each True sample holds until the next sample (or ends with the last)."""
    spans = []
    for (t, flag), (t_next, _) in zip(samples, samples[1:] + [(samples[-1][0], False)] if samples else []):
        if flag:
            spans.append((t, t_next))
    return spans


def overlaps(a: Samples, b: Samples) -> List[Tuple[Tuple[float, float], Tuple[float, float]]]:
    return [(x, y) for x in belief_intervals(a) for y in belief_intervals(b) if x[0] < y[1] and y[0] < x[1]]


@pytest.fixture
def children(cluster: ConsulCluster, tmp_path: Path) -> Iterator[List[Child]]:
    made: List[Child] = []
    yield made
    for child in made:
        child.stop()
    cluster.heal()


def test_cut_off_leader_steps_down_before_another_is_elected_and_heal_leaves_one(
        cluster: ConsulCluster, children: List[Child], tmp_path: Path) -> None:
    key = f"test/partition-{uuid.uuid4().hex[:8]}/leader"
    near, far = cluster.clients[0], cluster.clients[1]
    old = Child(near, key, "old", tmp_path)
    children.append(old)
    wait_until(old.leads, 60, "the first candidate leads", cluster)
    new = Child(far, key, "new", tmp_path)
    children.append(new)
    wait_until(lambda: bool(new.samples()), 60, "the second candidate runs", cluster)

    cut = time.monotonic()
    cluster.partition(near)
    wait_until(lambda: new.leads(after=cut), 120, "the candidate on the other host is elected", cluster)
    before = [(t, flag) for t, flag in old.samples() if t > cut]
    assert before and not before[-1][1], "the cut-off candidate still believes it leads"
    last_belief = max((t for t, flag in old.samples() if flag), default=0.0)
    first_new = min(t for t, flag in new.samples() if flag)
    assert last_belief < first_new, "the old leader believed it led after the new one was elected"
    assert old.process.poll() is None, "the cut-off candidate keeps running (as a follower)"

    healed = time.monotonic()
    cluster.heal()
    # Converged: both candidates report after the heal, exactly one leads,
    # and the old one is back in the race (a live session on its own agent).
    wait_until(lambda: len([t for t, _ in old.samples() if t > healed + 5]) > 0
               and len([t for t, _ in new.samples() if t > healed + 5]) > 0, 60, "samples after the heal", cluster)
    assert old.leads(after=healed) != new.leads(after=healed)
    assert overlaps(old.samples(), new.samples()) == []
    wait_until(lambda: bool(cluster.servers[0].get(f"/v1/session/node/{near.name}")), 60,
               "the cut-off candidate has a session again", cluster)


def test_cut_off_raft_leader_the_majority_elects_another_and_elections_go_on(
        cluster: ConsulCluster, children: List[Child], tmp_path: Path) -> None:
    key = f"test/partition-{uuid.uuid4().hex[:8]}/leader"
    first = Child(cluster.clients[0], key, "first", tmp_path)
    children.append(first)
    wait_until(first.leads, 60, "the first candidate leads", cluster)
    second = Child(cluster.clients[1], key, "second", tmp_path)
    children.append(second)
    wait_until(lambda: bool(second.samples()), 60, "the second candidate runs", cluster)

    old = cluster.wait_for_leader()
    cluster.partition(old)
    new = cluster.wait_for_leader(60, not_=old)
    assert new is not old
    # An election during the partition: the leader steps down (SIGTERM:
    # release), the other candidate takes over through the majority.
    handed = time.monotonic()
    first.stop()
    wait_until(lambda: second.leads(after=handed), 60, "the second candidate is elected", cluster)
    assert overlaps(first.samples(), second.samples()) == []
    # Gossip's failure detection (probe, then suspicion) is slower than a Raft
    # election, so the majority may still list the cut-off server as alive
    # when the handover is done; it must stop doing so.
    wait_until(lambda: {m["Name"]: m["Status"] for m in new.get("/v1/agent/members") or []}.get(old.name) != 1,
               60, "the majority sees the cut-off server as not alive", cluster)

    cluster.heal()
    wait_until(lambda: sorted(old.get("/v1/status/peers") or []) == sorted(f"{s.ip}:{s.server_port}"
                                                                            for s in cluster.servers)
               and bool(old.get("/v1/status/leader")), 60, "the cut-off server is back in the Raft cluster",
               cluster)
    # The returning server may force a Raft election (its term went up while
    # it was alone), long enough for the leader's lease to run out: it then
    # steps down and is elected again. What must hold: it leads in the end.
    healed = time.monotonic()
    wait_until(lambda: second.leads(after=healed), 60, "the remaining candidate leads after the heal", cluster)
    assert overlaps(first.samples(), second.samples()) == []
