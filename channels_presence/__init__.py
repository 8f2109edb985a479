"""Know who is connected to Django Channels.

The public reads and actions are importable from here, async first with sync
twins: ``agroup_size``/``group_size``, ``agroup_user_count``/``group_user_count``,
``agroup_members``/``group_members``, ``agroup_sizes``/``group_sizes``,
``auser_channels``/``user_channels``, ``ais_online``/``is_online``,
``adisconnect_user``/``disconnect_user``, ``agroup_send``/``group_send`` and
``await_for_listeners``/``wait_for_listeners``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import (
        adisconnect_user,
        agroup_connections,
        agroup_members,
        agroup_send,
        agroup_size,
        agroup_sizes,
        agroup_user_count,
        agroups,
        ais_online,
        asweep,
        auser_channels,
        auser_connections,
        await_for_listeners,
        disconnect_user,
        group_connections,
        group_members,
        group_send,
        group_size,
        group_sizes,
        group_user_count,
        groups,
        is_online,
        sweep,
        user_channels,
        user_connections,
        wait_for_listeners,
    )

__all__ = [
    "__version__",
    "adisconnect_user",
    "agroup_connections",
    "agroup_members",
    "agroup_send",
    "agroup_size",
    "agroup_sizes",
    "agroup_user_count",
    "agroups",
    "ais_online",
    "asweep",
    "auser_channels",
    "auser_connections",
    "await_for_listeners",
    "disconnect_user",
    "group_connections",
    "group_members",
    "group_send",
    "group_size",
    "group_sizes",
    "group_user_count",
    "groups",
    "is_online",
    "sweep",
    "user_channels",
    "user_connections",
    "wait_for_listeners",
]


def __getattr__(name: str) -> Any:
    # Imported lazily so that loading the app (INSTALLED_APPS) stays light.
    if name in __all__ and name != "__version__":
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'channels_presence' has no attribute {name!r}")
