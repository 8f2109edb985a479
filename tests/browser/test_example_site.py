"""The example site in headless Chromium: live members, live counts, one session per account."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.demo_server import REPO_ROOT, DemoServer

pytestmark = pytest.mark.browser

#: The README's picture, rewritten only when asked: PRESENCE_UPDATE_SCREENSHOT=1.
SCREENSHOT = REPO_ROOT / "docs" / "screenshot-room.png"
UPDATE_SCREENSHOT = os.environ.get("PRESENCE_UPDATE_SCREENSHOT") == "1"
#: A phone's width in CSS pixels (an iPhone 12 to 15).
PHONE = {"width": 390, "height": 844}
PASSWORDS = {"alice": "alice-pass", "bob": "bob-pass", "admin": "admin-pass"}
#: How long a closed tab is watched for a reconnect attempt.
NO_RECONNECT_WATCH = 5.0


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def sign_in(context: Any, server: DemoServer, username: str) -> Any:
    """A new tab of ``context``, signed in as ``username``, on the lobby."""
    page = context.new_page()
    page.goto(f"{server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORDS[username])
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    return page


def enter_room(page: Any, server: DemoServer, room: str) -> None:
    page.goto(f"{server.url}/rooms/{room}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")


def expect_room(page: Any, members: list[str], connections: int | None = None) -> None:
    """The room page shows exactly these members and counts."""
    expect(page.locator("#people-count")).to_have_text(str(len(members)))
    expect(page.locator("#member-list li")).to_have_count(len(members))
    for name in members:
        expect(page.locator(f'#member-list li[data-user="{name}"]')).to_be_visible()
    if connections is not None:
        expect(page.locator("#connection-count")).to_have_text(str(connections))


def say(page: Any, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")


def test_two_users_see_each_other_and_the_count_drops_when_one_leaves(
    demo_site: DemoServer, new_context: Callable[[], Any], tmp_path: Path
) -> None:
    alice = sign_in(new_context(), demo_site, "alice")
    bob = sign_in(new_context(), demo_site, "bob")
    enter_room(alice, demo_site, "general")
    expect_room(alice, ["alice"], connections=1)

    enter_room(bob, demo_site, "general")
    expect_room(alice, ["alice", "bob"], connections=2)
    expect_room(bob, ["alice", "bob"], connections=2)

    say(alice, "Hi Bob! You're in #general too?")
    say(bob, "Hi Alice. Yes: the member list updated the moment I came in.")
    say(alice, "Close your tab and watch the count drop.")
    expect(bob.locator(".message")).to_have_count(3)
    expect(alice.locator(".message").last).to_contain_text("watch the count drop")
    expect(alice.locator(".message.mine")).to_have_count(2)

    shot = SCREENSHOT if UPDATE_SCREENSHOT else tmp_path / SCREENSHOT.name
    shot.parent.mkdir(exist_ok=True)
    alice.screenshot(path=str(shot))
    assert shot.stat().st_size > 0

    bob.close()
    expect_room(alice, ["alice"], connections=1)


#: For each element, the lines its visible text is laid out on, and its box.
HEADER_LAYOUT = """() => Object.fromEntries(
  [".brand", "#status", ".topbar-right button"].map((selector) => {
    const element = document.querySelector(selector);
    const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
    const lines = new Set();
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const range = document.createRange();
      range.selectNodeContents(node);
      for (const rect of range.getClientRects()) lines.add(Math.round(rect.top));
    }
    const box = element.getBoundingClientRect();
    return [selector, {lines: lines.size, top: box.top, bottom: box.bottom, right: box.right}];
  })
)"""


def test_the_header_fits_on_one_line_on_a_phone(demo_site: DemoServer, browser: Any) -> None:
    context = browser.new_context(viewport=PHONE)
    try:
        context.set_default_timeout(10_000)
        page = sign_in(context, demo_site, "alice")
        enter_room(page, demo_site, "general")
        layout = page.evaluate(HEADER_LAYOUT)
        for selector, box in layout.items():
            assert box["lines"] == 1, f"{selector} wraps at {PHONE['width']} px: {layout}"
            assert box["right"] <= PHONE["width"], f"{selector} sticks out: {layout}"
        brand, status = layout[".brand"], layout["#status"]
        assert status["top"] < brand["bottom"], f"the status is on a line of its own: {layout}"
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    finally:
        context.close()


def test_lobby_counts_follow_people_into_and_out_of_a_room(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    alice = sign_in(new_context(), demo_site, "alice")
    card = alice.locator('.room-card[data-room="random"]')
    expect(card.locator('[data-field="people"]')).to_have_text("0")

    bob = sign_in(new_context(), demo_site, "bob")
    enter_room(bob, demo_site, "random")
    expect(card.locator('[data-field="people"]')).to_have_text("1")
    expect(card.locator('[data-field="connections"]')).to_have_text("1")
    expect(card.locator('[data-field="members"]')).to_have_text("bob")

    bob.close()
    expect(card.locator('[data-field="people"]')).to_have_text("0")
    expect(card.locator('[data-field="members"]')).to_have_text("Nobody here yet")


def test_tabs_of_one_browser_share_a_session_and_are_counted_as_connections(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    context = new_context()
    lobby = sign_in(context, demo_site, "bob")
    one = context.new_page()
    enter_room(one, demo_site, "random")
    two = context.new_page()
    enter_room(two, demo_site, "random")
    expect_room(one, ["bob"], connections=2)
    expect_room(two, ["bob"], connections=2)
    card = lobby.locator('.room-card[data-room="random"]')
    expect(card.locator('[data-field="people"]')).to_have_text("1")
    expect(card.locator('[data-field="connections"]')).to_have_text("2")
    for page in (lobby, one, two):
        expect(page.locator("#status")).to_have_attribute("data-state", "live")
        expect(page.locator("#banner")).to_be_hidden()

    two.close()
    expect_room(one, ["bob"], connections=1)
    expect(card.locator('[data-field="connections"]')).to_have_text("1")


def test_signing_in_elsewhere_closes_the_first_browser_for_good(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    first_browser = new_context()
    lobby = sign_in(first_browser, demo_site, "alice")
    room = first_browser.new_page()
    sockets: list[Any] = []
    for page in (lobby, room):
        page.on("websocket", lambda socket: sockets.append(socket))
    enter_room(room, demo_site, "python")
    expect_room(room, ["alice"], connections=1)
    assert len(sockets) == 1

    second = sign_in(new_context(), demo_site, "alice")
    for page in (lobby, room):
        banner = page.locator("#banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("signed in elsewhere")
        expect(page.locator("#status")).to_have_attribute("data-state", "closed")

    enter_room(second, demo_site, "python")
    expect_room(second, ["alice"], connections=1)

    # The first browser's tabs must stay closed: no new websocket, banners still up.
    time.sleep(NO_RECONNECT_WATCH)
    assert len(sockets) == 1, f"a superseded tab reconnected: {[s.url for s in sockets]}"
    assert sockets[0].is_closed()
    for page in (lobby, room):
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#status")).to_have_attribute("data-state", "closed")
    expect_room(second, ["alice"], connections=1)
    expect(second.locator("#status")).to_have_attribute("data-state", "live")
    expect(second.locator("#banner")).to_be_hidden()


def test_logging_out_closes_the_other_tabs_and_the_room_sees_it(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    bob = sign_in(new_context(), demo_site, "bob")
    enter_room(bob, demo_site, "general")
    alice_browser = new_context()
    lobby = sign_in(alice_browser, demo_site, "alice")
    room = alice_browser.new_page()
    enter_room(room, demo_site, "general")
    expect_room(bob, ["alice", "bob"], connections=2)
    sockets: list[Any] = []
    room.on("websocket", lambda socket: sockets.append(socket))

    lobby.click("text=Log out")
    lobby.wait_for_url(f"{demo_site.url}/accounts/login/")
    expect(room.locator("#banner")).to_contain_text("signed out")
    expect(room.locator("#status")).to_have_attribute("data-state", "closed")
    expect_room(bob, ["bob"], connections=1)
    # Closed with LOGOUT_CODE (4002): the tab does not try again.
    time.sleep(NO_RECONNECT_WATCH)
    assert sockets == [], "a signed-out tab reconnected"


@pytest.mark.redis
def test_two_servers_share_presence_and_sessions_through_redis(
    browser: Any,
    redis_url: str,
    start_servers: Callable[..., list[DemoServer]],
    new_context: Callable[[], Any],
) -> None:
    first, second = start_servers(2, redis_url=redis_url)
    alice = sign_in(new_context(), first, "alice")
    enter_room(alice, first, "general")
    bob = sign_in(new_context(), second, "bob")
    enter_room(bob, second, "general")
    expect_room(alice, ["alice", "bob"], connections=2)
    expect_room(bob, ["alice", "bob"], connections=2)

    say(bob, "Hello from the other server")
    expect(alice.locator(".message").last).to_contain_text("Hello from the other server")

    # Alice signs in on the second server: her tab on the first one lets go.
    again = sign_in(new_context(), second, "alice")
    expect(alice.locator("#banner")).to_contain_text("signed in elsewhere")
    enter_room(again, second, "general")
    expect_room(bob, ["alice", "bob"], connections=2)
    expect_room(again, ["alice", "bob"], connections=2)
