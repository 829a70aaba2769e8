"""A child process that runs consul-leader candidates for the benchmarks.

Usage: ``python -m benchmarks.worker ADDRESS KEY LABEL N TTL``. It starts *N*
candidates (threads of this process) on *KEY* and speaks JSON lines:

stdout
    ``{"ev": "ready"}`` once started; ``{"ev": "elected", "who": ID, "t": T}``
    where *T* is ``time.monotonic()`` (shared by every process on Linux) taken
    in the ``elected`` signal, i.e. when ``is_leader()`` has just turned True;
    ``{"ev": "resigning", "who": ID, "t": T}`` just before ``resign()``.
stdin
    ``resign`` makes the local leader resign; ``exit`` stops every candidate.

SIGTERM stops every candidate (:func:`consul_leader.stop_on_signals`): the
deploy case, where the lock is released before the process exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, List

from consul_leader import Candidate, elected, stop_on_signals

_out = threading.Lock()


def emit(**event: Any) -> None:
    with _out:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def main(argv: List[str]) -> None:
    address, key, label, n, ttl = argv[0], argv[1], argv[2], int(argv[3]), float(argv[4])

    def on_elected(sender: Candidate, **_: Any) -> None:
        emit(ev="elected", who=sender.identity, t=time.monotonic())

    elected.connect(on_elected, weak=False)
    stop_on_signals()
    candidates = [Candidate(key, address=address, identity=f"{label}-{i}", ttl=ttl) for i in range(n)]
    for c in candidates:
        c.start()
    emit(ev="ready")
    for line in sys.stdin:
        command = line.strip()
        if command == "resign":
            for c in candidates:
                if c.is_leader():
                    emit(ev="resigning", who=c.identity, t=time.monotonic())
                    c.resign()
                    break
            else:
                emit(ev="not-leader")
        elif command == "exit":
            break
    for c in candidates:
        c.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
