"""The admin's "Presence" pages on the demo site, in headless Chromium.

Screenshots of each page go to the test's temporary directory (never into the
repository), for a person to look at.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.demo_server import DemoServer
from tests.browser.test_example_site import (
    NO_RECONNECT_WATCH,
    enter_room,
    expect,
    expect_room,
    sign_in,
)

pytestmark = pytest.mark.browser

OVERVIEW = "/admin/channels_presence/"


def admin_sign_in(context: Any, server: DemoServer, username: str, password: str) -> Any:
    """A tab of ``context`` signed in through the admin's own log-in page."""
    page = context.new_page()
    page.goto(f"{server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{server.url}/admin/")
    return page


def shoot(page: Any, directory: Path, name: str) -> None:
    page.screenshot(path=str(directory / f"admin-{name}.png"), full_page=True)


def test_staff_find_a_user_and_disconnect_them_after_confirming(
    demo_site: DemoServer, new_context: Callable[[], Any], browser_dir: Path
) -> None:
    bob_context = new_context()
    bob = sign_in(bob_context, demo_site, "bob")
    enter_room(bob, demo_site, "general")
    expect_room(bob, ["bob"], connections=1)
    sockets: list[Any] = []
    bob.on("websocket", lambda socket: sockets.append(socket))

    admin = admin_sign_in(new_context(), demo_site, "admin", "admin-pass")
    section = admin.locator(".app-channels_presence")
    expect(section).to_contain_text("Channels presence")
    section.get_by_role("link", name="Presence", exact=True).click()
    admin.wait_for_url(f"{demo_site.url}{OVERVIEW}")
    expect(admin.locator("h1")).to_have_text("Presence")
    row = admin.locator('#result_list tr[data-group="room.general"]')
    expect(row.locator(".presence-connections")).to_have_text("1")
    expect(row.locator(".presence-users")).to_have_text("1")
    shoot(admin, browser_dir, "overview")

    row.get_by_role("link", name="room.general").click()
    expect(admin.locator("h1")).to_have_text("Group room.general")
    expect(admin.locator("#result_list")).to_contain_text("specific.")
    shoot(admin, browser_dir, "group")

    admin.locator("#result_list").get_by_role("link", name="bob").click()
    expect(admin.locator("h1")).to_have_text("Connections of bob")
    expect(admin.locator("tr.presence-connection")).to_have_count(1)
    expect(admin.locator("tr.presence-connection")).to_contain_text("room.general")
    shoot(admin, browser_dir, "user")

    admin.click("#presence-disconnect")
    expect(admin.locator("h1")).to_have_text("Disconnect bob?")
    expect(admin.locator("#id_code")).to_have_value("4001")
    shoot(admin, browser_dir, "confirm")
    # Asking is not doing: bob is still live.
    expect(bob.locator("#status")).to_have_attribute("data-state", "live")

    admin.click("#presence-confirm")
    expect(admin.locator(".messagelist")).to_contain_text("Closed 1 connection of bob (code 4001).")
    expect(admin.locator("#result_list")).to_contain_text("This user has no live connections.")
    shoot(admin, browser_dir, "done")

    expect(bob.locator("#banner")).to_contain_text("You were disconnected.")
    expect(bob.locator("#status")).to_have_attribute("data-state", "closed")
    time.sleep(NO_RECONNECT_WATCH)
    assert sockets == [], "a disconnected tab reconnected"
    shoot(bob, browser_dir, "kicked-room")


def test_a_user_who_is_not_staff_is_sent_to_the_admin_login(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    alice = sign_in(new_context(), demo_site, "alice")
    alice.goto(f"{demo_site.url}{OVERVIEW}")
    expect(alice).to_have_url(f"{demo_site.url}/admin/login/?next={OVERVIEW}")
    expect(alice.locator(".errornote")).to_contain_text(
        "You are authenticated as alice, but are not authorized to access this page."
    )
    alice.goto(f"{demo_site.url}{OVERVIEW}user/1/disconnect/")
    expect(alice.locator("#id_username")).to_be_visible()
    expect(alice.locator("#presence-confirm")).to_have_count(0)


def test_staff_without_the_permission_see_the_pages_but_cannot_disconnect(
    demo_site: DemoServer, new_context: Callable[[], Any], browser_dir: Path
) -> None:
    demo_site.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.filter(username='carol').exists() or "
        "User.objects.create_user('carol', password='carol-pass', is_staff=True)",
    )
    bob = sign_in(new_context(), demo_site, "bob")
    enter_room(bob, demo_site, "python")
    carol = admin_sign_in(new_context(), demo_site, "carol", "carol-pass")
    carol.goto(f"{demo_site.url}{OVERVIEW}")
    carol.locator('#result_list tr[data-group="room.python"]').get_by_role("link").click()
    carol.locator("#result_list").get_by_role("link", name="bob").click()
    expect(carol.locator("h1")).to_have_text("Connections of bob")
    expect(carol.locator("tr.presence-connection")).to_have_count(1)
    expect(carol.locator("#presence-disconnect")).to_have_count(0)
    shoot(carol, browser_dir, "user-without-permission")

    response = carol.goto(carol.url + "disconnect/")
    assert response is not None and response.status == 403
    expect(bob.locator("#status")).to_have_attribute("data-state", "live")
