"""HTTP views: who am I, and the presence API as JSON.

The ``presence_*`` views call the synchronous API (a Django view running in
a worker thread of the ASGI server); ``apresence`` calls the async API from
an async view, so both halves of the API are exercised across processes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


def jsonable(value: Any) -> Any:
    """Turn whatever the API returns (dataclasses, tuples, sets) into JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def health(request: HttpRequest) -> JsonResponse:
    """The server is up and Django is loaded."""
    return JsonResponse({"server": settings.SERVER_NAME})


def whoami(request: HttpRequest) -> JsonResponse:
    """The logged-in user and the session key; where LoginView redirects to."""
    user = request.user
    return JsonResponse(
        {
            "server": settings.SERVER_NAME,
            "user": user.pk if user.is_authenticated else None,
            "username": user.get_username() if user.is_authenticated else None,
            "session": request.session.session_key,
        }
    )


def presence_group(request: HttpRequest) -> JsonResponse:
    """``?group=lobby``: group_size, group_user_count and group_members (sync API)."""
    from channels_presence import group_members, group_size, group_user_count

    group = request.GET.get("group", "lobby")
    return JsonResponse(
        {
            "server": settings.SERVER_NAME,
            "group": group,
            "size": group_size(group),
            "users": group_user_count(group),
            "members": jsonable(group_members(group)),
        }
    )


async def apresence_group(request: HttpRequest) -> JsonResponse:
    """The same as :func:`presence_group`, through the async API in an async view."""
    from channels_presence import agroup_members, agroup_size, agroup_user_count

    group = request.GET.get("group", "lobby")
    return JsonResponse(
        {
            "server": settings.SERVER_NAME,
            "group": group,
            "size": await agroup_size(group),
            "users": await agroup_user_count(group),
            "members": jsonable(await agroup_members(group)),
        }
    )


def presence_sizes(request: HttpRequest) -> JsonResponse:
    """``?group=a&group=b``: group_sizes of several groups at once."""
    from channels_presence import group_sizes

    return JsonResponse({"sizes": jsonable(group_sizes(request.GET.getlist("group")))})


def presence_user(request: HttpRequest, pk: int) -> JsonResponse:
    """A user's live channel names and whether they are online."""
    from channels_presence import is_online, user_channels

    return JsonResponse(
        {
            "server": settings.SERVER_NAME,
            "user": pk,
            "channels": jsonable(user_channels(pk)),
            "online": is_online(pk),
        }
    )


@csrf_exempt
@require_POST
def disconnect(request: HttpRequest, pk: int) -> JsonResponse:
    """Close every connection of user ``pk``, on whichever server it lives."""
    from channels_presence import disconnect_user

    return JsonResponse({"server": settings.SERVER_NAME, "result": jsonable(disconnect_user(pk))})


@csrf_exempt
@require_POST
def send(request: HttpRequest) -> JsonResponse:
    """POST ``{"group": ..., "text": ...}``: group_send a ``room.message`` to live members."""
    from channels_presence import group_send

    body = json.loads(request.body or b"{}")
    result = group_send(body["group"], {"type": "room.message", "text": body.get("text", "")})
    return JsonResponse({"server": settings.SERVER_NAME, "result": jsonable(result)})


async def presence_snapshot(request: HttpRequest) -> JsonResponse:
    """``?group=g&user=pk...``: many reads in one request, through the async API.

    For each group its size, user count and members; for each user their live
    channels, oldest first; and ``groups()``, every non-empty group. A test
    comparing whole populations then needs one request per poll, not dozens.
    """
    from channels_presence import (
        agroup_members,
        agroup_size,
        agroup_user_count,
        agroups,
        auser_channels,
    )

    groups = {}
    for group in request.GET.getlist("group"):
        groups[group] = {
            "size": await agroup_size(group),
            "users": await agroup_user_count(group),
            "members": jsonable(await agroup_members(group)),
        }
    users = {pk: await auser_channels(int(pk)) for pk in request.GET.getlist("user")}
    return JsonResponse(
        {
            "server": settings.SERVER_NAME,
            "groups": groups,
            "users": users,
            "all_groups": jsonable(await agroups()),
        }
    )


async def loop_lag(request: HttpRequest) -> JsonResponse:
    """The event loop's worst stall since the last ``?reset=1`` (see :mod:`.loop_lag`).

    An async view, so answering it needs the loop and nothing else: its
    round-trip time is a probe of the loop's responsiveness too.
    """
    from .loop_lag import monitor

    figures = monitor().read(reset=request.GET.get("reset") == "1")
    return JsonResponse({"server": settings.SERVER_NAME, **figures})


async def hot_sender(request: HttpRequest) -> JsonResponse:
    """A hot sender task on this server's event loop (see :mod:`.hot_sender`).

    ``?group=g&start=<interval>`` starts one (a GET: an async view needs no
    CSRF handling that way on every Django version), ``?group=g`` reads its
    figures, ``?group=g&stop=1`` cancels it.
    """
    from . import hot_sender as senders

    group = request.GET["group"]
    if "start" in request.GET:
        figures = senders.start(group, float(request.GET["start"]))
    elif "stop" in request.GET:
        figures = senders.stop(group)
    else:
        figures = senders.read(group)
    return JsonResponse({"server": settings.SERVER_NAME, "figures": figures})


async def await_listeners(request: HttpRequest) -> JsonResponse:
    """``?group=g&timeout=s``: answers when the group has listeners (or the timeout passed).

    ``at`` is ``time.time()`` when ``await_for_listeners`` returned.
    """
    import time

    from channels_presence import await_for_listeners

    group = request.GET["group"]
    found = await await_for_listeners(group, timeout=float(request.GET.get("timeout", 10)))
    return JsonResponse({"server": settings.SERVER_NAME, "found": found, "at": time.time()})
