"""Group names follow Channels' rules exactly; user keys are str(pk)."""

from __future__ import annotations

import re

import pytest
from channels.layers import BaseChannelLayer
from hypothesis import given
from hypothesis import strategies as st

from channels_presence.exceptions import InvalidGroupName
from channels_presence.names import validate_group_name, validate_group_names


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
