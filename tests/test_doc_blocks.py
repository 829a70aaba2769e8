"""The documentation runs as written: every Python block of README.rst and
docs/ runs against a real agent (each in a process of its own, all at
once), with the reader's own pieces (their function, their database) given
by a ``.. test: setup`` note and what the block must have done checked by a
``.. test: check`` note; shell blocks that start ``consul-leader`` run
against the agent and print what the page shows; every other block is run
by a test of its own or says why it is not run (tests/support/docblocks.py
describes the notes)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import requests
from support.docblocks import Block, all_blocks, blocks_of, documentation

from consul_leader import Candidate, Follower
from consul_leader.testing import ConsulAgent, free_ports

from conftest import ROOT, prime_key, python_env, wait_until

BLOCKS = all_blocks(Path(ROOT))
#: Python blocks that are deliberately fragments (few, each with a reason).
MAX_PYTHON_FRAGMENTS = 2
#: How long one Python block may take (the quickstart's starts an agent).
BLOCK_TIMEOUT = 90.0


def runnable(block: Block) -> bool:
    return block.language == "python" and not block.note("not run") and not block.note("run by")


PYTHON = [b for b in BLOCKS if runnable(b)]


def test_a_literal_block_that_is_python_says_so() -> None:
    """Sphinx highlights a ``::`` literal that parses as Python as Python;
    a ``.. code-block:: python`` says it, and carries its notes next to it."""
    assert [b.where for b in BLOCKS if b.language == "python-literal"] == []


def test_notes_belong_to_the_next_block_and_a_stray_note_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "page.rst"
    page.write_text("Title\n=====\n\n.. test: setup\n\n   x = 1\n\n.. test: check\n\n   assert y == 2\n\n"
                    ".. code-block:: python\n\n    y = x + 1\n\n.. test: not run, a reason\n   on two lines\n\n"
                    "Then::\n\n    $ consul-leader status a/key\n")
    first, second = blocks_of(page, tmp_path)
    assert (first.language, first.code, first.note("setup").body, first.note("check").body) == \
        ("python", "y = x + 1", "x = 1", "assert y == 2")
    assert second.language == "shell" and second.note("not run").argument == "a reason on two lines"
    assert second.commands() == ["consul-leader status a/key"]
    page.write_text("Title\n=====\n\n.. test: not run, nothing follows\n")
    with pytest.raises(ValueError, match="no block after it"):
        list(blocks_of(page, tmp_path))


def test_every_python_and_shell_block_is_run_or_says_why_not() -> None:
    unaccounted, fragments = [], []
    for block in BLOCKS:
        if block.language not in ("python", "shell"):
            continue
        not_run, run_by = block.note("not run"), block.note("run by")
        if not_run:
            assert not_run.argument, f"{block.where}: '.. test: not run' without a reason"
            if block.language == "python":
                fragments.append(block.where)
        elif run_by:
            test = Path(ROOT, run_by.argument.split()[0])
            assert test.is_file(), f"{block.where}: run by {run_by.argument}, which does not exist"
            assert block.path.name in test.read_text(encoding="utf-8"), \
                f"{block.where}: {run_by.argument} does not name {block.path.name}"
        elif block.language == "shell":
            unaccounted.append(block.where)
    assert unaccounted == [], "shell blocks neither run nor marked '.. test: not run, <why>'"
    assert len(fragments) <= MAX_PYTHON_FRAGMENTS, f"Python blocks not run: {fragments}"


def test_every_included_example_is_run_by_a_test() -> None:
    """The files shown with ``literalinclude``: the project's own test
    project (under tests/) or an example a test module names."""
    tests_text = "\n".join(p.read_text(encoding="utf-8") for p in Path(ROOT, "tests").rglob("test_*.py"))
    unrun = []
    for page in documentation(Path(ROOT)):
        for target in re.findall(r"^\s*\.\. literalinclude:: (\S+)", page.read_text(encoding="utf-8"), re.M):
            shown = (page.parent / target).resolve().relative_to(ROOT)
            if shown.parts[0] != "tests" and shown.name not in tests_text and shown.parent.name not in tests_text:
                unrun.append(f"{page.relative_to(ROOT)}: {shown}")
    assert unrun == []


# -- Python blocks ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    returncode: int
    output: str
    seconds: float


def _run_block(block: Block, env: Dict[str, str], cwd: Path) -> Outcome:
    setup, check = block.note("setup"), block.note("check")
    parts = [setup.body if setup else "", f"# --- {block.where}, as written ---", block.code,
             f"# --- {block.where}, checked ---", check.body if check else ""]
    cwd.mkdir(parents=True)
    script = cwd / "block.py"
    script.write_text("\n".join(parts) + "\n", encoding="utf-8")
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return Outcome(-1, f"timed out after {BLOCK_TIMEOUT} s\n{out}", BLOCK_TIMEOUT)
    return Outcome(done.returncode, done.stdout + done.stderr, time.monotonic() - started)


@pytest.fixture(scope="module")
def python_outcomes(consul_agent: ConsulAgent, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Outcome]:
    """Every runnable Python block, each in a process of its own, a few at
    once (they mostly wait on Consul), against the session's agent."""
    env = python_env()
    env["CONSUL_HTTP_ADDR"] = consul_agent.address
    env.pop("CONSUL_HTTP_TOKEN", None)
    base = tmp_path_factory.mktemp("blocks")
    with ThreadPoolExecutor(4) as pool:
        futures = {b.where: pool.submit(_run_block, b, env, base / re.sub(r"\W+", "-", b.where)) for b in PYTHON}
        return {where: future.result() for where, future in futures.items()}


@pytest.mark.parametrize("where", [b.where for b in PYTHON])
def test_python_block_runs_as_written(where: str, python_outcomes: Dict[str, Outcome]) -> None:
    outcome = python_outcomes[where]
    assert outcome.returncode == 0, f"{where} exited {outcome.returncode}:\n{outcome.output[-4000:]}"


# -- shell blocks and gunicorn hooks ---------------------------------------------------------------------------


def block_after(page: str, text: str) -> Block:
    """The first block of *page* after the first line that starts with *text*."""
    path = Path(ROOT, page)
    line = next(n for n, content in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if content.startswith(text))
    block = next(b for b in BLOCKS if b.path == Path(page) and b.line >= line)
    run_by = block.note("run by")
    assert run_by and run_by.argument.startswith("tests/test_doc_blocks.py"), f"{block.where} says who runs it"
    return block


#: A value that changes from run to run in a block's sample output, and what
#: it must look like here.
VOLATILE = re.compile(r"(?P<host>(?<=host=)\S+)|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)"
                      r"|(?P<uuid>[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})"
                      r"|(?P<number>\d+(?:\.\d+)?)")
LIKE = {"host": r"\S+", "iso": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z",
        "uuid": r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}", "number": r"\d+(?:\.\d+)?"}


def shape(sample: str, fixed: List[str]) -> "re.Pattern[str]":
    """A sample output line as a pattern: the same text, with timestamps,
    session IDs and numbers free, except inside the *fixed* strings (the
    key, the identities) which must appear as they are."""
    pattern, at = "", 0
    spans = [(m.start(), m.end()) for f in fixed for m in re.finditer(re.escape(f), sample)]
    for match in VOLATILE.finditer(sample):
        if any(start <= match.start() < end for start, end in spans):
            continue
        pattern += re.escape(sample[at:match.start()]) + LIKE[str(match.lastgroup)]
        at = match.end()
    return re.compile(pattern + re.escape(sample[at:]) + "$")


def output_lines(block: Block) -> List[str]:
    """What a console block shows the command printing."""
    return [line for line in block.code.splitlines() if line.strip() and not line.startswith("$ ")]


@pytest.fixture
def doc_env(consul_agent: ConsulAgent) -> Dict[str, str]:
    env = python_env()
    env["CONSUL_HTTP_ADDR"] = consul_agent.address
    env.pop("CONSUL_HTTP_TOKEN", None)
    # `consul-leader` and `consul` as the pages type them.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.path.dirname(consul_bin()), env["PATH"]])
    return env


def consul_bin() -> str:
    from consul_leader.testing import find_consul

    return find_consul()


@pytest.fixture
def page_key(consul_agent: ConsulAgent) -> Iterator[str]:
    """docs/cli.rst's key, as held and released once (no first-holder wait);
    whatever the test leaves on it is removed."""
    key = "service/report/leader"
    prime_key(consul_agent.url, key)
    yield key
    requests.delete(f"{consul_agent.url}/v1/kv/{key}?recurse", timeout=5)


def test_status_prints_what_cli_rst_shows(doc_env: Dict[str, str], consul_agent: ConsulAgent, page_key: str) -> None:
    """Its leader, and its contenders in the order they joined: the leader
    and one waiting."""
    block = block_after("docs/cli.rst", "``status``")
    (command,) = block.commands()
    sample = output_lines(block)
    identity = re.search(r"^leader: +(\S+)$", "\n".join(sample), re.M).group(1)
    waiting = [line.split()[0] for line in sample if line.endswith(" waiting alive")]
    with Candidate(page_key, address=consul_agent.address, identity=identity) as leader:
        assert leader.wait_for_leadership(30)
        others = [Candidate(page_key, address=consul_agent.address, identity=name).start() for name in waiting]
        try:
            wait_until(lambda: len(leader.contenders()) == 1 + len(others), 30, "every contender on the roster")
            shown = subprocess.run(shlex.split(command), env=doc_env, capture_output=True, text=True, timeout=30)
        finally:
            for other in others:
                other.stop()
    assert shown.returncode == 0, shown.stdout + shown.stderr
    printed = shown.stdout.splitlines()
    assert len(printed) == len(sample), shown.stdout
    for line, expected in zip(printed, sample):
        assert shape(expected, [page_key, identity, *waiting]).match(line), f"{line!r} is not like {expected!r}"


def test_watch_prints_what_cli_rst_shows(doc_env: Dict[str, str], consul_agent: ConsulAgent, page_key: str) -> None:
    block = block_after("docs/cli.rst", "Prints the current leader, then a line each time it changes")
    (command,) = block.commands()
    sample = output_lines(block)
    first, second = (line.split()[1] for line in sample if "fencing token" in line)
    lines: List[str] = []
    with Candidate(page_key, address=consul_agent.address, identity=first) as leader:
        assert leader.wait_for_leadership(30)
        watch = subprocess.Popen(shlex.split(command), env=doc_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        threading.Thread(target=lambda: lines.extend(watch.stdout or ()), daemon=True).start()
        try:
            wait_until(lambda: len(lines) >= 1, 30, "watch's first line")
            leader.stop()
            wait_until(lambda: len(lines) >= 2, 30, "watch's line for the leader's stop")
            with Candidate(page_key, address=consul_agent.address, identity=second) as successor:
                assert successor.wait_for_leadership(30)
                wait_until(lambda: len(lines) >= 3, 30, "watch's line for the next leader")
        finally:
            watch.send_signal(signal.SIGINT)
            code = watch.wait(30)
    assert code == 0, watch.stderr.read() if watch.stderr else ""
    assert len(lines) >= len(sample), lines  # and one more when the successor left
    for line, expected in zip(lines, sample):
        assert shape(expected, [first, second]).match(line.rstrip("\n")), f"{line!r} is not like {expected!r}"


class Gunicorn:
    """A real gunicorn with one worker and *hook_code* as its config file."""

    def __init__(self, hook_code: str, app: str, cwd: Path, env: Dict[str, str], tmp_path: Path) -> None:
        config = tmp_path / "gunicorn.conf.py"
        config.write_text(hook_code + "\n", encoding="utf-8")
        self.out = tmp_path / "gunicorn.out"
        (port,) = free_ports(1)
        with open(self.out, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(config), "--workers", "1",
                                          "--bind", f"127.0.0.1:{port}", app], cwd=cwd, env=env, stdout=fh,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.out.read_text(encoding="utf-8", errors="replace")


def a_worker_leads_before_any_request(hook: Block, app: str, cwd: Path, env: Dict[str, str], key: str,
                                      agent: ConsulAgent, tmp_path: Path) -> None:
    server = Gunicorn(hook.code, app, cwd, env, tmp_path)
    output = ""
    try:
        with Follower(key, address=agent.address) as follower:
            # No request is ever sent: without the hook nobody would lead.
            wait_until(lambda: follower.leader() is not None or server.proc.poll() is not None, 60,
                       "a gunicorn worker leads")
            assert follower.leader() is not None, "gunicorn exited"
    finally:
        output = server.stop()
        print(output)
    assert "Traceback" not in output


def test_the_django_gunicorn_hook_runs_for_election_before_the_first_request(
        doc_env: Dict[str, str], consul_agent: ConsulAgent, key: str, tmp_path: Path) -> None:
    """docs/integrations/django.rst's ``post_worker_init`` as the config file
    of a real gunicorn serving tests/djangoproject, the page's project."""
    hook = block_after("docs/integrations/django.rst", "  run before the first request, start it from gunicorn's hook")
    a_worker_leads_before_any_request(hook, "leaderproject.wsgi", Path(ROOT, "tests", "djangoproject"),
                                      dict(doc_env, LEADER_KEY=key), key, consul_agent, tmp_path)


def test_the_flask_gunicorn_hook_runs_for_election_before_the_first_request(
        doc_env: Dict[str, str], consul_agent: ConsulAgent, key: str, tmp_path: Path) -> None:
    """docs/integrations/flask.rst's ``post_worker_init`` as the config file
    of a real gunicorn serving docs/examples/flask_app.py, the page's app."""
    hook = block_after("docs/integrations/flask.rst", "start, call ``start`` from gunicorn's hook")
    a_worker_leads_before_any_request(hook, "flask_app:create_app()", Path(ROOT, "docs", "examples"),
                                      dict(doc_env, FLASK_CONSUL_LEADER_KEY=key), key, consul_agent, tmp_path)


SEND_REPORTS = """#!/bin/sh
echo "sent $* (fencing token ${CONSUL_LEADER_FENCING_TOKEN:-none})" >> reports.log
"""


def test_consul_lock_and_its_replacement_run_as_cli_rst_shows(doc_env: Dict[str, str], page_key: str,
                                                               tmp_path: Path) -> None:
    """docs/cli.rst's "Replacing consul lock": both lines, in a folder with
    a ``send-reports`` that notes its arguments and its fencing token."""
    block = block_after("docs/cli.rst", "Replacing ``consul lock``")
    before, after = block.commands()
    script = tmp_path / "send-reports"
    script.write_text(SEND_REPORTS)
    script.chmod(0o755)
    log = tmp_path / "reports.log"

    locked = subprocess.run(shlex.split(before), cwd=tmp_path, env=doc_env, capture_output=True, text=True,
                            timeout=60)
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert log.read_text().splitlines() == ["sent --daily (fencing token none)"]

    run = subprocess.Popen(shlex.split(after), cwd=tmp_path, env=doc_env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: len(log.read_text().splitlines()) > 1 or run.poll() is not None, 30,
                   "consul-leader run to run the command")
    finally:
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=30)[0]
    assert re.fullmatch(r"sent --daily \(fencing token \d+\)", log.read_text().splitlines()[1]), output
