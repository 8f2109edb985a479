"""One consumer per variant. Each sends ``ready`` once it has joined its group.

The client measures connect latency up to that message, so the group join (and
the presence write, for the variants that make one) is inside the figure.
"""

from channels.generic.websocket import AsyncWebsocketConsumer, WebsocketConsumer
from django.conf import settings

GROUP = "lobby"


class BareConsumer(AsyncWebsocketConsumer):
    """Plain Channels: ``groups`` joins the group before ``connect`` runs."""

    groups = [GROUP]

    async def connect(self):
        await self.accept()
        await self.send(text_data="ready")


if settings.VARIANT == "presence":
    from channels_presence.consumers import PresenceConsumerMixin

    class PresenceConsumer(PresenceConsumerMixin, AsyncWebsocketConsumer):
        """The bare consumer with presence; the mixin records and joins the group."""

        presence_groups = [GROUP]

        async def connect(self):
            await self.accept()
            await self.send(text_data="ready")


if settings.VARIANT == "peer":
    from channels_presence.decorators import remove_presence
    from channels_presence.models import Room

    class PeerConsumer(WebsocketConsumer):
        """The peer's documented use: ``Room.objects.add`` on connect, ``remove_presence``.

        ``Room.objects.add`` also adds the channel to the room's layer group.
        """

        def connect(self):
            self.accept()
            Room.objects.add(GROUP, self.channel_name, self.scope["user"])
            self.send(text_data="ready")

        @remove_presence
        def disconnect(self, code):
            pass
