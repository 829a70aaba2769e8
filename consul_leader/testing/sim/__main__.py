"""``python -m consul_leader.testing.sim``: run many fault schedules, or
replay one.

    python -m consul_leader.testing.sim --seeds=2000 --jobs=2
    python -m consul_leader.testing.sim --seed=1234          # replay one, print its timeline
    python -m consul_leader.testing.sim --mutation="mixed lock-delays" --seeds=500

Ends with ``N schedules per minute``; exits 1 if a schedule failed, after
printing each failing one's first problems and the command that replays it.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from .mutations import MUTATIONS, mutated
from .schedule import simulate, timeline

__all__ = ["main", "run_seeds"]


def _batch(seeds: Sequence[int], seconds: float, mutation: str | None, storm: bool,
           mixed: bool | None = None) -> list[tuple[int, str, int]]:
    with mutated(mutation):
        results = []
        for seed in seeds:
            try:
                outcome = simulate(seed, seconds=seconds, storm=storm, mixed=mixed)
            except Exception:
                # A bug of the simulator: reported with its seed like any failure.
                results.append((seed, "the simulator raised:\n" + traceback.format_exc(), 0))
                continue
            results.append((seed, "" if outcome.ok else outcome.report.problems(), outcome.steps))
        return results


def run_seeds(seeds: Sequence[int], *, seconds: float = 180.0, jobs: int = 1, mutation: str | None = None,
              storm: bool = False, mixed: bool | None = None) -> list[tuple[int, str, int]]:
    """Run the schedules of *seeds*: ``(seed, problems, steps)`` each,
    *problems* empty for a schedule that passed.

    :param seconds: simulated seconds of each.
    :param jobs: processes to spread them over.
    :param mutation: a name of :data:`~.mutations.MUTATIONS` to apply.
    :param storm: overlapping faults (see :func:`~.schedule.simulate`).
    :param mixed: mixed timings on the key (None: drawn per schedule)."""
    if jobs <= 1:
        return _batch(seeds, seconds, mutation, storm, mixed)
    chunks = [list(seeds[i::jobs]) for i in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_batch, chunks, [seconds] * jobs, [mutation] * jobs, [storm] * jobs, [mixed] * jobs))
    return sorted((r for part in parts for r in part), key=lambda r: r[0])


def _replay_command(seed: int, seconds: float, mutation: str | None, storm: bool, timings: str) -> str:
    extra = (f" --mutation {mutation!r}" if mutation else "") + (" --storm" if storm else "")
    extra += f" --timings {timings}" if timings != "drawn" else ""
    return f"python -m consul_leader.testing.sim --seed {seed} --seconds {seconds:g}{extra}"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module's docs)."""
    parser = argparse.ArgumentParser(prog="python -m consul_leader.testing.sim",
                                     description="Deterministic simulation of elections under faults.")
    parser.add_argument("--seeds", type=int, default=100, help="how many schedules to run (default 100)")
    parser.add_argument("--start", type=int, default=0, help="the first random seed (default 0)")
    parser.add_argument("--seed", type=int, help="replay this one schedule and print its timeline")
    parser.add_argument("--seconds", type=float, default=180.0, help="simulated seconds of each (default 180)")
    parser.add_argument("--jobs", type=int, default=1, help="processes to run them in (default 1)")
    parser.add_argument("--mutation", choices=sorted(MUTATIONS), help="put one known bug back")
    parser.add_argument("--storm", action="store_true", help="overlapping faults, every 0.1 to 3 s")
    parser.add_argument("--timings", choices=("drawn", "same", "mixed"), default="drawn",
                        help="one timing for every candidate, mixed timings, or drawn per schedule (default)")
    args = parser.parse_args(argv)
    mixed = {"drawn": None, "same": False, "mixed": True}[args.timings]
    if args.seed is not None:
        with mutated(args.mutation):
            outcome = simulate(args.seed, seconds=args.seconds, storm=args.storm, mixed=mixed)
        print(timeline(outcome))
        print(outcome.report.table())
        return 0 if outcome.ok else 1
    began = time.monotonic()
    results = run_seeds(range(args.start, args.start + args.seeds), seconds=args.seconds, jobs=args.jobs,
                        mutation=args.mutation, storm=args.storm, mixed=mixed)
    took = time.monotonic() - began
    failed = [(seed, problems) for seed, problems, _ in results if problems]
    for seed, problems in failed[:10]:
        print(f"random seed {seed} failed:")
        print("  " + "\n  ".join(problems.splitlines()[:5]))
        print(f"  replay: {_replay_command(seed, args.seconds, args.mutation, args.storm, args.timings)}")
    steps = sum(r[2] for r in results)
    print(f"{len(results)} schedules of {args.seconds:g} simulated seconds, {len(failed)} failed, "
          f"{steps} steps, {took:.1f}s on {args.jobs} process(es)")
    print(f"{len(results) / took * 60:.0f} schedules per minute")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
