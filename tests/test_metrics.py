"""Prometheus metrics on a real prometheus-client registry, while sockets come and go."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import CollectorRegistry, generate_latest

import channels_presence as presence
from channels_presence import heartbeat
from channels_presence.heartbeat import get_heartbeat
from channels_presence.logs import store_failures
from channels_presence.metrics import (
    COUNTED_SIGNALS,
    PresenceCollector,
    PresenceMetrics,
    register_metrics,
)
from tests.test_consumers import closed_with

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> Iterator[Callable[[str], float | None]]:
    """Presence metrics in a registry of their own; ``metrics(name, **labels)`` reads one."""
    registry = CollectorRegistry()
    exported = PresenceMetrics(registry, PresenceCollector(clock=clock))

    def read(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    read.exported = exported  # type: ignore[attr-defined]
    yield read
    exported.unregister()


def exported(metrics: Any) -> PresenceMetrics:
    found: PresenceMetrics = metrics.exported
    return found


# Per process -------------------------------------------------------------------------


@pytest.mark.usefixtures("backend")
async def test_local_connections_follow_sockets_coming_and_going(
    ws: Any, metrics: Any, presence_settings: Any
) -> None:
    presence_settings(MAX_SESSIONS=None)
    assert metrics("channels_presence_local_connections") == 0
    first = await ws(user=1)
    await ws(user=1)
    await ws(user=2)
    await ws(user=None)  # anonymous, not tracked (ANONYMOUS="ignore")
    assert metrics("channels_presence_local_connections") == 3
    await first.disconnect()
    assert metrics("channels_presence_local_connections") == 2


@pytest.mark.usefixtures("backend")
async def test_removals_are_counted_by_reason_and_signals_by_name(
    ws: Any, metrics: Any, presence_settings: Any
) -> None:
    presence_settings(LEAVE_GRACE=0)
    older = await ws(user=1)
    newer = await ws(user=1)  # evicts the older one
    await closed_with(older, 4001)
    other = await ws(user=2)
    await other.disconnect()
    assert await presence.adisconnect_user(1) == 1
    await closed_with(newer, 4001)

    removals = {
        reason: metrics("channels_presence_removals_total", reason=reason)
        for reason in ("superseded", "disconnected", "kicked")
    }
    assert removals == {"superseded": 1, "disconnected": 1, "kicked": 1}
    assert metrics("channels_presence_removals_total", reason="expired") is None
    sent = {
        name: metrics("channels_presence_signals_sent_total", signal=name)
        for name in COUNTED_SIGNALS
    }
    assert sent == {
        "connection_opened": 3,
        "connection_closed": 3,
        "user_online": 2,
        "user_offline": 2,
        "user_joined_group": 2,
        "user_left_group": 2,
    }


@pytest.mark.usefixtures("backend")
async def test_each_heartbeat_is_timed(ws: Any, metrics: Any) -> None:
    await ws(user=1)
    before = metrics("channels_presence_heartbeat_duration_seconds_count")
    await get_heartbeat().beat()
    await get_heartbeat().beat()
    # The loop's own heartbeat task may have beaten too.
    count = metrics("channels_presence_heartbeat_duration_seconds_count")
    assert count is not None and before is not None and count >= before + 2
    assert 0 < (metrics("channels_presence_heartbeat_duration_seconds_sum") or 0) < 5
    slowest = metrics("channels_presence_heartbeat_duration_seconds_bucket", le="5.0")
    assert slowest == count


async def test_store_failures_are_counted(
    ws: Any, metrics: Any, dead_redis: None, clock: Clock
) -> None:
    before = metrics("channels_presence_store_failures_total")
    assert before is not None
    # One failed connect (let in untracked), one failed heartbeat: two failures.
    await ws(user=1)
    await get_heartbeat().beat()
    failures = metrics("channels_presence_store_failures_total")
    assert failures is not None and failures >= before + 2
    assert failures == store_failures.total


# Global, through the store ---------------------------------------------------------------


@pytest.mark.usefixtures("backend")
async def test_global_figures_are_read_at_most_once_per_interval(
    ws: Any, metrics: Any, presence_settings: Any, clock: Clock
) -> None:
    presence_settings(METRICS_GROUPS=["lobby", "room-9", "empty"], METRICS_INTERVAL=30)
    collector = exported(metrics).collector
    alice = await ws(user=1)
    await alice.send_json_to({"join": "room-9"})
    await alice.receive_json_from()
    await ws(user=2)
    await ws(user=2)  # replaces the first: user 2 still has one connection

    assert metrics("channels_presence_groups") == 2
    assert metrics("channels_presence_group_connections", group="lobby") == 2
    assert metrics("channels_presence_group_users", group="lobby") == 2
    assert metrics("channels_presence_group_connections", group="room-9") == 1
    assert metrics("channels_presence_group_users", group="empty") == 0
    assert collector.reads == 1

    # Within the interval the figures stay as read, however often one scrapes.
    await ws(user=3)
    clock.now += 29
    for _ in range(5):
        assert metrics("channels_presence_group_connections", group="lobby") == 2
    assert collector.reads == 1

    clock.now += 1
    assert metrics("channels_presence_group_connections", group="lobby") == 3
    assert metrics("channels_presence_group_users", group="lobby") == 3
    assert collector.reads == 2
    # Per-process figures are read at every scrape.
    assert metrics("channels_presence_local_connections") == 3


@pytest.mark.usefixtures("backend")
def test_concurrent_scrapes_share_one_read(metrics: Any, presence_settings: Any) -> None:
    presence_settings(METRICS_GROUPS=["lobby"])
    registry = exported(metrics).registry
    pages: list[bytes] = []
    scrapers = [
        threading.Thread(target=lambda: pages.append(generate_latest(registry))) for _ in range(8)
    ]
    for scraper in scrapers:
        scraper.start()
    for scraper in scrapers:
        scraper.join()
    assert len(pages) == 8 and len(set(pages)) == 1
    assert exported(metrics).collector.reads == 1


@pytest.mark.redis
def test_a_scrape_costs_redis_a_few_cheap_reads_per_interval(
    metrics: Any, redis_url: str, key_prefix: str, clock: Clock
) -> None:
    import redis
    from django.test import override_settings

    caches = {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url}}
    groups = ["lobby", "room-1", "room-2"]
    config = {"KEY_PREFIX": key_prefix, "METRICS_GROUPS": groups}
    with (
        override_settings(CACHES=caches, CHANNELS_PRESENCE=config),
        redis.Redis.from_url(redis_url) as client,
    ):

        def calls() -> dict[str, int]:
            stats = client.info("commandstats")
            return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

        registry = exported(metrics).registry
        generate_latest(registry)  # the first read opens the store's connection
        clock.now += 15
        before = calls()
        for _ in range(10):
            generate_latest(registry)
        after = calls()
        made = {cmd: n - before.get(cmd, 0) for cmd, n in after.items() if n != before.get(cmd)}
        # One ZCARD, one MGET, one HLEN a group (and the INFO that measured it).
        assert made == {"zcard": 1, "mget": 1, "hlen": len(groups), "info": 1}


async def test_a_failed_read_leaves_the_global_figures_out_until_the_next_interval(
    metrics: Any, dead_redis: None, clock: Clock
) -> None:
    collector = exported(metrics).collector
    failures = store_failures.total
    assert metrics("channels_presence_groups") is None
    assert metrics("channels_presence_local_connections") == 0
    assert (collector.reads, store_failures.total) == (1, failures + 1)
    clock.now += 5
    assert metrics("channels_presence_groups") is None
    assert collector.reads == 1  # not retried at every scrape


# Registering ----------------------------------------------------------------------------


def test_register_metrics_once_per_registry_and_unregister_stops_counting() -> None:
    registry = CollectorRegistry()
    first = register_metrics(registry)
    assert register_metrics(registry) is first
    assert first._observe_beat in heartbeat.beat_observers
    first.unregister()
    assert first._observe_beat not in heartbeat.beat_observers
    assert all(not signal.receivers for signal in COUNTED_SIGNALS.values())
    assert registry.get_sample_value("channels_presence_local_connections") is None
    again = register_metrics(registry)
    assert again is not first
    again.unregister()


def test_without_prometheus_client_registering_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImproperlyConfigured, match=r"channels-presence\[prometheus\]"):
        register_metrics()


def test_the_package_never_imports_prometheus_client_by_itself() -> None:
    code = (
        "import sys, django; sys.modules['prometheus_client'] = None; django.setup()\n"
        "import channels_presence, channels_presence.metrics, channels_presence.api\n"
        "import channels_presence.consumers, channels_presence.middleware\n"
        "import channels_presence.admin\n"
        "print(channels_presence.group_size('lobby'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "0\n", "")


# The README -------------------------------------------------------------------------------


def _readme_section(title: str) -> str:
    start = README.index(f"## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


@pytest.mark.usefixtures("backend")
async def test_the_readme_names_every_metric_and_its_example_lines_are_real(
    ws: Any, metrics: Any, presence_settings: Any
) -> None:
    presence_settings(METRICS_GROUPS=["lobby"])
    first = await ws(user=1)
    await ws(user=1)  # a removal: the first is superseded
    await get_heartbeat().beat()
    # The superseded socket's close and its cleanup are done before the page is read.
    while (await first.receive_output(timeout=3))["type"] != "websocket.close":
        pass
    await first.wait(timeout=3)
    page = generate_latest(exported(metrics).registry).decode()
    section = _readme_section("Metrics")
    documented = set(re.findall(r"^\| `(channels_presence_\w+)`", section, re.M))
    families = set(re.findall(r"^# TYPE (channels_presence_\w+) ", page, re.M))
    # prometheus-client adds a "_created" timestamp to counters and histograms.
    families = {name for name in families if not name.endswith("_created")}
    assert documented == families
    example = re.search(r"```text\n(.*?)```", section, re.S)
    assert example is not None
    for line in example.group(1).splitlines():
        if line and not line.startswith("#"):
            name_and_labels = line.rsplit(" ", 1)[0]
            assert re.search(rf"^{re.escape(name_and_labels)} ", page, re.M), line
