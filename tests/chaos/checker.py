"""The chaos checker lives in :mod:`consul_leader.testing.checker`, shared
with the simulator (``consul_leader.testing.sim``) so that both hold runs
to the same rules; this module keeps ``chaos.checker`` and ``python
tests/chaos/checker.py RECORDS.jsonl`` working."""

from __future__ import annotations

from consul_leader.testing.checker import (
    Record,
    Report,
    Term,
    Work,
    availability,
    check,
    explain,
    failover,
    late_deposed,
    lease_violations,
    liveness_violations,
    main,
    overlaps,
    terms,
    token_violations,
    work_overlaps,
    work_token_violations,
    works,
)

__all__ = ["Record", "Report", "Term", "Work", "availability", "check", "explain", "failover", "late_deposed",
           "lease_violations", "liveness_violations", "main", "overlaps", "terms", "token_violations",
           "work_overlaps", "work_token_violations", "works"]

if __name__ == "__main__":
    raise SystemExit(main())
