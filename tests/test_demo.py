"""``make demo`` (README.rst's first command, and docs/quickstart.rst's;
``consul-leader demo`` once installed): a real election on a throwaway
agent, told line by line."""

from __future__ import annotations

import re
import subprocess

from conftest import PYTHON, python_env

LINE = re.compile(r"^\[ *\d+\.\d{3}s\] ")


def test_the_demo_elects_hands_over_fails_over_and_tells_each_step_on_a_line_of_its_own() -> None:
    done = subprocess.run([PYTHON, "-m", "consul_leader.demo"], env=python_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    story, summary = done.stdout.split("\nsummary\n")
    for line in story.strip().splitlines():
        # Each step on a line of its own: a candidate's line and the demo's
        # were once printed into one ("...elected (fencing token 17)[ 3.432s] first leader").
        assert LINE.match(line) and len(LINE.findall(line)) == 1 and "s] " not in LINE.sub("", line, 1), line
    assert "fencing tokens strictly increase: True" in summary
    assert "no process left behind: True" in summary
    assert re.search(r"graceful handover: [\d.]+ ms", summary) and re.search(r"crash failover: +[\d.]+ s", summary)
