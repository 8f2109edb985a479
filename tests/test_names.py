"""Group names follow Channels' rules exactly; user keys are str(pk)."""

from __future__ import annotations

import re
import uuid
from types import SimpleNamespace

import pytest
from channels.layers import BaseChannelLayer
from hypothesis import given
from hypothesis import strategies as st

from channels_presence.exceptions import InvalidGroupName, InvalidUser
from channels_presence.names import (
    sorted_pks,
    user_key,
    user_pk,
    validate_group_name,
    validate_group_names,
)


def channels_accepts(name: object) -> bool:
    try:
        BaseChannelLayer().require_valid_group_name(name)
    except TypeError:
        return False
    # Channels' regex ends in "$", which lets one trailing newline through;
    # we refuse it, and so must any layer that builds Redis keys from it.
    return not (isinstance(name, str) and name.endswith("\n"))


@given(
    st.one_of(
        st.text(max_size=120),
        st.text(alphabet="abc.-_\n é", max_size=5),
        st.integers(),
        st.none(),
        st.binary(max_size=5),
    )
)
def test_agrees_with_channels_on_any_input(name: object) -> None:
    if channels_accepts(name):
        assert validate_group_name(name) == name
    else:
        with pytest.raises(InvalidGroupName):
            validate_group_name(name)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "empty"),
        ("a" * 100, "shorter than 100"),
        ("a b", "may contain only"),
        ("ok\n", "may contain only"),
        (7, "is a int"),
    ],
)
def test_errors_name_the_group_and_the_rule(name: object, says: str) -> None:
    with pytest.raises(InvalidGroupName, match=re.escape(says)):
        validate_group_name(name)


def test_lists_are_checked_whole_before_use_and_deduplicated() -> None:
    assert validate_group_names(["a", "b", "a"]) == ("a", "b")
    with pytest.raises(InvalidGroupName, match="'b c'"):
        validate_group_names(["a", "b c"])


def test_user_keys_are_the_pk_as_a_string() -> None:
    key = uuid.UUID(int=7)
    assert [user_key(5), user_key("ab"), user_key(key)] == ["5", "ab", str(key)]
    # Any object with a primary key: a user, or another model standing for one.
    assert user_key(SimpleNamespace(pk=5, is_anonymous=False)) == "5"
    assert user_key(SimpleNamespace(pk=6)) == "6"
    assert user_key("x" * 255) == "x" * 255


@pytest.mark.parametrize(
    ("user", "says"),
    [
        (True, "User True is a bool"),
        (SimpleNamespace(pk=None, is_anonymous=True), "anonymous or unsaved"),
        (SimpleNamespace(pk=None, is_anonymous=False), "anonymous or unsaved"),
        (SimpleNamespace(pk=3, is_anonymous=True), "anonymous or unsaved"),
        ("", "must be 1 to 255 characters"),
        ("x" * 256, "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' must be 1 to 255"),
        (2.5, r"User 2.5 is a float; pass a user object or its primary key \(int, str or UUID\)"),
    ],
)
def test_anything_else_is_refused_naming_it(user: object, says: str) -> None:
    with pytest.raises(InvalidUser, match=says):
        user_key(user)


@pytest.mark.django_db
def test_stored_keys_come_back_as_primary_keys_sorted() -> None:
    # The test user model's pk is an integer: keys that parse sort as numbers.
    assert sorted_pks(["10", "2", None, "1"]) == [1, 2, 10]
    # A key that does not parse stays a string; mixed types sort as strings.
    assert sorted_pks(["10", "b", "2", "a"]) == [10, 2, "a", "b"]
    assert (user_pk("7"), user_pk(None)) == (7, None)
