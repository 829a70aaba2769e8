import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beatproject.settings")

app = Celery("beatproject")
# CELERY_CONSUL_LEADER_KEY in settings.py becomes consul_leader_key here.
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(name="beatproject.ping")
def ping(label):
    return f"pong ({label})"
