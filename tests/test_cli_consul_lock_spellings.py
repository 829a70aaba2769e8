"""``consul-leader run`` takes ``consul lock``'s command lines: every flag
in its single-dash and ``=`` spellings with its meaning, Go's booleans, a
command without ``--``, or a refusal that says what to use instead; an
error shows the sub-command's usage."""

from __future__ import annotations

from typing import Any, List

import pytest
from cli_runs import Runs, exit_code

from consul_leader.cli import EXIT_USAGE
from consul_leader.cli.parser import build_parser, split_command


def parsed(*argv: str) -> Any:
    parsers = build_parser()
    own, command = split_command(parsers, list(argv))
    args = parsers.commands["run"].parse_args(own)
    args.command_line = command
    return args


@pytest.mark.parametrize("flags, field, value", [
    (["-timeout=1s"], "timeout", 1.0),
    (["-timeout", "1m30s"], "timeout", 90.0),
    (["--timeout=500ms"], "timeout", 0.5),
    (["-try=2s"], "timeout", 2.0),  # consul lock's deprecated spelling of -timeout
    (["-name=web-1"], "identity", "web-1"),
    (["-name", "web-1"], "identity", "web-1"),
    (["-shell"], "shell", True),
    (["-shell=true"], "shell", True),
    (["-shell=false"], "shell", False),
    (["-child-exit-code"], "child_exit_code", True),
    (["-child-exit-code=1"], "child_exit_code", True),
    (["-pass-stdin"], "pass_stdin", True),
    (["-verbose"], "verbose", True),
    (["-verbose=false"], "verbose", False),
    (["-monitor-retry=5"], "monitor_retry", 5),
    (["-n=1"], "limit", 1),
    (["-n", "1"], "limit", 1),
    (["-stale"], "stale", True),
    (["-http-addr=127.0.0.1:8501"], "address", "127.0.0.1:8501"),
    (["-token=secret"], "token", "secret"),
    (["-token-file=/tmp/t"], "token_file", "/tmp/t"),
    (["-datacenter=dc2"], "datacenter", "dc2"),
    (["-ca-file=/tmp/ca.pem"], "ca_file", "/tmp/ca.pem"),
    (["-tls-server-name=consul.example"], "tls_server_name", "consul.example"),
    (["-client-cert=/tmp/c.pem", "-client-key=/tmp/k.pem"], "client_key", "/tmp/k.pem"),
    (["-once=true"], "once", True),
    (["-ttl=1s", "-grace=500ms"], "grace", 0.5),
])
def test_every_consul_lock_flag_is_taken_in_its_spellings(flags: List[str], field: str, value: Any) -> None:
    args = parsed(*flags, "service/x", "my-job", "--daily")
    assert getattr(args, field) == value
    assert args.key == "service/x" and args.command_line == ["my-job", "--daily"]


def test_a_command_without_double_dash_starts_at_the_first_word_after_the_key() -> None:
    assert parsed("-timeout", "1s", "K", "ls", "-l", "--", "x").command_line == ["ls", "-l", "--", "x"]
    assert parsed("K", "--once", "--", "ls", "-l").command_line == ["ls", "-l"]  # options after KEY need --
    assert parsed("-name", "K2", "K", "true").key == "K"  # a flag's value is not the key


@pytest.mark.parametrize("flag, says", [
    ("-n=2", "-n 2: consul-leader run elects one leader"),
    ("-ca-path=/etc/ssl/consul", "give it with -ca-file"),
    ("-shell=maybe", "-shell is true or false"),
])
def test_consul_lock_flags_without_an_equivalent_are_refused_with_what_to_use(
        flag: str, says: str, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["run", flag, key, "true"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and flag.split("=")[0] in err


@pytest.mark.parametrize("argv, usage", [
    (["run", "-bogus", "K", "true"], "usage: consul-leader run "),
    (["run", "K"], "usage: consul-leader run "),
    (["status", "-timeout=1s", "K"], "usage: consul-leader status "),
    (["watch", "K", "extra"], "usage: consul-leader watch "),
])
def test_an_error_shows_the_sub_commands_usage(argv: List[str], usage: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(argv) == EXIT_USAGE
    assert capsys.readouterr().err.startswith(usage)


def test_consul_lock_command_lines_run(cli: Runs, key: str) -> None:
    # As consul lock users write them: one dash, =, no --, -shell, -child-exit-code.
    assert cli("run", "-once", "-ttl=1s", "-grace=500ms", key, "sh", "-c", "exit 7").returncode == 7
    assert cli("run", "-once", "-ttl=1s", "-grace=500ms", "-child-exit-code", key, "sh", "-c",
               "exit 7").returncode == 2
    assert cli("run", "-once", "-ttl=1s", "-grace=500ms", "-child-exit-code=true", key, "true").returncode == 0
    shelled = cli("run", "-once", "-ttl=1s", "-grace=500ms", "-shell", key, 'echo "$CONSUL_LEADER_KEY"',
                  '> "$DIR/out"')
    assert shelled.returncode == 0, shelled.stderr
    assert (cli.tmp / "out").read_text() == key + "\n"
    not_shelled = cli("run", "-once", key, "echo hi")
    assert not_shelled.returncode == 127 and "add -shell" in not_shelled.stderr
