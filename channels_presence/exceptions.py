"""The errors channels-presence raises. All derive from :class:`PresenceError`."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class PresenceError(Exception):
    """Base class of every channels-presence error."""


class InvalidGroupName(PresenceError, ValueError):
    """A group name Channels would refuse; raised before anything is written."""


class InvalidUser(PresenceError, TypeError):
    """Something that is neither a user object nor a primary key."""


class InvalidMetadata(PresenceError, ValueError):
    """Connection metadata that is not a JSON object or is too large."""


class NotConnected(PresenceError, RuntimeError):
    """A presence action on a connection that is not (or no longer) recorded."""


class StoreUnavailable(PresenceError):
    """The presence store (Redis) could not be reached or failed."""


class MissingAuthScope(PresenceError, ImproperlyConfigured):
    """PresenceMiddleware found no ``scope["user"]``: it must sit inside AuthMiddlewareStack."""
