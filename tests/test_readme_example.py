"""README.rst's example runs as written, on two replicas, and prints what
the README shows it printing: the leader sends the report at once (not
after its first minute-long sleep), and Ctrl-C hands over in milliseconds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import List

from consul_leader.testing import ConsulAgent

from conftest import PYTHON, ROOT, python_env, wait_until


def example() -> str:
    readme = (Path(ROOT) / "README.rst").read_text()
    block = readme.split("Example\n=======\n", 1)[1].split(".. code-block:: python\n", 1)[1]
    lines = []
    for line in block.split("\n")[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


class Replica:
    def __init__(self, code: str, env: dict) -> None:
        self.proc = subprocess.Popen([PYTHON, "-c", code], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: List[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or ()), daemon=True).start()

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def test_the_readme_example_leads_reports_at_once_and_hands_over_on_ctrl_c(consul_agent: ConsulAgent,
                                                                            key: str) -> None:
    code = example().replace('"service/reports/leader"', repr(key))
    assert repr(key) in code, "the README's example no longer uses its key"
    env = dict(python_env(), CONSUL_HTTP_ADDR=consul_agent.address)
    replicas: List[Replica] = []
    try:
        first = Replica(code, env)
        replicas.append(first)
        wait_until(lambda: first.said("sending the daily report"), what="the first replica's report")
        # on_elected runs on the candidate's signal thread: its line may
        # come just after the report's.
        wait_until(lambda: re.search(r"leading, fencing token \d+$", "".join(first.lines), re.M),
                   what="the first replica's on_elected line")
        second = Replica(code, env)
        replicas.append(second)
        wait_until(lambda: second.said("is now"), what="the second replica to see the first lead")
        assert not second.said("sending the daily report")
        first.proc.send_signal(signal.SIGINT)
        # Within the example's own cadence: its wait_for_leadership(10),
        # then a report every 60 s (a slow start may miss the first wait).
        wait_until(lambda: second.said("sending the daily report"), 75, "the second replica's report")
        assert first.said("not leading any more: stopped")
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                os.kill(replica.proc.pid, signal.SIGKILL)
            replica.proc.wait()
