"""The ASGI application: Django for HTTP, Channels with presence for websockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")
# Django must be set up before anything imports models (the consumers do).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from channels_presence.middleware import PresenceMiddleware  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # The demo serves its own CSS and JS; a real deployment leaves that to a web server.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # Only pages of this site may open its sockets (they carry the session cookie).
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(PresenceMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
