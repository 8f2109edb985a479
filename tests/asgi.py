"""The ASGI application of the tests, wired as the README tells users to."""

from __future__ import annotations

from channels.routing import URLRouter
from django.urls import path

from channels_presence.middleware import PresenceMiddleware
from tests.consumers import (
    CloseInConnectConsumer,
    CrashingConsumer,
    DiffConsumer,
    HangingConnectConsumer,
    LobbyConsumer,
    PlainConsumer,
    SlowHookConsumer,
    SyncConsumer,
)

websocket_urlpatterns = [
    path("ws/lobby/", LobbyConsumer.as_asgi()),
    path("ws/room/<str:room>/", PlainConsumer.as_asgi()),
    path("ws/sync/", SyncConsumer.as_asgi()),
    path("ws/crash/<str:where>/", CrashingConsumer.as_asgi()),
    path("ws/diff/", DiffConsumer.as_asgi()),
    path("ws/slow/", SlowHookConsumer.as_asgi()),
    path("ws/close-in-connect/", CloseInConnectConsumer.as_asgi()),
    path("ws/hang/", HangingConnectConsumer.as_asgi()),
]

# The tests put scope["user"] and scope["session"] in themselves, as
# AuthMiddlewareStack would.
application = PresenceMiddleware(URLRouter(websocket_urlpatterns))
