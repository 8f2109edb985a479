"""AppConfig: wires the system checks and the logout receiver, nothing else."""

from __future__ import annotations

from django.apps import AppConfig


class ChannelsPresenceConfig(AppConfig):
    name = "channels_presence"
    verbose_name = "Channels presence"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from . import checks  # noqa: F401  (registers the checks)
        from .receivers import disconnect_on_logout

        user_logged_out.connect(disconnect_on_logout, dispatch_uid="channels_presence.logout")
