# celery -A beatproject beat -S beatproject.schedulers:LeaderDatabaseScheduler
from django_celery_beat.schedulers import DatabaseScheduler

from consul_leader.contrib.celery import LeaderSchedulerMixin


class LeaderDatabaseScheduler(LeaderSchedulerMixin, DatabaseScheduler):
    """django-celery-beat's schedule (PostgreSQL), sent by the leader only."""
