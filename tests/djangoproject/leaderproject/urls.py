from django.urls import include, path
from reports import views

urlpatterns = [
    path("report/", views.send_report),
    path("poke/", views.poke),
    path("status/", views.status),
    # [readiness]
    # GET /readyz: 200 on the leader, 503 elsewhere; GET /livez: 200 while the heartbeat is current.
    path("", include("consul_leader.contrib.django.urls")),
    # [/readiness]
]
