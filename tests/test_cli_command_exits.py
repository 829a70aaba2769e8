"""A command that exits under ``consul-leader run``: run again next term by
default, and a crash loop backs off (1 s, 2 s, 4 s ... up to a minute),
said once in the log, so that it does not take and release the lock every
few seconds."""

from __future__ import annotations

import logging
from typing import List

import pytest
from cli_runs import Runs

from consul_leader.cli.backoff import CrashBackoff

from conftest import wait_until


def test_waits_grow_from_the_second_quick_exit_up_to_a_minute_and_end_after_a_long_run(
        caplog: pytest.LogCaptureFixture) -> None:
    backoff = CrashBackoff("my-job")
    with caplog.at_level(logging.INFO, logger="consul_leader"):
        waits = [backoff.after_exit(0.5, 1) for _ in range(10)]
        assert backoff.after_exit(0.1, None) == 60.0  # could not be started: a quick exit too
        assert backoff.after_exit(30.0, 0) == 0.0  # a long run ends the loop
        assert backoff.after_exit(0.5, 1) == 0.0  # and the count starts again
    assert waits == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 2, said  # once as the waits begin, once as they end
    assert "my-job keeps exiting within 10s of its start" in said[0] and "up to 60s" in said[0]
    assert "no more waits" in said[1]


def test_two_quick_exits_far_apart_are_no_crash_loop() -> None:
    now = [0.0]
    backoff = CrashBackoff("my-job", clock=lambda: now[0])
    assert backoff.after_exit(0.5, 1) == 0.0
    now[0] += CrashBackoff.forget  # the next quick exit, ten minutes later
    assert backoff.after_exit(0.5, 1) == 0.0
    now[0] += 1
    assert backoff.after_exit(0.5, 1) == 1.0  # but one right after it is


def starts(cli: Runs) -> List[float]:
    path = cli.tmp / "starts"
    return [float(t) for t in path.read_text().split()] if path.exists() else []


def test_a_crash_loop_backs_off_and_says_so_once(cli: Runs, key: str) -> None:
    cli.start("run", "--ttl", "1s", "--grace", "500ms", key, "--", "sh", "-c",
              'date +%s.%N >> "$DIR/starts"; exit 1')
    wait_until(lambda: len(starts(cli)) >= 4, timeout=60, what="a fourth start")
    first, second, third, fourth = starts(cli)[:4]
    # Without the waits, a run starts every TTL (the sit-out after stepping
    # down); before the fourth start it waited 2s more.
    assert fourth - third >= 2.0, starts(cli)
    assert cli.log().count("keeps exiting within") == 1
