"""Prometheus metrics: what this process does, and a few global figures read cheaply.

Optional: install ``channels-presence[prometheus]`` and call
:func:`register_metrics` once in each server process (in ``asgi.py``). Without
it nothing here runs and ``prometheus-client`` is never imported.

Per process, counted as things happen here:

* connections this process keeps alive (over all its event loops);
* how long each heartbeat took;
* store failures (every failed store call, as ``logs.store_failures`` sees them);
* connections this process removed, by reason (``superseded`` ones are evictions);
* presence signals this process sent, by signal.

Global, through the store, at most once per ``METRICS_INTERVAL`` however often
(and by however many scrapers) the registry is collected: the number of
non-empty groups (one O(1) read), and the connections and users of each group
named in ``METRICS_GROUPS`` (one read for the sizes, one per group for its
users). A total of every connection would be a sum over every group: the
store has no O(1) answer to it, so pick the groups that stand for your site.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from django.core.exceptions import ImproperlyConfigured
from django.dispatch import Signal

from . import heartbeat, signals
from .conf import get_settings
from .exceptions import StoreUnavailable
from .logs import store_failures
from .stores import get_store

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["HEARTBEAT_BUCKETS", "PresenceCollector", "PresenceMetrics", "register_metrics"]

#: Upper bounds (seconds) of the heartbeat duration histogram's buckets.
HEARTBEAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: The presence signals counted, by the name the ``signal`` label gives them.
COUNTED_SIGNALS: dict[str, Signal] = {
    "user_online": signals.user_online,
    "user_offline": signals.user_offline,
    "user_joined_group": signals.user_joined_group,
    "user_left_group": signals.user_left_group,
    "connection_opened": signals.connection_opened,
    "connection_closed": signals.connection_closed,
}


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImproperlyConfigured(
            "channels_presence.metrics needs prometheus-client: "
            'pip install "channels-presence[prometheus]".'
        ) from None
    return prometheus_client


@dataclass(frozen=True)
class GlobalFigures:
    """What one read of the store found."""

    groups: int
    connections: dict[str, int]
    users: dict[str, int]


class PresenceCollector:
    """Collects the figures read at scrape time; the store at most once per interval.

    A custom collector (``prometheus_client`` calls :meth:`collect` on every
    scrape). Concurrent scrapes share one read: the second waits for the first.
    A failed read is counted as a store failure and leaves the global figures
    out of that scrape (they show as missing, not as zero); the next read is
    tried an interval later, not at the next scrape.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._figures: GlobalFigures | None = None
        #: Store reads made so far.
        self.reads = 0

    def describe(self) -> Iterator[Metric]:
        # What a registry asks when it is registered: names only, no store read.
        yield from self._families(0, 0, None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(
            heartbeat.local_connections(), store_failures.total, self.global_figures()
        )

    def global_figures(self) -> GlobalFigures | None:
        """The store's figures, read now if the last read is ``METRICS_INTERVAL`` old."""
        conf = get_settings()
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= conf.METRICS_INTERVAL:
                self._read_at = now
                self._figures = self._read(conf.METRICS_GROUPS)
            return self._figures

    def _read(self, groups: tuple[str, ...]) -> GlobalFigures | None:
        self.reads += 1
        store = get_store()
        try:
            figures = GlobalFigures(
                groups=store.group_count(),
                connections=store.group_sizes(groups) if groups else {},
                users={group: store.group_user_count(group) for group in groups},
            )
        except StoreUnavailable as exc:
            store_failures.failed(exc)
            return None
        store_failures.succeeded()
        return figures

    def _families(
        self, local: int, failures: int, figures: GlobalFigures | None
    ) -> Iterator[Metric]:
        _prometheus()
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "channels_presence_local_connections",
            "Connections this process keeps alive in presence.",
            value=local,
        )
        yield CounterMetricFamily(
            "channels_presence_store_failures",
            "Failed calls to the presence store by this process.",
            value=failures,
        )
        groups = GaugeMetricFamily(
            "channels_presence_groups", "Groups with at least one connection (from the store)."
        )
        connections = GaugeMetricFamily(
            "channels_presence_group_connections",
            "Connections in each group of METRICS_GROUPS (from the store).",
            labels=["group"],
        )
        users = GaugeMetricFamily(
            "channels_presence_group_users",
            "Distinct users in each group of METRICS_GROUPS (from the store).",
            labels=["group"],
        )
        if figures is not None:
            groups.add_metric([], figures.groups)
            for group, count in figures.connections.items():
                connections.add_metric([group], count)
            for group, count in figures.users.items():
                users.add_metric([group], count)
        yield from (groups, connections, users)


class PresenceMetrics:
    """This process's presence metrics in one registry; see :func:`register_metrics`."""

    def __init__(self, registry: CollectorRegistry, collector: PresenceCollector) -> None:
        prometheus = _prometheus()
        self.registry = registry
        self.collector = collector
        self.heartbeat_seconds = prometheus.Histogram(
            "channels_presence_heartbeat_duration_seconds",
            "How long each heartbeat of this process took.",
            buckets=HEARTBEAT_BUCKETS,
            registry=registry,
        )
        self.removals = prometheus.Counter(
            "channels_presence_removals",
            "Connections this process removed from presence, by reason.",
            ["reason"],
            registry=registry,
        )
        self.signals_sent = prometheus.Counter(
            "channels_presence_signals_sent",
            "Presence signals this process sent, by signal.",
            ["signal"],
            registry=registry,
        )
        registry.register(cast("Collector", collector))
        self._observe_beat = self.heartbeat_seconds.observe
        heartbeat.beat_observers.append(self._observe_beat)
        self._receivers = [(s, self._counter(name)) for name, s in COUNTED_SIGNALS.items()]
        for signal, receiver in self._receivers:
            # Async: a sync receiver would cost every presence event a thread hop.
            signal.connect(receiver, weak=False)

    def _counter(self, name: str) -> Callable[..., Any]:
        sent = self.signals_sent.labels(signal=name)
        removals = self.removals

        async def count(sender: Any, **kwargs: Any) -> None:
            sent.inc()
            if "reason" in kwargs:
                removals.labels(reason=kwargs["reason"]).inc()

        return count

    def unregister(self) -> None:
        """Take every metric out of the registry and stop counting."""
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)
        self._receivers = []
        if self._observe_beat in heartbeat.beat_observers:
            heartbeat.beat_observers.remove(self._observe_beat)
        for metric in (self.heartbeat_seconds, self.removals, self.signals_sent):
            self.registry.unregister(metric)
        self.registry.unregister(cast("Collector", self.collector))
        with _lock:
            if _registered.get(self.registry) is self:
                del _registered[self.registry]


_registered: dict[CollectorRegistry, PresenceMetrics] = {}
_lock = threading.Lock()


def register_metrics(registry: CollectorRegistry | None = None) -> PresenceMetrics:
    """Export presence metrics into ``registry`` (prometheus-client's default one).

    Call it once per process; calling it again for the same registry returns
    the metrics registered the first time. Raises ``ImproperlyConfigured`` when
    prometheus-client is not installed.
    """
    prometheus = _prometheus()
    target: CollectorRegistry = prometheus.REGISTRY if registry is None else registry
    with _lock:
        metrics = _registered.get(target)
        if metrics is None:
            metrics = _registered[target] = PresenceMetrics(target, PresenceCollector())
        return metrics
