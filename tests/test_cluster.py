"""ConsulCluster, the public multi-agent harness: it starts a real cluster,
its fault helpers do what they say, and it leaves no process behind."""

from __future__ import annotations

import os

from consul_leader.testing import ConsulCluster


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
        assert client.get("/v1/status/leader", timeout=0.5) is None
        client.resume()
        client.restart(kill=True)
        assert client.get("/v1/status/leader")
        client.restart()
        assert "Consul agent running" in client.log_tail(400)
        pids = [a.process.pid for a in cluster.agents if a.process is not None]
    assert not any(alive(pid) for pid in pids)
