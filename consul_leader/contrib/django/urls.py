"""``readyz/`` and ``livez/`` (and the same without the slash) for
``include("consul_leader.contrib.django.urls")``.

.. versionadded:: 0.2
"""

from django.urls import path  # type: ignore[import-untyped]

from .views import livez, readyz

app_name = "consul_leader"

urlpatterns = [
    path("readyz", readyz, name="readyz"),
    path("livez", livez, name="livez"),
]
