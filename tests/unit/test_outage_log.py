"""One log line per outage: the first failure, at most one reminder per
interval, the recovery; every attempt at DEBUG. On an injected clock."""

from __future__ import annotations

import logging
from typing import List

import pytest

from consul_leader.errors import ConsulUnavailable, PermissionDenied
from consul_leader.outage import Outage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


def test_an_outage_of_many_retries_logs_its_first_failure_once_a_reminder_a_minute_and_the_recovery(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    clock = Clock()
    outage = Outage(logging.getLogger("test.outage"), "election for 'k'", clock=clock)
    for _ in range(30):  # a failure every 2 s for a minute
        outage.failed(ConsulUnavailable("cannot reach the agent"))
        clock.now += 2
    outage.failed(ConsulUnavailable("cannot reach the agent"))
    outage.ok()
    outage.ok()
    said = lines(caplog)
    assert len(said) == 3, said
    assert said[0].startswith("election for 'k': cannot reach the agent; retrying")
    assert said[1] == "election for 'k': still failing, 31 attempts in 60s; the last: cannot reach the agent"
    assert said[2] == "election for 'k': working again after 31 failed attempts in 60s"
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 31 - 2


def test_another_kind_of_failure_during_an_outage_is_news(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    clock = Clock()
    outage = Outage(logging.getLogger("test.outage"), "heartbeat", clock=clock)
    outage.failed(ConsulUnavailable("down"))
    clock.now += 1
    outage.failed(PermissionDenied("refused"), level=logging.ERROR)
    clock.now += 1
    outage.failed(PermissionDenied("refused"), level=logging.ERROR)
    assert [r.levelno for r in caplog.records if r.levelno > logging.DEBUG] == [logging.WARNING, logging.ERROR]
    assert outage.failing


def test_a_new_outage_after_a_recovery_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    clock = Clock()
    outage = Outage(logging.getLogger("test.outage"), "heartbeat", clock=clock)
    outage.failed(ConsulUnavailable("down"))
    outage.ok()
    assert not outage.failing
    clock.now += 1
    outage.failed(ConsulUnavailable("down again"))
    said = lines(caplog)
    assert said[0].startswith("heartbeat: down;") and said[1].startswith("heartbeat: working again after 1")
    assert said[2].startswith("heartbeat: down again;")
