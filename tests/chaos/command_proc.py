"""The command a chaos ``consul-leader run`` supervisor runs while it leads:
it records its own lifetime as work.

Run as ``python command_proc.py --out F --identity I [--ignore-term]``, with
``CONSUL_LEADER_FENCING_TOKEN`` in its environment (the supervisor sets it).
It appends to *F* (the same JSON lines as ``candidate_proc.py``'s work
records, ``kind: "command"``): ``work-start`` with ``token``, ``work-alive``
every :data:`ALIVE_EVERY` seconds, and ``work-end`` when it leaves on
SIGTERM. With ``--ignore-term`` it records the SIGTERM (``work-sigterm``)
and runs on until SIGKILL: its end is then its last ``work-alive``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

ALIVE_EVERY = 0.005


def main() -> None:
    t0 = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    token_text = os.environ.get("CONSUL_LEADER_FENCING_TOKEN")
    token = int(token_text) if token_text else None
    work = f"{os.getpid()}-command"
    fh = open(args.out, "a", encoding="utf-8")

    def write(ev: str, t: Any = None, **fields: Any) -> None:
        record = {"ev": ev, "id": args.identity, "pid": os.getpid(), "t": time.monotonic() if t is None else t,
                  "kind": "command", "work": work, **fields}
        fh.write(json.dumps(record) + "\n")
        fh.flush()

    terminated = []

    def on_term(*_: Any) -> None:
        if args.ignore_term:
            write("work-sigterm")
        else:
            terminated.append(True)

    signal.signal(signal.SIGTERM, on_term)
    write("work-start", t0, token=token, ignores_sigterm=args.ignore_term)
    while not terminated:
        time.sleep(ALIVE_EVERY)
        write("work-alive")
    write("work-end")
    fh.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
