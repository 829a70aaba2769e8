"""Turn the measurements into figures with targets, a reST table and plots."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from . import elector
from .contenders import CLI, LIBRARY, LOCK

PARTITION_EVENTS = (("old_stop", "old leader stops (flag False / command killed)"),
                    ("new_start", "new leader starts (flag True / command started)"),
                    ("overlap", "two leaders at once (flags / commands)"))

LIB_KEY = "consul_leader"
LOCK_KEY = "consul_lock"

#: ``consul-leader run``'s graceful handover against ``consul lock``'s in the
#: same run, at p50 and p99: any supervisor on two cores at best ties
#: (0.7 was shown out of reach; see the changelog of 0.2).
CLI_RATIO = {"p50": 1.2, "p99": 1.3}
#: The segments of a supervisor's graceful handover (see benchmarks.contenders.breakdown).
SEGMENT_NAMES = (("stop", "stop command: SIGTERM sent → the old command's last word"),
                 ("release", "release: → the key seen released"),
                 ("acquire", "acquire (wake-up + acquire): → the key seen held by the next"),
                 ("start", "process start: → the next command's first word"),
                 ("total", "whole handover"))


def is_cli(figure: Dict[str, Any]) -> bool:
    """A figure of the CLI table (``consul-leader run`` against ``consul lock``)."""
    return CLI in figure["figure"]


def figure_row(figure: str, unit: str, ours: Optional[float], theirs: Optional[float],
            target: Optional[float] = None, note: str = "") -> Dict[str, Any]:
    ratio = ours / theirs if ours is not None and theirs else None
    return {"figure": figure, "unit": unit, LIB_KEY: ours, LOCK_KEY: theirs, "ratio": ratio,
            "target": target, "met": None if target is None or ours is None else ours <= target, "note": note}


def assemble(meta: Dict[str, Any], samples: Dict[str, Any], stats: Dict[str, Any]) -> Dict[str, Any]:
    """The results document: meta, figures (each with the ratio to
    ``consul lock`` and its target) and the raw samples."""
    from .run import mean, percentiles

    figures: List[Dict[str, Any]] = []
    handover = {name: percentiles(v) for name, v in samples["handover_ms"].items()}
    for how, what in (("resign", "resign() vs. the lock's child exiting"),
                      ("sigterm", "SIGTERM to the leading process")):
        ours, theirs = handover[f"{LIBRARY} {how}"], handover[f"{LOCK} {how}"]
        for p, target in (("p50", 7.0), ("p95", None), ("p99", 20.0)):
            figures.append(figure_row(f"graceful handover {p}, {what}", "ms", ours[p], theirs[p], target,
                                   f"n={ours['n']} / {theirs['n']}"))
    failover = {name: percentiles(v) for name, v in samples["failover_s"].items()}
    lock = failover[f"{LOCK} defaults"]
    for label, target in ((f"{LIBRARY} ttl=1", 3.0), (f"{LIBRARY} ttl=3", 6.0)):
        ours = failover[label]
        setting = "ttl=1" if "ttl=1" in label else "defaults (ttl=3)"
        for p in ("p50", "max"):
            figures.append(figure_row(f"crash failover {p}, {setting} vs. consul lock defaults", "s", ours[p],
                                   lock[p], target if p == "max" else None, f"n={ours['n']} / {lock['n']}"))
    figures += cli_figures(handover, failover)
    idle_ours, idle_lock = stats[f"idle {LIBRARY}"], stats[f"idle {LOCK}"]
    for role in ("follower", "leader"):
        figures.append(figure_row(f"idle Consul requests/s per {role}", "req/s", idle_ours[role]["requests_per_s"],
                               idle_lock[role]["requests_per_s"], 1.0 if role == "follower" else None,
                               f"counted by a proxy over {idle_ours['window_s']:.0f} s"))
    for role in ("follower", "leader"):
        figures.append(figure_row(f"idle CPU per {role} process", "CPU s/min", idle_ours[role]["cpu_s_per_min"],
                               idle_lock[role]["cpu_s_per_min"], None, "utime+stime from /proc"))
    for name, value in stats["overhead_ns"].items():
        target = 1000.0 if name == "Candidate.is_leader()" else None
        figures.append(figure_row(f"per call: {name}", "ns", value, None, target, "timeit, best of 5"))
    for name, value in stats["request_ms"].items():
        figures.append(figure_row(f"one request of the Python client: {name}, p50", "ms", value["p50"], None, None,
                               "the floor under a handover"))
    sizes = sorted({int(k.rsplit(" ", 1)[1]) for k in samples["scale"]})
    for n in sizes:
        ours, theirs = samples["scale"][f"{LIBRARY} {n}"], samples["scale"][f"{LOCK} {n}"]
        target = 200.0 if n == 100 else None
        figures.append(figure_row(f"{n} waiting: handover p99", "ms", percentiles(ours["handover_ms"])["p99"],
                               percentiles(theirs["handover_ms"])["p99"], target,
                               f"n={len(ours['handover_ms'])} / {len(theirs['handover_ms'])}"))
        figures.append(figure_row(f"{n} waiting: KV requests per leadership change", "req",
                               mean(ours["kv_requests"]), mean(theirs["kv_requests"]), None, "counted at the agent"))
        figures.append(figure_row(f"{n} waiting: all requests per leadership change", "req",
                               mean(ours["all_requests"]), mean(theirs["all_requests"]), None,
                               "counted at the agent; includes heartbeats in the window"))
    cold = samples.get("cold_start_s")
    if cold is not None:
        ours, theirs = percentiles(cold[CLI]), percentiles(cold[LOCK])
        figures.append(figure_row(f"new key: {CLI} --once KEY -- true, whole process, p50", "s", ours["p50"],
                                  theirs["p50"], theirs["p50"] + 1.0,
                                  f"n={ours['n']} / {theirs['n']}; target: within 1 s of consul lock's"))
    figures += partition_figures(samples.get("partition"))
    figures += elector.figures(stats.get("elector"), handover.get(f"{LOCK} resign"))
    return {"meta": meta, "figures": figures, "samples": samples, "stats": stats,
            "breakdown": breakdown_summary(samples)}


def cli_figures(handover: Dict[str, Dict[str, Any]], failover: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``consul-leader run`` against ``consul lock``: graceful handover (the
    target is relative to ``consul lock``'s in the same run) and crash failover."""
    ours, theirs = handover.get(f"{CLI} sigterm"), handover.get(f"{LOCK} sigterm")
    if ours is None or theirs is None:
        return []
    figures = []
    for p in ("p50", "p95", "p99"):
        target, note = None, f"n={ours['n']} / {theirs['n']}"
        if p in CLI_RATIO and theirs[p] is not None:
            target, note = CLI_RATIO[p] * theirs[p], note + f"; target {CLI_RATIO[p]:g} × consul lock's"
        figures.append(figure_row(f"{CLI}: graceful handover {p}, SIGTERM to the leading supervisor until the "
                                  f"next command started", "ms", ours[p], theirs[p], target, note))
    crash, lock = failover.get(f"{CLI} ttl=3"), failover.get(f"{LOCK} defaults")
    if crash is not None and lock is not None:
        for p in ("p50", "max"):
            figures.append(figure_row(f"{CLI}: crash failover {p}, defaults vs. consul lock defaults", "s", crash[p],
                                      lock[p], None, f"n={crash['n']} / {lock['n']}; SIGKILL to the "
                                      "supervisor's process group until the next command started"))
    return figures


def breakdown_summary(samples: Dict[str, Any]) -> Dict[str, Any]:
    """p50/p99 of each handover segment per supervisor, how many handovers
    had the segment (the observer can miss a release), and the observer's
    own wake-up latency."""
    from .run import percentiles

    found: Dict[str, Any] = {}
    for kind, rounds in samples.get("handover_breakdown_ms", {}).items():
        found[kind] = {}
        for name, _ in SEGMENT_NAMES:
            stats = percentiles([r[name] for r in rounds if r.get(name) is not None])
            found[kind][name] = {"p50": stats["p50"], "p99": stats["p99"], "n": stats["n"], "of": len(rounds)}
    lag = samples.get("observer_lag_ms") or {}
    if lag:
        found["observer_lag"] = {name: {k: v for k, v in percentiles(values).items() if k in ("n", "p50", "p99")}
                                 for name, values in lag.items()}
    return found


def partition_summary(partition: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """Per contender and event: median and max over the runs, and how many
    runs saw it at all (an old ``consul lock`` child may outlive the window)."""
    from .run import percentiles

    summary: Dict[str, Dict[str, Any]] = {}
    for kind, runs in partition.items():
        summary[kind] = {"runs": len(runs)}
        for event, _ in PARTITION_EVENTS:
            seen = [r[event] for r in runs if r[event] is not None]
            stats = percentiles(seen)
            summary[kind][event] = {"p50": stats["p50"], "max": stats["max"], "seen": len(seen)}
    return summary


def partition_figures(partition: Optional[Dict[str, List[Dict[str, Any]]]]) -> List[Dict[str, Any]]:
    if not partition:
        return []
    summary = partition_summary(partition)
    lock = summary.get(LOCK)
    figures = []
    for ours in (LIBRARY, CLI):
        if ours not in summary:
            continue
        label = "Candidate" if ours == LIBRARY else "consul-leader run"
        for event, what in PARTITION_EVENTS:
            for p in ("p50", "max"):
                if event == "overlap" and p == "p50":
                    continue
                theirs = lock[event][p] if lock else None
                figures.append(figure_row(f"leader's host cut off, {label}: {what}, {p}", "s", summary[ours][event][p],
                                       theirs, 0.0 if event == "overlap" else None,
                                       f"n={summary[ours]['runs']} / {lock['runs'] if lock else 0}"))
    return figures


def _num(value: Optional[float]) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _run_line(meta: Dict[str, Any]) -> str:
    return (f"Run: **{meta['mode']}** mode, {meta['date']}, {meta['duration_s']:.0f} s; "
            f"{meta['cpu']}, {meta['cores']} cores, Linux {meta['kernel']}, Python {meta['python']}, "
            f"{meta['consul']}; load average {meta['loadavg_start']:.1f} at the start and "
            f"{meta['loadavg_end']:.1f} at the end.")


def table(results: Dict[str, Any], cli: bool = False) -> str:
    """The figures as a reST list-table, with the conditions of the run:
    those of ``consul-leader run`` with *cli*, the others without."""
    lines = [
        ".. This file is generated by benchmarks/run.py (make bench); do not edit.",
        "",
        _run_line(results["meta"]),
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 40 10 12 12 8 10 8",
        "",
        "   * - Figure",
        "     - Unit",
        f"     - {CLI if cli else 'consul-leader'}",
        "     - consul lock",
        "     - Ratio",
        "     - Target",
        "     - Met",
    ]
    for f in results["figures"]:
        if is_cli(f) != cli:
            continue
        met = "—" if f["met"] is None else ("met" if f["met"] else "**missed**")
        target = "—" if f["target"] is None else f"≤ {_num(f['target'])}"
        ratio = "—" if f["ratio"] is None else f"{f['ratio']:.2g}"
        lines += [f"   * - {f['figure']} ({f['note']})" if f["note"] else f"   * - {f['figure']}",
                  f"     - {f['unit']}", f"     - {_num(f[LIB_KEY])}", f"     - {_num(f[LOCK_KEY])}",
                  f"     - {ratio}", f"     - {target}", f"     - {met}"]
    return "\n".join(lines) + "\n"


def _ms(stats: Optional[Dict[str, Any]]) -> str:
    if not stats or not stats.get("n"):
        return "—"
    text = f"{stats['p50']:.1f} ({stats['p99']:.1f})"
    if stats.get("of", stats["n"]) != stats["n"]:
        text += f", {stats['n']} of {stats['of']}"
    return text


def breakdown_table(results: Dict[str, Any]) -> str:
    """The segments of the supervisors' graceful handover, as a reST list-table."""
    found = results.get("breakdown") or {}
    lines = [
        ".. This file is generated by benchmarks/run.py (make bench); do not edit.",
        "",
    ]
    if CLI not in found or LOCK not in found:
        return "\n".join(lines + ["Not measured in the last run (``make bench`` measures it).", ""])
    lines += [
        "Milliseconds, p50 (p99) over the SIGTERM handovers of the run above; "
        "\"n of m\": the segment was seen in n of the m handovers.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 46 27 27",
        "",
        "   * - Segment",
        f"     - {CLI}",
        "     - consul lock",
    ]
    for name, what in SEGMENT_NAMES:
        lines += [f"   * - {what}", f"     - {_ms(found[CLI][name])}", f"     - {_ms(found[LOCK][name])}"]
    lag = found.get("observer_lag")
    if lag:
        lines += ["", f"The observer's own wake-up latency (its stamp of {lag['after_sent']['n']} writes of the "
                  f"bench's own): p50 {lag['after_sent']['p50']:.2f} ms (p99 {lag['after_sent']['p99']:.2f} ms) "
                  f"after the write was sent, {lag['after_answered']['p50']:.2f} ms "
                  f"(p99 {lag['after_answered']['p99']:.2f} ms) after its answer arrived."]
    return "\n".join(lines) + "\n"


def cli_tables(results: Dict[str, Any]) -> str:
    """``benchmarks_cli.rst``: the CLI table and the handover breakdown."""
    if not any(is_cli(f) for f in results["figures"]):
        return (".. This file is generated by benchmarks/run.py (make bench); do not edit.\n\n"
                "Not measured in the last run (``make bench`` measures it).\n")
    cli = table(results, cli=True)
    body = breakdown_table(results).split("\n", 2)[2]
    return cli + "\n.. rubric:: Where the graceful handover's time goes\n\n" + body


def write_docs(results: Dict[str, Any], docs: str) -> None:
    """Write ``benchmarks_table.rst``, ``benchmarks_cli.rst`` and the
    ``_static/bench_*.png`` plots."""
    static = os.path.join(docs, "_static")
    os.makedirs(static, exist_ok=True)
    with open(os.path.join(docs, "benchmarks_table.rst"), "w", encoding="utf-8") as fh:
        fh.write(table(results))
    with open(os.path.join(docs, "benchmarks_cli.rst"), "w", encoding="utf-8") as fh:
        fh.write(cli_tables(results))
    partition = results["samples"].get("partition")
    if partition:
        with open(os.path.join(docs, "benchmarks_partition.rst"), "w", encoding="utf-8") as fh:
            fh.write(partition_table(results))
        plot_partition(results, os.path.join(static, "bench_partition_timeline.png"))
    plot_handover_cdf(results, os.path.join(static, "bench_handover_cdf.png"))
    plot_failover(results, os.path.join(static, "bench_failover_timeline.png"))
    plot_scale(results, os.path.join(static, "bench_scale.png"))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_handover_cdf(results: Dict[str, Any], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in sorted(results["samples"]["handover_ms"].items()):
        data = sorted(values)
        if not data:
            continue
        style = ":" if name.startswith(CLI) else "-" if name.startswith(LIBRARY) else "--"
        ax.step(data, [(i + 1) / len(data) for i in range(len(data))], where="post", label=name, linestyle=style)
    ax.set_xscale("log")
    ax.set_xlabel("graceful handover latency (ms, log scale)")
    ax.set_ylabel("fraction of handovers")
    ax.set_title("Graceful handover: step-down to next leader elected")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_failover(results: Dict[str, Any], path: str) -> None:
    plt = _pyplot()
    failover = results["samples"]["failover_s"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = sorted(failover)
    for row, name in enumerate(names):
        runs = failover[name]
        for i, seconds in enumerate(runs):
            y = row + (i - (len(runs) - 1) / 2) * (0.6 / max(1, len(runs)))
            ax.plot([0, seconds], [y, y], color=f"C{row}", alpha=0.5, linewidth=1)
            ax.plot([seconds], [y], marker="o", color=f"C{row}", markersize=3)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("seconds after SIGKILL of the leader (0) until the next is elected (dot)")
    ax.set_title("Crash failover timeline, one line per run")
    ax.grid(True, axis="x", alpha=0.3)
    _save(plt, fig, path)


def plot_scale(results: Dict[str, Any], path: str) -> None:
    from .run import mean, percentiles

    plt = _pyplot()
    scale = results["samples"]["scale"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for kind, style in ((LIBRARY, "o-"), (LOCK, "s--")):
        rows = sorted((v["waiting"], v) for k, v in scale.items() if k.startswith(kind + " "))
        xs = [n for n, _ in rows]
        left.plot(xs, [percentiles(v["handover_ms"])["p99"] for _, v in rows], style, label=kind)
        right.plot(xs, [mean(v["kv_requests"]) for _, v in rows], style, label=kind)
    left.set_xlabel("candidates waiting")
    left.set_ylabel("handover p99 (ms)")
    right.set_xlabel("candidates waiting")
    right.set_ylabel("KV requests per change")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path)


def partition_table(results: Dict[str, Any]) -> str:
    """The partition benchmark per contender, as a reST list-table."""
    summary = partition_summary(results["samples"]["partition"])
    when = results["meta"].get("partition", {}).get("date", results["meta"]["date"])
    lines = [
        ".. This file is generated by benchmarks/run.py (make bench); do not edit.",
        "",
        f"Run: {when}; seconds after the cut, median (max) over the runs.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 28 8 22 22 20",
        "",
        "   * - Contender (defaults)",
        "     - Runs",
        "     - Old leader stops",
        "     - New leader starts",
        "     - Both running",
    ]
    names = {LIBRARY: "consul-leader :class:`~consul_leader.Candidate` (``is_leader()``)",
             CLI: "``consul-leader run`` (its command)", LOCK: "``consul lock`` (its child)"}
    for kind in (LIBRARY, CLI, LOCK):
        if kind not in summary:
            continue
        row = summary[kind]
        lines += [f"   * - {names[kind]}", f"     - {row['runs']}", f"     - {_cell(row, 'old_stop')}",
                  f"     - {_cell(row, 'new_start')}", f"     - {_cell(row, 'overlap')}"]
    return "\n".join(lines) + "\n"


def _cell(row: Dict[str, Any], event: str) -> str:
    got = row[event]
    if not got["seen"]:
        return "not within the window"
    text = f"{got['p50']:.1f} s ({got['max']:.1f} s)"
    missing = row["runs"] - got["seen"]
    return text + (f", {missing} run(s): not within the window" if missing else "")


def plot_partition(results: Dict[str, Any], path: str) -> None:
    """Timeline of one run (the last): for each contender, when the old
    leader (on the cut-off host) and the new one ran, the overlap in red."""
    plt = _pyplot()
    partition = results["samples"]["partition"]
    kinds = [k for k in (LIBRARY, CLI, LOCK) if k in partition and partition[k]]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels, end = [], 0.0
    for row, kind in enumerate(reversed(kinds)):
        run = partition[kind][-1]
        base = row * 3
        for offset, (role, spans, color) in enumerate((("new", run["new_spans"], "C2"),
                                                       ("old", run["old_spans"], "C0"))):
            y = base + offset
            for a, b in spans:
                left = max(a, -3.0)
                ax.broken_barh([(left, b - left)], (y - 0.35, 0.7), color=color, alpha=0.8)
                end = max(end, b)
            name = "consul-leader Candidate" if kind == LIBRARY else kind
            labels.append((y, f"{name}: {role} leader"))
        for (a, b) in run["old_spans"]:
            for (c, d) in run["new_spans"]:
                lo, hi = max(a, c), min(b, d)
                if hi > lo:
                    ax.broken_barh([(lo, hi - lo)], (base - 0.45, 1.9), color="red", alpha=0.35)
                    ax.text((lo + hi) / 2, base + 1.55, f"{hi - lo:.1f} s both running", color="red",
                            ha="center", fontsize=8)
        for event in ("old_stop", "new_start"):
            value = run[event]
            if value is not None:
                y = base + (1 if event == "old_stop" else 0)
                ax.text(value, y + 0.42, f"{value:.1f} s", fontsize=7, ha="center")
    ax.axvline(0, color="black", linewidth=1)
    ax.set_xlim(-3, end + 2)
    ax.set_ylim(-1.2, len(kinds) * 3 - 0.5)
    ax.set_yticks([y for y, _ in labels])
    ax.set_yticklabels([label for _, label in labels], fontsize=8)
    ax.set_xlabel("seconds after the leader's host was cut off from the servers (0)")
    ax.set_title("Partition: the old leader (cut-off host) and the new one, one run")
    ax.grid(True, axis="x", alpha=0.3)
    _save(plt, fig, path)
