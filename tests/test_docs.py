"""The documentation: it builds with ``-W``, its quickstart example runs
against a real agent and does what the page says, and the reference covers
every public name and the timing table the code derives."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import venv
from pathlib import Path
from typing import Iterator, List

import pytest

import consul_leader
from consul_leader import Timing
from consul_leader.client import ConsulClient, ConsulConfig
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, ROOT, python_env, wait_until

DOCS = Path(ROOT) / "docs"
EXAMPLE = DOCS / "examples" / "quickstart.py"


def test_docs_build_with_warnings_as_errors_from_the_docs_requirements_alone(tmp_path: Path) -> None:
    """As Read the Docs builds them (.readthedocs.yaml): a fresh virtualenv
    with ``pip install . -r requirements/docs.txt`` and nothing else (no
    Django, Celery or Flask for autodoc to import), then ``sphinx-build -W``."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                              ROOT, "-r", os.path.join(ROOT, "requirements", "docs.txt")], capture_output=True,
                             text=True, timeout=600, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert install.returncode == 0, install.stdout + install.stderr
    frameworks = subprocess.run([str(bin_dir / "python"), "-c", "import django"], capture_output=True, env=env)
    assert frameworks.returncode != 0, "the docs requirements alone: Django must not be installed"
    result = subprocess.run(
        [str(bin_dir / "sphinx-build"), "-W", "--keep-going", "-E", "-q", "-b", "html", str(DOCS),
         str(tmp_path / "html")], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"sphinx-build -W failed:\n{result.stderr}"
    assert (tmp_path / "html" / "index.html").exists()
    # The notes for tests/test_doc_blocks.py are rst comments: never shown.
    assert "class Database" not in (tmp_path / "html" / "concepts.html").read_text(encoding="utf-8")
    assert "LeaderElection" in (tmp_path / "html" / "integrations" / "flask.html").read_text(encoding="utf-8")


def test_api_reference_documents_every_public_name() -> None:
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\.\. (?:auto)?(?:class|function|data|exception):: (\w+)\s*$", text, re.M))
    assert sorted(set(consul_leader.__all__) - documented) == []
    assert sorted(documented - set(consul_leader.__all__)) == []


def test_quickstart_shows_the_tested_example() -> None:
    text = (DOCS / "quickstart.rst").read_text(encoding="utf-8")
    assert ".. literalinclude:: examples/quickstart.py" in text


def test_timing_table_in_concepts_is_what_timing_from_ttl_derives() -> None:
    text = (DOCS / "concepts.rst").read_text(encoding="utf-8")
    table = text.split(".. csv-table:: Derived durations", 1)[1].split("\n\n", 2)[1]
    rows = [[float(cell) for cell in line.split(",")] for line in table.strip().splitlines()]
    assert len(rows) >= 4
    for ttl, heartbeat, lease, lock_delay, session_ttl, failover in rows:
        t = Timing.from_ttl(ttl)
        assert (round(t.heartbeat, 2), round(t.lease, 2), t.lock_delay, t.session_ttl) == \
            (heartbeat, lease, lock_delay, session_ttl), f"row ttl={ttl:g}"
        assert failover == t.check_ttl + t.lock_delay


class Example:
    """docs/examples/quickstart.py run as a program, its output in a file."""

    def __init__(self, agent: ConsulAgent, key: str, out: Path) -> None:
        env = python_env()
        env.update(CONSUL_HTTP_ADDR=agent.address, QUICKSTART_KEY=key)
        env.pop("CONSUL_HTTP_TOKEN", None)
        self.out = out
        with open(out, "wb") as fh:
            self.proc = subprocess.Popen([PYTHON, str(EXAMPLE)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.identity = f"{socket.gethostname()}:{self.proc.pid}"

    def lines(self) -> List[str]:
        return self.out.read_text(encoding="utf-8", errors="replace").splitlines()

    def wait_for(self, line: str) -> List[str]:
        """Wait (within 30 s) until *line* was printed; the output up to it."""
        wait_until(lambda: line in self.lines() or self.proc.poll() is not None, 30, f"{line!r} printed")
        lines = self.lines()
        assert line in lines, f"{line!r} not printed; the example ended with {self.proc.returncode}:\n" + \
            "\n".join(lines)
        return lines[:lines.index(line) + 1]

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def run_example(consul_agent: ConsulAgent, key: str, tmp_path: Path) -> Iterator:
    made: List[Example] = []

    def start() -> Example:
        example = Example(consul_agent, key, tmp_path / f"example-{len(made)}.out")
        made.append(example)
        return example

    yield start
    for example in made:
        if example.proc.poll() is None:
            example.proc.kill()
            example.proc.wait()
        print(f"--- {example.identity} ---\n" + "\n".join(example.lines()))


ELECTED = re.compile(r"^elected: (\S+) \(fencing token (\d+)\)$", re.M)


def elected_line(example: Example) -> "re.Match[str]":
    """The example's ``elected: ...`` line (waited for within 30 s)."""
    wait_until(lambda: ELECTED.search("\n".join(example.lines())) or example.proc.poll() is not None, 30,
               "the elected line printed")
    match = ELECTED.search("\n".join(example.lines()))
    assert match is not None, "no elected line:\n" + "\n".join(example.lines())
    return match


def test_quickstart_example_leads_waits_and_hands_over_on_sigterm(run_example, consul_agent: ConsulAgent,
                                                                  key: str) -> None:
    first = run_example()
    before = first.wait_for(f"report sent by {first.identity}")
    assert before[0] == "leader now: None"
    # The @on_elected receiver runs on the signal thread, the job on its own:
    # their two lines may come in either order.
    token = elected_line(first)
    assert token.group(1) == first.identity

    second = run_example()
    waiting = second.wait_for("not the leader; send_report() returns None")
    # It sees who leads, and @leader_only kept send_report() from running there.
    assert waiting[0] == f"leader now: {first.identity}"
    assert not any(line.startswith("report sent") for line in waiting)

    # stop_on_signals(): SIGTERM releases the lock, then exits with 128 + 15.
    assert first.terminate() == 128 + signal.SIGTERM
    second.wait_for(f"report sent by {second.identity}")
    taken = elected_line(second)
    assert taken.group(1) == second.identity
    assert int(taken.group(2)) > int(token.group(2))
    second.wait_for(f"leader now: {second.identity}")

    assert second.terminate() == 128 + signal.SIGTERM
    client = ConsulClient(ConsulConfig.from_args(address=consul_agent.address, environ={}))
    _, entry = client.get_key(key)
    assert entry is not None and not entry.get("Session"), "the last leader did not release the lock at exit"

