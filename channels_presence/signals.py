"""The presence events users can listen to, as Django signals.

Receivers may be plain functions or coroutine functions (Django 5.0+ runs
async receivers natively). ``sender`` is always :data:`PRESENCE`.

User-level events fire once per change, however many processes are involved:
``user_online`` when a user's first live connection appears anywhere,
``user_offline`` when their last one ended or expired; likewise
``user_joined_group`` / ``user_left_group`` per group. Connection-level
events fire for every connection: ``connection_opened`` and
``connection_closed`` (with ``reason``: ``"disconnected"``, ``"superseded"``,
``"kicked"``, ``"logged_out"`` or ``"expired"``).
"""

from __future__ import annotations

from django.dispatch import Signal

#: The ``sender`` of every presence signal.
PRESENCE = "channels_presence"

#: ``user`` (the pk as a string) has a first live connection.
user_online = Signal()
#: ``user`` has no live connection left.
user_offline = Signal()
#: ``user`` has a first live connection in ``group``.
user_joined_group = Signal()
#: ``user`` has no live connection left in ``group``.
user_left_group = Signal()
#: ``connection`` (a :class:`~channels_presence.stores.base.Connection`) was recorded.
connection_opened = Signal()
#: ``connection`` was removed; ``reason`` says why.
connection_closed = Signal()
