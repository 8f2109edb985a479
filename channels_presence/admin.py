"""Adds the "Presence" pages to the Django admin, with no models and no URL to add.

``django.contrib.admin`` imports this module when it autodiscovers the
installed apps, and :func:`install` then adds the pages to the default site:
its URLs gain ``channels_presence/...`` and its index and sidebar a
"Channels presence" section. A site of your own (another ``AdminSite``
instance) gets them with ``channels_presence.admin.install(my_site)``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django.urls import URLPattern, URLResolver

from .admin_views import APP_LABEL, PresenceAdmin

#: The attribute an installed site carries its :class:`PresenceAdmin` in.
_INSTALLED = "channels_presence_admin"


def install(site: AdminSite) -> PresenceAdmin:
    """Add the presence pages to ``site``; calling it again changes nothing.

    Call it before the site's URLs are first used (for example, in the module
    that creates the site).
    """
    installed: PresenceAdmin | None = getattr(site, _INSTALLED, None)
    if installed is not None:
        return installed
    presence = PresenceAdmin(site)
    site_urls = site.get_urls
    site_app_list = site.get_app_list

    def get_urls() -> list[URLPattern | URLResolver]:
        # Ahead of the site's own, which end in a catch-all.
        return [*presence.get_urls(), *site_urls()]

    def get_app_list(request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        apps = list(site_app_list(request, app_label))
        if app_label in (None, APP_LABEL) and site.has_permission(request):
            apps.append(presence.app_entry())
            apps.sort(key=lambda app: str(app["name"]).lower())
        return apps

    # Instance attributes: only this site changes, never AdminSite itself.
    setattr(site, "get_urls", get_urls)  # noqa: B010
    setattr(site, "get_app_list", get_app_list)  # noqa: B010
    setattr(site, _INSTALLED, presence)
    return presence


install(admin.site)
