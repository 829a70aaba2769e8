"""Options of ``consul-leader run`` as ``consul lock`` users write them:
durations in Go's syntax, ``--timeout``, and ``python -m consul_leader``."""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from typing import Callable

import pytest
from cli_runs import Runs, exit_code

from consul_leader import Candidate
from consul_leader.cli import EXIT_LOCK_HELD, EXIT_USAGE, duration

from conftest import PYTHON, python_env, wait_until


@pytest.mark.parametrize("text, seconds", [
    ("2.5", 2.5), ("10", 10.0), ("0", 0.0), ("500ms", 0.5), ("1s", 1.0), ("3h", 10800.0), ("1m30s", 90.0),
    ("1.5m", 90.0), ("250us", 0.00025), ("1h0m0.5s", 3600.5), (".5s", 0.5),
])
def test_durations_in_seconds_or_as_consul_lock_writes_them(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "1s2", "s", "-1s", "-2", "1 s", "inf", "nan", "1e3", "1d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        duration(text)


@pytest.mark.parametrize("option", ["--ttl", "--lock-delay", "--grace", "--timeout", "-timeout", "-try"])
def test_every_duration_option_says_what_is_wrong(option: str, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run", option, "5x", key, "--", "true"]) == EXIT_USAGE
    err = capsys.readouterr().err
    named = re.search(r"argument ([-\w/]+): invalid duration '5x'", err)
    assert named and option in named.group(1).split("/") and "1m30s" in err
    assert err.startswith("usage: consul-leader run ")  # the sub-command's usage, not the top level's


def test_timeout_gives_up_waiting_for_the_lock(cli: Runs, key: str, make_candidate: Callable[..., Candidate]) -> None:
    holder = make_candidate(key, identity="holder").start()
    assert holder.wait_for_leadership(30)
    result = cli("run", "--timeout", "1500ms", key, "--", "sh", "-c", 'touch "$DIR/ran"')
    assert result.returncode == EXIT_LOCK_HELD
    assert "not elected leader" in result.stderr and "within 1.5s" in result.stderr
    assert not (cli.tmp / "ran").exists()
    assert holder.is_leader()


def test_timeout_does_not_limit_a_term_that_began(cli: Runs, key: str) -> None:
    # Elected in time (a new key costs one lock-delay), the command then runs
    # past the timeout and its status is the run's.
    result = cli("run", "--once", "--ttl", "1s", "--grace", "0.5s", "--timeout", "30s", key, "--", "sh", "-c",
                 "sleep 1; exit 3")
    assert result.returncode == 3, result.stderr


def test_timeout_0_waits_for_as_long_as_it_takes_as_consul_lock(cli: Runs, key: str,
                                                                make_candidate: Callable[..., Candidate]) -> None:
    holder = make_candidate(key, identity="holder", ttl=1).start()
    assert holder.wait_for_leadership(30)
    run = cli.start("run", "--once", "--timeout", "0", "--ttl", "1s", "--grace", "0.5s", key, "--", "true")
    wait_until(lambda: "is now 'holder'" in cli.log(), what="the run to wait")
    time.sleep(1)
    assert run.poll() is None  # still waiting
    holder.stop()
    assert run.wait(30) == 0


def test_python_m_consul_leader_is_the_command(key: str) -> None:
    helped = subprocess.run([PYTHON, "-m", "consul_leader", "run", "--help"], env=python_env(), capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: consul-leader run")
    # Python 3.13's argparse names the metavar once, after all the spellings.
    assert re.search(r"^  --timeout\b.* DURATION$", helped.stdout, re.M), helped.stdout
    bad = subprocess.run([PYTHON, "-m", "consul_leader", "run", "--grace", "soon", key, "--", "true"],
                         env=python_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode == EXIT_USAGE and "invalid duration 'soon'" in bad.stderr


def test_token_file_is_read_like_consul_http_token_file(tmp_path, consul_agent) -> None:
    import subprocess as sp

    from conftest import PYTHON, python_env

    missing = tmp_path / "absent"
    done = sp.run([PYTHON, "-m", "consul_leader", "status", "--token-file", str(missing), "--address",
                   consul_agent.address, "a/b"], env=python_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"token_file={str(missing)!r} cannot be read" in done.stderr
