"""Celery beat as a singleton (docs/integrations/celery.rst): real ``celery beat`` processes with
LeaderScheduler and a real Redis broker (Debian's redis-server, found or
installed by scripts/install-redis). Every message that reaches the broker is
read back: across a clean handover (SIGTERM) and a crash (SIGKILL) of the
leading beat, no run is sent twice and the standby takes over.

Plus, in-process against the real agent: the fenced record refuses a deposed
term, settings errors name the setting, and @leader_only on a task.

The app is the documented example, docs/examples/celery_app.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from typing import Any, Callable, Dict, Iterator, List

import pytest
import redis
import requests
from broker import label, sent
from celery import Celery
from chaos.procs import wait_until

from consul_leader import Candidate, ConfigurationError, set_default
from consul_leader.contrib.celery import LeaderScheduler, candidate_from_conf, fenced_write
from consul_leader.testing import ConsulAgent

from conftest import PYTHON, ROOT, python_env

EXAMPLES = os.path.join(ROOT, "docs", "examples")
sys.path.insert(0, EXAMPLES)
import celery_app  # noqa: E402  (the documented example)


class Beat:
    """A real ``celery beat`` process running the example app."""

    def __init__(self, env: Dict[str, str], workdir: str, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "celery_app", "beat", "-S", "consul_leader.contrib.celery:LeaderScheduler",
             "--schedule", os.path.join(workdir, f"schedule-{name}"), "--loglevel", "INFO"],
            cwd=EXAMPLES, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: List[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or ()), daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def beats(consul_agent: ConsulAgent, key: str, redis_url: str) -> Iterator[Callable[[str], Beat]]:
    env = python_env()
    env.update(CONSUL_HTTP_ADDR=consul_agent.address, BEAT_LEADER_KEY=key, CELERY_BROKER_URL=redis_url)
    workdir = tempfile.mkdtemp(prefix="consul-leader-beat-")
    made: List[Beat] = []

    def start(name: str) -> Beat:
        made.append(Beat(env, workdir, name))
        return made[-1]

    redis.Redis.from_url(redis_url).delete("celery")
    yield start
    for beat in made:
        beat.stop()
    for beat in made:
        print(f"--- beat {beat.name} (pid {beat.proc.pid}) ---\n{''.join(beat.lines)[-4000:]}")


def sender_pid(headers: Dict[str, Any]) -> int:
    return int(headers["origin"].split("@")[0].removeprefix("gen"))


INTERVALS = {"every 1 s": 1.0, "every 4 s": 4.0}  # the example's beat_schedule, by the task's argument


def test_two_beats_send_every_run_once_across_a_handover_and_a_crash(beats: Callable[[str], Beat],
                                                                      redis_url: str) -> None:
    a, b = beats("a"), beats("b")
    every_4s = wait_until(lambda: [h for h in sent(redis_url) if label(h) == "every 4 s"], 60,
                          "the leading beat sends")
    leader = {a.proc.pid: a, b.proc.pid: b}[sender_pid(every_4s[0])]
    standby = b if leader is a else a

    # A clean stop right after a send of the 4-second entry: the standby wins
    # within milliseconds, while its own schedule (on its own clock, since its
    # start) says that entry is long due. It must wait for the entry's next
    # time instead.
    wait_until(lambda: len([h for h in sent(redis_url) if label(h) == "every 4 s"]) > len(every_4s), 10,
               "the next send of the 4-second entry", every=0.02)
    leader.proc.send_signal(signal.SIGTERM)
    assert leader.proc.wait(30) == 0
    wait_until(lambda: sum(sender_pid(h) == standby.proc.pid and label(h) == "every 4 s"
                           for h in sent(redis_url)) >= 1, 30, "the standby sends the 4-second entry")

    # A crash: the lock stays until the check's TTL runs out, then the new standby wins.
    third = beats("c")
    time.sleep(1)  # let it run for election before its rival dies
    standby.proc.kill()
    crashed = time.monotonic()
    wait_until(lambda: any(sender_pid(h) == third.proc.pid for h in sent(redis_url)), 60,
               "the third beat sends after SIGKILL of the leader")
    print(f"crash: the new leader's first send {time.monotonic() - crashed:.1f}s after SIGKILL")
    wait_until(lambda: sum(sender_pid(h) == third.proc.pid for h in sent(redis_url)) >= 3, 30, "it goes on")
    third.proc.send_signal(signal.SIGTERM)
    third.proc.wait(30)

    messages = sent(redis_url)
    tokens = [h["consul_leader_fencing_token"] for h in messages]
    senders = [sender_pid(h) for h in messages]
    print(f"{len(messages)} messages; per sender: {[(p, senders.count(p)) for p in dict.fromkeys(senders)]}; "
          f"fencing tokens {sorted(set(tokens))}")
    assert len({h["id"] for h in messages}) == len(messages)
    assert list(dict.fromkeys(senders)) == [leader.proc.pid, standby.proc.pid, third.proc.pid]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3  # one term per sender, in order
    # Each entry runs "its interval after its last run": a run sent twice, or
    # a standby's stale schedule firing at takeover, would come sooner.
    for name, interval in INTERVALS.items():
        runs = [(datetime.fromisoformat(h["consul_leader_run_at"]), sender_pid(h)) for h in messages
                if label(h) == name]
        gaps = [((t2 - t1).total_seconds(), p1 != p2) for (t1, p1), (t2, p2) in zip(runs, runs[1:])]
        print(f"{name}: {len(runs)} runs, smallest gap {min(g for g, _ in gaps):.3f}s, at the handovers "
              f"{[round(g, 3) for g, handover in gaps if handover]}")
        assert all(gap >= interval - 0.001 for gap, _ in gaps), (name, gaps)


def test_a_deposed_term_cannot_record_a_run(make_candidate: Callable[..., Candidate], key: str,
                                            consul_agent: ConsulAgent) -> None:
    old = make_candidate(key, ttl=1).start()
    assert old.wait_for_leadership(15)
    old_token = old.fencing_token
    assert old_token is not None
    assert fenced_write(old, key + ".schedule", b"by the old term", old_token)
    new = make_candidate(key, ttl=1).start()
    old.resign()
    assert new.wait_for_leadership(15) and new.fencing_token is not None
    # The old term's process, paused before it noticed, tries again: refused.
    assert not fenced_write(old, key + ".schedule", b"late write of the old term", old_token)
    assert new.client.get_key(key + ".schedule")[1]["Value"] == b"by the old term"
    assert fenced_write(new, key + ".schedule", b"by the new term", new.fencing_token)
    assert new.client.get_key(key + ".schedule")[1]["Value"] == b"by the new term"


@pytest.mark.parametrize("conf, words", [
    ({"consul_leader_key": None}, ["consul_leader_key is required"]),
    ({"consul_leader_tll": 3}, ["consul_leader_tll", "not a consul-leader setting", "consul_leader_ttl"]),
    ({"consul_leader_ttl": "soon"}, ["consul_leader_ttl='soon'", "ttl"]),
])
def test_bad_celery_settings_are_refused_with_their_names(conf: Dict[str, Any], words: List[str]) -> None:
    from celery import Celery

    app = Celery("t", set_as_current=False)
    app.conf.update({"consul_leader_key": "a/leader", **conf})
    with pytest.raises((ConfigurationError, TypeError)) as info:
        candidate_from_conf(app)
    for word in words:
        assert word in str(info.value)
    with pytest.raises((ConfigurationError, TypeError)):
        LeaderScheduler(app=app, schedule_filename=os.devnull, lazy=True).tick()


def test_leader_only_task_runs_only_in_the_leading_worker_process(consul_agent: ConsulAgent, key: str,
                                                                  make_candidate: Callable[..., Candidate],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from consul_leader import get_default

    set_default(None)
    monkeypatch.setenv("WORKER_LEADER_KEY", key)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_agent.address)
    try:
        celery_app.start_worker_candidate()  # what worker_process_init runs in each pool process
        mine = get_default()
        assert mine is not None and mine.key == key
        assert mine.wait_for_leadership(15)
        assert celery_app.send_report.apply().get() == "report sent"
        other = make_candidate(key, ttl=1).start()
        mine.resign()
        assert other.wait_for_leadership(15)
        assert celery_app.send_report.apply().get() is None
    finally:
        candidate = get_default()
        if candidate is not None:
            candidate.stop()
        set_default(None)


def test_leader_only_task_in_a_real_worker_follows_the_election(consul_agent: ConsulAgent, key: str,
                                                                redis_url: str,
                                                                make_candidate: Callable[..., Candidate]) -> None:
    """A real ``celery worker`` (one pool process, whose candidate the
    example starts in worker_process_init): the @leader_only task returns
    None while another process leads, and runs once that one stepped down."""
    other = make_candidate(key).start()
    assert other.wait_for_leadership(30)
    env = python_env()
    backend = redis_url.rsplit("/", 1)[0] + "/1"
    env.update(CONSUL_HTTP_ADDR=consul_agent.address, WORKER_LEADER_KEY=key, CELERY_BROKER_URL=redis_url,
               CELERY_RESULT_BACKEND=backend)
    worker = subprocess.Popen([PYTHON, "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
                               "--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                              cwd=EXAMPLES, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: List[str] = []
    threading.Thread(target=lambda: lines.extend(worker.stdout or ()), daemon=True).start()
    app = Celery("test-client", broker=redis_url, backend=backend)  # only sends; the worker runs the example
    try:
        # The worker's candidate has registered its session: it waits behind `other`.
        def sessions_on_key() -> int:
            listed = requests.get(f"{consul_agent.url}/v1/session/list", timeout=5).json()
            return sum(1 for s in listed if f" {key} " in s.get("Name", ""))

        wait_until(lambda: sessions_on_key() >= 2, 60, "the worker's candidate runs")
        assert app.send_task("celery_app.send_report").get(timeout=30) is None
        other.stop()
        wait_until(lambda: (requests.get(f"{consul_agent.url}/v1/kv/{key}", timeout=5).json() or [{}])[0]
                   .get("Session"), 30, "the worker's candidate leads")
        assert app.send_task("celery_app.send_report").get(timeout=30) == "report sent"
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        print("--- worker ---\n" + "".join(lines)[-4000:])


def test_a_beat_started_after_the_last_run_continues_the_schedule_at_takeover(beats: Callable[[str], Beat],
                                                                               redis_url: str) -> None:
    # Celery gives a new entry last_run_at = now; a beat started after the
    # leader's last run must still take the recorded run over its own, or
    # its first run comes its own start later than the schedule says.
    a = beats("a")
    wait_until(lambda: [h for h in sent(redis_url) if label(h) == "every 4 s"], 60, "the leading beat sends")
    b = beats("b")
    wait_until(lambda: any("beat: Starting" in line for line in b.lines), 30, "the second beat starts")
    time.sleep(0.5)  # its entries are made, with its own start as their last run
    last = len([h for h in sent(redis_url) if label(h) == "every 4 s"])
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    wait_until(lambda: any(sender_pid(h) == b.proc.pid and label(h) == "every 4 s" for h in sent(redis_url)), 30,
               "the second beat sends the 4-second entry")
    runs = [datetime.fromisoformat(h["consul_leader_run_at"]) for h in sent(redis_url) if label(h) == "every 4 s"]
    gap = (runs[last] - runs[last - 1]).total_seconds()
    assert any("continued 2 entries" in line for line in b.lines), b.lines[-5:]
    assert 4.0 - 0.001 <= gap <= 4.5, f"the first run after the takeover came {gap:.2f}s after the last one"
