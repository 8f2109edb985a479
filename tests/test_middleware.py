"""PresenceMiddleware: what it puts in the scope, what it passes through, cleanup."""

from __future__ import annotations

from typing import Any

import pytest
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.urls import path

import channels_presence as presence
from channels_presence.exceptions import MissingAuthScope
from channels_presence.middleware import PresenceMiddleware
from tests.conftest import FakeSession, FakeUser
from tests.consumers import LobbyConsumer


async def test_non_websocket_scopes_pass_through_untouched() -> None:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "http", "path": "/"}
    await PresenceMiddleware(inner)(scope, None, None)
    assert seen == [scope] and seen[0] is scope


async def test_websocket_scope_gets_a_tracker_and_the_callers_scope_is_not_changed() -> None:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "websocket", "user": FakeUser(4), "session": FakeSession("abc")}
    await PresenceMiddleware(inner)(scope, None, None)
    tracker = seen[0]["presence"]
    assert (tracker.user, tracker.session, tracker.tracked) == ("4", "abc", True)
    assert "presence" not in scope


async def test_missing_user_says_to_wrap_in_auth_middleware_stack() -> None:
    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("must not be reached")

    with pytest.raises(MissingAuthScope, match="AuthMiddlewareStack"):
        await PresenceMiddleware(inner)({"type": "websocket"}, None, None)


async def test_cleanup_runs_when_the_inner_app_raises(ws: Any) -> None:
    from channels_presence.tracker import PresenceTracker

    trackers: list[PresenceTracker] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        tracker = scope["presence"]
        trackers.append(tracker)
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        await tracker.aconnect(layer, await layer.new_channel(), ["blown"])
        assert await presence.agroup_size("blown") == 1
        raise ValueError("inner app failed")

    scope = {"type": "websocket", "user": FakeUser(8), "session": None}
    with pytest.raises(ValueError, match="inner app failed"):
        await PresenceMiddleware(inner)(scope, None, None)
    assert await presence.agroup_size("blown") == 0
    assert trackers[0].state.value == "closed"


@pytest.mark.django_db(transaction=True)
async def test_inside_auth_middleware_stack_with_a_real_login() -> None:
    """A real user and a real session cookie, as a browser would connect."""
    from asgiref.sync import sync_to_async
    from django.test import Client

    user = await sync_to_async(get_user_model().objects.create_user)("ada", password="pw")
    client = Client()
    await sync_to_async(client.force_login)(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    app = AuthMiddlewareStack(
        PresenceMiddleware(URLRouter([path("ws/lobby/", LobbyConsumer.as_asgi())]))
    )
    comm = WebsocketCommunicator(app, "/ws/lobby/", headers=[(b"cookie", cookie.encode())])
    connected, _ = await comm.connect()
    assert connected
    assert await presence.agroup_members("lobby") == [user.pk]
    assert await presence.auser_channels(user) == await presence.auser_channels(user.pk)
    await comm.disconnect()
    assert await presence.agroup_size("lobby") == 0
