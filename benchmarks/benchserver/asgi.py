"""The ASGI application uvicorn serves: ``benchserver.asgi:application``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchserver.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from benchserver import consumers  # noqa: E402

if settings.VARIANT == "presence":
    from benchserver.heartbeats import count_heartbeats
    from channels_presence.middleware import PresenceMiddleware

    count_heartbeats()

    websocket_app = AuthMiddlewareStack(
        PresenceMiddleware(URLRouter([path("ws/", consumers.PresenceConsumer.as_asgi())]))
    )
elif settings.VARIANT == "peer":
    websocket_app = AuthMiddlewareStack(URLRouter([path("ws/", consumers.PeerConsumer.as_asgi())]))
else:
    websocket_app = AuthMiddlewareStack(URLRouter([path("ws/", consumers.BareConsumer.as_asgi())]))

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_app})
