"""The test harness itself: no agent is left behind."""

from __future__ import annotations

import os

import pytest

from consul_leader.testing import ConsulAgent, find_consul, free_ports


def test_entering_a_started_agent_does_not_launch_a_second_one():
    agent = ConsulAgent().start()
    first = agent.process
    with agent as same:
        assert same is agent and agent.process is first
    assert first.poll() is not None, "the agent is stopped on exit"
    assert not os.path.exists(agent.workdir)


def test_no_consul_found_says_how_to_install_it_without_repository_paths(monkeypatch, tmp_path):
    monkeypatch.delenv("CONSUL_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError) as missing:
        find_consul()
    monkeypatch.setenv("CONSUL_BIN", str(tmp_path / "consul"))
    with pytest.raises(FileNotFoundError) as wrong:
        find_consul()
    for message in (str(missing.value), str(wrong.value)):
        assert "CONSUL_BIN" in message and "PATH" in message and "package" in message
        assert "scripts/" not in message and ".tools" not in message and "://" not in message


def test_consul_is_found_through_consul_bin_then_path(monkeypatch, tmp_path):
    real = find_consul()
    monkeypatch.setenv("CONSUL_BIN", real)
    assert find_consul() == real
    monkeypatch.delenv("CONSUL_BIN")
    (tmp_path / "consul").symlink_to(real)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_consul() == str(tmp_path / "consul")


@pytest.mark.skipif(not os.path.exists("/proc/sys/net/ipv4/ip_local_port_range"),
                    reason="the kernel's ephemeral port range is read from Linux's /proc")
def test_free_ports_stay_below_the_ephemeral_range_that_outgoing_connections_take():
    # A port from that range was taken by some outgoing connection between
    # free_ports() and the agent's bind: "address already in use" (CI).
    with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
        low = int(fh.read().split()[0])
    ports = free_ports(200)
    assert len(set(ports)) == 200
    assert max(ports) < low
