"""A Celery app whose beat runs on several hosts, with one sending at a time.

Start the same beat on each host (each with its own local schedule file)::

    celery -A celery_app beat -S consul_leader.contrib.celery:LeaderScheduler

Workers run tasks as usual; ``send_report`` runs only in the worker process
that leads its own election (see ``start_worker_candidate``).
"""
import os

from celery import Celery
from celery.signals import worker_process_init

from consul_leader import Candidate, leader_only

app = Celery("celery_app", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
             backend=os.environ.get("CELERY_RESULT_BACKEND"))
app.conf.update(
    beat_scheduler="consul_leader.contrib.celery:LeaderScheduler",  # same as -S on the command line
    consul_leader_key=os.environ.get("BEAT_LEADER_KEY", "myservice/beat/leader"),
    consul_leader_ttl=2,  # seconds; a crashed beat is replaced about 2*ttl later
    beat_schedule={
        "ping-every-second": {"task": "celery_app.ping", "schedule": 1.0, "args": ("every 1 s",)},
        "ping-every-4-seconds": {"task": "celery_app.ping", "schedule": 4.0, "args": ("every 4 s",)},
    },
)


@app.task
def ping(label):
    return f"pong ({label})"


# Tasks decorated with @leader_only run only where a candidate leads: give
# each worker process one, on a key of its own (not the beat's).
@worker_process_init.connect
def start_worker_candidate(**kwargs):
    Candidate(os.environ.get("WORKER_LEADER_KEY", "myservice/worker/leader")).start()


@app.task
@leader_only
def send_report():
    return "report sent"
