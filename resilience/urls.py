"""URLs of the app outside the admin: ``path("", include("resilience.urls"))`` serves
``/metrics`` (see ``resilience.views.metrics``). The status page lives in the admin
(``resilience.admin.status``)."""

from django.urls import path

from resilience import views

app_name = "resilience"

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
]
