"""A Flask app with an APScheduler whose jobs run in one process of the
whole fleet: the leader. Every worker builds the same scheduler; each runs
it only while it leads.

::

    LEADER_KEY=myservice/scheduler \
    gunicorn --preload --workers 3 -c apscheduler_gunicorn.conf.py apscheduler_app:app
"""
import json
import os
import time
from datetime import datetime, timezone

from apscheduler.events import EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from consul_leader import Candidate
from consul_leader.contrib.apscheduler import run_on_leader

app = Flask(__name__)
scheduler = BackgroundScheduler(timezone="UTC")


@scheduler.scheduled_job("interval", seconds=1, id="heartbeat_report",
                         # a fixed start: every replica computes the same slots
                         start_date=datetime(2024, 1, 1, tzinfo=timezone.utc))
def heartbeat_report():
    ...  # the singleton work


def audit(event):
    """One line per run, with the slot it ran for (WORK_LOG, if set)."""
    if os.environ.get("WORK_LOG"):
        with open(os.environ["WORK_LOG"], "a") as log:
            log.write(json.dumps({"pid": os.getpid(), "job": event.job_id, "t": time.time(),
                                  "slot": event.scheduled_run_time.timestamp()}) + "\n")


scheduler.add_listener(audit, EVENT_JOB_EXECUTED)
scheduling = None


def start_scheduling():
    """Called in each worker after the fork (gunicorn's post_worker_init):
    threads do not survive a fork, so nothing starts in a preloading master."""
    global scheduling
    candidate = Candidate(os.environ.get("LEADER_KEY", "myservice/scheduler"),
                          ttl=float(os.environ.get("LEADER_TTL", "3")))
    scheduling = run_on_leader(scheduler, candidate)


def stop_scheduling():
    """Called when a worker exits: pause, wait for running jobs, release the lock."""
    if scheduling is not None:
        scheduling.shutdown()


@app.get("/")
def index():
    candidate = scheduling.candidate if scheduling else None
    return {"pid": os.getpid(), "leader": candidate.leader() if candidate else None,
            "runs_jobs": bool(candidate and candidate.is_leader())}
