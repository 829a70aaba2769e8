"""``consul-leader run`` and the real ``consul lock`` on one prefix, as
while a fleet moves over one host at a time: never two leaders. ``run
PREFIX`` refuses a prefix that ``consul lock`` holds, ``consul lock``
refuses one that ``run`` uses, and ``run PREFIX/.lock`` takes turns with
``consul lock PREFIX`` on its own key. Real agent, real ``consul`` binary
(CONSUL_BIN), real processes; each command records its life on
CLOCK_BOOTTIME, which every process of the machine shares."""

from __future__ import annotations

import signal
import subprocess
from typing import List, Tuple

import requests
from cli_runs import Runs

from consul_leader import Candidate
from consul_leader.cli import EXIT_CONSUL_LOCK
from consul_leader.cli.consul_lock import LOCK_FLAG_VALUE, guard
from consul_leader.client import ConsulClient, ConsulConfig
from consul_leader.testing import ConsulAgent, find_consul

from conftest import PYTHON, wait_until


def consul_lock(cli: Runs, prefix: str, name: str) -> subprocess.Popen[str]:
    """``consul lock PREFIX`` running the command named *name* (stderr in NAME.log)."""
    return cli.spawn([find_consul(), "lock", "-shell=false", prefix, PYTHON, "-S", str(cli.life), name,
                      "--exit-on-term"], name=name)


def run(cli: Runs, key: str, name: str) -> subprocess.Popen[str]:
    """``consul-leader run KEY`` running the command named *name*, written as
    a consul lock user would (single dash, no ``--``)."""
    return cli.start("run", "-ttl=1s", "-grace=1s", "-name", name, key, PYTHON, "-S", str(cli.life),
                     name, "--exit-on-term", name=name)


def life(cli: Runs, name: str) -> Tuple[float, float]:
    """When *name*'s command started and, once it is dead, its last sign of life."""
    start, pid = cli.started(name)
    return start, cli.last_alive(name, pid)


def never_ran(cli: Runs, name: str) -> bool:
    return not (cli.tmp / f"{name}.start").exists()


def refuses(cli: Runs, proc: subprocess.Popen[str], name: str) -> int:
    """*proc*'s exit code, once it ended without starting its command *name*."""
    wait_until(lambda: proc.poll() is not None or not never_ran(cli, name), what=f"{name} to refuse or to lead")
    assert never_ran(cli, name), f"{name}'s command started beside the other tool's"
    return proc.wait(30)


def test_run_refuses_a_key_whose_prefix_consul_lock_holds(cli: Runs, prefix: str) -> None:
    lock = consul_lock(cli, prefix, "old")
    cli.started("old")
    assert refuses(cli, run(cli, prefix, "new"), "new") == EXIT_CONSUL_LOCK
    assert f"{prefix}/.lock is in use by consul lock" in cli.log("new")
    assert f"give run consul lock's own key, {prefix}/.lock" in cli.log("new")  # what to do instead
    # status reads consul lock's key too (its flags are no time, its value empty).
    shown = cli("status", f"{prefix}/.lock")
    assert shown.returncode == 0, shown.stderr
    assert "(an empty value, as consul lock writes)" in shown.stdout and "since:         unknown" in shown.stdout
    lock.send_signal(signal.SIGTERM)
    assert lock.wait(30) == 0


def test_consul_lock_refuses_a_prefix_that_run_uses(cli: Runs, prefix: str) -> None:
    new = run(cli, prefix, "new")
    cli.started("new")
    assert refuses(cli, consul_lock(cli, prefix, "late"), "late") == 1  # consul lock's own refusal
    assert "does not match lock use" in (cli.tmp / "late.log").read_text()
    new.send_signal(signal.SIGTERM)
    new.wait(30)
    # The note stays while run is gone: a consul lock started now refuses too.
    assert refuses(cli, consul_lock(cli, prefix, "later"), "later") == 1


def test_run_on_consul_locks_own_key_takes_turns_with_it_and_then_keeps_it(cli: Runs, prefix: str) -> None:
    old = consul_lock(cli, prefix, "old")
    cli.started("old")
    new = run(cli, f"{prefix}/.lock", "new")
    wait_until(lambda: "is now" in cli.log("new"), what="run to see the key held")
    assert never_ran(cli, "new")
    old.send_signal(signal.SIGTERM)  # the last consul lock host moves over
    # consul lock releases, then deletes its key if nobody uses it: when run
    # took the key in between, that clean-up finds run's flags and consul
    # lock exits 1 ("Lock cleanup failed"), its command already stopped.
    if old.wait(30) != 0:
        assert "Lock cleanup failed: Existing key does not match lock use" in cli.log("old")
    old_life, new_life = life(cli, "old"), None
    cli.started("new")
    # An old host restarted: it must not lead beside run.
    assert refuses(cli, consul_lock(cli, prefix, "late"), "late") == 1
    new.send_signal(signal.SIGTERM)
    new.wait(30)
    new_life = life(cli, "new")
    lives: List[Tuple[float, float]] = sorted([old_life, new_life])
    assert lives[0][1] < lives[1][0], f"consul lock's command and run's overlapped: {lives}"


def test_a_lock_taken_with_the_key_keeps_a_late_consul_lock_acquisition_out_and_is_let_go_at_the_terms_end(
        consul_agent: ConsulAgent, prefix: str) -> None:
    # consul lock read PREFIX/.lock missing before run wrote its note; its
    # acquire lands later, while run's candidate leads and after.
    url = consul_agent.url
    client = ConsulClient(ConsulConfig.from_args(address=consul_agent.address, environ={}))
    also = guard(client, prefix)
    assert also is not None and also[0] == f"{prefix}/.lock"
    sid = requests.put(f"{url}/v1/session/create", json={"Name": "consul lock", "LockDelay": "0s"},
                       timeout=5).json()["ID"]

    def consul_lock_acquires() -> bool:
        answer = requests.put(f"{url}/v1/kv/{prefix}/.lock?acquire={sid}&flags={LOCK_FLAG_VALUE}", timeout=5)
        return bool(answer.json())

    candidate = Candidate(prefix, identity="run", address=consul_agent.address, ttl=2)
    candidate.lock_with(*also)
    with candidate:
        assert candidate.wait_for_leadership(30)
        assert not consul_lock_acquires(), "consul lock took PREFIX/.lock while run led"
        assert candidate.resign()
        # Run's term is over (its work with it): the key is free again.
        wait_until(consul_lock_acquires, what="consul lock to take PREFIX/.lock once run's term ended")
        assert not candidate.is_leader()
        # Now consul lock leads: run's candidate cannot take its lock, and says why.
        wait_until(lambda: "is held by another session" in (candidate.health().last_error or ""),
                   timeout=30, what="the candidate to report the lock taken with its own")
        assert not candidate.is_leader()
        entry = requests.get(f"{url}/v1/kv/{prefix}", timeout=5).json()
        assert entry is None or entry[0].get("Session") is None, "run's key was taken without PREFIX/.lock"
    requests.put(f"{url}/v1/session/destroy/{sid}", timeout=5)


def test_a_lock_taken_with_the_key_and_deleted_during_the_term_does_not_keep_the_key_at_its_end(
        consul_agent: ConsulAgent, prefix: str) -> None:
    url = consul_agent.url
    candidate = Candidate(prefix, identity="run", address=consul_agent.address, ttl=2)
    candidate.lock_with(f"{prefix}/.lock", b"note")
    with candidate:
        assert candidate.wait_for_leadership(30)
        requests.delete(f"{url}/v1/kv/{prefix}/.lock", timeout=5).raise_for_status()  # an operator's clean-up
        assert candidate.resign()
        wait_until(lambda: not requests.get(f"{url}/v1/kv/{prefix}", timeout=5).json()[0].get("Session"),
                   what="the key released at the term's end")
