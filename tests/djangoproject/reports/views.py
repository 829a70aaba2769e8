"""Views of the test project: one that only the leader may serve, one that
sends a signal whose receiver only the leader runs, and a status view."""
import os

from django.http import JsonResponse

from consul_leader import leader_only
from consul_leader.contrib.django import get_candidate

from .signals import report_due, reports_received


# [leader-view]
@leader_only(raise_not_leader=True)  # elsewhere: NotLeaderMiddleware answers 503
def send_report(request):
    return JsonResponse({"sent_by": get_candidate().identity})
# [/leader-view]


def poke(request):
    report_due.send(sender=None, note=request.GET.get("note", ""))
    return JsonResponse({"received": list(reports_received)})


def status(request):
    candidate = get_candidate()
    return JsonResponse({"pid": os.getpid(), "identity": candidate.identity, "running": candidate.running,
                         "is_leader": candidate.is_leader(), "leader": candidate.leader()})
