"""The harness itself: servers start and die, logins work, plain websockets connect.

These use a websocket route without channels_presence, so they check the
harness independently of the package.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from tests.e2e.harness import Clients, Cluster, http_request

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("kind", ["uvicorn", "daphne"])
async def test_login_on_one_server_is_valid_on_the_other(
    start_cluster: Callable[..., Cluster], clients: Clients, kind: str, e2e_users: dict[str, int]
) -> None:
    """A session created by LoginView on server A authenticates a websocket on server B."""
    cluster = await asyncio.to_thread(start_cluster, kind=kind, presence_enabled=False)
    a, b = cluster
    alice = await a.alogin("alice")
    assert alice.user == e2e_users["alice"]
    client = await clients.open(b, alice)
    assert client.hello is not None
    assert client.hello["user"] == alice.user
    assert client.hello["session"] == alice.sessionid
    assert client.hello["server"] == "b"
    assert (await client.request({"echo": 42}, "echo"))["echo"] == 42


async def test_anonymous_websocket_has_no_user(
    start_cluster: Callable[..., Cluster], clients: Clients
) -> None:
    """Without a cookie the consumer sees AnonymousUser."""
    cluster = await asyncio.to_thread(start_cluster, names=("a",), presence_enabled=False)
    client = await clients.open(cluster[0])
    assert client.hello is not None and client.hello["user"] is None


async def test_channel_layer_spans_servers(
    start_cluster: Callable[..., Cluster], clients: Clients
) -> None:
    """Both servers share the Redis channel layer: a group joined on A is reached from B."""
    a, b = await asyncio.to_thread(start_cluster, presence_enabled=False)
    bob = await a.alogin("bob")
    on_a = await clients.open(a, bob)
    on_b = await clients.open(b, bob)
    await on_a.request({"join": "room1"}, "joined")
    await on_b.request({"join": "room1"}, "joined")
    from channels_redis.core import RedisChannelLayer

    layer = RedisChannelLayer(hosts=[a.config.layer_redis_url], prefix=a.config.layer_prefix)
    try:
        await layer.group_send("room1", {"type": "room.message", "text": "hi"})
    finally:
        await layer.close_pools()
    assert (await on_a.expect("message"))["text"] == "hi"
    assert (await on_b.expect("message"))["text"] == "hi"


async def test_sigkill_drops_connections_and_restart_serves_again(
    start_cluster: Callable[..., Cluster], clients: Clients
) -> None:
    """SIGKILL ends the process at once (clients see 1006); restart serves on a new port."""
    cluster = await asyncio.to_thread(start_cluster, names=("a",), presence_enabled=False)
    a = cluster[0]
    carol = await a.alogin("carol")
    client = await clients.open(a, carol)
    assert a.process is not None
    pid = a.process.pid
    a.kill()
    assert not _process_exists(pid)
    assert await client.wait_closed(5) == 1006
    await asyncio.to_thread(a.start)
    again = await clients.open(a, carol)
    assert again.hello is not None and again.hello["user"] == carol.user


def test_servers_are_gone_after_stop(start_cluster: Callable[..., Cluster]) -> None:
    """Cluster.stop() leaves no process and no listening port behind."""
    cluster = start_cluster(presence_enabled=False)
    pids = [s.process.pid for s in cluster if s.process is not None]
    urls = [s.url for s in cluster]
    cluster.stop()
    for pid in pids:
        assert not _process_exists(pid)
    for url in urls:
        with pytest.raises(OSError):
            http_request(f"{url}/health/", timeout=1)
