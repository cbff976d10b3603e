"""The worker configurations tried for the pipeline, at 0 ms and at 150 ms a provider call (bin/bench --configurations).

How the shipped pools and concurrencies were chosen (README "Performance"): each
configuration runs the order pipeline, emails included, at both latencies, one
after the other in the same run, and the table gives orders/s, the peak RSS of
all its processes and its CPU per order. "split" configurations run orders and
their emails in two workers, as compose does (worker-default, worker-high).
"""

from __future__ import annotations

import os

from bench.harness import PIPELINE_QUEUES, log, median
from bench.processes import PREFORK_TODAY, WorkerSpec, shipped_workers
from bench.scenarios import pipeline

LATENCIES_MS = (0, 150)


def split(pool: str, orders: int, emails: int) -> tuple[WorkerSpec, ...]:
    return (WorkerSpec("default", pool, orders), WorkerSpec("high_priority", pool, emails))


CONFIGURATIONS: dict[str, tuple[WorkerSpec, ...]] = {
    "prefork -c 2, orders and email (today's)": PREFORK_TODAY,
    "prefork -c 4, orders and email": (WorkerSpec(PIPELINE_QUEUES, "prefork", 4),),
    "prefork -c 8, orders and email": (WorkerSpec(PIPELINE_QUEUES, "prefork", 8),),
    "threads -c 16, orders and email": (WorkerSpec(PIPELINE_QUEUES, "threads", 16),),
    "threads split, orders -c 16 / emails -c 8": split("threads", 16, 8),
    "threads split, orders -c 32 / emails -c 8": split("threads", 32, 8),
    "threads split, orders 2 processes × -c 16 / emails -c 8": (
        WorkerSpec("default", "threads", 16),
        *split("threads", 16, 8),
    ),
}
# gevent is not a dependency of the project; to try it, install it apart
# (pip install --target DIR gevent) and point BENCH_GEVENT_PATH at DIR.
if os.environ.get("BENCH_GEVENT_PATH"):
    CONFIGURATIONS["gevent split, orders -c 64 / emails -c 16"] = split("gevent", 64, 16)
# BENCH_CONFIGURATIONS="name;name" runs only those (e.g. to compare two of them again).
ONLY = [name for name in os.environ.get("BENCH_CONFIGURATIONS", "").split(";") if name]


def run(env: dict[str, str], quick: bool) -> list[dict]:
    count = int(os.environ.get("BENCH_CONFIGURATION_ORDERS", 150 if quick else 600))
    shipped = shipped_workers("worker-default", "worker-high")
    configurations = {name: specs for name, specs in CONFIGURATIONS.items() if not ONLY or name in ONLY}
    if shipped not in configurations.values():
        configurations["shipped (compose)"] = shipped
    rows = []
    for name, specs in configurations.items():
        row: dict = {"configuration": name, "workers": [spec.label for spec in specs]}
        gevent = {"PYTHONPATH": os.environ["BENCH_GEVENT_PATH"]} if any(s.pool == "gevent" for s in specs) else {}
        for latency in LATENCIES_MS:
            result = pipeline.one_round({**env, **gevent}, count, workers=specs, latency_ms=latency)
            row[f"orders_per_second_{latency}ms"] = round(result["orders_per_second"], 1)
            row[f"rss_total_mb_{latency}ms"] = result["rss_total_mb"]
            row[f"cpu_ms_per_order_{latency}ms"] = result["cpu_ms_per_order"]
            log(f"{name} at {latency} ms: {result['orders_per_second']:.1f} orders/s, {result['rss_total_mb']:.0f} MB")
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    base = rows[0]["orders_per_second_0ms"]
    lines = [
        "| configuration | orders/s at 0 ms | orders/s at 150 ms | 150 ms ÷ today's at 0 ms | peak RSS, all processes "
        "(MB) | CPU per order at 0 / 150 ms (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        rss = median([row["rss_total_mb_0ms"], row["rss_total_mb_150ms"]])
        lines.append(
            f"| {row['configuration']} | {row['orders_per_second_0ms']:.1f} | {row['orders_per_second_150ms']:.1f} "
            f"| {row['orders_per_second_150ms'] / base:.2f} | {rss:.0f} "
            f"| {row['cpu_ms_per_order_0ms']:.0f} / {row['cpu_ms_per_order_150ms']:.0f} |"
        )
    return "\n".join(lines)
