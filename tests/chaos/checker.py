"""Check the leadership intervals that candidate processes recorded.

A *term* here is what one process believed: from the first sample at which
its ``fencing_token`` was set (``is_leader()`` True) to the last one, as
``candidate_proc.py`` recorded them. A process killed while leading ends its
term at its last recorded sample.

The checker fails a run if

(a) two processes believed they led at overlapping times;
(b) fencing tokens do not strictly increase from one term to the next;
(c) a term outlived its lease: for faults after which no heartbeat can
    extend it (the leader process SIGSTOPped, its session destroyed), the
    lease ends at most ``lease`` after the fault, so no sample may show it
    leading later.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

Record = Dict[str, Any]


@dataclass
class Term:
    """One believed term: process *pid* (identity *id*) led with *token*
    from *start* to *end* (monotonic seconds)."""

    id: str
    pid: int
    token: int
    start: float
    end: float


def terms(records: Iterable[Record]) -> List[Term]:
    """The terms in *records* (of any number of processes), by start."""
    open_: Dict[int, Term] = {}
    done: List[Term] = []
    for r in records:
        ev, pid = r.get("ev"), r.get("pid")
        if not isinstance(pid, int):
            continue
        if ev == "up":
            if pid in open_:
                done.append(open_.pop(pid))
            open_[pid] = Term(r["id"], pid, int(r["token"]), r["t"], r["t"])
        elif ev == "alive" and pid in open_:
            open_[pid].end = max(open_[pid].end, r["t"])
        elif ev == "down" and pid in open_:
            term = open_.pop(pid)
            term.end = max(term.end, r["last"])
            done.append(term)
    done.extend(open_.values())
    return sorted(done, key=lambda t: t.start)


def overlaps(all_terms: List[Term]) -> List[Tuple[Term, Term]]:
    """(a): pairs of terms of different processes that overlap in time."""
    found = []
    for i, a in enumerate(all_terms):
        for b in all_terms[i + 1:]:
            if b.start > a.end:
                break
            if b.pid != a.pid:
                found.append((a, b))
    return found


def token_violations(all_terms: List[Term]) -> List[Tuple[Term, Term]]:
    """(b): consecutive terms whose tokens do not strictly increase. One term
    can show as two intervals of one process (a late heartbeat let the lease
    lapse, the next renewed it); those share a token and are not a violation."""
    bad = []
    for a, b in zip(all_terms, all_terms[1:]):
        same_term = a.pid == b.pid and a.token == b.token
        if not same_term and not b.token > a.token:
            bad.append((a, b))
    return bad


def lease_violations(all_terms: List[Term], faults: List[Record], lease: float) -> List[str]:
    """(c): for each fault with ``lease_bound`` (the time after which no
    heartbeat of ``target`` could extend its lease), the target's term that
    ran then must end before ``lease_bound + lease``."""
    bad = []
    for f in faults:
        bound, target = f.get("lease_bound"), f.get("target")
        if bound is None:
            continue
        for t in all_terms:
            if t.id == target and t.start <= bound and t.end >= bound + lease:
                bad.append(f"{target} (token {t.token}) believed it led until {t.end:.3f}, "
                           f"{t.end - bound:.3f}s after {f['kind']} at {bound:.3f}; lease is {lease}s")
    return bad


def availability(all_terms: List[Term], begin: float, end: float) -> float:
    """Fraction of [begin, end] during which some process believed it led."""
    covered, cursor = 0.0, begin
    for t in all_terms:
        s, e = max(t.start, cursor), min(t.end, end)
        if e > s:
            covered += e - s
            cursor = e
    return covered / (end - begin) if end > begin else 0.0


def failover(all_terms: List[Term], fault: Record, next_fault: Optional[float]) -> Optional[float]:
    """Seconds from *fault* until a new term started, if the fault ended the
    term that ran at that moment (or none ran); None if that term survived
    until the next fault."""
    t0 = fault["t"]
    running = [t for t in all_terms if t.start <= t0 <= t.end]
    horizon = next_fault if next_fault is not None else float("inf")
    if running and max(t.end for t in running) >= horizon:
        return None
    after = [t.start for t in all_terms if t.start > t0]
    return min(after) - t0 if after and min(after) < horizon else None


@dataclass
class Report:
    terms: List[Term]
    overlaps: List[Tuple[Term, Term]]
    token_violations: List[Tuple[Term, Term]]
    lease_violations: List[str]
    availability: float
    failovers: Dict[str, List[float]]
    faults: Dict[str, int]

    @property
    def ok(self) -> bool:
        return not (self.overlaps or self.token_violations or self.lease_violations)

    def problems(self) -> str:
        lines = [f"(a) overlap: {a} and {b}" for a, b in self.overlaps]
        lines += [f"(b) token not increasing: {a} then {b}" for a, b in self.token_violations]
        lines += [f"(c) {v}" for v in self.lease_violations]
        return "\n".join(lines)

    def table(self) -> str:
        rows = [f"{'fault':<24}{'applied':>8}{'failovers':>10}{'p50 s':>8}{'max s':>8}"]
        for kind in sorted(self.faults):
            times = self.failovers.get(kind, [])
            p50 = f"{statistics.median(times):.2f}" if times else "-"
            worst = f"{max(times):.2f}" if times else "-"
            rows.append(f"{kind:<24}{self.faults[kind]:>8}{len(times):>10}{p50:>8}{worst:>8}")
        rows.append(f"terms: {len(self.terms)}  overlaps: {len(self.overlaps)}  token violations: "
                    f"{len(self.token_violations)}  lease violations: {len(self.lease_violations)}  "
                    f"availability: {self.availability:.1%}")
        return "\n".join(rows)


def check(records: List[Record], lease: float) -> Report:
    """Check a run: candidate records plus the injector's ``fault`` records
    (``kind``, ``t``, optional ``target`` and ``lease_bound``) and its
    ``run`` record (``begin``, ``end``)."""
    all_terms = terms(records)
    faults = sorted((r for r in records if r.get("ev") == "fault"), key=lambda r: r["t"])
    run = next((r for r in records if r.get("ev") == "run"), None)
    begin = run["begin"] if run else min((t.start for t in all_terms), default=0.0)
    end = run["end"] if run else max((t.end for t in all_terms), default=0.0)
    failovers: Dict[str, List[float]] = {}
    counts: Dict[str, int] = {}
    for i, f in enumerate(faults):
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
        nxt = faults[i + 1]["t"] if i + 1 < len(faults) else end
        took = failover(all_terms, f, nxt)
        if took is not None:
            failovers.setdefault(f["kind"], []).append(took)
    return Report(all_terms, overlaps(all_terms), token_violations(all_terms),
                  lease_violations(all_terms, faults, lease), availability(all_terms, begin, end), failovers, counts)
