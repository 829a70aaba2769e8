"""Many keys in one process: an :class:`~consul_leader.Elector` holding *n*
keys and another waiting on the same *n*, each process behind its own port
of a counting proxy.

Measured: the elector's threads and the process's connections to the agent,
the idle requests per second of each process, and the handover of one key
(``resign()`` in the holder until the ``elected`` receiver of the waiting
process ran) while the other keys stay held. ``consul lock`` needs a process
per key; its counterparts are one ``consul lock`` holder and one waiter
measured in the same run, times *n*.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from typing import IO, Any, Dict, List, Optional

from .contenders import ROOT, _env
from .elector_worker import connections_to, threads_of
from .proxy import CountingProxy

#: A pause between handovers, for both processes' watches to settle.
SETTLE = 0.3


class _Worker:
    def __init__(self, address: str, prefix: str, identity: str, n: int, log: str) -> None:
        with open(log, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.elector_worker", address, prefix, identity, str(n)],
                cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        self.leads = 0
        self.times: Dict[str, float] = {}
        self.replies: "queue.Queue[str]" = queue.Queue()
        self._changed = threading.Condition()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            words = raw.decode().split(" ", 2)
            with self._changed:
                if words[0] == "leads":
                    self.leads = int(words[1])
                elif words[0] in ("elected", "resigned"):
                    self.times[f"{words[0]} {words[1]}"] = float(words[2])
                else:
                    self.replies.put(raw.decode())
                self._changed.notify_all()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise RuntimeError(f"{what} not within {timeout}s")

    def stats(self) -> Dict[str, Any]:
        self.send("stats")
        reply = self.replies.get(timeout=30)
        return dict(json.loads(reply.split(" ", 1)[1]))

    def close(self) -> None:
        try:
            self.send("quit")
            self.process.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def _lock_process(consul: str, address: str, key: str, log: str) -> "subprocess.Popen[bytes]":
    with open(log, "wb") as out:
        return subprocess.Popen([consul, "lock", f"-http-addr={address}", key, "exec sleep 1000000"], env=_env(),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)


def measure(agent_address: str, consul: str, workdir: str, n: int, handovers: int,
            idle_window: float) -> Dict[str, Any]:
    """Run the benchmark against the agent at *agent_address*; the raw figures."""
    host, port = agent_address.split(":")
    proxy = CountingProxy((host, int(port)))
    prefix = f"bench/elector-{uuid.uuid4().hex[:8]}"
    workers: List[_Worker] = []
    locks: List["subprocess.Popen[bytes]"] = []
    try:
        holder = _Worker(proxy.listen("holder"), prefix, "holder", n, os.path.join(workdir, "elector-holder.log"))
        workers.append(holder)
        holder.wait(lambda: holder.leads == n, 300, f"the holder leading {n} keys")
        waiting = _Worker(proxy.listen("waiting"), prefix, "waiting", n, os.path.join(workdir, "elector-waiting.log"))
        workers.append(waiting)
        lock_key = f"{prefix}-lock/leader"
        lock_address = {"lock-holder": proxy.listen("lock-holder"), "lock-waiting": proxy.listen("lock-waiting")}
        for label in ("lock-holder", "lock-waiting"):
            locks.append(_lock_process(consul, lock_address[label], lock_key, os.path.join(workdir, f"{label}.log")))
            time.sleep(1.0)
        time.sleep(3.0)  # the waiting elector's first read, its session, every process's first rounds
        result: Dict[str, Any] = {"keys": n, "holder": holder.stats(), "waiting": waiting.stats()}
        for label, proc in zip(("lock-holder", "lock-waiting"), locks):
            lock_port = int(lock_address[label].rsplit(":", 1)[1])
            result[label] = {"threads": threads_of(proc.pid), "connections": connections_to(lock_port, str(proc.pid))}
        before = proxy.snapshot()
        t0 = time.monotonic()
        time.sleep(idle_window)
        elapsed = time.monotonic() - t0
        after = proxy.snapshot()
        for label in ("holder", "waiting", "lock-holder", "lock-waiting"):
            result[label]["requests_per_s"] = (after.get(label, 0) - before.get(label, 0)) / elapsed
        result["idle_window_s"] = elapsed
        latencies = []
        for i in range(min(handovers, n)):
            key = f"{prefix}/k{i:04d}"
            holder.send(f"resign {key}")
            waiting.wait(lambda key=key: f"elected {key}" in waiting.times, 30, f"the handover of {key}")
            holder.wait(lambda key=key: f"resigned {key}" in holder.times, 30, f"the resign of {key}")
            latencies.append((waiting.times[f"elected {key}"] - holder.times[f"resigned {key}"]) * 1000)
            time.sleep(SETTLE)
        result["handover_ms"] = latencies
        return result
    finally:
        for worker in workers:
            worker.close()
        for proc in locks:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proxy.close()


def figures(elector: Optional[Dict[str, Any]], lock_handover: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The figures of :func:`measure`'s result, with their targets."""
    from .report import figure_row
    from .run import percentiles

    if not elector:
        return []
    n = elector["keys"]
    per_key = f"consul lock: {n} processes, {n} x one measured in this run"
    rows = []
    for role, what in (("holder", f"holding {n} keys"), ("waiting", f"waiting on {n} keys")):
        ours, lock = elector[role], elector[f"lock-{role}"]
        rows += [
            figure_row(f"many keys, one process {what}: elector threads", "threads", ours["elector_threads"],
                       n * lock["threads"], 4.0, per_key + " (all OS threads)"),
            figure_row(f"many keys, one process {what}: connections to the agent", "conns", ours["connections"],
                       n * lock["connections"], 4.0, per_key),
            figure_row(f"many keys, one process {what}: idle requests/s in total", "req/s", ours["requests_per_s"],
                       n * lock["requests_per_s"], 20.0,
                       f"counted by a proxy over {elector['idle_window_s']:.0f} s; {per_key}"),
        ]
    stats = percentiles(elector["handover_ms"])
    theirs = lock_handover or {}
    for p, target in (("p50", None), ("p99", 50.0)):
        rows.append(figure_row(f"many keys: handover {p} of one key while the other {n - 1} are held", "ms",
                               stats[p], theirs.get(p), target,
                               f"n={stats['n']}; consul lock: one key alone, resign handover of this run"))
    return rows


def main() -> None:
    """``python -m benchmarks.elector [--keys N] [--handovers H]``: this
    benchmark alone, on an agent of its own; prints the figures as JSON."""
    import argparse
    import shutil
    import tempfile

    from consul_leader.testing import ConsulAgent

    from .run import percentiles

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--handovers", type=int, default=100)
    parser.add_argument("--idle-window", type=float, default=10.0)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="consul-leader-bench-elector-")
    try:
        with ConsulAgent(config={"limits": {"http_max_conns_per_client": 4096}}) as agent:
            found = measure(agent.address, agent.binary, workdir, args.keys, args.handovers, args.idle_window)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {"keys": found["keys"], "handover_ms": percentiles(found["handover_ms"]),
               "samples_ms": [round(ms, 2) for ms in found["handover_ms"]]}
    for role in ("holder", "waiting"):
        summary[role] = {k: found[role][k] for k in ("elector_threads", "connections", "requests_per_s")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
