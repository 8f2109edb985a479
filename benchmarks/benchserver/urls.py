"""One HTTP view, the presence variant's heartbeat count; the benchmarks speak websocket."""

from django.conf import settings
from django.urls import path

urlpatterns: list = []

if settings.VARIANT == "presence":
    from benchserver.heartbeats import heartbeats_view

    urlpatterns.append(path("heartbeats/", heartbeats_view))
