"""The benchmark machinery works end to end: a tiny run against a real agent
yields every figure with sane types. Timings are not checked here."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest

from tests.conftest import ROOT

sys.path.insert(0, ROOT)

from benchmarks import report, run  # noqa: E402
from benchmarks.proxy import CountingProxy  # noqa: E402


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("bench")
    docs = out / "docs"
    results = run.run(run.MODES["tiny"], str(out / "results.json"), str(docs))
    return results, out, docs


def test_results_json_matches_what_run_returned(tiny: Any) -> None:
    results, out, _ = tiny
    with open(out / "results.json", encoding="utf-8") as fh:
        assert json.load(fh) == json.loads(json.dumps(results))


def test_every_figure_has_both_contenders_where_they_compare(tiny: Any) -> None:
    results, _, _ = tiny
    figures = {f["figure"]: f for f in results["figures"]}
    expected_prefixes = ["graceful handover p50, resign()", "graceful handover p99, SIGTERM",
                         "crash failover max, ttl=1", "crash failover p50, defaults",
                         "idle Consul requests/s per follower", "idle Consul requests/s per leader",
                         "idle CPU per follower", "per call: Candidate.is_leader()", "per call: @leader_only",
                         "one request of the Python client", "1 waiting: handover p99",
                         "3 waiting: KV requests per leadership change",
                         "consul-leader run: graceful handover p50", "consul-leader run: graceful handover p99",
                         "consul-leader run: crash failover p50", "consul-leader run: crash failover max"]
    for prefix in expected_prefixes:
        assert any(name.startswith(prefix) for name in figures), prefix
    for f in results["figures"]:
        assert _number(f["consul_leader"]), f
        if f["figure"].startswith(("per call", "one request")):
            assert f["consul_lock"] is None and f["ratio"] is None
        elif "crash failover" in f["figure"]:
            pass  # the tiny mode has no 43 s consul lock crash run
        else:
            assert _number(f["consul_lock"]), f
            assert f["ratio"] is None or _number(f["ratio"]), f
        assert f["met"] in (None, True, False)
        assert (f["met"] is None) == (f["target"] is None), f


def test_samples_count_what_the_tiny_mode_asked_for(tiny: Any) -> None:
    results, _, _ = tiny
    mode = run.MODES["tiny"]
    for name, values in results["samples"]["handover_ms"].items():
        assert len(values) == mode.handovers, name
        assert all(_number(v) for v in values)
    assert set(results["samples"]["handover_ms"]) == {
        "consul-leader resign", "consul lock resign",
        "consul-leader sigterm", "consul-leader run sigterm", "consul lock sigterm"}
    failover = results["samples"]["failover_s"]
    assert len(failover["consul-leader ttl=1"]) == mode.crash_runs
    assert len(failover["consul-leader ttl=3"]) == mode.crash_runs
    assert len(failover["consul-leader run ttl=3"]) == mode.crash_runs
    for size in mode.scale_sizes:
        for kind in ("consul-leader", "consul lock"):
            sample = results["samples"]["scale"][f"{kind} {size}"]
            assert len(sample["handover_ms"]) == mode.scale_handovers
            # Every leadership change needs at least an acquire of the key.
            assert all(isinstance(n, int) and n >= 1 for n in sample["kv_requests"])
    idle = results["stats"]["idle consul-leader"]
    # A follower passes its check at least once in any window longer than 0.6*ttl.
    assert idle["follower"]["requests_per_s"] > 0
    assert idle["leader"]["processes"] == 1 and idle["follower"]["processes"] == mode.idle_followers


def test_each_supervisor_handover_is_split_into_its_segments(tiny: Any) -> None:
    results, _, _ = tiny
    mode = run.MODES["tiny"]
    for kind in ("consul-leader run", "consul lock"):
        rounds = results["samples"]["handover_breakdown_ms"][kind]
        totals = results["samples"]["handover_ms"][f"{kind} sigterm"]
        assert [r["total"] for r in rounds] == totals
        for r in rounds:
            # Both the old command's last word and the next one's first come
            # through the FIFO: their segments are always there.
            assert _number(r["stop"]) and _number(r["total"]), r
            seen = [r[name] for name in ("stop", "release", "acquire", "start")]
            if None not in seen:
                # The segments are consecutive: together they are the handover.
                assert math.isclose(sum(seen), r["total"], rel_tol=1e-6), r
        summary = results["breakdown"][kind]
        assert summary["stop"]["n"] == summary["total"]["n"] == mode.handovers
    lag = results["breakdown"]["observer_lag"]
    assert lag["after_sent"]["n"] == 2 * mode.handovers
    # The observer cannot see a write before it was sent.
    assert min(results["samples"]["observer_lag_ms"]["after_sent"]) > 0


def test_docs_table_and_plots_are_written(tiny: Any) -> None:
    results, _, docs = tiny
    table = (docs / "benchmarks_table.rst").read_text(encoding="utf-8")
    cli = (docs / "benchmarks_cli.rst").read_text(encoding="utf-8")
    assert ".. list-table::" in table
    cli_rows = [f for f in results["figures"] if report.is_cli(f)]
    assert any(f["figure"].startswith("consul-leader run: graceful handover") for f in cli_rows)
    assert table.count("   * - ") == len(results["figures"]) - len(cli_rows) + 1
    # The CLI table (its header and rows), then the breakdown (its header and five segments).
    assert cli.count("   * - ") == len(cli_rows) + 1 + 6
    assert "Where the graceful handover's time goes" in cli
    for name in ("bench_handover_cdf.png", "bench_failover_timeline.png", "bench_scale.png"):
        data = (docs / "_static" / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name


def test_table_marks_missed_targets() -> None:
    fig = report.figure_row("x", "ms", 12.0, 6.0, 10.0)
    assert fig["met"] is False and fig["ratio"] == 2.0
    assert "**missed**" in report.table({"meta": {"mode": "m", "date": "d", "duration_s": 1, "cpu": "c",
                                                  "cores": 2, "kernel": "k", "python": "p", "consul": "c",
                                                  "loadavg_start": 0.0, "loadavg_end": 0.0},
                                         "figures": [fig]})


def test_proxy_counts_each_request_of_a_keep_alive_connection(consul_agent: Any) -> None:
    import requests

    host, port = consul_agent.address.split(":")
    proxy = CountingProxy((host, int(port)))
    try:
        address = proxy.listen("one")
        with requests.Session() as http:
            for i in range(5):
                assert http.put(f"http://{address}/v1/kv/bench-proxy-test/{i}", data=b"v" * 100).json() is True
            assert http.get(f"http://{address}/v1/kv/bench-proxy-test/3").status_code == 200
        assert proxy.snapshot() == {"one": 6}
    finally:
        proxy.close()
