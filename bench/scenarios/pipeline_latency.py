"""7. The order pipeline at a provider latency like a real one's (150 ms a call), on the shipped workers.

Real payment gateways and carriers answer in 100-500 ms, and an order makes two
calls (charge and ship). Each round measures, side by side:

* today's: the pipeline at 0 ms on one prefork worker with 2 processes, all
  queues (what the project shipped before issue 19, and what `pipeline` measures);
* shipped at 150 ms: the pipeline with PAYMENT_SANDBOX_LATENCY_MS=150 on the
  workers compose ships for the pipeline's queues (worker-default for orders,
  worker-high for their emails), pool and concurrency read from docker-compose.yml;
* shipped at 0 ms: the same workers without latency, so that the configuration
  chosen for slow providers is seen not to cost the fast case.

`ratio` is shipped at 150 ms ÷ today's at 0 ms; `rss_ratio` is the shipped
workers' total peak RSS (every process) ÷ today's; `zero_ratio` is shipped at
0 ms ÷ today's at 0 ms. Each is the median of the per-round ratios.
"""

from __future__ import annotations

from bench.harness import log, median, ratio
from bench.processes import PREFORK_TODAY, shipped_workers
from bench.scenarios import pipeline

LATENCY_MS = 150
# The compose services that run the pipeline: orders (default queue) and their emails (high_priority).
SHIPPED_SERVICES = ("worker-default", "worker-high")


def run(env: dict[str, str], quick: bool) -> dict:
    count, rounds = (150, 1) if quick else (2000, 3)
    shipped = shipped_workers(*SHIPPED_SERVICES)
    today: list[dict] = []
    slow: list[dict] = []
    fast: list[dict] = []
    for index in range(rounds):
        today.append(pipeline.one_round(env, count, workers=PREFORK_TODAY, latency_ms=0))
        slow.append(pipeline.one_round(env, count, workers=shipped, latency_ms=LATENCY_MS))
        fast.append(pipeline.one_round(env, count, workers=shipped, latency_ms=0))
        log(
            f"pipeline_latency round {index + 1}/{rounds}: today's at 0 ms {today[-1]['orders_per_second']:.1f} "
            f"orders/s ({today[-1]['rss_total_mb']:.0f} MB), shipped at {LATENCY_MS} ms "
            f"{slow[-1]['orders_per_second']:.1f} ({slow[-1]['rss_total_mb']:.0f} MB), "
            f"shipped at 0 ms {fast[-1]['orders_per_second']:.1f}"
        )

    def rates(results: list[dict]) -> list[float]:
        return [r["orders_per_second"] for r in results]

    ratios = [s / t for s, t in zip(rates(slow), rates(today), strict=True)]
    zero_ratios = [f / t for f, t in zip(rates(fast), rates(today), strict=True)]
    rss_ratios = [s["rss_total_mb"] / t["rss_total_mb"] for s, t in zip(slow, today, strict=True)]
    return {
        "name": "Pipeline at 150 ms",
        "what": (
            f"{count} orders with PAYMENT_SANDBOX_LATENCY_MS={LATENCY_MS} on the shipped workers "
            f"({'; '.join(spec.label for spec in shipped)}), beside the pipeline at 0 ms on "
            f"today's ({'; '.join(spec.label for spec in PREFORK_TODAY)})"
        ),
        "unit": "orders/s",
        "latency_ms": LATENCY_MS,
        "shipped_workers": [spec.label for spec in shipped],
        "today_workers": [spec.label for spec in PREFORK_TODAY],
        "today_rounds": [round(rate, 1) for rate in rates(today)],
        "today_median": round(median(rates(today)), 1),
        "rounds": [round(rate, 1) for rate in rates(slow)],
        "median": round(median(rates(slow)), 1),
        "zero_ms_rounds": [round(rate, 1) for rate in rates(fast)],
        "zero_ms_median": round(median(rates(fast)), 1),
        "ratio_rounds": [round(value, 3) for value in ratios],
        "ratio": ratio(median(ratios)),
        "zero_ratio_rounds": [round(value, 3) for value in zero_ratios],
        "zero_ratio": ratio(median(zero_ratios)),
        "rss_ratio_rounds": [round(value, 3) for value in rss_ratios],
        "rss_ratio": ratio(median(rss_ratios)),
        "today_rss_mb": round(median([r["rss_total_mb"] for r in today]), 1),
        "shipped_rss_mb": round(median([r["rss_total_mb"] for r in slow]), 1),
        "today_cpu_ms_per_order": round(median([r["cpu_ms_per_order"] for r in today]), 1),
        "shipped_cpu_ms_per_order": round(median([r["cpu_ms_per_order"] for r in slow]), 1),
    }
