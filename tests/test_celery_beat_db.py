"""django-celery-beat's DatabaseScheduler with the leader mixin, on a real
PostgreSQL (a throwaway cluster of Debian's package) and a real Redis
broker: two ``celery beat`` processes of the documented project
(docs/examples/beatproject, started as docs/integrations/django-celery-beat.rst
says) send periodic tasks stored in the database, an
entry every second and one every 4 s. The leading beat is killed again and
again, with SIGTERM and SIGKILL, at random moments (some right after a
send), and restarted as the standby; after some takeovers the schedule is
edited (as in the admin), which makes DatabaseScheduler reload every entry
from the database. Every message that reached the broker is read back: no
two sends of an entry are closer than its interval (a slot sent twice), and
no gap is longer than the interval plus the failover window."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from typing import Any, Dict, Iterator, List

import pytest
import redis
from broker import label, sent
from pg import PostgresCluster

from consul_leader.testing import ConsulAgent

from conftest import PYTHON, ROOT, python_env, wait_until

PROJECT = os.path.join(ROOT, "docs", "examples", "beatproject")
TTL = 1.0
INTERVALS = {"every 1 s": 1.0, "every 4 s": 4.0}
#: The longest a slot may wait for a new leader: the failover after a
#: SIGKILL (about 2 * ttl), plus a beat's start and its first tick.
FAILOVER_WINDOW = 2 * TTL + 3.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


def manage(env: Dict[str, str], *args: str) -> str:
    return subprocess.run([PYTHON, "manage.py", *args], cwd=PROJECT, env=env, check=True, capture_output=True,
                          text=True).stdout


SETUP = """
from django_celery_beat.models import IntervalSchedule, PeriodicTask
second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
four, _ = IntervalSchedule.objects.get_or_create(every=4, period=IntervalSchedule.SECONDS)
PeriodicTask.objects.create(name="ping every second", task="beatproject.ping", interval=second,
                            args='["every 1 s"]')
PeriodicTask.objects.create(name="ping every 4 s", task="beatproject.ping", interval=four, args='["every 4 s"]')
"""

# What an edit in the admin does: any saved change marks the schedule changed,
# and every beat reloads all entries from the database on its next tick.
EDIT = """
from django_celery_beat.models import PeriodicTask
task = PeriodicTask.objects.get(name="ping every 4 s")
task.description = "edited"
task.save()
"""


class Beat:
    """A real ``celery beat`` of the project, its output in a file."""

    def __init__(self, env: Dict[str, str], name: str, workdir: str) -> None:
        self.name, self.env, self.workdir = name, env, workdir
        self.log = os.path.join(workdir, f"beat-{name}.log")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "celery", "-A", "beatproject", "beat", "-S",
                 "beatproject.schedulers:LeaderDatabaseScheduler", "--loglevel", "INFO"],
                cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def output(self) -> str:
        with open(self.log, errors="replace") as fh:
            return "".join(line for line in fh if not line.rstrip().endswith("] ^"))


def sender_pid(headers: Dict[str, Any]) -> int:
    return int(headers["origin"].split("@")[0].removeprefix("gen"))


def run_at(headers: Dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(headers["consul_leader_run_at"]).timestamp()


@pytest.fixture
def project_env(consul_agent: ConsulAgent, key: str, postgres: PostgresCluster, redis_url: str
                ) -> Iterator[Dict[str, str]]:
    database = f"beat_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    postgres.create_database(database)
    env = python_env()
    env.update(CONSUL_HTTP_ADDR=consul_agent.address, BEAT_LEADER_KEY=key, BEAT_LEADER_TTL=str(TTL),
               CELERY_BROKER_URL=redis_url, PGHOST=postgres.host, PGPORT=str(postgres.port), PGUSER=postgres.user,
               PGDATABASE=database, DJANGO_SETTINGS_MODULE="beatproject.settings")
    manage(env, "migrate", "-v", "0")
    manage(env, "shell", "-c", SETUP)
    redis.Redis.from_url(redis_url).delete("celery")
    yield env


def check(messages: List[Dict[str, Any]], start: float, end: float) -> Dict[str, Any]:
    """Per entry: the closest two sends (a repeat shows up below the
    interval) and the longest gap."""
    found: Dict[str, Any] = {}
    for name, interval in INTERVALS.items():
        mine = [h for h in messages if label(h) == name]
        times = [run_at(h) for h in mine]
        gaps = [b - a for a, b in zip(times, times[1:])]
        found[name] = {"sends": len(times), "closest": min(gaps), "longest": max(gaps + [end - times[-1]]),
                       "too_close": [(round(times[i] - start, 2), sender_pid(mine[i]), round(times[i + 1] - start, 2),
                                      sender_pid(mine[i + 1]))
                                     for i in range(len(times) - 1) if times[i + 1] - times[i] < interval - 0.1]}
    return found


def one_round(beats: List[Beat], url: str, rng: random.Random, signum: signal.Signals, started: float,
              events: List[str]) -> float:
    """Kill the leading beat with *signum* at a random moment; the time
    until the standby's first send."""
    by_pid = {b.proc.pid: b for b in beats}
    leader = by_pid[sender_pid(sent(url)[-1])]
    if signum == signal.SIGKILL or rng.random() < 0.5:
        # Right after a send of the 4-second entry: the database does not
        # have that run yet (beat saves every 3 minutes, or at a reload or
        # a clean stop), the record in Consul does.
        count = len([h for h in sent(url) if label(h) == "every 4 s"])
        wait_until(lambda: len([h for h in sent(url) if label(h) == "every 4 s"]) > count, 10, "a send")
    else:
        time.sleep(rng.uniform(0.0, 1.0))
    killed_at = time.time()
    events.append(f"{killed_at - started:.2f} {signum.name} {leader.proc.pid}")
    leader.proc.send_signal(signum)
    leader.proc.wait(30)
    standby = next(b for b in beats if b is not leader)

    def standby_sends() -> List[float]:
        return [run_at(h) for h in sent(url) if sender_pid(h) == standby.proc.pid and run_at(h) > killed_at]

    wait_until(standby_sends, 30, "the standby sends")
    beats[beats.index(leader)] = Beat(leader.env, f"{leader.name}+", leader.workdir)
    return min(standby_sends()) - killed_at


def test_two_database_beats_send_each_slot_at_most_once(project_env: Dict[str, str], redis_url: str,
                                                        tmp_path: Any) -> None:
    seed = int(os.environ.get("BEAT_CHAOS_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    started = time.time()
    beats = [Beat(project_env, "a", str(tmp_path)), Beat(project_env, "b", str(tmp_path))]
    failovers: List[float] = []
    events: List[str] = []
    try:
        wait_until(lambda: len(sent(redis_url)) >= 2, 60, "the first sends")
        for round_ in range(4):
            signum = signal.SIGKILL if round_ % 2 else signal.SIGTERM
            failovers.append(one_round(beats, redis_url, rng, signum, started, events))
            # An edit (as in the admin) soon after the takeover, before the
            # 4-second entry is due again: the new leader reloads every
            # entry from the database.
            events.append(f"{time.time() - started:.2f} edit")
            manage(project_env, "shell", "-c", EDIT)  # every beat reloads its schedule from the database
            time.sleep(rng.uniform(4.0, 6.0))
        end = time.time()
    finally:
        for beat in beats:
            beat.stop()
        for beat in beats:
            print(f"--- beat {beat.name} (pid {beat.proc.pid}) ---\n{beat.output()[-3000:]}")
    messages = sent(redis_url)
    result = check(messages, started, end)
    rounded = {name: {k: round(v, 2) if isinstance(v, float) else v for k, v in found.items()}
               for name, found in result.items()}
    print(f"\ndjango-celery-beat on PostgreSQL (seed {seed}): {len(messages)} sends; {events}; failovers "
          f"{', '.join(f'{f:.2f}s' for f in failovers)}; {json.dumps(rounded)}")
    for name, interval in INTERVALS.items():
        assert not result[name]["too_close"], (name, result[name], seed)
        assert result[name]["longest"] <= interval + FAILOVER_WINDOW, (name, result[name], seed)
