"""presence.js, the browser client, in headless Chromium against the real demo server.

The tests open a page of the demo site that has no websocket of its own (so the
browser sends the session cookie with the websockets, as a page of the site
would), import the module from the server's static files and drive
``PresenceSocket`` there. The page counts each ``WebSocket`` the module
creates, with its time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.demo_server import DemoServer
from tests.browser.test_example_site import NO_RECONNECT_WATCH, expect, sign_in

pytestmark = pytest.mark.browser

MODULE_URL = "/static/channels_presence/presence.js"
#: A page of the site that opens no websocket of its own.
HOST_PATH = "/accounts/login/"

# Before any script of the page: every socket's events go to window.events, and
# every WebSocket the module opens is counted, with its time, in window.attempts
# (a subclass of the browser's own WebSocket: the real thing, counted).
INSTRUMENTS = """
window.events = [];
window.attempts = [];
window.names = {};
const BrowserWebSocket = window.WebSocket;
window.WebSocket = class extends BrowserWebSocket {
  constructor(...args) {
    super(...args);
    window.attempts.push(performance.now());
  }
};
window.watch = (socket, label) => {
  for (const type of ["open", "reconnecting", "closed", "members", "message"]) {
    socket.addEventListener(type, (event) => {
      const detail = event.detail;
      if (detail.data && detail.data.names) Object.assign(window.names, detail.data.names);
      if (type === "message") return;
      window.events.push({ label, type, at: performance.now(), ...detail });
    });
  }
  return socket;
};
window.memberNames = (socket) =>
  socket.members.toArray().map((pk) => window.names[String(pk)]).sort();
"""


def open_test_page(context: Any, server: DemoServer) -> Any:
    """A tab of ``context`` on a page of ``server``, with the module as ``window.presence``.

    The page is one the server really serves (a page made up by the test would
    not be allowed to open sockets to this machine).
    """
    page = context.new_page()
    page.add_init_script(script=INSTRUMENTS)
    page.goto(f"{server.url}{HOST_PATH}")
    page.evaluate("async (url) => { window.presence = await import(url); }", MODULE_URL)
    return page


def events(page: Any, label: str, kind: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate("window.events")
    return [e for e in found if e["label"] == label and (kind is None or e["type"] == kind)]


def wait_for_events(page: Any, label: str, kind: str, count: int, timeout: float = 10.0) -> None:
    page.wait_for_function(
        "([label, kind, count]) =>"
        " window.events.filter((e) => e.label === label && e.type === kind).length >= count",
        arg=[label, kind, count],
        timeout=timeout * 1000,
    )


# Pure logic --------------------------------------------------------------------------------


def test_backoff_delays_grow_to_the_cap_and_jitter_stays_below_each_ceiling(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    page = open_test_page(new_context(), demo_site)
    result = page.evaluate(
        """() => {
        const { backoffDelay } = window.presence;
        const steady = [...Array(8).keys()].map((n) => backoffDelay(n, { jitter: 0 }));
        const lowest = [...Array(8).keys()].map((n) => backoffDelay(n, {}, () => 0.999999));
        const custom = [0, 1, 2, 3].map((n) => backoffDelay(n, { minDelay: 100, factor: 3,
                                                                maxDelay: 1000, jitter: 0 }));
        const samples = [...Array(200)].map(() => backoffDelay(3));
        return { steady, lowest, custom, min: Math.min(...samples), max: Math.max(...samples),
                 distinct: new Set(samples).size };
    }"""
    )
    assert result["steady"] == [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
    # The default jitter takes at most half of each delay away.
    assert result["lowest"] == [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]
    assert result["custom"] == [100, 300, 900, 1000]
    assert result["min"] >= 4000 and result["max"] <= 8000
    assert result["distinct"] > 50, "jitter should spread clients dropped together"


def test_the_member_list_applies_snapshots_and_diffs_of_its_own_group(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    page = open_test_page(new_context(), demo_site)
    steps = page.evaluate(
        """() => {
        const list = new window.presence.MemberList("room.a", [1, 2]);
        const out = [];
        out.push(list.apply({ group: "room.a", joins: [3, "2"], leaves: [1, 9] }));
        out.push(list.apply({ group: "room.b", joins: [7], leaves: [3] }));
        out.push(list.toArray());
        out.push(list.reset([2, 4]));
        out.push([list.size, list.has("4"), list.has(3)]);
        return out;
    }"""
    )
    assert steps == [
        {"joins": [3], "leaves": [1]},  # "2" is user 2, already present; 9 was never there
        {"joins": [], "leaves": []},  # another group's diff changes nothing
        [2, 3],
        {"joins": [4], "leaves": [3]},
        [2, True, False],
    ]


def test_close_codes_come_from_the_page_or_default_to_the_settings_defaults(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    page = open_test_page(new_context(), demo_site)
    defaults = {"superseded": 4001, "logged_out": 4002, "rejected": 4003}
    # The demo's pages carry {% presence_close_codes %}: the server's (default) codes.
    assert json.loads(page.locator("#presence-close-codes").text_content()) == defaults
    custom = {"superseded": 4101, "logged_out": 4102, "rejected": 4103}
    page.evaluate(
        "(codes) => { document.getElementById('presence-close-codes').textContent = codes; }",
        json.dumps(custom),
    )
    assert page.evaluate("window.presence.readCloseCodes()") == custom
    page.evaluate("document.getElementById('presence-close-codes').remove()")
    assert page.evaluate("window.presence.readCloseCodes()") == defaults


# Against the server ----------------------------------------------------------------------------


def test_an_application_stop_code_ends_the_socket_and_other_codes_are_retried(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    # Not signed in: the demo's lobby accepts, then closes with its own code 4401.
    page = open_test_page(new_context(), demo_site)
    page.evaluate(
        """() => {
        window.stopping = window.watch(new window.presence.PresenceSocket("/ws/lobby/", {
            stopCodes: { 4401: "not_signed_in" }, minDelay: 100, jitter: 0 }), "stopping");
        window.retrying = window.watch(new window.presence.PresenceSocket("/ws/lobby/", {
            minDelay: 100, maxDelay: 200, jitter: 0 }), "retrying");
    }"""
    )
    wait_for_events(page, "stopping", "closed", 1)
    wait_for_events(page, "retrying", "reconnecting", 3)
    ((closed,),) = [events(page, "stopping", "closed")]
    assert (closed["code"], closed["reason"]) == (4401, "not_signed_in")
    retries = events(page, "retrying", "reconnecting")
    assert [r["code"] for r in retries[:3]] == [4401, 4401, 4401]
    assert [r["delay"] for r in retries[:3]] == [100, 200, 200]

    page.evaluate("window.retrying.close()")
    assert events(page, "retrying", "closed")[0]["reason"] == "client"
    attempts = page.evaluate("window.attempts.length")
    time.sleep(1.0)
    assert page.evaluate("window.attempts.length") == attempts, "a closed socket reconnected"
    assert len(events(page, "stopping", "open")) == 1
    assert page.evaluate("[window.stopping.state, window.retrying.state]") == ["closed", "closed"]


def test_a_dropped_connection_reconnects_with_growing_delays(
    browser: Any, start_servers: Callable[..., list[DemoServer]], new_context: Callable[[], Any]
) -> None:
    (server,) = start_servers()
    context = new_context()
    sign_in(context, server, "alice")
    page = open_test_page(context, server)
    page.evaluate(
        """() => { window.socket = window.watch(new window.presence.PresenceSocket(
            "/ws/lobby/", { minDelay: 250, factor: 2, maxDelay: 2000, jitter: 0 }), "lobby"); }"""
    )
    wait_for_events(page, "lobby", "open", 1)

    server.stop()  # the server goes away: its sockets drop, then connections are refused
    wait_for_events(page, "lobby", "reconnecting", 5, timeout=20)
    (again,) = start_servers(port=server.port)  # the same database: alice is still signed in
    wait_for_events(page, "lobby", "open", 2, timeout=30)

    retries = events(page, "lobby", "reconnecting")
    delays = [r["delay"] for r in retries]
    assert delays[:5] == [250, 500, 1000, 2000, 2000]
    assert all(d == 2000 for d in delays[4:])
    # Each attempt waited its delay for real: the gaps between sockets grow.
    attempts = page.evaluate("window.attempts")
    closes = [r["at"] for r in retries]
    for close_at, delay, attempt_at in zip(closes, delays, attempts[1:], strict=False):
        assert attempt_at - close_at >= delay - 15, (close_at, delay, attempt_at)
    opened = events(page, "lobby", "open")[-1]
    assert opened["attempt"] == len(retries)
    assert page.evaluate("window.socket.state") == "open"
    assert again.port == server.port


def test_the_member_list_follows_joins_and_leaves(
    demo_site: DemoServer, new_context: Callable[[], Any]
) -> None:
    alice_context = new_context()
    sign_in(alice_context, demo_site, "alice")
    page = open_test_page(alice_context, demo_site)
    page.evaluate(
        """() => { window.room = window.watch(new window.presence.PresenceSocket(
            "/ws/rooms/random/", { group: "room.random" }), "room"); }"""
    )
    page.wait_for_function("window.memberNames(window.room).join() === 'alice'")

    bob = sign_in(new_context(), demo_site, "bob")
    bob.goto(f"{demo_site.url}/rooms/random/")
    page.wait_for_function("window.memberNames(window.room).join() === 'alice,bob'")
    joined = events(page, "room", "members")[-1]
    assert joined["joins"] == [joined["message"]["joins"][0]] and joined["leaves"] == []
    assert joined["group"] == "room.random"
    assert joined["message"]["type"] == "presence.diff"

    bob.close()  # after LEAVE_GRACE (3 s) and a DIFF_INTERVAL, bob's leave arrives
    page.wait_for_function("window.memberNames(window.room).join() === 'alice'", timeout=15_000)
    left = events(page, "room", "members")[-1]
    assert left["leaves"] == joined["joins"] and left["joins"] == []


def test_a_refused_tab_stops_with_the_servers_own_reject_code(
    browser: Any, start_servers: Callable[..., list[DemoServer]], new_context: Callable[[], Any]
) -> None:
    codes = {"ON_LIMIT": "reject_new", "REJECT_CODE": 4103, "CLOSE_CODE": 4101}
    (server,) = start_servers(env={"DEMO_PRESENCE": json.dumps(codes)})
    first = sign_in(new_context(), server, "alice")

    second = new_context().new_page()
    sockets: list[Any] = []
    second.on("websocket", lambda socket: sockets.append(socket))
    second.goto(f"{server.url}/accounts/login/")
    second.fill("#id_username", "alice")
    second.fill("#id_password", "alice-pass")
    second.click("button[type=submit]")
    second.wait_for_url(f"{server.url}/")
    rendered = json.loads(second.locator("#presence-close-codes").text_content())
    assert rendered == {"superseded": 4101, "logged_out": 4002, "rejected": 4103}
    expect(second.locator("#banner")).to_contain_text("already signed in elsewhere")
    expect(second.locator("#status")).to_have_attribute("data-state", "closed")

    time.sleep(NO_RECONNECT_WATCH)
    assert len(sockets) == 1, "a refused tab reconnected"
    expect(second.locator("#status")).to_have_attribute("data-state", "closed")
    expect(first.locator("#status")).to_have_attribute("data-state", "live")
    expect(first.locator("#banner")).to_be_hidden()
