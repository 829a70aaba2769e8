"""Chaos runs: candidate processes on a real three-server cluster with client
agents, under seeded random faults; the checker must find no two processes
that believed they led at once, fencing tokens that only grow, and no term
that outlived its lease.

The short run (each kind of fault once, about a minute) is in the default
suite; ``make chaos`` runs the long one
(``CHAOS_DURATION`` seconds, default 600; ``CHAOS_SEED``; ``CHAOS_N``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid

import pytest

from chaos.checker import check
from chaos.injector import Chaos, records_path
from consul_leader.testing import ConsulCluster


def chaos_run(duration: float, seed: int, n: int, records_file: str) -> None:
    workdir = tempfile.mkdtemp(prefix="consul-leader-chaos-")
    key = f"chaos/{uuid.uuid4().hex[:8]}/leader"
    try:
        with ConsulCluster(servers=3, clients=2) as cluster:
            chaos = Chaos(cluster, key, workdir, seed=seed, n=n)
            try:
                records = chaos.run(duration)
            except BaseException:
                print(cluster.log_tails())
                raise
        path = records_path(records_file)
        chaos.write(records, path)
        report = check(records, chaos.lease)
        print(f"\nchaos run: seed={seed} n={n} duration={duration:g}s records={path}\n{report.table()}")
        assert report.ok, report.problems()
        # Every kind of fault was applied, and the election recovered: some
        # process led again after the last one.
        assert set(report.faults) == set(chaos.kinds)
        last_fault = max(r["t"] for r in records if r.get("ev") == "fault")
        assert any(t.start > last_fault or t.end > last_fault for t in report.terms)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_short_chaos_run_keeps_one_leader_at_a_time() -> None:
    chaos_run(duration=float(os.environ.get("CHAOS_SHORT_DURATION", "30")),
              seed=int(os.environ.get("CHAOS_SEED", str(int(time.time())))), n=5,
              records_file="chaos-records-short.jsonl")


@pytest.mark.chaos
@pytest.mark.timeout(0)
def test_long_chaos_run_keeps_one_leader_at_a_time() -> None:
    chaos_run(duration=float(os.environ.get("CHAOS_DURATION", "600")),
              seed=int(os.environ.get("CHAOS_SEED", str(int(time.time())))),
              n=int(os.environ.get("CHAOS_N", "5")), records_file="chaos-records.jsonl")
