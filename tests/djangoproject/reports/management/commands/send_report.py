"""``manage.py send_report``: run from cron on every host; only the leader
sends the report."""
# [leader-command]
from django.core.management.base import BaseCommand

from consul_leader import leader_only
from consul_leader.contrib.django import get_candidate, start


@leader_only
def write_report():
    return f"report sent by {get_candidate().identity}"


class Command(BaseCommand):
    help = "Send the report if this process wins the election within --wait seconds."

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=10.0)

    def handle(self, *args, **options):
        start(timeout=options["wait"])  # run for election here, for up to --wait seconds
        self.stdout.write(write_report() or "skipped: another process leads")
# [/leader-command]
