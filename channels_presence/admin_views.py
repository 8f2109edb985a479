"""The "Presence" pages of the Django admin.

Staff see every group with its connections and users, who is in a group, and
one user's connections with their metadata. Staff who may disconnect users
(superusers, or anyone granted :data:`DISCONNECT_PERMISSION`) can close every
socket of a user, after a confirmation step, with a CSRF-protected POST; each
disconnection is logged on the ``channels_presence`` logger.

There are no models: every page reads the live store through the public API.
:mod:`channels_presence.admin` adds these pages to the default admin site.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, URLPattern, path, reverse
from django.views.decorators.http import require_http_methods

from . import api
from .conf import get_settings
from .exceptions import InvalidGroupName, InvalidUser, StoreUnavailable
from .logs import logger
from .management.commands.presence import SESSION_PREFIX_LENGTH
from .names import is_close_code, user_pk
from .stores.base import Connection

#: The permission that allows disconnecting a user from the admin. Superusers
#: have it implicitly; grant it to other staff as the README shows.
DISCONNECT_PERMISSION = "channels_presence.disconnect_user"
#: Groups (or users) listed per page.
PAGE_SIZE = 100
#: The label the admin's URLs and index use for these pages.
APP_LABEL = "channels_presence"


def can_disconnect(user: Any) -> bool:
    """Whether ``user`` may disconnect users from the admin."""
    return bool(getattr(user, "is_active", False) and user.has_perm(DISCONNECT_PERMISSION))


@dataclass(frozen=True)
class ConnectionRow:
    """One connection as the pages show it."""

    channel: str
    since: datetime | None
    groups: tuple[str, ...]
    session_prefix: str
    meta: str

    @classmethod
    def of(cls, conn: Connection) -> ConnectionRow:
        since = (
            datetime.fromtimestamp(conn.connected_at, tz=timezone.utc)
            if conn.connected_at > 0
            else None
        )
        return cls(
            channel=conn.channel_name,
            since=since,
            groups=conn.groups,
            # Enough to tell two browsers apart, too little to hijack a session.
            session_prefix=(conn.session or "")[:SESSION_PREFIX_LENGTH],
            meta="" if conn.meta is None else json.dumps(conn.meta, sort_keys=True),
        )


@dataclass(frozen=True)
class MemberRow:
    """A user present in a group (``pk`` is ``None`` for anonymous connections)."""

    pk: Any
    user: Any
    connections: tuple[ConnectionRow, ...]


class DisconnectForm(forms.Form):
    """The confirmation form: which close code the user's sockets get."""

    code = forms.IntegerField(
        label="Close code",
        help_text="1000, or 3000 to 4999. The default is the CLOSE_CODE setting.",
    )

    def clean_code(self) -> int:
        code = self.cleaned_data["code"]
        if not is_close_code(code):
            raise ValidationError(f"{code} is not a close code a server may send.")
        return int(code)


def _pk_order(pk: Any) -> tuple[int, str]:
    # Integer pks numerically (as text padded to one width), other pks as text, anonymous last.
    if pk is None:
        return (2, "")
    if isinstance(pk, int) and not isinstance(pk, bool):
        return (0, f"{pk:030d}")
    return (1, str(pk))


def _users(pks: Iterable[Any]) -> dict[Any, Any]:
    """The user objects that exist for these pks, in one query; ``{}`` if it fails."""
    from django.contrib.auth import get_user_model

    wanted = [pk for pk in pks if pk is not None]
    if not wanted:
        return {}
    try:
        return dict(get_user_model()._default_manager.in_bulk(wanted))
    except (ValidationError, ValueError):  # a key that is no pk of this user model
        return {}
    except (DatabaseError, ImproperlyConfigured) as exc:
        # Presence is still worth showing when the user table is not.
        logger.warning("The presence admin could not look users up: %s", exc)
        return {}


def _page(request: HttpRequest, items: Sequence[Any]) -> Page[Any]:
    return Paginator(items, PAGE_SIZE).get_page(request.GET.get("p"))


class PresenceAdmin:
    """The presence pages of one admin site; ``get_urls()`` goes into its URLs."""

    def __init__(self, site: AdminSite) -> None:
        self.site = site

    # Wiring ------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        """The pages, under ``<admin>/channels_presence/``; staff only."""
        wrap = self.site.admin_view
        disconnect = require_http_methods(["GET", "POST"])(self.disconnect_view)
        return [
            path(f"{APP_LABEL}/", wrap(self.overview_view), name=f"{APP_LABEL}_overview"),
            path(
                f"{APP_LABEL}/group/<str:group>/",
                wrap(self.group_view),
                name=f"{APP_LABEL}_group",
            ),
            path(f"{APP_LABEL}/user/<str:pk>/", wrap(self.user_view), name=f"{APP_LABEL}_user"),
            path(
                f"{APP_LABEL}/user/<str:pk>/disconnect/",
                wrap(disconnect),
                name=f"{APP_LABEL}_disconnect",
            ),
        ]

    def url(self, name: str, *args: Any) -> str:
        """The URL of one of these pages on this site."""
        return reverse(f"admin:{APP_LABEL}_{name}", args=args, current_app=self.site.name)

    def app_entry(self) -> dict[str, Any]:
        """This section as the admin index and sidebar list it."""
        from django.apps import apps

        overview = self.url("overview")
        return {
            "name": apps.get_app_config(APP_LABEL).verbose_name,
            "app_label": APP_LABEL,
            "app_url": overview,
            "has_module_perms": True,
            "models": [
                {
                    "name": "Presence",
                    "object_name": "Presence",
                    "perms": {"add": False, "change": False, "delete": False, "view": True},
                    "admin_url": overview,
                    "add_url": None,
                    "view_only": True,
                }
            ],
        }

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {
            **self.site.each_context(request),
            "title": title,
            "subtitle": None,
            "app_label": APP_LABEL,
            "overview_url": self.url("overview"),
            "can_disconnect": can_disconnect(request.user),
            **extra,
        }

    def _user_admin_url(self, request: HttpRequest, user: Any) -> str | None:
        """The admin page of ``user``, where the site has one the viewer may open."""
        model_admin = None if user is None else self.site._registry.get(type(user))
        if model_admin is None or not model_admin.has_view_or_change_permission(request, user):
            return None
        opts = user._meta
        try:
            return reverse(
                f"admin:{opts.app_label}_{opts.model_name}_change",
                args=[user.pk],
                current_app=self.site.name,
            )
        except NoReverseMatch:
            return None

    def _read(self, request: HttpRequest, read: Callable[[], Any], empty: Any) -> Any:
        """``read()``, or ``empty`` and an error message when the store is down."""
        try:
            return read()
        except StoreUnavailable as exc:
            messages.error(request, f"The presence store is unavailable: {exc}")
            return empty

    # Pages -------------------------------------------------------------------------

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Every group with live connections: its connections and users."""
        wanted_user = request.GET.get("user", "").strip()
        if wanted_user:
            return self._find_user(request, wanted_user)
        query = request.GET.get("q", "").strip()
        sizes: dict[str, int] = self._read(request, api.groups, {})
        names = sorted(name for name in sizes if query.lower() in name.lower())
        page = _page(request, names)
        rows = [
            {
                "name": name,
                "connections": sizes[name],
                "users": self._read(request, partial(api.group_user_count, name), 0),
                "url": self.url("group", name),
            }
            for name in page.object_list
        ]
        context = self._context(
            request,
            "Presence",
            groups=rows,
            page=page,
            query=query,
            total_groups=len(sizes),
            total_connections=sum(sizes.values()),
        )
        return TemplateResponse(request, "admin/channels_presence/overview.html", context)

    def _find_user(self, request: HttpRequest, wanted: str) -> HttpResponse:
        """Go to a user's page by username, or by primary key."""
        from django.contrib.auth import get_user_model

        model = get_user_model()
        try:
            found = model._default_manager.get_by_natural_key(wanted)
        except (model.DoesNotExist, DatabaseError, ValueError):
            found = None
        target = str(found.pk) if found is not None else wanted
        try:
            return HttpResponseRedirect(self.url("user", target))
        except NoReverseMatch:  # a key the URL cannot carry, such as one with a slash
            messages.error(request, f"No user {wanted!r}.")
            return HttpResponseRedirect(self.url("overview"))

    def group_view(self, request: HttpRequest, group: str) -> HttpResponse:
        """Who is in ``group``: each user with their connections there."""
        try:
            members = self._read(request, lambda: api.group_connections(group), {})
        except InvalidGroupName as exc:
            raise Http404(str(exc)) from exc
        pks = sorted(members, key=_pk_order)
        page = _page(request, pks)
        users = _users(page.object_list)
        rows = [
            MemberRow(
                pk=pk,
                user=users.get(pk),
                connections=tuple(ConnectionRow.of(c) for c in members[pk]),
            )
            for pk in page.object_list
        ]
        context = self._context(
            request,
            f"Group {group}",
            group=group,
            members=[
                {"row": row, "url": None if row.pk is None else self.url("user", row.pk)}
                for row in rows
            ],
            page=page,
            connection_count=sum(len(conns) for conns in members.values()),
            user_count=sum(1 for pk in members if pk is not None),
        )
        return TemplateResponse(request, "admin/channels_presence/group.html", context)

    def _user_context(self, request: HttpRequest, pk: str) -> dict[str, Any]:
        try:
            connections = self._read(request, lambda: api.user_connections(pk), [])
        except InvalidUser as exc:
            raise Http404(str(exc)) from exc
        # Not "user": that is the signed-in admin in every admin template.
        person = _users([user_pk(pk)]).get(user_pk(pk))
        return {
            "pk": pk,
            "person": person,
            "user_admin_url": self._user_admin_url(request, person),
            "connections": [ConnectionRow.of(c) for c in connections],
            "user_url": self.url("user", pk),
            "disconnect_url": self.url("disconnect", pk),
        }

    def user_view(self, request: HttpRequest, pk: str) -> HttpResponse:
        """One user's live connections, oldest first, with their groups and metadata."""
        found = self._user_context(request, pk)
        title = f"Connections of {found['person'] or f'user {pk}'}"
        context = self._context(request, title, **found)
        return TemplateResponse(request, "admin/channels_presence/user.html", context)

    def disconnect_view(self, request: HttpRequest, pk: str) -> HttpResponse:
        """Confirm (GET), then close every connection of the user (POST)."""
        if not can_disconnect(request.user):
            raise PermissionDenied(f"Disconnecting users needs {DISCONNECT_PERMISSION}.")
        found = self._user_context(request, pk)
        default_code = get_settings().CLOSE_CODE
        form = DisconnectForm(
            request.POST if request.method == "POST" else None, initial={"code": default_code}
        )
        if form.is_valid():
            code: int = form.cleaned_data["code"]
            try:
                closed = api.disconnect_user(pk, code=code)
            except StoreUnavailable as exc:
                messages.error(request, f"The presence store is unavailable: {exc}")
                return HttpResponseRedirect(found["user_url"])
            logger.info(
                "%s (pk %s) disconnected user %s from the admin: %d connection(s) closed "
                "with code %d",
                request.user.get_username(),
                request.user.pk,
                pk,
                closed,
                code,
            )
            messages.success(
                request,
                f"Closed {closed} connection{'' if closed == 1 else 's'} of "
                f"{found['person'] or f'user {pk}'} (code {code}).",
            )
            return HttpResponseRedirect(found["user_url"])
        title = f"Disconnect {found['person'] or f'user {pk}'}?"
        context = self._context(request, title, form=form, default_code=default_code, **found)
        return TemplateResponse(request, "admin/channels_presence/disconnect.html", context)
