"""The test harness itself: no agent is left behind."""

from __future__ import annotations

import os

from consul_leader.testing import ConsulAgent


def test_entering_a_started_agent_does_not_launch_a_second_one():
    agent = ConsulAgent().start()
    first = agent.process
    with agent as same:
        assert same is agent and agent.process is first
    assert first.poll() is not None, "the agent is stopped on exit"
    assert not os.path.exists(agent.workdir)
