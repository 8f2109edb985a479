"""The two pages: the lobby and a room. Both need a signed-in user."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from .rooms import ROOMS
from .state import room_states


@login_required
def lobby(request: HttpRequest) -> HttpResponse:
    states = {state["room"]: state for state in room_states()}
    rooms = [{**states[room.slug], "room": room} for room in ROOMS.values()]
    return render(request, "chat/lobby.html", {"rooms": rooms})


@login_required
def room(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        current = ROOMS[slug]
    except KeyError:
        raise Http404(f"No room called {slug!r}.") from None
    return render(request, "chat/room.html", {"room": current, "rooms": ROOMS.values()})
