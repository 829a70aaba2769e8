"""``consul-leader run PREFIX`` beside a ``consul lock PREFIX`` that is
starting at the same moment: ``consul lock`` read ``PREFIX/.lock`` free and
its acquisition is held back (a slow link, a paused VM; here a proxy
between ``consul lock`` and the agent) for as long as ``run`` takes to
lead. ``run`` locks ``PREFIX/.lock`` with each term, so the late
acquisition is refused while ``run`` leads, and ``consul lock``'s command
never runs beside ``run``'s. Real agent, real ``consul`` binary, real
processes."""

from __future__ import annotations

import signal
import subprocess
import time

from cli_runs import Runs, alive
from garbling_proxy import HoldingProxy

from consul_leader.testing import ConsulAgent, find_consul

from conftest import PYTHON


def test_a_consul_lock_whose_acquisition_was_on_its_way_does_not_lead_beside_run(
        cli: Runs, prefix: str, consul_agent: ConsulAgent) -> None:
    lock_key = f"{prefix}/.lock"
    with HoldingProxy(consul_agent.url) as proxy:
        proxy.hold = lambda method, path, body: method == "PUT" and path.startswith(f"/v1/kv/{lock_key}?") \
            and "acquire=" in path
        lock = cli.spawn([find_consul(), "lock", f"-http-addr={proxy.address}", "-shell=false", prefix, PYTHON,
                          "-S", str(cli.life), "old", "--exit-on-term"], name="old")
        try:
            assert proxy.held.wait(30), "consul lock did not try to acquire"
            new = cli.start("run", "-ttl=1s", "-grace=1s", "-name", "new", prefix, PYTHON, "-S", str(cli.life),
                            "new", "--exit-on-term", name="new")
            new_start, new_pid = cli.started("new")
            proxy.let_go()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (cli.tmp / "old.start").exists() and lock.poll() is None:
                time.sleep(0.05)
            both = (cli.tmp / "old.start").exists() and alive(new_pid)
            if both:
                old_start, old_pid = cli.started("old")
                time.sleep(1)
                together = alive(old_pid) and alive(new_pid)
            print(f"consul lock exited {lock.poll()}; its command started: {(cli.tmp / 'old.start').exists()}; "
                  f"consul lock's log: {(cli.tmp / 'old.log').read_text()[-500:]!r}")
        finally:
            for proc in (lock, locals().get("new")):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (lock, locals().get("new")):
                if proc is not None:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    assert not both, (f"consul lock's command started {old_start - new_start:.2f}s after run's and both were "
                      f"still running {'1s later' if together else 'at its start'}: two leaders of {prefix!r}")
