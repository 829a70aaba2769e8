"""Review: an Elector that leads does not put its wiped roster entry back.

The port gave the Candidate's heartbeat the re-put of a deleted roster
entry (``Session.set_leading(roster=...)``, ``locked_by`` and
``_rejoin_roster``): after ``consul kv delete -recurse consul-leader/``
under a leader, a fresh candidate that takes the key after it was deleted
too still sees that someone led it (tests/test_roster_wiped_under_a_leader.py).
An Elector's keys got nothing of the kind: its heartbeat proves its keys
with one read of its prefix (``PrefixView.prove``) and never looks at the
roster, and ``Roster.join`` runs once per session. So the same scene with
an Elector as the old leader ends as the finding before 3c7755a did: the
fresh candidate takes LockIndex 1, reads a roster that shows only itself
(``nobody_else``) and leads at once, while the Elector's job (told to stop
when its watch saw the key go) still winds down.

Measured (Consul 1.8.7, 2 shared cores): the roster was still empty 2.0 s
after the wipe (a Candidate puts its entry back within a heartbeat, 1 s);
the new job started 0.02 s after the key's deletion, the Elector's job
ended 2.005 s after it: the jobs overlapped 1.985 s. The Elector's
lock-delay was 10 s: the new job should have started 10 s after the
deletion at the earliest.

Proposed fix: give the Elector's proof the same check: ``PrefixView.prove``
sends one read-only transaction of ``check-session`` for each led key's
roster entry beside its prefix read (or ``locked_by`` on the entries of
the led keys), and puts back with ``put_locked`` (the led value,
``Roster.led_entry``) those that are gone, as ``Session._rejoin_roster``
does for a Candidate.
"""

from __future__ import annotations

import time

import requests
from support.jobs import Jobs

from consul_leader import Candidate, Elector
from consul_leader.roster import roster_prefix
from consul_leader.testing import ConsulAgent

from conftest import wait_until

#: How long the Elector's job takes to return once told to stop: well
#: within its margin (lock_delay 10 - lease 2.5 = 7.5 s).
WIND_DOWN = 2.0


def test_an_elector_puts_its_wiped_roster_entry_back_and_a_fresh_candidate_waits_for_its_work(
        consul_agent: ConsulAgent, prefix: str, key: str) -> None:
    url = consul_agent.url

    def listed() -> list:
        r = requests.get(f"{url}/v1/kv/{roster_prefix(key)}?keys", timeout=5)
        return [] if r.status_code == 404 else r.json()

    jobs = Jobs()
    old = Elector(prefix, identity="old", address=consul_agent.address, ttl=3, lock_delay=10)
    new = Candidate(key, identity="new", address=consul_agent.address, ttl=3)
    try:
        old.start()
        candidacy = old.candidate(key)
        candidacy.run(jobs.job("old", WIND_DOWN), block=False)
        wait_until(lambda: "old" in jobs.started, what="the Elector's job")
        assert len(listed()) == 1
        requests.delete(f"{url}/v1/kv/consul-leader/?recurse", timeout=5).raise_for_status()
        # A Candidate's heartbeat puts its entry back within one period (1 s).
        time.sleep(2.0)
        back = listed()
        deleted_at = time.monotonic()
        requests.delete(f"{url}/v1/kv/{key}", timeout=5).raise_for_status()
        new.run(jobs.job("new", 0.0), block=False)
        wait_until(lambda: "new" in jobs.started, timeout=60, what="the new leader's job")
        started_after = round(jobs.started["new"] - deleted_at, 3)
        wait_until(lambda: jobs.ended("old") is not None, timeout=30, what="the Elector's job to return")
        old_end = round(jobs.ended("old") - deleted_at, 3)
    finally:
        new.stop()
        old.stop()
    overlap = jobs.worst("old", "new")
    print(f"roster 2 s after the wipe: {back}; new job {started_after}s after the deletion; "
          f"old job ended {old_end}s after it; overlap {overlap}s")
    assert overlap == 0.0, (f"the jobs overlapped {overlap}s (new job {started_after}s after the key's "
                            f"deletion, the Elector's ended {old_end}s after it; roster after the wipe: {back})")
    assert started_after >= 9.0, started_after
