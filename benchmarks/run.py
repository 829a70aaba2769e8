"""Benchmarks of consul-leader side by side with ``consul lock``.

``python -m benchmarks.run`` (``make bench``) starts its own Consul agent
(:class:`consul_leader.testing.ConsulAgent`), measures the contenders
(the library, ``consul-leader run`` and ``consul lock``) against it in the
same run, and writes ``benchmarks/results.json``,
``docs/benchmarks_table.rst`` and the ``docs/_static/bench_*.png`` plots.
``--quick`` (``make bench-quick``) does fewer repetitions in a few
minutes; ``--tiny`` only exercises the machinery (used by the tests).
``--only partition`` runs just the partition benchmark
(:mod:`benchmarks.partition`, which needs root and ``ip netns``) and keeps
the other results of ``benchmarks/results.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import requests

from consul_leader import Candidate, leader_only, set_default
from consul_leader import is_leader as module_is_leader
from consul_leader.client import ConsulClient, ConsulConfig
from consul_leader.testing import ConsulAgent

from .contenders import CLI, LIBRARY, LOCK, ROOT, SUPERVISORS, KeyObserver, Pool, breakdown, cpu_seconds
from .proxy import CountingProxy

RESULTS = os.path.join(ROOT, "benchmarks", "results.json")


@dataclass(frozen=True)
class Mode:
    name: str
    handovers: int
    crash_runs: int
    lock_crash_runs: int
    idle_followers: int
    idle_window: float
    timeit_number: int
    scale_sizes: Tuple[int, ...]
    scale_handovers: int
    crash_in_background: bool
    partition_runs: int = 0
    elector_keys: int = 1000
    elector_handovers: int = 100


MODES = {
    "full": Mode("full", handovers=50, crash_runs=10, lock_crash_runs=10, idle_followers=3, idle_window=60.0,
                 timeit_number=1_000_000, scale_sizes=(1, 10, 50, 100), scale_handovers=25,
                 crash_in_background=False, partition_runs=5),
    "quick": Mode("quick", handovers=20, crash_runs=3, lock_crash_runs=2, idle_followers=2, idle_window=10.0,
                  timeit_number=200_000, scale_sizes=(1, 10, 50, 100), scale_handovers=3,
                  crash_in_background=True, partition_runs=1),
    "tiny": Mode("tiny", handovers=3, crash_runs=1, lock_crash_runs=0, idle_followers=1, idle_window=2.0,
                 timeit_number=10_000, scale_sizes=(1, 3), scale_handovers=2, crash_in_background=True,
                 elector_keys=20, elector_handovers=3),
}

# Time for processes that lost a race to return to their blocking queries.
SETTLE = 0.3
TTL_TUNED = 1.0
TTL_DEFAULT = 3.0


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentiles(values: Sequence[float]) -> Dict[str, Any]:
    """n, p50, p95, p99, max and mean of *values* (linear interpolation)."""
    data = sorted(values)
    if not data:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}

    def q(p: float) -> float:
        pos = (len(data) - 1) * p
        lo, hi = math.floor(pos), math.ceil(pos)
        return data[lo] + (data[hi] - data[lo]) * (pos - lo)

    return {"n": len(data), "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": data[-1],
            "mean": sum(data) / len(data)}


class Bench:
    """One run: an agent, a scratch folder, and the measurements so far."""

    def __init__(self, mode: Mode, agent: ConsulAgent, workdir: str) -> None:
        self.mode = mode
        self.agent = agent
        self.workdir = workdir
        self.samples: Dict[str, Dict[str, Any]] = {"handover_ms": {}, "failover_s": {}, "scale": {},
                                                   "handover_breakdown_ms": {}, "observer_lag_ms": {}}
        self.stats: Dict[str, Any] = {}

    def key(self, what: str) -> str:
        return f"bench/{what}-{uuid.uuid4().hex[:8]}"

    def pool(self, kind: str, what: str, sizes: List[int], ttl: float = TTL_DEFAULT, address: Any = None) -> Pool:
        return Pool(kind, address or self.agent.address, self.key(what), sizes, self.workdir,
                    self.agent.binary, ttl=ttl, agent=self.agent.address)

    # -- graceful handover ----------------------------------------------------

    def handovers(self) -> None:
        """Graceful handovers, the kinds taking turns on their own keys (so
        that the load of the moment falls on each alike): ``resign`` for the
        library and ``consul lock``, SIGTERM to the leading process for all
        three. For the supervisors, each SIGTERM handover is also split into
        its segments, seen from outside (:func:`benchmarks.contenders.breakdown`),
        and the observers' own wake-up latency is measured between the rounds
        on a key of the benchmark's own, written from this process."""
        lag: List[Tuple[float, float]] = []
        for how, kinds in (("resign", (LIBRARY, LOCK)), ("sigterm", (LIBRARY, CLI, LOCK))):
            pools = {kind: self.pool(kind, f"handover-{how}", [1, 1, 1]) for kind in kinds}
            observers: Dict[str, KeyObserver] = {}
            if how == "sigterm":
                observers["calibration"] = KeyObserver(self.agent.address, self.key("observer"))
            latencies: Dict[str, List[float]] = {kind: [] for kind in kinds}
            handed: Dict[str, List[Tuple[str, float, float]]] = {kind: [] for kind in kinds}
            try:
                for kind, pool in pools.items():
                    pool.start()
                    if how == "sigterm" and kind in SUPERVISORS:
                        observers[kind] = KeyObserver(self.agent.address, pool.lock_key)
                for _ in range(self.mode.handovers):
                    if "calibration" in observers:
                        lag += observers["calibration"].calibrate(2)
                    for kind, pool in pools.items():
                        for other in pools.values():
                            other.settle()
                        time.sleep(SETTLE)
                        old = pool.leader
                        assert old is not None
                        t0, t1 = pool.handover(how)
                        latencies[kind].append((t1 - t0) * 1000)
                        handed[kind].append((old, t0, t1))
                time.sleep(SETTLE)
                segments = {kind: [breakdown(pool, observers[kind], *h) for h in handed[kind]]
                            for kind, pool in pools.items() if kind in observers}
            finally:
                for observer in observers.values():
                    observer.close()
                for pool in pools.values():
                    pool.close()
            for kind in kinds:
                self.samples["handover_ms"][f"{kind} {how}"] = latencies[kind]
                say(f"handover {kind} {how}: {fmt(percentiles(latencies[kind]), 'ms')}")
                if kind in observers:
                    self.samples["handover_breakdown_ms"][kind] = segments[kind]
                    say(f"handover {kind} {how} breakdown p50: " + ", ".join(
                        f"{name} {_p50(v[name] for v in segments[kind])}" for name in SEGMENTS))
        self.samples["observer_lag_ms"] = {"after_sent": [a for a, _ in lag], "after_answered": [b for _, b in lag]}
        say(f"observer wake-up: {fmt(percentiles([a for a, _ in lag]), 'ms')} after the write was sent, "
            f"{fmt(percentiles([b for _, b in lag]), 'ms')} after its answer")

    # -- crash failover -------------------------------------------------------

    def crashes(self) -> None:
        configs = [(LIBRARY, TTL_TUNED, self.mode.crash_runs), (LIBRARY, TTL_DEFAULT, self.mode.crash_runs),
                   (CLI, TTL_DEFAULT, self.mode.crash_runs), (LOCK, TTL_DEFAULT, self.mode.lock_crash_runs)]
        threads = []
        for kind, ttl, runs in configs:
            label = f"{kind} defaults" if kind == LOCK else f"{kind} ttl={ttl:g}"
            thread = threading.Thread(target=self._crash_runs, args=(kind, ttl, runs, label), daemon=True)
            thread.start()
            threads.append(thread)
            if kind != LOCK:
                thread.join()  # our runs are short: keep the load of parallel starts apart
        for thread in threads:
            thread.join()

    def _crash_runs(self, kind: str, ttl: float, runs: int, label: str) -> None:
        """*runs* failovers in parallel, each on its own key with two
        processes; the leader of each gets SIGKILL at a random moment of its
        heartbeat cycle."""
        pools = [self.pool(kind, "crash", [1, 1], ttl=ttl) for _ in range(runs)]
        results: List[float] = []
        try:
            for pool in pools:
                pool.start()
            time.sleep(ttl)  # let the follower's session and blocking query settle

            def crash(pool: Pool, delay: float) -> None:
                time.sleep(delay)
                t0, t1 = pool.handover("sigkill", timeout=180, replace=False)
                results.append(t1 - t0)

            workers = [threading.Thread(target=crash, args=(p, i * 0.25 + random.uniform(0, ttl)))
                       for i, p in enumerate(pools)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        finally:
            for pool in pools:
                pool.close()
        self.samples["failover_s"][label] = sorted(results)
        say(f"failover {label}: {fmt(percentiles(results), 's')}")

    # -- idle cost ------------------------------------------------------------

    def idle(self) -> None:
        """A leader and followers of each kind, each process behind its own
        port of a counting proxy; requests and CPU over an idle window."""
        host, port = self.agent.address.split(":")
        proxy = CountingProxy((host, int(port)))
        sizes = [1] * (1 + self.mode.idle_followers)
        pools = [self.pool(kind, "idle", sizes, address=proxy.listen) for kind in (LIBRARY, LOCK)]
        try:
            for pool in pools:
                pool.start()
            time.sleep(max(2.0, TTL_DEFAULT))
            before = proxy.snapshot(), {m.label: cpu_seconds(m.pid) for p in pools for m in p.members.values()}
            t0 = time.monotonic()
            time.sleep(self.mode.idle_window)
            elapsed = time.monotonic() - t0
            after = proxy.snapshot(), {m.label: cpu_seconds(m.pid) for p in pools for m in p.members.values()}
            for pool in pools:
                rows: Dict[str, List[Tuple[float, float]]] = {"leader": [], "follower": []}
                for label in pool.members:
                    role = "leader" if label == pool.leader else "follower"
                    rate = (after[0].get(label, 0) - before[0].get(label, 0)) / elapsed
                    cpu = (after[1][label] - before[1][label]) / elapsed * 60
                    rows[role].append((rate, cpu))
                self.stats[f"idle {pool.kind}"] = {
                    role: {"requests_per_s": mean(r[0] for r in got), "requests_per_s_max": max(r[0] for r in got),
                           "cpu_s_per_min": mean(r[1] for r in got), "processes": len(got)}
                    for role, got in rows.items()}
                self.stats[f"idle {pool.kind}"]["window_s"] = elapsed
                say(f"idle {pool.kind}: {self.stats[f'idle {pool.kind}']}")
        finally:
            for pool in pools:
                pool.close()
            proxy.close()

    # -- the cost of asking ---------------------------------------------------

    def call_overhead(self) -> None:
        candidate = Candidate(self.key("overhead"), address=self.agent.address, identity="overhead")
        candidate.start()
        try:
            if not candidate.wait_for_leadership(60):
                raise RuntimeError("the overhead candidate was not elected")
            set_default(candidate)

            def plain() -> None:
                pass

            guarded = leader_only(plain)
            n = self.mode.timeit_number

            def per_call(fn: Callable[[], Any]) -> float:
                return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9

            base = per_call(plain)
            self.stats["overhead_ns"] = {
                "Candidate.is_leader()": per_call(candidate.is_leader),
                "consul_leader.is_leader()": per_call(module_is_leader),
                "@leader_only (added to the call)": per_call(guarded) - base,
                "empty call (baseline)": base,
            }
            say(f"overhead: {self.stats['overhead_ns']}")
        finally:
            set_default(None)
            candidate.stop()

    def cold_start(self) -> None:
        """A brand-new key, one process that runs a command once as its
        first leader: ``consul-leader run --once KEY -- true`` against
        ``consul lock KEY true``, interleaved, the whole process timed
        (interpreter start included)."""
        env = dict(os.environ, CONSUL_HTTP_ADDR=self.agent.address)
        runs = max(5, self.mode.handovers // 2)
        times: Dict[str, List[float]] = {CLI: [], LOCK: []}
        commands = {CLI: lambda key: [sys.executable, "-m", "consul_leader", "run", "--once", key, "--", "true"],
                    LOCK: lambda key: [self.agent.binary, "lock", "-shell=false", key, "true"]}
        for _ in range(runs):
            for kind, argv in commands.items():
                key = self.key(f"cold-{kind.replace(' ', '-')}")
                t0 = time.perf_counter()
                subprocess.run(argv(key), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=True, timeout=60)
                times[kind].append(time.perf_counter() - t0)
        self.samples["cold_start_s"] = times
        say("cold start: " + ", ".join(f"{k} p50={percentiles(v)['p50']:.2f}s" for k, v in times.items()))

    def request_latency(self) -> None:
        """The floor under a handover: how long one request of the Python
        client takes here and now (a handover needs three in a row: the
        release, the winner's acquire, and its read of the fencing token)."""
        client = ConsulClient(ConsulConfig.from_args(address=self.agent.address))
        key = self.key("latency")
        session = client.create_session("bench latency", ["serfHealth"], 0, 10)
        n = max(20, self.mode.handovers * 4)
        timings: Dict[str, List[float]] = {"acquire": [], "release": [], "read": []}
        try:
            for _ in range(n):
                for name, call in (("acquire", lambda: client.acquire(key, b"x", session)),
                                   ("release", lambda: client.release(key, session)),
                                   ("read", lambda: client.get_key(key))):
                    t0 = time.perf_counter()
                    call()
                    timings[name].append((time.perf_counter() - t0) * 1000)
        finally:
            client.destroy_session(session)
        self.stats["request_ms"] = {name: percentiles(v) for name, v in timings.items()}
        say("one request: " + ", ".join(f"{k} p50={v['p50']:.2f}ms" for k, v in self.stats["request_ms"].items()))

    # -- scale ----------------------------------------------------------------

    def scale(self) -> None:
        for n in self.mode.scale_sizes:
            for kind in (LIBRARY, LOCK):
                total = n + 1
                if kind == LIBRARY:
                    procs = min(4, total)
                    sizes = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
                else:
                    sizes = [1] * total
                pool = self.pool(kind, f"scale{n}", sizes)
                latencies, kv, everything = [], [], []
                try:
                    pool.start(timeout=300)
                    self.wait_sessions(pool.key, total)
                    for _ in range(self.mode.scale_handovers):
                        pool.settle()
                        self.wait_sessions(pool.key, total)
                        time.sleep(SETTLE + n / 100)
                        window = self.agent_requests(functools.partial(pool.handover, "resign"), pool.key)
                        (t0, t1), kv_count, all_count = window
                        latencies.append((t1 - t0) * 1000)
                        kv.append(kv_count)
                        everything.append(all_count)
                finally:
                    pool.close()
                self.samples["scale"][f"{kind} {n}"] = {"waiting": n, "handover_ms": latencies,
                                                        "kv_requests": kv, "all_requests": everything}
                say(f"scale {kind} n={n}: {fmt(percentiles(latencies), 'ms')}, kv requests/change "
                    f"{mean(kv):.1f}, all {mean(everything):.1f}")

    def many_keys(self) -> None:
        """One process holding many keys with an Elector, another waiting on them."""
        from . import elector

        mode = self.mode
        self.stats["elector"] = found = elector.measure(self.agent.address, self.agent.binary, self.workdir,
                                                        mode.elector_keys, mode.elector_handovers,
                                                        mode.idle_window)
        say(f"many keys n={mode.elector_keys}: {fmt(percentiles(found['handover_ms']), 'ms')}, holder "
            f"{found['holder']['requests_per_s']:.2f} req/s, {found['holder']['elector_threads']} threads, "
            f"{found['holder']['connections']} connections")

    def wait_sessions(self, key: str, count: int, timeout: float = 120.0) -> None:
        """Wait until *count* sessions of the pool on *key* exist (every
        contender is in the race)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sessions = requests.get(f"{self.agent.url}/v1/session/list", timeout=10).json()
            if sum(1 for s in sessions if key in s.get("Name", "")) >= count:
                return
            time.sleep(0.1)
        raise RuntimeError(f"fewer than {count} sessions for {key!r} after {timeout}s")

    def agent_requests(self, action: Callable[[], Any], key: str) -> Tuple[Any, int, int]:
        """Run *action*; return its result, and the HTTP requests the agent
        logged meanwhile that name *key*, and all of them. The window runs
        from a marker request before to one sent once the action returned
        and the herd had :data:`SETTLE` to finish."""
        start = self._mark()
        result = action()
        time.sleep(SETTLE)
        end = self._mark()
        lines = self._log_between(start, end)
        kv = sum(1 for line in lines if f"/v1/kv/{key}" in line)
        return result, kv, len(lines)

    def _mark(self) -> Tuple[str, int]:
        marker = f"bench-marker-{uuid.uuid4().hex}"
        size = os.path.getsize(self.agent.log_path)
        requests.get(f"{self.agent.url}/v1/kv/{marker}", timeout=10)
        return marker, size

    def _log_between(self, start: Tuple[str, int], end: Tuple[str, int]) -> List[str]:
        deadline = time.monotonic() + 10
        while True:
            with open(self.agent.log_path, encoding="utf-8", errors="replace") as fh:
                fh.seek(start[1])
                text = fh.read()
            if end[0] in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        requests_seen = [line for line in text.splitlines() if "Request finished" in line]
        inside, picked = False, []
        for line in requests_seen:
            if start[0] in line:
                inside = True
            elif end[0] in line:
                break
            elif inside:
                picked.append(line)
        return picked


#: The segments of a supervisor's graceful handover, in order.
SEGMENTS = ("stop", "release", "acquire", "start")


def _p50(values: Any) -> str:
    data = [v for v in values if v is not None]
    return f"{percentiles(data)['p50']:.3g}ms" if data else "—"


def mean(values: Any) -> float:
    data = list(values)
    return sum(data) / len(data) if data else float("nan")


def fmt(stats: Dict[str, Any], unit: str) -> str:
    if not stats["n"]:
        return "no samples"
    return f"n={stats['n']} p50={stats['p50']:.3g}{unit} p95={stats['p95']:.3g}{unit} " \
           f"p99={stats['p99']:.3g}{unit} max={stats['max']:.3g}{unit}"


def machine(agent: ConsulAgent) -> Dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    version = subprocess.run([agent.binary, "version"], capture_output=True, text=True).stdout.splitlines()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "consul": version[0] if version else "unknown",
            "loadavg_start": os.getloadavg()[0]}


def partitions(mode: Mode, workdir: str, samples: Dict[str, Any]) -> None:
    """The partition benchmark's runs into *samples* (skipped, with the
    reason, where this machine cannot make network namespaces)."""
    from . import partition

    if not mode.partition_runs:
        return
    from consul_leader.testing import ConsulCluster

    ok, why = ConsulCluster.hosts_supported()
    if not ok:
        say(f"partition benchmark skipped: {why}")
        return
    samples["partition"] = partition.measure(mode.partition_runs, workdir)


def run_partition_only(mode: Mode, out: str = RESULTS,
                       docs: Optional[str] = os.path.join(ROOT, "docs")) -> Dict[str, Any]:
    """Run only the partition benchmark and merge it into the results in
    *out* (the other figures stay as they were measured)."""
    from . import report

    with open(out, encoding="utf-8") as fh:
        previous = json.load(fh)
    workdir = tempfile.mkdtemp(prefix="consul-leader-bench-")
    samples = dict(previous["samples"])
    started = time.monotonic()
    try:
        partitions(mode if mode.partition_runs else MODES["quick"], workdir, samples)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = dict(previous["meta"])
    meta["partition"] = {"mode": mode.name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                         "duration_s": time.monotonic() - started, "loadavg_end": os.getloadavg()[0]}
    results = report.assemble(meta, samples, previous["stats"])
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    if docs is not None:
        report.write_docs(results, docs)
    return results


def run(mode: Mode, out: str = RESULTS, docs: Optional[str] = os.path.join(ROOT, "docs")) -> Dict[str, Any]:
    """Run every benchmark in *mode*; write the JSON to *out* and, unless
    *docs* is None, the table and plots into *docs*. Returns the results."""
    from . import report

    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="consul-leader-bench-")
    try:
        # Consul allows 200 HTTP connections per client address by default;
        # 100 candidates on one host hold two each (election and heartbeat).
        with ConsulAgent(config={"limits": {"http_max_conns_per_client": 4096}}) as agent:
            bench = Bench(mode, agent, workdir)
            meta = machine(agent)
            say(f"{mode.name} run against {agent.binary} on {agent.address}; scratch in {workdir}")
            crash_thread = threading.Thread(target=bench.crashes, daemon=True)
            if mode.crash_in_background:
                crash_thread.start()
            bench.idle()
            bench.handovers()
            bench.call_overhead()
            bench.request_latency()
            bench.cold_start()
            if mode.crash_in_background:
                crash_thread.join()
            else:
                bench.crashes()
            bench.scale()
            bench.many_keys()
        partitions(mode, workdir, bench.samples)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta.update(mode=mode.name, date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), duration_s=time.monotonic() - started,
                loadavg_end=os.getloadavg()[0])
    if "partition" in bench.samples:
        meta["partition"] = {"mode": mode.name, "date": meta["date"]}
    results = report.assemble(meta, bench.samples, bench.stats)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    if docs is not None:
        report.write_docs(results, docs)
    say(f"done in {meta['duration_s']:.0f}s: {out}")
    return results


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer repetitions, a few minutes")
    group.add_argument("--tiny", action="store_true", help="only exercise the machinery (seconds)")
    parser.add_argument("--out", default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--no-docs", action="store_true", help="do not write the docs table and plots")
    parser.add_argument("--only", choices=["partition"],
                        help="run only this benchmark and keep the other results in --out")
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    docs = None if args.no_docs else os.path.join(ROOT, "docs")
    if args.only == "partition":
        results = run_partition_only(mode, args.out, docs)
    else:
        results = run(mode, args.out, docs)
    missed = [f["figure"] for f in results["figures"] if f.get("met") is False]
    if missed:
        say("targets missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
