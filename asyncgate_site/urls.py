from django.contrib import admin
from django.urls import include, path

from asyncgate_site import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/health", api.health, name="health"),
    path("v1/tasks", api.create_task, name="create-task"),
    # /metrics for Prometheus: a staff session or RESILIENCE["METRICS_TOKEN"] as a bearer token.
    path("", include("resilience.urls")),
]
