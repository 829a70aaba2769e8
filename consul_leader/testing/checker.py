"""Check the leadership intervals and the work that candidate processes
and supervised commands recorded: the rules of the chaos run against a
real cluster (``tests/chaos``) and of the simulator
(:mod:`consul_leader.testing.sim`), which both write these records.

A *term* here is what one process believed: from the first sample at which
its ``fencing_token`` was set (``is_leader()`` True) to the last one, as
``candidate_proc.py`` recorded them. A process killed while leading ends its
term at its last recorded sample.

A *work* interval is one run of a job (``Candidate.run(job)`` in
``candidate_proc.py``) or one lifetime of a command (``consul-leader run``
running ``command_proc.py``), from its own ``work-start`` record to its
``work-end``, or to its last ``work-alive`` when it was killed. Jobs and
commands are the work of one election on one key, so they are checked
together.

The checker fails a run if

(a) two processes believed they led at overlapping times;
(b) fencing tokens do not strictly increase from one term to the next;
(c) a term outlived its lease: for faults after which no heartbeat can
    extend it (the leader process SIGSTOPped, its session destroyed), the
    lease ends at most ``lease`` after the fault, so no sample may show it
    leading later;
(d) two work intervals (jobs, commands, or one of each) overlap in time;
(e) fencing tokens of work do not strictly increase from one work interval
    to the next, or work carries an older token than a term that had
    already begun (flag and work in one order);
(f) a candidate is dead or stuck at the end: a process that no fault killed
    no longer ran, did not answer its final probe healthy (threads alive,
    heartbeat current, a job running exactly when it leads), had to be
    SIGKILLed to stop, or exited with an unexpected code (a supervisor: not
    its command's status or 128+SIGTERM);
(g) the election stalled: after a fault was undone, no holder of the key
    was running its work within the injector's recovery timeout.

and, for runs whose processes record their ``elected`` and ``deposed``
receivers (:func:`late_deposed`, called by the elector's chaos run):

(h) a process was elected while another one's ``deposed`` receivers had
    not run, though that one was neither frozen nor killed meanwhile.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

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


@dataclass
class Work:
    """One run of a job or command: *kind* ``"job"`` or ``"command"``, of
    candidate *id* (a supervisor's identity for a command), run *work*, by
    process *pid*, under fencing *token* (None: the job started after its
    term's lease ended), from *start* to *end*; *ended* tells whether it
    recorded its own end (else it was killed and *end* is its last sign of
    life)."""

    id: str
    kind: str
    work: str
    pid: int
    token: Optional[int]
    start: float
    end: float
    ended: bool = False


def works(records: Iterable[Record], freezes: Iterable[Tuple[int, float]] = ()) -> List[Work]:
    """The work intervals in *records*, by start.

    A job's interval ends with its last step record (its return after the
    last step is no work). *freezes* are (pid, time) of processes that a
    fault SIGSTOPped: the step a frozen job was in when it froze ends on
    resume, later than anyone's lease, and nothing but a fencing token can
    stop that, so that step counts only up to the freeze; any step begun
    after it counts in full."""
    frozen: Dict[int, List[float]] = {}
    for pid, t in freezes:
        frozen.setdefault(pid, []).append(t)
    found: Dict[str, Work] = {}
    for r in records:
        ev = r.get("ev")
        if ev not in ("work-start", "work-alive", "work-end", "work-sigterm"):
            continue
        name = r.get("work")
        if not isinstance(name, str):
            continue
        if ev == "work-start":
            token = r.get("token")
            found[name] = Work(r["id"], r.get("kind", "job"), name, r["pid"],
                               None if token is None else int(token), r["t"], r["t"])
            continue
        w = found.get(name)
        if w is None:
            continue
        if ev == "work-end":
            w.ended = True
            if w.kind == "job":
                continue
        step = r.get("step")
        if step is not None and any(step <= f <= r["t"] for f in frozen.get(w.pid, ())):
            w.end = max(w.end, max(f for f in frozen[w.pid] if step <= f <= r["t"]))
            continue
        w.end = max(w.end, r["t"])
    return sorted(found.values(), key=lambda w: w.start)


def _overlapping(items: List[Any], same: Callable[[Any, Any], bool]) -> List[Tuple[Any, Any]]:
    # items sorted by start; every later item that starts before one ends
    # overlaps it.
    found = []
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if b.start > a.end:
                break
            if not same(a, b):
                found.append((a, b))
    return found


def work_overlaps(all_work: List[Work]) -> List[Tuple[Work, Work]]:
    """(d): pairs of work intervals that overlap in time."""
    return _overlapping(all_work, lambda a, b: a.work == b.work)


def work_token_violations(all_work: List[Work], all_terms: List[Term]) -> List[str]:
    """(e): consecutive work intervals (by start) whose tokens do not
    strictly increase; and work that started with a smaller token than a
    term that had begun before it."""
    bad = []
    tokened = [w for w in all_work if w.token is not None]
    for a, b in zip(tokened, tokened[1:]):
        assert a.token is not None and b.token is not None
        if not b.token > a.token:
            bad.append(f"{b.kind} {b.work} of {b.id} (token {b.token}) started at {b.start:.3f} after "
                       f"{a.kind} {a.work} of {a.id} (token {a.token}) started at {a.start:.3f}")
    for w in tokened:
        assert w.token is not None
        newer = [t for t in all_terms if t.start < w.start and t.token > w.token]
        if newer:
            t = min(newer, key=lambda t: t.start)
            bad.append(f"{w.kind} {w.work} of {w.id} started at {w.start:.3f} with token {w.token}, after "
                       f"{t.id}'s term with token {t.token} began at {t.start:.3f}")
    return bad


def liveness_violations(records: List[Record]) -> List[str]:
    """(f): from the injector's ``stopped`` records and the processes'
    ``final`` and ``exit`` records."""
    bad = []
    finals = {r["id"]: r for r in records if r.get("ev") == "final"}
    exits = {r["id"] for r in records if r.get("ev") == "exit"}
    for s in (r for r in records if r.get("ev") == "stopped"):
        who = f"{s['proc']} {s['id']}"
        if s.get("killed_by_fault"):
            continue
        if not s.get("ran_until_end", True):
            bad.append(f"{who} had died before the end of the run (exit code {s.get('code')})")
            continue
        if s.get("forced"):
            bad.append(f"{who} did not exit on SIGTERM and was SIGKILLed")
        if s["proc"] == "supervisor":
            if s.get("code") not in s.get("expected", ()):
                bad.append(f"{who} exited with {s.get('code')} on SIGTERM, expected one of {s.get('expected')}")
            continue
        if s.get("code") != 0:
            bad.append(f"{who} exited with {s.get('code')} on SIGTERM")
        final = finals.get(s["id"])
        if final is None:
            bad.append(f"{who} wrote no final record")
            continue
        health = final.get("health", {})
        if not (health.get("running") and health.get("ok") and final.get("sampler_alive")):
            bad.append(f"{who} was not healthy at the end: {health}, sampler alive: {final.get('sampler_alive')}")
        if final.get("leading") and final.get("job_running") != 1:
            bad.append(f"{who} led at the end with {final.get('job_running')} jobs running")
        if not final.get("leading") and final.get("job_running"):
            bad.append(f"{who} did not lead at the end but ran {final.get('job_running')} jobs")
        if s["id"] not in exits:
            bad.append(f"{who} did not finish stop()")
    return bad


def overlaps(all_terms: List[Term]) -> List[Tuple[Term, Term]]:
    """(a): pairs of terms of different processes that overlap in time."""
    return _overlapping(all_terms, lambda a, b: a.pid == b.pid)


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


def late_deposed(records: List[Record]) -> List[str]:
    """(h), for the records of one key that carry ``elected`` and
    ``deposed`` (the receivers' side): each process's ``deposed`` receivers
    had run when another process was elected, unless the first one was
    frozen (a ``SIGSTOP`` fault with ``seconds``) or killed (a ``SIGKILL``
    fault) in between, when nothing can run its receivers. Work that
    ``on_elected`` starts is stopped by ``on_deposed``: a late one lets two
    processes' work overlap, which no flag check sees."""
    faults = [r for r in records if r.get("ev") == "fault" and r.get("target")]

    def excused(who: str, since: float, until: float) -> bool:
        for f in faults:
            if f["target"] != who:
                continue
            if "SIGSTOP" in f["kind"]:
                frozen = float(f["signalled"] if "signalled" in f else f["t"])
                thawed = float(f["t"]) + float(f.get("seconds", 0.0))
                if frozen <= until and thawed >= since:
                    return True
            elif "SIGKILL" in f["kind"] and since <= f["t"] <= until:
                return True
        return False

    bad: List[str] = []
    leading: Dict[str, Tuple[float, int]] = {}  # process -> (when it was elected, token), until its deposed
    for r in sorted((r for r in records if r.get("ev") in ("elected", "deposed")), key=lambda r: r["t"]):
        who = r["id"]
        if r["ev"] == "deposed":
            leading.pop(who, None)
            continue
        token = int(r.get("token") or 0)
        if any(other != who and token < newer for other, (_, newer) in leading.items()):
            # Told late of a term older than one already under way: the
            # process was frozen between its acquisition and its receivers,
            # and the term ended before the newer one began.
            continue
        for other, (since, _) in leading.items():
            if other != who and not excused(other, since, r["t"]):
                bad.append(f"{who} was elected at {r['t']:.3f} before the deposed receivers of {other} "
                           f"(elected at {since:.3f}) ran")
        leading[who] = (r["t"], token)
    return bad


def availability(intervals: List[Any], begin: float, end: float) -> float:
    """Fraction of [begin, end] covered by *intervals* (terms: some process
    believed it led; work: some job or command ran)."""
    covered, cursor = 0.0, begin
    for t in intervals:
        s, e = max(t.start, cursor), min(t.end, end)
        if e > s:
            covered += e - s
            cursor = e
    return covered / (end - begin) if end > begin else 0.0


def failover(intervals: List[Any], fault: Record, next_fault: Optional[float]) -> Optional[float]:
    """Seconds from *fault* until a new interval (term or work) started, if
    the fault ended the one that ran at that moment (or none ran); None if
    that one survived until the next fault."""
    t0 = fault["t"]
    running = [t for t in intervals if t.start <= t0 <= t.end]
    horizon = next_fault if next_fault is not None else float("inf")
    if running and max(t.end for t in running) >= horizon:
        return None
    after = [t.start for t in intervals if t.start > t0]
    return min(after) - t0 if after and min(after) < horizon else None


@dataclass
class Report:
    """What :func:`check` found in one run: each rule's violations, and the
    figures of the run (availability, failover times per fault kind)."""

    terms: List[Term]
    overlaps: List[Tuple[Term, Term]]
    token_violations: List[Tuple[Term, Term]]
    lease_violations: List[str]
    availability: float
    failovers: Dict[str, List[float]]
    faults: Dict[str, int]
    work: List[Work] = field(default_factory=list)
    work_overlaps: List[Tuple[Work, Work]] = field(default_factory=list)
    work_token_violations: List[str] = field(default_factory=list)
    liveness_violations: List[str] = field(default_factory=list)
    stalls: List[str] = field(default_factory=list)
    work_availability: float = 0.0
    work_failovers: Dict[str, List[float]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if no rule was broken."""
        return not (self.overlaps or self.token_violations or self.lease_violations or self.work_overlaps
                    or self.work_token_violations or self.liveness_violations or self.stalls)

    def problems(self) -> str:
        """One line per violation, each starting with its rule's letter."""
        lines = [f"(a) overlap: {a} and {b}" for a, b in self.overlaps]
        lines += [f"(b) token not increasing: {a} then {b}" for a, b in self.token_violations]
        lines += [f"(c) {v}" for v in self.lease_violations]
        lines += [f"(d) work overlap of {min(a.end, b.end) - b.start:.3f}s: {a} and {b}"
                  for a, b in self.work_overlaps]
        lines += [f"(e) {v}" for v in self.work_token_violations]
        lines += [f"(f) {v}" for v in self.liveness_violations]
        lines += [f"(g) {v}" for v in self.stalls]
        return "\n".join(lines)

    def table(self) -> str:
        """Per fault kind: how often applied; failovers of the flag (a new
        term began) and of the work (a new job or command began), median and
        worst, in seconds from the fault."""
        def stats(times: List[float]) -> str:
            if not times:
                return f"{0:>4}{'-':>7}{'-':>7}"
            return f"{len(times):>4}{statistics.median(times):>7.2f}{max(times):>7.2f}"

        rows = [f"{'fault':<34}{'applied':>8}  {'flag: n':>7}{'p50':>7}{'max':>7}  {'work: n':>7}{'p50':>7}{'max':>7}"]
        for kind in sorted(self.faults):
            rows.append(f"{kind:<34}{self.faults[kind]:>8}     {stats(self.failovers.get(kind, []))}"
                        f"     {stats(self.work_failovers.get(kind, []))}")
        rows.append(f"terms: {len(self.terms)}  flag overlaps: {len(self.overlaps)}  token violations: "
                    f"{len(self.token_violations)}  lease violations: {len(self.lease_violations)}  "
                    f"flag availability: {self.availability:.1%}")
        jobs = sum(1 for w in self.work if w.kind == "job")
        rows.append(f"work: {jobs} jobs, {len(self.work) - jobs} commands  work overlaps: {len(self.work_overlaps)} "
                    f"({sum(min(a.end, b.end) - b.start for a, b in self.work_overlaps):.2f}s in all)  "
                    f"work token violations: {len(self.work_token_violations)}  "
                    f"dead or stuck: {len(self.liveness_violations)}  stalls: {len(self.stalls)}  "
                    f"work availability: {self.work_availability:.1%}")
        rows += self.notes
        return "\n".join(rows)


def check(records: List[Record], lease: float) -> Report:
    """Check a run: candidate records plus the injector's ``fault`` records
    (``kind``, ``t``, optional ``target`` and ``lease_bound``), ``stopped``
    records (how each process ended), ``stall`` and ``note`` records, and
    its ``run`` record (``begin``, ``end``)."""
    all_terms = terms(records)
    # Frozen once every thread was seen stopped (lease_bound), where the
    # fault knows it: a thread may begin a step between the signal and then.
    freezes = [(int(r["frozen_pid"]), max(r["t"], r.get("lease_bound", r["t"]))) for r in records
               if r.get("ev") == "fault" and "frozen_pid" in r]
    all_work = works(records, freezes)
    faults = sorted((r for r in records if r.get("ev") == "fault"), key=lambda r: r["t"])
    run = next((r for r in records if r.get("ev") == "run" and "begin" in r), None)
    begin = run["begin"] if run else min((t.start for t in all_terms), default=0.0)
    end = run["end"] if run else max((t.end for t in all_terms), default=0.0)
    failovers: Dict[str, List[float]] = {}
    work_failovers: Dict[str, List[float]] = {}
    counts: Dict[str, int] = {}
    for i, f in enumerate(faults):
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
        nxt = faults[i + 1]["t"] if i + 1 < len(faults) else end
        took = failover(all_terms, f, nxt)
        if took is not None:
            failovers.setdefault(f["kind"], []).append(took)
        took = failover(all_work, f, nxt)
        if took is not None:
            work_failovers.setdefault(f["kind"], []).append(took)
    stalls = [f"no holder ran its work {r.get('seconds')}s after {r.get('after')} at {r['t']:.3f}"
              for r in records if r.get("ev") == "stall"]
    notes = [str(r.get("text")) for r in records if r.get("ev") == "note"]
    return Report(all_terms, overlaps(all_terms), token_violations(all_terms),
                  lease_violations(all_terms, faults, lease), availability(all_terms, begin, end), failovers, counts,
                  work=all_work, work_overlaps=work_overlaps(all_work),
                  work_token_violations=work_token_violations(all_work, all_terms),
                  liveness_violations=liveness_violations(records), stalls=stalls,
                  work_availability=availability(all_work, begin, end), work_failovers=work_failovers, notes=notes)


def explain(records: List[Record], report: Report, window: float = 1.0) -> str:
    """For each overlap of work or flag, the fault before it and the
    signal, belief and work records of both sides around it: the timeline a
    developer needs to find the cause."""
    faults = sorted((r for r in records if r.get("ev") == "fault"), key=lambda r: r["t"])
    pairs: List[Tuple[str, Any, Any]] = [("work", a, b) for a, b in report.work_overlaps]
    pairs += [("flag", a, b) for a, b in report.overlaps]
    out = []
    for what, a, b in pairs:
        begin = b.start
        before = [f for f in faults if f["t"] <= begin]
        cause = before[-1] if before else None
        out.append(f"== {what} overlap {min(a.end, b.end) - b.start:.3f}s at {begin:.3f}: {a} and {b}")
        if cause is not None:
            out.append(f"   last fault before it, {begin - cause['t']:.3f}s earlier: {cause}")
        ids = {a.id, b.id}
        for r in sorted((r for r in records if r.get("id") in ids and isinstance(r.get("t"), (int, float))
                         and begin - window - 3 <= r["t"] <= max(a.end, b.end) + window
                         and r.get("ev") not in ("alive", "work-alive", "view")), key=lambda r: r["t"]):
            out.append(f"   {r['t'] - begin:+8.3f} {r.get('id')} {r.get('ev')} "
                       + " ".join(f"{k}={v}" for k, v in r.items() if k not in ("ev", "id", "t", "pid")))
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    """``python tests/chaos/checker.py RECORDS.jsonl``: check a run's
    records again, print the table, the problems and each overlap's timeline."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    with open(args[0], encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    run: Record = next((r for r in records if r.get("ev") == "run" and "begin" in r), {})
    lease = float(args[1]) if len(args) > 1 else 5 / 6 * float(run.get("ttl", 1.0))
    report = check(records, lease)
    print(report.table())
    print(report.problems())
    print(explain(records, report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
