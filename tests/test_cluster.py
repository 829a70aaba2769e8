"""ConsulCluster, the public multi-agent harness: it starts a real cluster,
its fault helpers do what they say, and it leaves no process behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from consul_leader.testing import ClusterAgent, ConsulCluster


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_cluster_survives_raft_leader_and_client_faults_and_stops_clean() -> None:
    with ConsulCluster(clients=1) as cluster:
        peers = cluster.servers[0].get("/v1/status/peers")
        assert sorted(peers) == sorted(f"127.0.0.1:{s.server_port}" for s in cluster.servers)
        members = cluster.clients[0].get("/v1/agent/members")
        assert {m["Name"] for m in members} == {"s1", "s2", "s3", "c1"}

        old = cluster.kill_leader()
        assert not old.running
        new = cluster.wait_for_leader(not_=old)
        assert new is not old and new.server
        old.restart()  # rejoins from its data dir
        assert len(old.get("/v1/status/peers") or []) == 3

        client = cluster.clients[0]
        client.pause()
        assert client.paused
        assert client.get("/v1/status/leader", timeout=0.5) is None
        client.resume()
        assert not client.paused
        client.restart(kill=True)
        assert client.get("/v1/status/leader")
        client.restart()
        assert "Consul agent running" in client.log_tail(400)
        pids = [a.process.pid for a in cluster.agents if a.process is not None]
    assert not any(alive(pid) for pid in pids)


def test_partition_needs_hosts() -> None:
    cluster = ConsulCluster(servers=1)
    assert all(agent.host is None for agent in cluster.agents) and cluster.hosts == []
    with pytest.raises(RuntimeError, match="hosts=True"):
        cluster.partition(cluster.servers[0])
    cluster.heal()  # nothing to undo
    cluster.close()


def _reaches(source: ClusterAgent, target: ClusterAgent) -> bool:
    """Whether a process on *source*'s host opens a TCP connection to
    *target*'s HTTP port (the network, not how fast the agent answers)."""
    assert source.host is not None
    probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5).close()"
    done = subprocess.run(source.host.command([sys.executable, "-c", probe, target.ip, str(target.http_port)]),
                          capture_output=True)
    return done.returncode == 0


def _root_reaches(target: ClusterAgent) -> bool:
    try:
        socket.create_connection((target.ip, target.http_port), timeout=1.5).close()
    except OSError:
        return False
    return True


def _links() -> str:
    return subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout


def test_hosts_partition_and_heal_and_nothing_left_behind() -> None:
    ok, why = ConsulCluster.hosts_supported()
    if not ok:
        pytest.skip(why)
    with ConsulCluster(servers=3, clients=2, hosts=True) as cluster:
        s1, s2, s3 = cluster.servers
        c1, c2 = cluster.clients
        hosts = cluster.hosts
        assert len({h.name for h in hosts}) == len({h.ip for h in hosts}) == 5
        assert all(a.address == f"{a.host.ip}:8500" for a in cluster.agents if a.host is not None)
        members = {m["Name"]: m["Addr"] for m in c1.get("/v1/agent/members")}
        assert members == {a.name: a.ip for a in cluster.agents}
        assert c1.host is not None
        inside = subprocess.run(c1.host.command([sys.executable, "-c", "import socket; print(socket.gethostname())"]),
                                capture_output=True, text=True)
        assert inside.returncode == 0

        cluster.partition(c1, s1)  # one group: they reach each other, not the rest
        assert _reaches(c1, s1) and _reaches(s1, c1)
        assert not _reaches(c1, s2) and not _reaches(s2, c1) and not _reaches(s1, c2)
        assert _reaches(c2, s2)
        assert all(_root_reaches(a) for a in cluster.agents), "the test process reaches every side"
        cluster.partition(c2)  # a second, separate group
        assert not _reaches(c2, s2) and not _reaches(c2, c1)
        assert _reaches(s2, s3)

        c2.pause()  # an agent that cannot answer the rejoin does not hold heal() up
        cluster.heal()
        c2.resume()
        assert all(_reaches(c1, other) for other in (s1, s2, s3, c2))
        assert cluster.wait_for_leader()
        names = [h.name for h in hosts]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in netns for name in names)
    assert not any(f"{h.link}@" in _links() or f" {h.link}:" in _links() for h in hosts)


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_hosts_are_deleted_after_a_failed_start_and_after_a_killed_run() -> None:
    ok, why = ConsulCluster.hosts_supported()
    if not ok:
        pytest.skip(why)
    broken = ConsulCluster(servers=1, clients=1, hosts=True, binary="/bin/false")
    names = [h.name for h in broken.hosts]
    assert all(name in _namespaces() for name in names)
    with pytest.raises(RuntimeError, match="exited"):
        with broken:
            pass
    assert not any(name in _namespaces() for name in names)

    # A process that made hosts and died without closing (SIGKILL): the next
    # cluster with hosts removes what it left.
    script = ("import sys, time; from consul_leader.testing import ConsulCluster; "
              "c = ConsulCluster(servers=1, hosts=True, binary='/bin/false'); "
              "print(c.hosts[0].name, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    left = child.stdout.readline().strip()
    assert left and left in _namespaces()
    child.kill()
    child.wait()
    ConsulCluster(servers=1, hosts=True, binary="/bin/false").close()
    assert left not in _namespaces()
