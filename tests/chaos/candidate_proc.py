"""A candidate in a process of its own, recording what it believed and the
work it ran.

Run as ``python candidate_proc.py --address A --key K --identity I --out F``.
It runs a :class:`consul_leader.Candidate` with a job (``run(job,
block=False)``) and appends JSON lines to *F*, flushed one by one so that a
SIGKILLed process leaves everything it recorded. Times are
``time.monotonic()``, which every process on a Linux host shares (network
namespaces included).

Records (``ev``):

- ``start``: the candidate's timing (``ttl``, ``lease``, ``lock_delay``) and
  its ``receivers`` mode.
- ``ready``: with ``--hold``, built and waiting for SIGUSR2 to run.
- ``elected`` / ``deposed``: the signals, with ``token`` / ``reason``.
- ``up``: a sampler thread saw ``fencing_token`` turn non-None (that is,
  ``is_leader()`` True) at ``t``; ``token`` is the term's token.
- ``alive``: still leading at ``t`` (written at most every
  :data:`ALIVE_EVERY` seconds).
- ``down``: first sample not leading, at ``t``; ``last`` is the last sample
  that was, the believed end of the term.
- ``view``: ``leader()`` changed to ``leader``.
- ``work-start`` / ``work-alive`` / ``work-end`` (``kind: "job"``): the job's
  own start, a sign of life every :data:`ALIVE_EVERY` seconds while it does
  a step of work (``step``: when that step began; see :class:`Job`), and its
  return; ``work`` names the run, ``token`` is the fencing token the job
  read as it started (None if its term's lease had already run out).
- ``final``: on SIGTERM, before leaving, the answer to the last probe: the
  threads alive, ``health()``, whether a job runs and whether it leads.
- ``exit``: :meth:`Candidate.stop` returned, the process leaves.

A sample's ``t`` is read *before* asking the candidate, so a process stopped
between the two reads can only make ``t`` earlier than the belief, never
later: a sample taken after the lease ended would prove a real violation.
The job's records are written by the job itself, so its interval is what
the user's work would see.

Signals: SIGUSR1 resigns; SIGUSR2 starts a held candidate; SIGTERM stops the
candidate (releasing the lock) and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict
from typing import Any, Optional

from consul_leader import Candidate, deposed, elected, election_error, leader_changed

#: Seconds between ``alive`` records of a leading process and of a running
#: job; a SIGKILLed leader's last term and job are known to this precision.
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


class Job:
    """The work each term runs, as a careful user writes it: steps of *step*
    seconds, each begun only while ``is_leader()`` answers True (read after
    the step's start time, as the sampler does), until ``stop_event`` is
    set. A step under way when leadership ends runs to its end: that is the
    job "returning soon" after ``stop_event``, which the library must wait
    for before anyone else's work begins.

    Each step writes ``work-alive`` records (``step``: when it began) every
    :data:`ALIVE_EVERY` seconds, so a killed job's end is known; the job's
    interval is from ``work-start`` to its last step record."""

    def __init__(self, candidate: Candidate, rec: Recorder, step: float) -> None:
        self.candidate, self.rec, self.step = candidate, rec, step
        self.running = 0
        self.runs = 0
        self._lock = threading.Lock()

    def __call__(self, stop_event: threading.Event) -> None:
        t = time.monotonic()
        token = self.candidate.fencing_token
        with self._lock:
            self.runs += 1
            self.running += 1
            work = f"{os.getpid()}-job{self.runs}"
        try:
            self.rec.write("work-start", t, kind="job", work=work, token=token, step=t)
            while not stop_event.is_set():
                begin = time.monotonic()
                if not self.candidate.is_leader():
                    stop_event.wait(ALIVE_EVERY)
                    continue
                self.rec.write("work-alive", begin, kind="job", work=work, step=begin)
                while time.monotonic() - begin < self.step:
                    time.sleep(ALIVE_EVERY)
                    self.rec.write("work-alive", kind="job", work=work, step=begin)
        finally:
            with self._lock:
                self.running -= 1
            self.rec.write("work-end", kind="job", work=work)


def connect_receivers(candidate: Candidate, rec: Recorder, mode: str, slow: float) -> None:
    """The recording receivers, and with *mode* ``slow`` / ``raising`` one
    more on every signal that sleeps *slow* seconds / raises."""

    def on_elected(sender: Candidate, fencing_token: int, **_: Any) -> None:
        rec.write("elected", token=fencing_token)

    def on_deposed(sender: Candidate, reason: str, **_: Any) -> None:
        rec.write("deposed", reason=reason)

    elected.connect(on_elected, sender=candidate, weak=False)
    deposed.connect(on_deposed, sender=candidate, weak=False)
    if mode == "none":
        return

    def misbehave(sender: Candidate, **kwargs: Any) -> None:
        if mode == "slow":
            time.sleep(slow)
        else:
            raise RuntimeError("a receiver that raises (chaos)")

    for sig in (elected, deposed, leader_changed, election_error):
        sig.connect(misbehave, sender=candidate, weak=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--lock-delay", type=float, default=None)
    parser.add_argument("--receivers", choices=("none", "slow", "raising"), default="none",
                        help="one more receiver on every signal: sleeping --slow seconds, or raising")
    parser.add_argument("--slow", type=float, default=2.0)
    parser.add_argument("--step", type=float, default=0.05,
                        help="seconds of one step of the job: how long it may take to return after its "
                             "stop_event is set")
    parser.add_argument("--hold", action="store_true", help="start the candidate only on SIGUSR2")
    parser.add_argument("--final-wait", type=float, default=5.0,
                        help="on SIGTERM, seconds to wait for a healthy and consistent state before the "
                             "final record")
    args = parser.parse_args()
    # The library's own account goes to this process's log file.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(levelname)s %(message)s")

    rec = Recorder(args.out, args.identity)
    candidate = Candidate(args.key, identity=args.identity, address=args.address, ttl=args.ttl,
                          lock_delay=args.lock_delay)
    timing = candidate.timing
    rec.write("start", ttl=timing.check_ttl, lease=timing.lease, lock_delay=timing.lock_delay,
              receivers=args.receivers)
    connect_receivers(candidate, rec, args.receivers, args.slow)
    job = Job(candidate, rec, args.step)

    stop, resign, go, sampled = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: resign.set())
    signal.signal(signal.SIGUSR2, lambda *_: go.set())
    if args.hold:
        rec.write("ready")
        while not (go.wait(0.05) or stop.is_set()):
            pass
    # The sampler runs on through the final probe and stop(): its records
    # cover the handover that stop() makes.
    sampler = threading.Thread(target=sample, args=(candidate, rec, sampled), name="sampler", daemon=True)
    rec.write("run")
    candidate.run(job, block=False)
    sampler.start()
    while not stop.is_set():
        # Resign from the main thread, not in the handler: the handler may
        # interrupt code that holds the candidate's lock.
        if resign.wait(0.05):
            resign.clear()
            rec.write("resign", was_leader=candidate.resign())
    final(candidate, job, sampler, rec, args.final_wait)
    candidate.stop()
    stopped = time.monotonic()
    sampled.set()
    sampler.join(5)
    rec.write("exit", job_running=job.running, sampler_alive=sampler.is_alive(), stopped=stopped)


def final(candidate: Candidate, job: Job, sampler: threading.Thread, rec: Recorder, wait: float) -> None:
    """The last probe: a candidate that is healthy leads with its job running
    or follows with none. A moment of disagreement is a handover in
    progress, so wait up to *wait* seconds for it to settle; a lasting one
    is a candidate stuck (a leader without its job, a job without a leader,
    a dead thread, no heartbeat)."""
    deadline = time.monotonic() + wait
    while True:
        health = candidate.health()
        leading = candidate.is_leader()
        settled = health.ok and health.running and (job.running == (1 if leading else 0))
        if settled or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    threads = {t.name for t in threading.enumerate()}
    rec.write("final", health=asdict(health), leading=leading, job_running=job.running, job_runs=job.runs,
              sampler_alive=sampler.is_alive(), settled=settled, threads=sorted(threads))


if __name__ == "__main__":
    main()
