from django.urls import path
from reports import views

urlpatterns = [
    path("report/", views.send_report),
    path("poke/", views.poke),
    path("status/", views.status),
]
