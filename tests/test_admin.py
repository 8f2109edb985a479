"""The admin's "Presence" pages at the Django test-client level.

The connections are real ones (websocket communicators through the test ASGI
application), the pages read them through the public API, and a disconnect
closes them.
"""

from __future__ import annotations

import logging
from html.parser import HTMLParser
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.test import Client, override_settings
from django.urls import path

from channels_presence.admin import install
from channels_presence.admin_views import DISCONNECT_PERMISSION, PresenceAdmin
from tests.test_consumers import closed_with, still_open

pytestmark = pytest.mark.django_db(transaction=True)

OVERVIEW = "/admin/channels_presence/"

# A second admin site, mounted by this module's own URLconf.
BACKOFFICE = AdminSite(name="backoffice")
BACKOFFICE_PRESENCE = install(BACKOFFICE)
urlpatterns = [path("admin/", admin.site.urls), path("back/", BACKOFFICE.urls)]


class Cells(HTMLParser):
    """The text of each row of ``#result_list``, cell by cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_table = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", "result_list") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table(response: Any) -> list[list[str]]:
    """The body rows of the page's result table (the header row left out)."""
    parser = Cells()
    parser.feed(response.content.decode())
    return parser.rows[1:]


def make_user(username: str, **flags: Any) -> Any:
    return get_user_model().objects.create_user(username, password="pw", **flags)


async def signed_in(user: Any, **client_options: Any) -> Client:
    client = Client(**client_options)
    await sync_to_async(client.force_login)(user)
    return client


async def get(client: Client, url: str) -> Any:
    return await sync_to_async(client.get)(url)


async def post(client: Client, url: str, data: dict[str, Any]) -> Any:
    return await sync_to_async(client.post)(url, data)


@pytest.fixture
async def people() -> dict[str, Any]:
    """alice and bob (no admin access), a staff member and a superuser."""
    return {
        "alice": await sync_to_async(make_user)("alice"),
        "bob": await sync_to_async(make_user)("bob"),
        "staff": await sync_to_async(make_user)("staff", is_staff=True),
        "root": await sync_to_async(make_user)("root", is_staff=True, is_superuser=True),
    }


# Who may see the pages ------------------------------------------------------------------


async def test_anonymous_and_non_staff_users_are_sent_to_the_admin_login(
    people: dict[str, Any],
) -> None:
    bob = people["bob"].pk
    pages = [OVERVIEW, f"{OVERVIEW}group/lobby/", f"{OVERVIEW}user/{bob}/"]
    pages.append(f"{OVERVIEW}user/{bob}/disconnect/")
    for client in (Client(), await signed_in(people["alice"])):
        for url in pages:
            response = await get(client, url)
            assert response.status_code == 302, url
            assert response["Location"].startswith("/admin/login/?next="), url


async def test_the_admin_index_lists_the_presence_section_for_staff(
    people: dict[str, Any],
) -> None:
    response = await get(await signed_in(people["staff"]), "/admin/")
    assert response.status_code == 200
    page = response.content.decode()
    assert f'href="{OVERVIEW}"' in page
    assert "Channels presence" in page and ">Presence</a>" in page


# What staff see ---------------------------------------------------------------------------


async def test_staff_see_every_group_with_its_connections_and_users(
    ws: Any, people: dict[str, Any], presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    alice, bob = people["alice"].pk, people["bob"].pk
    await ws(user=alice, session="a")
    await ws(user=alice, session="a")
    await ws(user=bob, session="b")
    await ws("/ws/diff/", user=bob, session="b")
    response = await get(await signed_in(people["staff"]), OVERVIEW)
    assert response.status_code == 200
    assert table(response) == [["lobby", "3", "2"], ["stage", "1", "1"]]
    assert "4 live connections in 2 groups." in response.content.decode()

    searched = await get(await signed_in(people["staff"]), f"{OVERVIEW}?q=STA")
    assert table(searched) == [["stage", "1", "1"]]


async def test_the_group_page_lists_each_user_with_their_connections_and_metadata(
    ws: Any, people: dict[str, Any], presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    alice, bob = people["alice"].pk, people["bob"].pk
    await ws("/ws/diff/", user=bob, session="b")
    await ws("/ws/diff/", user=alice, session="a1")
    await ws("/ws/diff/", user=alice, session="a2")
    channels = {pk: [c.channel_name for c in conns] for pk, conns in (await _connections()).items()}

    response = await get(await signed_in(people["staff"]), f"{OVERVIEW}group/stage/")
    assert response.status_code == 200
    rows = table(response)
    # alice first (lower pk), her name cell spanning her two connections.
    assert rows[0][0] == "alice 2 connections"
    assert [row[-3] for row in rows] == [*channels[alice], *channels[bob]]
    assert rows[2][0] == "bob"
    assert all(row[-1] == '{"device": "test"}' for row in rows)
    assert f'href="{OVERVIEW}user/{alice}/"' in response.content.decode()


async def _connections() -> dict[Any, Any]:
    from channels_presence import agroup_connections

    return await agroup_connections("stage")


async def test_a_bad_group_name_is_not_found(people: dict[str, Any]) -> None:
    response = await get(await signed_in(people["staff"]), f"{OVERVIEW}group/no%20spaces/")
    assert response.status_code == 404


async def test_the_user_page_shows_connections_groups_and_only_a_session_prefix(
    ws: Any, people: dict[str, Any]
) -> None:
    bob = people["bob"].pk
    await ws("/ws/diff/", user=bob, session="0123456789abcdefSECRET")
    response = await get(await signed_in(people["staff"]), f"{OVERVIEW}user/{bob}/")
    assert response.status_code == 200
    page = response.content.decode()
    ((channel, _since, groups, session, meta),) = table(response)
    assert channel.startswith("specific.")
    assert (groups, session, meta) == ("stage", "01234567…", '{"device": "test"}')
    assert "89abcdef" not in page and "SECRET" not in page
    assert "1 live connection." in page
    # The page is about bob; the header still greets whoever is signed in.
    assert "<strong>staff</strong>" in page and "<strong>bob</strong>" not in page
    assert "Edit this user" not in page  # staff without permissions on users

    as_root = await get(await signed_in(people["root"]), f"{OVERVIEW}user/{bob}/")
    assert f'href="/admin/auth/user/{bob}/change/">Edit this user' in as_root.content.decode()


async def test_finding_a_user_by_username_opens_their_page(people: dict[str, Any]) -> None:
    client = await signed_in(people["staff"])
    response = await get(client, f"{OVERVIEW}?user=bob")
    assert response.status_code == 302
    assert response["Location"] == f"{OVERVIEW}user/{people['bob'].pk}/"
    by_pk = await get(client, f"{OVERVIEW}?user=12345")
    assert by_pk["Location"] == f"{OVERVIEW}user/12345/"
    unknown = await get(client, by_pk["Location"])
    assert "No user with primary key 12345 exists." in unknown.content.decode()


async def test_an_unreachable_store_is_reported_on_the_page(
    people: dict[str, Any],
    dead_redis: None,
) -> None:
    client = await signed_in(people["staff"])
    response = await sync_to_async(client.get)(OVERVIEW, follow=True)
    assert response.status_code == 200
    assert "The presence store is unavailable" in response.content.decode()


# Disconnecting ------------------------------------------------------------------------------


async def test_staff_without_the_permission_get_no_button_and_a_403(
    ws: Any, people: dict[str, Any]
) -> None:
    bob = people["bob"].pk
    comm = await ws(user=bob, session="b")
    client = await signed_in(people["staff"])
    user_page = await get(client, f"{OVERVIEW}user/{bob}/")
    assert "presence-disconnect" not in user_page.content.decode()
    assert (await get(client, f"{OVERVIEW}user/{bob}/disconnect/")).status_code == 403
    refused = await post(client, f"{OVERVIEW}user/{bob}/disconnect/", {"code": 4001})
    assert refused.status_code == 403
    await still_open(comm)


async def test_a_superuser_confirms_then_every_connection_closes_and_it_is_logged(
    ws: Any, people: dict[str, Any], presence_settings: Any, caplog: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    bob = people["bob"].pk
    first = await ws(user=bob, session="b1")
    second = await ws(user=bob, session="b2")
    other = await ws(user=people["alice"].pk, session="a")
    client = await signed_in(people["root"])
    user_page = await get(client, f"{OVERVIEW}user/{bob}/")
    assert 'id="presence-disconnect"' in user_page.content.decode()

    confirm = await get(client, f"{OVERVIEW}user/{bob}/disconnect/")
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "2 connections are open now." in page
    assert 'name="code" value="4001"' in page
    assert "<strong>root</strong>" in page  # greeted in the header
    await still_open(first)  # asking is not doing

    with caplog.at_level(logging.INFO, logger="channels_presence"):
        done = await post(client, f"{OVERVIEW}user/{bob}/disconnect/", {"code": 4005})
    assert done.status_code == 302
    assert done["Location"] == f"{OVERVIEW}user/{bob}/"
    for comm in (first, second):
        texts = await closed_with(comm, 4005)
        assert texts == [{"type": "session.superseded", "reason": "kicked", "code": 4005}]
    await still_open(other)
    (line,) = [r.getMessage() for r in caplog.records if "from the admin" in r.getMessage()]
    assert line == (
        f"root (pk {people['root'].pk}) disconnected user {bob} from the admin: "
        "2 connection(s) closed with code 4005"
    )
    after = (await get(client, done["Location"])).content.decode()
    assert "Closed 2 connections of bob (code 4005)." in after
    assert "This user has no live connections." in after


async def test_a_disconnect_without_the_csrf_token_is_refused(
    ws: Any, people: dict[str, Any]
) -> None:
    bob = people["bob"].pk
    comm = await ws(user=bob, session="b")
    client = await signed_in(people["root"], enforce_csrf_checks=True)
    response = await post(client, f"{OVERVIEW}user/{bob}/disconnect/", {"code": 4001})
    assert response.status_code == 403
    assert b"CSRF" in response.content
    await still_open(comm)


async def test_a_close_code_out_of_range_is_refused_by_the_form(
    ws: Any, people: dict[str, Any]
) -> None:
    bob = people["bob"].pk
    comm = await ws(user=bob, session="b")
    client = await signed_in(people["root"])
    response = await post(client, f"{OVERVIEW}user/{bob}/disconnect/", {"code": 2000})
    assert response.status_code == 200
    assert "2000 is not a close code a server may send." in response.content.decode()
    await still_open(comm)


async def test_staff_granted_the_permission_may_disconnect(ws: Any, people: dict[str, Any]) -> None:
    # As the README tells ModelBackend users to create and grant it.
    def grant() -> None:
        content_type, _ = ContentType.objects.get_or_create(
            app_label="channels_presence", model="presence"
        )
        permission, _ = Permission.objects.get_or_create(
            codename="disconnect_user",
            content_type=content_type,
            defaults={"name": "Can disconnect users from presence"},
        )
        people["staff"].user_permissions.add(permission)

    await sync_to_async(grant)()
    staff = await sync_to_async(get_user_model().objects.get)(pk=people["staff"].pk)
    assert await sync_to_async(staff.has_perm)(DISCONNECT_PERMISSION)
    bob = people["bob"].pk
    comm = await ws(user=bob, session="b")
    client = await signed_in(staff)
    response = await post(client, f"{OVERVIEW}user/{bob}/disconnect/", {"code": 4001})
    assert response.status_code == 302
    await closed_with(comm, 4001)


async def test_get_and_post_only(people: dict[str, Any]) -> None:
    client = await signed_in(people["root"])
    url = f"{OVERVIEW}user/{people['bob'].pk}/disconnect/"
    response = await sync_to_async(client.put)(url)
    assert response.status_code == 405


# Wiring -------------------------------------------------------------------------------------


def test_the_default_site_has_the_pages_and_installing_again_changes_nothing() -> None:
    presence = getattr(admin.site, "channels_presence_admin", None)
    assert isinstance(presence, PresenceAdmin)
    assert install(admin.site) is presence
    names = [getattr(p, "name", None) for p in admin.site.get_urls()]
    assert names.count("channels_presence_overview") == 1


async def test_another_admin_site_gets_the_pages_under_its_own_urls(
    people: dict[str, Any],
) -> None:
    with override_settings(ROOT_URLCONF=__name__):
        assert BACKOFFICE_PRESENCE.url("overview") == "/back/channels_presence/"
        client = await signed_in(people["staff"])
        index = (await get(client, "/back/")).content.decode()
        assert 'href="/back/channels_presence/"' in index
        page = await get(client, "/back/channels_presence/")
        assert page.status_code == 200
        assert 'href="/back/"' in page.content.decode()  # breadcrumbs stay on this site
