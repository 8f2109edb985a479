"""AppConfig: validates the settings and wires the checks and receivers, nothing else."""

from __future__ import annotations

from django.apps import AppConfig


class ChannelsPresenceConfig(AppConfig):
    name = "channels_presence"
    verbose_name = "Channels presence"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from . import checks  # noqa: F401  (registers the checks)
        from .conf import get_settings
        from .receivers import disconnect_on_logout

        # ASGI servers run no system checks: a bad CHANNELS_PRESENCE must stop
        # every server at startup, with the key and the allowed values named.
        get_settings()
        user_logged_out.connect(disconnect_on_logout, dispatch_uid="channels_presence.logout")
