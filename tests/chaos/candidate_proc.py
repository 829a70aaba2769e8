"""A candidate in a process of its own, recording what it believed.

Run as ``python candidate_proc.py --address A --key K --identity I --out F``.
It runs a :class:`consul_leader.Candidate` and appends JSON lines to *F*,
flushed one by one so that a SIGKILLed process leaves everything it recorded.
Times are ``time.monotonic()``, which every process on a Linux host shares.

Records (``ev``):

- ``start``: the candidate's timing (``ttl``, ``lease``, ``lock_delay``).
- ``elected`` / ``deposed``: the signals, with ``token`` / ``reason``.
- ``up``: a sampler thread saw ``fencing_token`` turn non-None (that is,
  ``is_leader()`` True) at ``t``; ``token`` is the term's token.
- ``alive``: still leading at ``t`` (written at most every
  :data:`ALIVE_EVERY` seconds).
- ``down``: first sample not leading, at ``t``; ``last`` is the last sample
  that was, the believed end of the term.
- ``view``: ``leader()`` changed to ``leader``.
- ``exit``: the process stops on SIGTERM.

A sample's ``t`` is read *before* asking the candidate, so a process stopped
between the two reads can only make ``t`` earlier than the belief, never
later: a sample taken after the lease ended would prove a real violation.

Signals: SIGUSR1 resigns; SIGTERM stops the candidate (releasing the lock)
and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from typing import Any, Optional

from consul_leader import Candidate, deposed, elected

#: Seconds between ``alive`` records of a leading process; a SIGKILLed
#: leader's last term is known to this precision.
ALIVE_EVERY = 0.005
#: Seconds between samples.
SAMPLE_EVERY = 0.001


class Recorder:
    def __init__(self, path: str, identity: str) -> None:
        self.identity = identity
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, ev: str, t: Optional[float] = None, **fields: Any) -> None:
        record = {"ev": ev, "id": self.identity, "pid": os.getpid(),
                  "t": time.monotonic() if t is None else t, **fields}
        with self._lock:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()


def sample(candidate: Candidate, rec: Recorder, stop: threading.Event) -> None:
    token: Optional[int] = None
    last = written = 0.0
    view: Optional[str] = None
    while not stop.is_set():
        t = time.monotonic()
        now_token = candidate.fencing_token
        if now_token != token:
            if token is not None:
                rec.write("down", t, last=last, token=token)
            if now_token is not None:
                rec.write("up", t, token=now_token)
                written = t
            token = now_token
        if token is not None:
            last = t
            if t - written >= ALIVE_EVERY:
                rec.write("alive", t)
                written = t
        leader = candidate.leader()
        if leader != view:
            view = leader
            rec.write("view", leader=leader)
        time.sleep(SAMPLE_EVERY)
    if token is not None:
        rec.write("alive", last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ttl", type=float, default=1.0)
    args = parser.parse_args()

    rec = Recorder(args.out, args.identity)
    candidate = Candidate(args.key, identity=args.identity, address=args.address, ttl=args.ttl)
    timing = candidate.timing
    rec.write("start", ttl=timing.check_ttl, lease=timing.lease, lock_delay=timing.lock_delay)

    def on_elected(sender: Candidate, fencing_token: int, **_: Any) -> None:
        rec.write("elected", token=fencing_token)

    def on_deposed(sender: Candidate, reason: str, **_: Any) -> None:
        rec.write("deposed", reason=reason)

    elected.connect(on_elected, sender=candidate)
    deposed.connect(on_deposed, sender=candidate)

    stop, resign = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: resign.set())
    sampler = threading.Thread(target=sample, args=(candidate, rec, stop), name="sampler", daemon=True)
    candidate.start()
    sampler.start()
    while not stop.is_set():
        # Resign from the main thread, not in the handler: the handler may
        # interrupt code that holds the candidate's lock.
        if resign.wait(0.05):
            resign.clear()
            rec.write("resign", was_leader=candidate.resign())
    candidate.stop()
    sampler.join()
    rec.write("exit")


if __name__ == "__main__":
    main()
