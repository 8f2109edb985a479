"""The ASGI application: Django over HTTP, the room consumer over websockets.

With ``E2E_PLAIN=1`` the websocket side has no presence at all, which lets
the harness test itself before (or without) the package. With
``E2E_RECORD_EVENTS=1`` every presence signal is recorded (see :mod:`.recorder`).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

if os.environ.get("E2E_PLAIN") == "1":
    from .plain_consumers import PlainConsumer

    websocket_app = AuthMiddlewareStack(URLRouter([path("ws/", PlainConsumer.as_asgi())]))
else:
    from channels_presence.middleware import PresenceMiddleware

    from .consumers import RoomConsumer

    if settings.RECORD_EVENTS:
        from .recorder import connect_receivers

        connect_receivers()

    websocket_app = AuthMiddlewareStack(
        PresenceMiddleware(URLRouter([path("ws/", RoomConsumer.as_asgi())]))
    )

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_app})
