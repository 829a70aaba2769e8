"""``consul-leader run`` and the real ``consul lock`` on one prefix, as
while a fleet moves over one host at a time: never two leaders. ``run
PREFIX`` refuses a prefix that ``consul lock`` holds, ``consul lock``
refuses one that ``run`` uses, and ``run PREFIX/.lock`` takes turns with
``consul lock PREFIX`` on its own key. Real agent, real ``consul`` binary
(CONSUL_BIN), real processes; each command records its life on
CLOCK_BOOTTIME, which every process of the machine shares."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from cli_runs import Runs, alive

from consul_leader.cli import EXIT_CONSUL_LOCK
from consul_leader.testing import ConsulAgent, find_consul

from conftest import PYTHON, wait_until

# The command, under either tool: notes its start, then "still alive" every
# few ms until SIGTERM ends it (the last note is its end).
LIFE = """\
import os, signal, sys, time
now = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
base = os.path.join(os.environ["DIR"], sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with open(base + ".start", "a") as f:
    f.write(f"{now()!r} {os.getpid()}\\n")
while True:
    with open(base + ".alive.tmp", "w") as f:
        f.write(repr(now()))
    os.replace(base + ".alive.tmp", base + ".alive")
    time.sleep(0.003)
"""


@pytest.fixture
def cli(consul_agent: ConsulAgent, tmp_path: Path) -> Iterator[Runs]:
    runs = Runs(consul_agent, tmp_path)
    (tmp_path / "life.py").write_text(LIFE)
    yield runs
    runs.close()
    for start in tmp_path.glob("*.start"):
        for line in start.read_text().split("\n"):
            if line:
                try:
                    os.kill(int(line.split()[1]), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def consul_lock(cli: Runs, prefix: str, name: str) -> subprocess.Popen[str]:
    """``consul lock PREFIX`` running the command named *name* (stderr in NAME.log)."""
    log = open(cli.tmp / f"{name}.log", "w")
    proc = subprocess.Popen([find_consul(), "lock", "-shell=false", prefix, PYTHON, "-S", str(cli.tmp / "life.py"),
                             name], env=cli.env, stdout=log, stderr=log, text=True)
    log.close()
    cli.procs.append(proc)
    return proc


def run(cli: Runs, key: str, name: str) -> subprocess.Popen[str]:
    """``consul-leader run KEY`` running the command named *name*, written as
    a consul lock user would (single dash, no ``--``)."""
    return cli.start("run", "-ttl=1s", "-grace=1s", "-name", name, key, PYTHON, "-S", str(cli.tmp / "life.py"),
                     name, name=name)


def life(cli: Runs, name: str) -> Tuple[float, float]:
    """When *name*'s command started and, once it is dead, its last sign of life."""
    path = cli.tmp / f"{name}.start"
    wait_until(lambda: path.exists() and path.read_text().endswith("\n"), what=f"{name}'s command to start")
    start, pid = path.read_text().split("\n")[0].split()
    wait_until(lambda: not alive(int(pid)), timeout=60, what=f"{name}'s command (pid {pid}) to end")
    return float(start), float((cli.tmp / f"{name}.alive").read_text())


def never_ran(cli: Runs, name: str) -> bool:
    return not (cli.tmp / f"{name}.start").exists()


def test_run_refuses_a_key_whose_prefix_consul_lock_holds(cli: Runs, prefix: str) -> None:
    lock = consul_lock(cli, prefix, "old")
    wait_until(lambda: (cli.tmp / "old.start").exists(), what="consul lock's command to start")
    new = run(cli, prefix, "new")
    wait_until(lambda: new.poll() is not None or not never_ran(cli, "new"), what="run to refuse or to lead")
    assert never_ran(cli, "new"), "run's command started while consul lock's ran"
    assert new.wait(30) == EXIT_CONSUL_LOCK
    assert f"{prefix}/.lock is in use by consul lock" in cli.log("new")
    assert f"give run consul lock's own key, {prefix}/.lock" in cli.log("new")  # what to do instead
    lock.send_signal(signal.SIGTERM)
    assert lock.wait(30) == 0


def test_consul_lock_refuses_a_prefix_that_run_uses(cli: Runs, prefix: str) -> None:
    new = run(cli, prefix, "new")
    wait_until(lambda: (cli.tmp / "new.start").exists(), what="run's command to start")
    late = consul_lock(cli, prefix, "late")
    wait_until(lambda: late.poll() is not None or not never_ran(cli, "late"), what="consul lock to refuse or lead")
    assert never_ran(cli, "late"), "consul lock's command started while run's ran"
    assert late.wait(30) == 1  # consul lock's own refusal
    assert "does not match lock use" in (cli.tmp / "late.log").read_text()
    new.send_signal(signal.SIGTERM)
    new.wait(30)
    # The note stays while run is gone: a consul lock started now refuses too.
    assert consul_lock(cli, prefix, "later").wait(30) == 1 and never_ran(cli, "later")


def test_run_on_consul_locks_own_key_takes_turns_with_it_and_then_keeps_it(cli: Runs, prefix: str) -> None:
    old = consul_lock(cli, prefix, "old")
    wait_until(lambda: (cli.tmp / "old.start").exists(), what="consul lock's command to start")
    new = run(cli, f"{prefix}/.lock", "new")
    wait_until(lambda: "is now" in cli.log("new"), what="run to see the key held")
    assert never_ran(cli, "new")
    old.send_signal(signal.SIGTERM)  # the last consul lock host moves over
    assert old.wait(30) == 0
    old_life, new_life = life(cli, "old"), None
    wait_until(lambda: (cli.tmp / "new.start").exists(), what="run's command to start")
    late = consul_lock(cli, prefix, "late")  # an old host restarted: it must not lead beside run
    assert late.wait(30) == 1 and never_ran(cli, "late")
    new.send_signal(signal.SIGTERM)
    new.wait(30)
    new_life = life(cli, "new")
    lives: List[Tuple[float, float]] = sorted([old_life, new_life])
    assert lives[0][1] < lives[1][0], f"consul lock's command and run's overlapped: {lives}"
