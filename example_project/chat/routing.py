"""Websocket URLs."""

from __future__ import annotations

from django.urls import path

from .consumers import LobbyConsumer, RoomConsumer

websocket_urlpatterns = [
    path("ws/lobby/", LobbyConsumer.as_asgi()),
    path("ws/rooms/<slug:room>/", RoomConsumer.as_asgi()),
]
