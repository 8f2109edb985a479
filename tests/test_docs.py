"""The README's tables in step with the code: the settings and the key layout."""

from __future__ import annotations

import re
from pathlib import Path

from channels_presence.conf import PresenceSettings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
LUA = (ROOT / "channels_presence" / "stores" / "presence.lua").read_text()


def section(start: str, end: str) -> str:
    begin = README.index(start)
    return README[begin : README.index(end, begin)]


def test_the_settings_table_lists_every_setting() -> None:
    table = section("## Settings\n", "\n## ")
    listed = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    assert listed == set(PresenceSettings.__dataclass_fields__)


def test_the_key_layout_table_lists_every_key_of_presence_lua() -> None:
    header = LUA[: LUA.index("local BUCKET")]
    in_lua = set(re.findall(r"^--\s+(P/\S+)", header, re.MULTILINE))
    table = section("### Key layout\n", "**Redis Cluster.**")
    in_readme = set(re.findall(r"^\| `(P/[^`]+)`", table, re.MULTILINE))
    assert in_readme == in_lua
    assert "P/g{<group>}/c" in in_lua  # the cluster's own keys too
    assert "P/{~p<k>}pending" in in_lua
