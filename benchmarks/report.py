"""Plots and markdown tables from the last results of the three benchmarks.

Run after ``churn.py``, ``round_trips.py`` and ``reads.py``::

    python benchmarks/report.py

Reads ``benchmarks/results/*.json``, writes ``docs/benchmarks-reads.png`` and
``docs/benchmarks-churn.png`` (needs matplotlib) and prints the markdown
tables used in ``docs/benchmarks.md``. Ends with a JSON line naming the files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import harness

DOCS = harness.BENCH_DIR.parent / "docs"
SHORT_LABELS = {"bare": "bare", "presence": "with presence", "peer": "peer (SQLite)"}
READS = ("group_size", "group_user_count", "group_sizes", "group_members")
VARIANT_LABELS = {
    "bare": "bare Channels consumer",
    "presence": "+ PresenceConsumerMixin (Redis store)",
    "peer": "django-channels-more-than-present (SQLite)",
}


def load(name: str) -> dict[str, Any] | None:
    path = harness.RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(harness._cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def heartbeats(churn: dict[str, Any], variant: str) -> str:
    """``"6 / 4"``: the presence server's heartbeats in the loaded and 1-client windows."""
    figures = churn[variant]
    if variant != "presence" or "heartbeats_loaded" not in figures:
        return "-"
    return f"{figures['heartbeats_loaded']} / {figures['heartbeats_unloaded']}"


def plot_reads(reads: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = reads["sizes"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name in READS:
        values = [reads["reads"][name][str(s)]["p50_ms"] for s in sizes]
        ax.plot(sizes, values, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("members in the group")
    ax.set_ylabel("p50 latency, ms (log)")
    ax.set_title("Population reads vs group size (Redis store, public API)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_churn(churn: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in ("bare", "presence", "peer") if v in churn]
    labels = [SHORT_LABELS[v] for v in variants]
    colors = {"bare": "#888888", "presence": "#2a7ab9", "peer": "#d9822b"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=110)
    panels = [
        ("connects/s over websockets\n(connect + join + disconnect)", "connects_per_s", False),
        ("uvicorn CPU ms per connect\n(lower is better)", "server_cpu_ms_per_connect", False),
        ("bookkeeping alone, cycles/s (log)\n(no websocket, no HTTP)", "alone", True),
    ]
    for ax, (title, key, log) in zip(axes, panels, strict=True):
        values = [
            churn[v]["alone"]["cycles_per_s"] if key == "alone" else churn[v][key] for v in variants
        ]
        bars = ax.bar(range(len(variants)), values, color=[colors[v] for v in variants])
        ax.bar_label(bars, labels=[harness._cell(float(x)) for x in values], fontsize=8)
        ax.set_xticks(range(len(variants)), labels, fontsize=9)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Connection churn, {churn['concurrency']} clients at once", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    churn, trips, reads = load("churn"), load("round_trips"), load("reads")
    written = []
    if reads:
        path = DOCS / "benchmarks-reads.png"
        plot_reads(reads, path)
        written.append(str(path))
        sizes = reads["sizes"]
        rows = [
            [name, *(reads["reads"][name][str(s)]["p50_ms"] for s in sizes),
             reads["growth_100000_over_10"][name]]
            for name in READS
        ]  # fmt: skip
        print("### Reads, p50 ms\n")
        print(table(["read", *(f"{s:,}" for s in sizes), "100,000 / 10"], rows))
        print("\n### Memory per connection\n")
        mem = reads["memory"]
        print(f"used_memory delta at 100,000: {mem['bytes_per_connection']} bytes per connection\n")
        print(table(["where", "bytes"], [[k, v] for k, v in mem["breakdown"].items()]))
        print("\n### Heartbeat cost\n")
        hb = reads["heartbeat"]
        print(
            table(
                ["connections", "p50 ms", "Redis busy ms", "Redis us per connection"],
                [
                    [int(n), v["p50_ms"], v["redis_ms"], v["redis_us_per_connection"]]
                    for n, v in hb.items()
                ],
            )
        )
    if churn:
        path = DOCS / "benchmarks-churn.png"
        plot_churn(churn, path)
        written.append(str(path))
        variants = [v for v in ("bare", "presence", "peer") if v in churn]
        print("\n### Churn\n")
        print(
            table(
                ["variant", "connects/s", "p50 ms", "p99 ms", "1-client p50 ms",
                 "1-client p99 ms", "uvicorn CPU ms/connect", "Redis CPU ms/connect",
                 "bookkeeping alone, cycles/s", "heartbeats in the windows (loaded / 1-client)"],
                [
                    [VARIANT_LABELS[v], churn[v]["connects_per_s"], churn[v]["p50_ms"],
                     churn[v]["p99_ms"], churn[v]["unloaded_p50_ms"], churn[v]["unloaded_p99_ms"],
                     churn[v]["server_cpu_ms_per_connect"], churn[v]["redis_cpu_ms_per_connect"],
                     churn[v]["alone"]["cycles_per_s"], heartbeats(churn, v)]
                    for v in variants
                ],
            )
        )  # fmt: skip
        print()
        print(table(["ratio", "value"], [[k, v] for k, v in churn["ratios"].items()]))
    if trips:
        from round_trips import describe

        print("\n### Round trips\n")
        rows = []
        for op in ("connect", "disconnect"):
            for n in trips["sizes"]:
                pres, lay = trips[f"{op}_{n}"]["presence"], trips[f"{op}_{n}"]["layer"]
                rows.append([
                    op, n, round(pres["round_trips"] / n, 2), describe(pres["top_level"]),
                    pres["socket_setup"], round(lay["total"] / n, 2),
                ])  # fmt: skip
        print(
            table(
                ["operation", "connections", "round trips each", "sent", "new sockets",
                 "layer + session commands each (other Redis)"],
                rows,
            )
        )  # fmt: skip
        print()
        rows = []
        for n in trips["sizes"]:
            hb = trips[f"heartbeat_{n}"]
            rows.append([
                n, round(hb["intervals"], 2), hb["round_trips"],
                round(hb["round_trips"] / hb["intervals"], 2), describe(hb["top_level"]),
            ])  # fmt: skip
        print(table(["connections", "intervals", "round trips", "per interval", "sent"], rows))
        print()
        print(table(["figure", "worst case"], [[k, v] for k, v in trips["summary"].items()]))
    if not written:
        sys.exit("no results yet: run churn.py, round_trips.py and reads.py first")
    print(json.dumps({"benchmark": "report", "written": written}))


if __name__ == "__main__":
    main()
