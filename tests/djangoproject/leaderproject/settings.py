"""Settings of the test project: as small as Django allows, plus consul-leader.

The tests set LEADER_KEY and CONSUL_HTTP_ADDR; the docs include the part
between the markers.
"""
import os

SECRET_KEY = "a test project, not a secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "leaderproject.urls"
WSGI_APPLICATION = "leaderproject.wsgi.application"
DATABASES: dict = {}
USE_TZ = True

# [consul-leader]
INSTALLED_APPS = [
    "consul_leader.contrib.django",
    "reports",
]
MIDDLEWARE = [
    # Answers 503 (naming the leader) when a @leader_only(raise_not_leader=True) view runs elsewhere.
    "consul_leader.contrib.django.NotLeaderMiddleware",
]
CONSUL_LEADER = {
    "KEY": os.environ.get("LEADER_KEY", "reports/leader"),
    "ADDRESS": os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
    "TTL": 2,  # seconds; a crashed leader is replaced about 2*TTL later
}
# [/consul-leader]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"consul_leader": {"handlers": ["stderr"], "level": "INFO"}},
}
