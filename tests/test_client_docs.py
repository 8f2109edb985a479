"""The README's "In the browser" section and the template tag, in step with presence.js."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from django.template import Context, Template

from channels_presence.conf import PresenceSettings

ROOT = Path(__file__).resolve().parents[1]
MODULE = (ROOT / "channels_presence/static/channels_presence/presence.js").read_text()
README = (ROOT / "README.md").read_text()


def readme_section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def table_after(section: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table after ``heading``: first cell (unquoted) -> the others."""
    rows: dict[str, list[str]] = {}
    lines = section[section.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def js_object(name: str) -> dict[str, Any]:
    """An ``export const NAME = Object.freeze({...})`` of the module, as a dict."""
    body = re.search(rf"export const {name} = Object\.freeze\(\{{(.*?)\}}\);", MODULE, re.S)
    assert body, name
    quoted = re.sub(r"(\w+):", r'"\1":', body.group(1))
    return dict(json.loads("{" + quoted.rstrip().rstrip(",") + "}"))


def test_the_readme_lists_every_option_of_the_socket_and_no_other() -> None:
    documented = table_after(readme_section("In the browser"), "Options")
    in_code = set(re.findall(r"@param \{[^}]*\} \[options\.(\w+)\]", MODULE))
    assert set(documented) == in_code


def test_the_readme_gives_the_defaults_the_module_has() -> None:
    documented = table_after(readme_section("In the browser"), "Options")
    for option, value in js_object("BACKOFF").items():
        assert documented[option][0] == f"`{value}`", option
    codes = ", ".join(f"{k}: {v}" for k, v in js_object("CLOSE_CODES").items())
    assert documented["closeCodes"][0] == f"`{{{codes}}}`"
    types = ", ".join(f'{k}: "{v}"' for k, v in js_object("MESSAGE_TYPES").items())
    assert documented["messageTypes"][0] == f"`{{{types}}}`"


def test_the_readme_lists_every_event_of_the_socket_and_no_other() -> None:
    documented = table_after(readme_section("In the browser"), "Events")
    in_code = dict(re.findall(r"^ \* - `(\w+)` `\{([^}]*)\}`", MODULE, re.M))
    assert set(documented) == set(in_code)
    for event, fields in in_code.items():
        assert documented[event][0] == ", ".join(f"`{f.strip()}`" for f in fields.split(","))


def test_the_modules_default_close_codes_are_the_settings_defaults() -> None:
    assert js_object("CLOSE_CODES") == {
        "superseded": PresenceSettings.CLOSE_CODE,
        "logged_out": PresenceSettings.LOGOUT_CODE,
        "rejected": PresenceSettings.REJECT_CODE,
    }


def test_the_tag_renders_the_close_codes_in_force_where_the_module_looks(
    presence_settings: Any,
) -> None:
    presence_settings(CLOSE_CODE=4101, LOGOUT_CODE=4102, REJECT_CODE=4103)
    html = Template("{% load channels_presence %}{% presence_close_codes %}").render(Context())
    element_id = js_object_string("CLOSE_CODES_ELEMENT_ID")
    match = re.fullmatch(rf'<script id="{element_id}" type="application/json">(.*)</script>', html)
    assert match, html
    assert json.loads(match.group(1)) == {"superseded": 4101, "logged_out": 4102, "rejected": 4103}


def js_object_string(name: str) -> str:
    found = re.search(rf'export const {name} = "([^"]*)";', MODULE)
    assert found, name
    return found.group(1)
