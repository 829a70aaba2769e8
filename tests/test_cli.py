"""The ``consul-leader`` command, run as a real process against the real agent."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest
import requests
from cli_runs import Runs, alive, exit_code

from consul_leader.cli import (
    EXIT_DEPOSED,
    EXIT_LOCK_HELD,
    EXIT_NO_LEADER,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from consul_leader.client import ConsulClient, ConsulConfig
from consul_leader.testing import ConsulAgent, free_ports

from conftest import ROOT, wait_until


@pytest.fixture
def client(consul_agent: ConsulAgent) -> ConsulClient:
    return ConsulClient(ConsulConfig.from_args(address=consul_agent.address))


def written(path: Path) -> List[str]:
    """The words of *path* once something is written there."""
    wait_until(lambda: path.exists() and path.read_text().strip(), what=f"{path.name} to be written")
    return path.read_text().split()


def pid_file(path: Path) -> int:
    return int(written(path)[0])


# A child that records its pid and the environment it got, then waits.
RECORD_AND_WAIT = 'echo "$$ $CONSUL_LEADER_KEY $CONSUL_LEADER_FENCING_TOKEN $CONSUL_LEADER_IDENTITY" > ' \
                  '"$DIR/$CONSUL_LEADER_IDENTITY.pid"; exec sleep 120'


def test_run_passes_key_and_fencing_token_to_the_child_and_once_exits_with_its_status(cli: Runs, key: str) -> None:
    run = cli.start("run", "--once", "--ttl", "1", "--identity", "alpha", key, "--", "sh", "-c",
                    'echo "$CONSUL_LEADER_KEY $CONSUL_LEADER_FENCING_TOKEN $CONSUL_LEADER_IDENTITY" > "$DIR/env"; '
                    'while [ ! -e "$DIR/go" ]; do sleep 0.05; done; exit 7')
    got_key, token, identity = written(cli.tmp / "env")
    status = cli.status(key)
    assert (got_key, identity) == (key, "alpha")
    assert status["leader"] == "alpha" and status["fencing_token"] == int(token)
    assert status["key"] == key and status["session"]
    assert abs(status["since"] - time.time()) < 60 and status["since_iso"].endswith("Z")
    (cli.tmp / "go").touch()
    assert run.wait(30) == 7
    assert cli("status", key).returncode == EXIT_NO_LEADER  # released at exit, not after a TTL


def test_status_exit_codes_and_text(cli: Runs, key: str, make_candidate) -> None:
    nobody = cli("status", "--json", key)
    assert nobody.returncode == EXIT_NO_LEADER
    assert json.loads(nobody.stdout)["leader"] is None
    c = make_candidate(key, identity="holder").start()
    assert c.wait_for_leadership(30)
    held = cli("status", key)
    assert held.returncode == 0
    assert "holder" in held.stdout and f"fencing token: {c.fencing_token}" in held.stdout


def test_sigkill_of_the_leading_run_hands_the_command_over(cli: Runs, key: str) -> None:
    a = cli.start("run", "--ttl", "1", "--identity", "a", key, "--", "sh", "-c", RECORD_AND_WAIT, name="a")
    a_child = pid_file(cli.tmp / "a.pid")
    cli.start("run", "--ttl", "1", "--identity", "b", key, "--", "sh", "-c", RECORD_AND_WAIT, name="b")
    wait_until(lambda: "is now 'a'" in cli.log("b"), what="b to see a leading")
    assert not (cli.tmp / "b.pid").exists()
    killed = time.monotonic()
    a.kill()
    b_child = pid_file(cli.tmp / "b.pid")
    print(f"failover after SIGKILL of the leader's run: {time.monotonic() - killed:.2f}s")
    wait_until(lambda: not alive(a_child), timeout=10, what="the dead run's command to be killed with it")
    assert alive(b_child)
    assert int((cli.tmp / "b.pid").read_text().split()[2]) > int((cli.tmp / "a.pid").read_text().split()[2])


def test_command_is_terminated_then_killed_when_leadership_is_taken_away(cli: Runs, key: str,
                                                                        client: ConsulClient) -> None:
    # The child notes SIGTERM but goes on: only the SIGKILL after --grace ends it.
    stubborn = 'echo $$ >> "$DIR/pids"; trap \'echo term >> "$DIR/signals"\' TERM; ' \
               'while :; do sleep 0.05; done'
    cli.start("run", "--ttl", "1", "--grace", "1", "--identity", "x", key, "--", "sh", "-c", stubborn)
    first = pid_file(cli.tmp / "pids")
    client.destroy_session(cli.status(key)["session"])
    wait_until(lambda: not alive(first), what="the command to be killed")
    assert (cli.tmp / "signals").read_text().split() == ["term"]
    # The watchdog process kills it; the supervisor logs its report.
    wait_until(lambda: "still runs 1s after signal 15; killing it" in cli.log(), what="the kill to be logged")
    # Still in the election: it leads again and starts the command anew.
    wait_until(lambda: len((cli.tmp / "pids").read_text().split()) == 2, what="the next term's command")


def test_once_exits_when_leadership_is_lost(cli: Runs, key: str, client: ConsulClient) -> None:
    run = cli.start("run", "--once", "--ttl", "1", "--identity", "o", key, "--", "sh", "-c", RECORD_AND_WAIT)
    child = pid_file(cli.tmp / "o.pid")
    client.delete_key(key)
    assert run.wait(30) == EXIT_DEPOSED
    assert not alive(child)


def test_sigterm_is_forwarded_and_the_lock_released_at_once(cli: Runs, key: str) -> None:
    graceful = 'echo $$ > "$DIR/pid"; trap \'echo got-term > "$DIR/term"; exit 0\' TERM; ' \
               'while :; do sleep 0.05; done'
    run = cli.start("run", "--identity", "g", key, "--", "sh", "-c", graceful)
    pid_file(cli.tmp / "pid")
    run.send_signal(signal.SIGTERM)
    assert run.wait(30) == 0  # the command's own status
    assert (cli.tmp / "term").read_text().strip() == "got-term"
    assert cli("status", key).returncode == EXIT_NO_LEADER


def test_sigint_while_waiting_exits_130(cli: Runs, key: str, make_candidate) -> None:
    c = make_candidate(key, identity="holder").start()
    assert c.wait_for_leadership(30)
    run = cli.start("run", key, "--", "true")
    wait_until(lambda: "is now 'holder'" in cli.log(), what="the run to wait")
    run.send_signal(signal.SIGINT)
    assert run.wait(30) == 128 + signal.SIGINT


def test_run_serves_metrics(cli: Runs, key: str) -> None:
    port = free_ports(1)[0]
    cli.start("run", "--identity", "m", "--metrics-port", str(port), key, "--", "sh", "-c", RECORD_AND_WAIT)
    pid_file(cli.tmp / "m.pid")

    def scrape() -> str:
        try:
            return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except requests.ConnectionError:
            return ""

    wait_until(lambda: "consul_leader_is_leader{" in scrape(), what="the metrics endpoint")
    assert f'consul_leader_is_leader{{key="{key}"}} 1.0' in scrape()
    assert f'consul_leader_candidate_info{{identity="m",key="{key}"}} 1.0' in scrape()


def test_no_wait_exits_when_the_lock_is_held(cli: Runs, key: str, make_candidate) -> None:
    c = make_candidate(key, identity="holder").start()
    assert c.wait_for_leadership(30)
    result = cli("run", "--no-wait", key, "--", "sh", "-c", 'touch "$DIR/ran"')
    assert result.returncode == EXIT_LOCK_HELD
    assert "held by 'holder'" in result.stderr
    assert not (cli.tmp / "ran").exists()


def test_a_command_that_exits_while_leading_is_run_again_next_term(cli: Runs, key: str) -> None:
    cli.start("run", "--ttl", "1", key, "--", "sh", "-c", 'echo "$CONSUL_LEADER_FENCING_TOKEN" >> "$DIR/terms"')
    wait_until(lambda: (cli.tmp / "terms").exists() and len((cli.tmp / "terms").read_text().split()) >= 2,
             what="a second term")
    first, second = map(int, (cli.tmp / "terms").read_text().split()[:2])
    assert second > first
    assert "stepped down as leader" in cli.log()


def test_usage_errors(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run", key]) == EXIT_USAGE
    assert exit_code(["run", key, "--", "no-such-command-here"]) == EXIT_NOT_FOUND
    assert exit_code(["status", "--ttl", "1", key]) == EXIT_USAGE
    assert exit_code(["status", "-http-addr", "not a:address", key]) == EXIT_USAGE
    assert exit_code(["status", key, "--", "extra"]) == EXIT_USAGE
    capsys.readouterr()
    assert exit_code(["--help"]) == 0
    helped = capsys.readouterr().out
    assert "exit codes:" in helped and f"  {EXIT_LOCK_HELD}       run     --no-wait: another process" in helped


def test_consul_style_options_override_the_environment(key: str, consul_agent: ConsulAgent,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:1")  # nothing listens there
    assert exit_code(["status", key]) == EXIT_UNAVAILABLE
    assert exit_code(["status", f"-http-addr={consul_agent.address}", key]) == EXIT_NO_LEADER
    assert exit_code(["status", "--address", consul_agent.address, key]) == EXIT_NO_LEADER


def test_watch_prints_a_line_per_leader_change(cli: Runs, key: str, make_candidate) -> None:
    watch = cli.start("watch", "--json", key, name="watch", stdout=subprocess.PIPE)
    lines: "queue.Queue[str]" = queue.Queue()
    assert watch.stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout], daemon=True).start()  # type: ignore

    def next_leader() -> Optional[str]:
        return json.loads(lines.get(timeout=30))["leader"]

    assert next_leader() is None
    a = make_candidate(key, identity="first").start()
    assert next_leader() == "first"
    a.stop()
    assert next_leader() is None
    make_candidate(key, identity="second").start()
    assert next_leader() == "second"
    watch.send_signal(signal.SIGTERM)
    assert watch.wait(30) == 0
    assert lines.empty()
    # Each change once: on stdout, not again as a log line on stderr.
    assert "first" not in cli.log("watch") and "second" not in cli.log("watch")


def test_demo_is_delegated_with_plain_help_and_durations(cli: Runs) -> None:
    result = cli("demo", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: consul-leader demo")
    assert "``" not in result.stdout and "--ttl DURATION" in result.stdout  # plain text, not reST
    wrong = cli("demo", "--ttl", "3x")
    assert wrong.returncode == EXIT_USAGE and "invalid duration '3x'" in wrong.stderr


def test_version(cli: Runs) -> None:
    from consul_leader import __version__

    for flag in ("--version", "-version"):
        shown = cli(flag)
        assert shown.returncode == 0 and shown.stdout == f"consul-leader {__version__}\n"


def test_timeout_against_an_unreachable_agent_exits_69_not_75(cli: Runs, key: str) -> None:
    port = free_ports(1)[0]  # nothing listens there
    result = cli("run", "-timeout=2s", f"-http-addr=127.0.0.1:{port}", key, "true")
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr  # says which agent


def test_one_table_of_exit_codes_in_help_and_docs() -> None:
    import re

    import consul_leader.cli as cli_module
    from consul_leader.cli.codes import TABLE

    section = (Path(ROOT) / "docs" / "cli.rst").read_text().split("Exit codes\n----------", 1)[1]
    section = section.split("Replacing", 1)[0]
    documented = dict(re.findall(r"^   \* - (\S+)\n     - (\S+)$", section, re.M))
    documented.pop("code")  # the header row
    assert documented == {code: commands for code, commands, _ in TABLE}
    codes = {name: value for name, value in vars(cli_module).items()
             if name.startswith("EXIT_") and isinstance(value, int)}
    assert len(codes) >= 11
    listed = {int(c) for code, _, _ in TABLE for c in code.split("/") if c.isdigit()}
    assert set(codes.values()) <= listed, set(codes.values()) - listed
    assert len(set(codes.values())) == len(codes), "two exit codes with one value"
    for code, commands, _ in TABLE:
        assert re.search(rf"^  {re.escape(code)} +{commands} ", cli_module.EXIT_CODES, re.M), code
