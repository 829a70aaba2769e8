"""A signal whose receiver does its work only in the leading process."""
from django.dispatch import Signal, receiver

from consul_leader import leader_only

report_due = Signal()
reports_received = []


# [leader-receiver]
@receiver(report_due)
@leader_only
def on_report_due(sender, note="", **kwargs):
    reports_received.append(note)
# [/leader-receiver]
