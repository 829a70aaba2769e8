"""One process of the many-keys benchmark: an :class:`~consul_leader.Elector`
running for *n* keys under a prefix.

``python -m benchmarks.elector_worker ADDRESS PREFIX IDENTITY N`` prints
lines ``elected KEY T`` (from the ``elected`` receiver, ``T`` is
``time.monotonic()``) and ``leads COUNT`` every half second, and reads
commands on stdin: ``resign KEY`` (answers ``resigned KEY T``, with ``T``
read just before :meth:`~consul_leader.Candidacy.resign`), ``stats``
(answers ``stats {json}``: the elector's threads, all threads, and the
process's TCP connections to the agent's port) and ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from consul_leader import Candidacy, Elector, elected

_out = threading.Lock()


def say(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def connections_to(port: int, pid: str = "self") -> int:
    """Established TCP connections of process *pid* to *port*."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with open(table, encoding="ascii") as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    count += 1
    return count


def threads_of(pid: int) -> int:
    """The number of OS threads of process *pid*."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


def main() -> None:
    address, prefix, identity, n = sys.argv[1:5]
    elector = Elector(prefix, address=address, identity=identity)
    keys = {c.key: c for c in (elector.candidate(f"k{i:04d}") for i in range(int(n)))}

    def on_elected(sender: Candidacy, fencing_token: int, **_: Any) -> None:
        if sender.elector is elector:
            say(f"elected {sender.key} {time.monotonic()}")

    elected.connect(on_elected)
    elector.start()
    done = threading.Event()

    def report() -> None:
        while not done.wait(0.5):
            say(f"leads {sum(1 for c in keys.values() if c.is_leader())}")

    threading.Thread(target=report, daemon=True).start()
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "resign":
            t0 = time.monotonic()
            keys[words[1]].resign()
            say(f"resigned {words[1]} {t0}")
        elif words[0] == "stats":
            ours = [t.name for t in threading.enumerate() if f"{identity} {elector.prefix}" in t.name]
            say("stats " + json.dumps({"elector_threads": len(ours), "thread_names": ours,
                                       "all_threads": threading.active_count(),
                                       "connections": connections_to(int(address.rsplit(":", 1)[1]))}))
        elif words[0] == "quit":
            break
    done.set()
    elector.stop()


if __name__ == "__main__":
    main()
