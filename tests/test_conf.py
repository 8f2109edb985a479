"""Settings: defaults, and a clear error naming each bad key."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from channels_presence.conf import PresenceSettings, build_settings, get_settings


def test_defaults_when_the_setting_is_absent() -> None:
    conf = build_settings(None)
    assert conf == PresenceSettings()
    assert (conf.MAX_SESSIONS, conf.ON_LIMIT, conf.CLOSE_CODE, conf.REJECT_CODE) == (
        1,
        "close_oldest",
        4001,
        4003,
    )
    assert pytest.approx(conf.TTL / 3) == conf.HEARTBEAT


def test_heartbeat_follows_ttl_unless_given() -> None:
    assert build_settings({"TTL": 30}).HEARTBEAT == 10
    assert build_settings({"TTL": 30, "HEARTBEAT": 5}).HEARTBEAT == 5


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("MAX_SESSIONS", 0, "integer >= 1, or None"),
        ("MAX_SESSIONS", "1", "integer >= 1, or None"),
        ("MAX_SESSIONS", True, "integer >= 1, or None"),
        ("SESSION_SCOPE", "browser", "'user', 'session'"),
        ("ON_LIMIT", "kick", "'close_oldest', 'reject_new'"),
        ("CLOSE_CODE", 1006, "3000 to 4999"),
        ("REJECT_CODE", "4003", "3000 to 4999"),
        ("TTL", 0, ">= 1"),
        ("TTL", float("nan"), "finite"),
        ("TTL", "60", "number of seconds"),
        ("HEARTBEAT", 90, "at most half of TTL"),
        ("HEARTBEAT", 31, "at most half of TTL (30)"),
        ("ANONYMOUS", "count", "'ignore', 'track'"),
        ("KEY_PREFIX", "", "1 to 64 characters"),
        ("KEY_PREFIX", "has space", "1 to 64 characters"),
        ("CACHE", None, "alias of a cache"),
        ("ON_STORE_ERROR", "crash", "'allow', 'reject'"),
        ("LEAVE_GRACE", -1, ">= 0"),
        ("DISCONNECT_ON_LOGOUT", "yes", "True, False or 'session'"),
        ("METADATA_MAX_BYTES", 10**6, "0 to 65536"),
        ("LISTENERS_MAX_AGE", -0.5, ">= 0"),
        ("LISTENERS_MAX_AGE", "0.5", "number of seconds"),
        ("LISTENERS_MAX_AGE", float("inf"), "finite"),
        ("MAX_CONNECTIONS_PER_USER", 0, "1 to 100000, or None"),
        ("MAX_CONNECTIONS_PER_USER", "10", "1 to 100000, or None"),
        ("MAX_GROUPS_PER_CONNECTION", 501, "1 to 500"),
        ("MAX_GROUPS_PER_CONNECTION", None, "1 to 500"),
        ("METRICS_GROUPS", "lobby", "a list of at most 100 group names"),
        ("METRICS_GROUPS", ["bad name"], "may contain only ASCII letters"),
        ("METRICS_GROUPS", [f"g{i}" for i in range(101)], "a list of at most 100"),
        ("METRICS_INTERVAL", 0.5, ">= 1"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(
    key: str, value: Any, expected: str
) -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        build_settings({key: value})
    message = str(info.value)
    assert f"CHANNELS_PRESENCE[{key!r}]" in message
    assert repr(value)[:20] in message
    assert expected in message


def test_unknown_keys_are_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"'MAX_SESSION'.*known keys are CACHE"):
        build_settings({"MAX_SESSION": 2})


def test_a_non_dict_setting_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="must be a dict"):
        build_settings(["MAX_SESSIONS", 1])


def test_changes_through_override_settings_take_effect_at_once() -> None:
    assert get_settings().MAX_SESSIONS == 1
    with override_settings(CHANNELS_PRESENCE={"MAX_SESSIONS": 3}):
        assert get_settings().MAX_SESSIONS == 3
    assert get_settings().MAX_SESSIONS == 1


@given(
    st.dictionaries(
        st.sampled_from(list(PresenceSettings.__dataclass_fields__)),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=8),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_any_value_is_either_accepted_whole_or_refused_clearly(raw: dict[str, Any]) -> None:
    try:
        conf = build_settings(raw)
    except ImproperlyConfigured as exc:
        assert "CHANNELS_PRESENCE[" in str(exc)
    else:
        assert isinstance(conf, PresenceSettings)
        assert conf.HEARTBEAT <= conf.TTL / 2
        assert conf.MAX_SESSIONS is None or conf.MAX_SESSIONS >= 1


def test_a_bad_setting_stops_startup_with_the_key_named(tmp_path: Any) -> None:
    """ASGI servers run no system checks: django.setup() itself must refuse."""
    import subprocess
    import sys

    (tmp_path / "badsettings.py").write_text(
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = ['django.contrib.auth', 'django.contrib.contenttypes',\n"
        "                  'channels', 'channels_presence']\n"
        "CHANNELS_PRESENCE = {'ON_LIMIT': 'kick'}\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={
            "PYTHONPATH": str(tmp_path),
            "DJANGO_SETTINGS_MODULE": "badsettings",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "ImproperlyConfigured" in run.stderr
    assert "CHANNELS_PRESENCE['ON_LIMIT'] is 'kick'" in run.stderr
