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


class TooManyGroups(PresenceError, ValueError):
    """A connection would be in more groups than ``MAX_GROUPS_PER_CONNECTION`` allows."""


class InvalidMessage(PresenceError, ValueError):
    """A group message that is not a dict with a ``type`` string."""


class InvalidCloseCode(PresenceError, ValueError):
    """A websocket close code the server may not send (1000, or 3000 to 4999)."""


class NotConnected(PresenceError, RuntimeError):
    """A presence action on a connection that is not (or no longer) recorded."""


class StoreUnavailable(PresenceError):
    """The presence store (Redis) could not be reached or failed."""


class MissingAuthScope(PresenceError, ImproperlyConfigured):
    """PresenceMiddleware found no ``scope["user"]``: it must sit inside AuthMiddlewareStack."""


class InvalidDuration(PresenceError, ValueError):
    """A ``max_age`` or ``timeout`` that is not a finite number of seconds >= 0."""
