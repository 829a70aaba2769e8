"""``consul-leader run`` never lets its command run beside the next leader's:
not when the session is taken away from a command that ignores SIGTERM, not
when the supervisor itself is frozen. Real agent, real processes; each
command records its own life on CLOCK_BOOTTIME, which every process of the
machine shares."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import List

import pytest
import requests
from cli_runs import Runs, alive, exit_code

from consul_leader.cli import EXIT_SOFTWARE, EXIT_USAGE
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, wait_until


def life(cli: Runs, name: str, *options: str, key: str) -> subprocess.Popen[str]:
    return cli.start("run", *options, "--identity", name, key, "--", PYTHON, "-S", str(cli.life),
                     name=name)


def test_a_command_ignoring_sigterm_is_dead_before_the_next_leader_starts_when_the_session_is_destroyed(
        cli: Runs, key: str, consul_agent: ConsulAgent) -> None:
    # --grace 3s against a 1s TTL: the lock-delay must be derived from the
    # grace, or the next leader starts while this command still runs.
    life(cli, "a", "--ttl", "1s", "--grace", "3s", key=key)
    _, a_pid = cli.started("a")
    life(cli, "b", "--ttl", "1s", "--grace", "3s", key=key)
    wait_until(lambda: "is now 'a'" in cli.log("b"), what="b to see a leading")
    session = cli.status(key)["session"]
    destroyed = time.clock_gettime(time.CLOCK_BOOTTIME)
    requests.put(f"http://{consul_agent.address}/v1/session/destroy/{session}", timeout=5).raise_for_status()
    b_start, _ = cli.started("b")
    a_end = cli.last_alive("a", a_pid)
    print(f"a's command ended {a_end - destroyed:.2f}s after the destroy, b's started {b_start - destroyed:.2f}s "
          f"after it")
    assert (cli.tmp / "a.term").exists(), "a's command was not sent SIGTERM first"
    assert a_end < b_start, f"the two commands overlapped for {a_end - b_start:.3f}s"


def test_a_frozen_supervisor_does_not_let_its_command_run_beside_the_next_leaders(cli: Runs, key: str) -> None:
    a = life(cli, "a", "--ttl", "1s", "--grace", "1000ms", key=key)
    _, a_pid = cli.started("a")
    life(cli, "b", "--ttl", "1s", "--grace", "1000ms", key=key)
    wait_until(lambda: "is now 'a'" in cli.log("b"), what="b to see a leading")
    a.send_signal(signal.SIGSTOP)  # the supervisor only: its command and watchdog run on
    try:
        b_start, _ = cli.started("b")
        a_end = cli.last_alive("a", a_pid)
    finally:
        a.send_signal(signal.SIGCONT)
    assert a_end < b_start, f"the two commands overlapped for {a_end - b_start:.3f}s"
    # Thawed, a finds its term over and waits: it does not start a command beside b's.
    try:
        wait_until(lambda: "deposed" in cli.log("a"), what="a to notice its term ended")
    except AssertionError as exc:  # failed once in a full run, never alone: keep what a said
        raise AssertionError(f"{exc}; a's log:\n{cli.log('a')[-6000:]}") from None
    time.sleep(1)
    assert len((cli.tmp / "a.start").read_text().split("\n")) == 2  # one line and the final newline


# ``consul-leader run`` that stops itself (SIGSTOP) at its first "elected"
# log line: on the election thread, right after the term began and the
# command was asked for, before the term's job thread starts. A supervisor
# paused at that moment until its lease is over finds its term over when it
# resumes: the job never runs, and nothing but the term's end can wait for
# the command that was spawned.
PAUSE_AT_ELECTION = """\
import logging, os, signal, sys
from consul_leader.cli import main

class PauseOnce(logging.Handler):
    paused = False

    def emit(self, record):
        if not self.paused and "elected leader of" in record.getMessage():
            self.paused = True
            os.kill(os.getpid(), signal.SIGSTOP)

logging.getLogger("consul_leader").addHandler(PauseOnce())
sys.exit(main(sys.argv[1:]))
"""


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_a_term_whose_lease_ends_before_its_job_starts_releases_the_lock_only_once_the_command_is_dead(
        cli: Runs, key: str) -> None:
    # --ttl 6s: lease 5s; the check's TTL runs out 1s after the lease, and a
    # must resume in between, so that it (not Consul, with a lock-delay)
    # frees the lock. --grace 2s: a's command, shrugging off the SIGTERM the
    # watchdog sends at the lease's end, lives 2s on.
    (cli.tmp / "pause.py").write_text(PAUSE_AT_ELECTION)
    options = ["--ttl", "6s", "--grace", "2s"]
    with open(cli.tmp / "a.log", "w") as log:
        a = subprocess.Popen([PYTHON, str(cli.tmp / "pause.py"), "run", *options, "--identity", "a", key, "--",
                              PYTHON, "-S", str(cli.life)], env=cli.env, stdout=log, stderr=log)
    cli.procs.append(a)
    _, a_pid = cli.started("a")
    wait_until(lambda: process_state(a.pid) == "T", what="a to pause right after its term began")
    life(cli, "b", *options, key=key)
    wait_until(lambda: "is now 'a'" in cli.log("b"), what="b to see a leading")
    wait_until(lambda: (cli.tmp / "a.term").exists(), what="a's lease to end (its command gets SIGTERM)")
    a.send_signal(signal.SIGCONT)
    a_end = cli.last_alive("a", a_pid)
    assert f"(pid {a_pid})" not in cli.log("a"), "a's job ran: this test no longer pauses a before the job starts"
    # The next command, b's or a's own in a later term, starts only after that.
    wait_until(lambda: next_starts(cli), what="the next term's command to start")
    assert a_end < min(next_starts(cli)), f"the two commands overlapped for {a_end - min(next_starts(cli)):.3f}s"


def next_starts(cli: Runs) -> List[float]:
    """When each command started after the first one of a."""
    starts = [line for name in ("a", "b") if (cli.tmp / f"{name}.start").exists()
              for line in (cli.tmp / f"{name}.start").read_text().split("\n")[slice(1 if name == "a" else 0, None)]
              if line]
    return [float(line.split()[0]) for line in starts]


def test_on_sigterm_the_lock_is_released_only_once_the_command_is_dead(cli: Runs, key: str) -> None:
    # Its command shrugs the forwarded SIGTERM off: killed after --grace,
    # and only then may the waiting run take over.
    a = life(cli, "a", "--ttl", "1s", "--grace", "1s", key=key)
    _, a_pid = cli.started("a")
    life(cli, "b", "--ttl", "1s", "--grace", "1s", key=key)
    wait_until(lambda: "is now 'a'" in cli.log("b"), what="b to see a leading")
    a.send_signal(signal.SIGTERM)
    assert a.wait(30) == 128 + signal.SIGKILL  # the command's status
    b_start, _ = cli.started("b")
    assert (cli.tmp / "a.term").exists()
    assert cli.last_alive("a", a_pid) < b_start


def test_the_lock_delay_is_derived_from_the_grace(cli: Runs, key: str, consul_agent: ConsulAgent) -> None:
    # Defaults: TTL 3s, lease 2.5s, grace 5s: the lock-delay must cover
    # lease + grace + 0.5s, so that a command stopped at the lease's end is
    # dead before anyone else can be elected.
    life(cli, "d", key=key)
    cli.started("d")
    session = cli.status(key)["session"]
    info = requests.get(f"http://{consul_agent.address}/v1/session/info/{session}", timeout=5).json()
    assert info[0]["LockDelay"] == 8 * 10**9


@pytest.mark.parametrize("options, names", [
    (["--ttl", "3s", "--lock-delay", "3s", "--grace", "5s"], ["--grace 5s", "--lock-delay"]),
    (["--lock-delay", "3"], ["--grace 5s (the default)", "--lock-delay"]),
    (["--ttl", "30", "--grace", "1m"], ["--grace 60s", "60s"]),
])
def test_a_grace_the_lock_delay_cannot_cover_is_refused(key: str, options: List[str], names: List[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run", *options, key, "--", "true"]) == EXIT_USAGE
    err = capsys.readouterr().err
    for name in names:
        assert name in err, err
    assert "or less" in err  # says what would work


def children(pid: int) -> List[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def test_if_the_watchdog_process_dies_the_command_is_killed_and_run_exits_70(cli: Runs, key: str) -> None:
    run = life(cli, "w", "--ttl", "1s", "--grace", "1s", key=key)
    _, command = cli.started("w")
    # The supervisor's only child is the watchdog (the command is the watchdog's).
    (watchdog,) = children(run.pid)
    assert command in children(watchdog)
    os.kill(watchdog, signal.SIGKILL)
    assert run.wait(30) == EXIT_SOFTWARE
    assert not alive(command)
    assert "watchdog process died" in cli.log("w")
