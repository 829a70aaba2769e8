"""A Django project whose periodic tasks live in PostgreSQL
(django-celery-beat) and whose beat runs on several hosts, one sending."""
import os

SECRET_KEY = "only-for-the-example"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "NAME": os.environ.get("PGDATABASE", "beat"),
        "USER": os.environ.get("PGUSER", "postgres"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# [beat]
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
# The leader-only DatabaseScheduler (beatproject/schedulers.py):
CELERY_BEAT_SCHEDULER = "beatproject.schedulers:LeaderDatabaseScheduler"
CELERY_CONSUL_LEADER_KEY = os.environ.get("BEAT_LEADER_KEY", "myservice/beat/leader")
CELERY_CONSUL_LEADER_TTL = float(os.environ.get("BEAT_LEADER_TTL", "2"))  # a crashed beat is replaced ~2*ttl later
# [/beat]
