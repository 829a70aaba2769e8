"""An :class:`consul_leader.Elector` with many keys in a process of its own,
recording, per key, what it believed and the work it ran.

Run as ``python elector_proc.py --address A --prefix P --keys N --identity I
--out F``. The records are those of ``candidate_proc.py`` (``start``,
``up``, ``alive``, ``down``, ``elected``, ``deposed``, ``work-start``,
``work-alive``, ``work-end``, ``final``, ``exit``) with a ``key`` field, so that the checker can read each
key's records as one election: ``test_chaos_elector.by_key`` splits them. The even keys run
a job (``Candidacy.run(job, block=False)``) like ``candidate_proc.Job``; the odd ones have no
job, and the same work is started by their ``on_elected`` receiver and stopped (and waited
for) by their ``on_deposed`` receiver: the keys whose lease only the Elector's worker watches.

One sampler thread looks at every key every :data:`SAMPLE_EVERY` seconds; a
leading key writes ``alive`` at most every :data:`ALIVE_EVERY` seconds.

Signals: SIGUSR1 resigns a random tenth of the keys this process leads;
SIGTERM stops the elector (releasing every key) and exits.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time
from typing import Any, Dict, List, Optional

from candidate_proc import Recorder  # this script's folder is on sys.path

from consul_leader import Candidacy, Elector, deposed, elected
from consul_leader.session import lease_clock

ALIVE_EVERY = 0.05
SAMPLE_EVERY = 0.002


def sample(keys: List[Candidacy], rec: Recorder, stop: threading.Event) -> None:
    token: Dict[str, Optional[int]] = {c.key: None for c in keys}
    last: Dict[str, float] = {}
    written: Dict[str, float] = {}
    while not stop.is_set():
        for c in keys:
            t = time.monotonic()
            now_token = c.fencing_token
            if now_token != token[c.key]:
                if token[c.key] is not None:
                    rec.write("down", t, key=c.key, last=last[c.key], token=token[c.key])
                if now_token is not None:
                    rec.write("up", t, key=c.key, token=now_token)
                    written[c.key] = t
                token[c.key] = now_token
            if now_token is not None:
                last[c.key] = t
                if t - written[c.key] >= ALIVE_EVERY:
                    rec.write("alive", t, key=c.key)
                    written[c.key] = t
        time.sleep(SAMPLE_EVERY)
    for key, value in token.items():
        if value is not None:
            rec.write("alive", last[key], key=key)


class Job:
    """``candidate_proc.Job`` for one key: steps of *step* seconds, each
    begun only while the key is led, until ``stop_event`` is set."""

    def __init__(self, candidacy: Candidacy, rec: Recorder, step: float, running: Dict[str, int],
                 name: str = "job", stops_mid_step: bool = False) -> None:
        self.c, self.rec, self.step, self.running, self.name = candidacy, rec, step, running, name
        self.stops_mid_step = stops_mid_step
        self.runs = 0

    def __call__(self, stop_event: threading.Event) -> None:
        t = time.monotonic()
        token = self.c.fencing_token
        self.runs += 1
        self.running[self.c.key] = self.running.get(self.c.key, 0) + 1
        work = f"{os.getpid()}-{self.c.key}-{self.name}{self.runs}"
        try:
            self.rec.write("work-start", t, key=self.c.key, kind="job", work=work, token=token, step=t)
            while not stop_event.is_set():
                begin = time.monotonic()
                if not self.c.is_leader():
                    stop_event.wait(ALIVE_EVERY)
                    continue
                self.rec.write("work-alive", begin, key=self.c.key, kind="job", work=work, step=begin)
                while time.monotonic() - begin < self.step:
                    # Work stopped by receivers stops mid-step: the deposed
                    # receivers of every key share one thread, and each waits
                    # for its key's work.
                    cut = stop_event.wait(ALIVE_EVERY / 2) if self.stops_mid_step else time.sleep(ALIVE_EVERY / 2)
                    self.rec.write("work-alive", key=self.c.key, kind="job", work=work, step=begin)
                    if cut:
                        break
        finally:
            self.running[self.c.key] -= 1
            self.rec.write("work-end", key=self.c.key, kind="job", work=work)


class ReceiverWork:
    """The work of a key without a job: a thread that its ``on_elected``
    receiver starts and its ``on_deposed`` receiver stops and waits for
    (the release is queued behind the deposed receivers)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def elected(self) -> None:
        if not self.job.c.is_leader():
            # Told of a term that already ended (the process was frozen
            # between winning and its receivers): deposed follows at once.
            return
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.job, args=(self.stop,), daemon=True)
        self.thread.start()

    def deposed(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
            self.thread = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--final-wait", type=float, default=5.0)
    args = parser.parse_args()

    rec = Recorder(args.out, args.identity)
    elector = Elector(args.prefix, identity=args.identity, address=args.address, ttl=args.ttl)
    keys = [elector.candidate(f"k{i:03d}") for i in range(args.keys)]
    timing = elector.timing
    rec.write("start", ttl=timing.check_ttl, lease=timing.lease, lock_delay=timing.lock_delay, keys=args.keys)
    running: Dict[str, int] = {}

    jobs = {c.key: Job(c, rec, args.step, running) if i % 2 == 0 else
            Job(c, rec, args.step, running, "receivers", stops_mid_step=True) for i, c in enumerate(keys)}
    by_receivers = {c.key: ReceiverWork(jobs[c.key]) for i, c in enumerate(keys) if i % 2}

    def on_elected(sender: Candidacy, fencing_token: int, **_: Any) -> None:
        rec.write("elected", key=sender.key, token=fencing_token)
        if sender.key in by_receivers:
            by_receivers[sender.key].elected()

    def on_deposed(sender: Candidacy, reason: str, **_: Any) -> None:
        if sender.key in by_receivers:
            by_receivers[sender.key].deposed()
        rec.write("deposed", key=sender.key, reason=str(reason))

    for c in keys:
        elected.connect(on_elected, sender=c, weak=False)
        deposed.connect(on_deposed, sender=c, weak=False)
    stop, resign, sampled = threading.Event(), threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: resign.set())
    sampler = threading.Thread(target=sample, args=(keys, rec, sampled), name="sampler", daemon=True)
    rec.write("run")
    for c in keys:
        if c.key not in by_receivers:
            c.run(jobs[c.key], block=False)
    elector.start()
    sampler.start()
    rng = random.Random(os.getpid())
    while not stop.is_set():
        if resign.wait(0.05):
            resign.clear()
            leading = [c for c in keys if c.is_leader()]
            for c in rng.sample(leading, max(1, len(leading) // 10)) if leading else []:
                rec.write("resign", key=c.key, was_leader=c.resign())
    # The final probe: healthy, and each key led with its job running or
    # not led with none. Keys move while others stop (a handover under
    # way), so each key gets until the deadline to agree.
    deadline = time.monotonic() + args.final_wait
    while True:
        ok = elector.running and elector.heartbeat_stats.last_ok > lease_clock() - timing.check_ttl
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for c in keys:
        while True:
            leading = c.is_leader()
            settled = running.get(c.key, 0) == (1 if leading else 0) and leading == c.is_leader()
            if settled or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        rec.write("final", key=c.key, health={"running": elector.running, "ok": ok}, leading=leading,
                  job_running=running.get(c.key, 0), job_runs=jobs[c.key].runs, sampler_alive=sampler.is_alive(),
                  settled=settled)
    elector.stop()
    stopped = time.monotonic()
    sampled.set()
    sampler.join(5)
    rec.write("exit", job_running=sum(running.values()), sampler_alive=sampler.is_alive(), stopped=stopped)


if __name__ == "__main__":
    main()
