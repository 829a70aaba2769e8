"""Running the ``consul-leader`` command in tests: :class:`Runs` (the
``cli`` fixture of conftest.py hands one out) and helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

from consul_leader.cli import main
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, python_env, wait_until

CLI = [PYTHON, "-m", "consul_leader.cli"]

# A command that records its own life on CLOCK_BOOTTIME, which every
# process of the machine shares: its start (NAME.start: time and pid), then
# "still alive" every few ms (NAME.alive: a SIGKILL leaves no last word, so
# the last note is its end). NAME is its first argument, or the identity
# ``run`` gives it. It shrugs SIGTERM off (noting it in NAME.term), unless
# told --exit-on-term. Each Runs writes it as life.py in its folder.
LIFE = """\
import os, signal, sys, time
now = lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
args = [a for a in sys.argv[1:] if a != "--exit-on-term"]
base = os.path.join(os.environ["DIR"], args[0] if args else os.environ["CONSUL_LEADER_IDENTITY"])
if "--exit-on-term" in sys.argv:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
else:
    signal.signal(signal.SIGTERM, lambda *_: open(base + ".term", "a").write(repr(now()) + "\\n"))
with open(base + ".start", "a") as f:
    f.write(f"{now()!r} {os.getpid()}\\n")
while True:
    with open(base + ".alive.tmp", "w") as f:
        f.write(repr(now()))
    os.replace(base + ".alive.tmp", base + ".alive")
    time.sleep(0.003)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits to be reaped (and may be, meanwhile).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Gone between the two looks: /proc answers ESRCH on read.
        return False


class Runs:
    """Starts ``consul-leader`` processes; whatever still runs at the end is killed."""

    def __init__(self, agent: ConsulAgent, tmp: Path) -> None:
        self.env = dict(python_env(), CONSUL_HTTP_ADDR=agent.address, DIR=str(tmp))
        self.tmp = tmp
        self.procs: List[subprocess.Popen[str]] = []
        #: The command of :data:`LIFE`, to run as ``PYTHON -S life``.
        self.life = tmp / "life.py"
        self.life.write_text(LIFE)

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(CLI + list(args), env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str, name: str = "run", stdout: Optional[int] = None) -> subprocess.Popen[str]:
        """``consul-leader ARGS``, its output in NAME.log."""
        return self.spawn(CLI + list(args), name=name, stdout=stdout)

    def spawn(self, argv: List[str], name: str, stdout: Optional[int] = None) -> subprocess.Popen[str]:
        """Any program (``consul lock``), its output in NAME.log."""
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(argv, env=self.env, stdout=stdout or log, stderr=log, text=True)
        log.close()
        self.procs.append(proc)
        return proc

    def started(self, name: str) -> Tuple[float, int]:
        """When the :data:`LIFE` command *name* started (its first run), and its pid."""
        path = self.tmp / f"{name}.start"
        wait_until(lambda: path.exists() and path.read_text().endswith("\n"), what=f"{name}'s command to start")
        at, pid = path.read_text().split("\n")[0].split()
        return float(at), int(pid)

    def last_alive(self, name: str, pid: int) -> float:
        """The last sign of life of the :data:`LIFE` command *name*, once it is dead."""
        wait_until(lambda: not alive(pid), timeout=60, what=f"{name}'s command (pid {pid}) to end")
        return float((self.tmp / f"{name}.alive").read_text())

    def log(self, name: str = "run") -> str:
        return (self.tmp / f"{name}.log").read_text()

    def status(self, key: str) -> dict:
        return json.loads(self("status", "--json", key).stdout)

    def close(self) -> None:
        """Kill what still runs (woken first, should a test have stopped it),
        and the commands of :data:`LIFE` a test left behind."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        for start in self.tmp.glob("*.start"):
            for line in start.read_text().split("\n"):
                if line:
                    try:
                        os.kill(int(line.split()[1]), signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def exit_code(argv: List[str]) -> int:
    """Run the command in this process (argument handling needs no subprocess)."""
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's errors and --help
        return int(exc.code or 0)
