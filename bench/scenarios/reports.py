"""5. A monthly report over a month of N orders, against the bare SQL that computes the same figures.

The report runs as staff get it: a worker (2 processes) generates it as a chord
of weekly slices, then merges them, writes the CSV and draws the chart. The
baseline is the same two GROUP BY queries (per day; per day and product) run
back to back on one connection, with nothing around them.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from bench.harness import flush_broker, log, median, ratio, reset_tables, wait_until
from bench.processes import running_worker

MONTH_START, MONTH_END = date(2025, 1, 1), date(2025, 1, 31)
ROUND_TIMEOUT = 900

BARE_DAYS = """
    SELECT (created_at AT TIME ZONE %(zone)s)::date AS day, count(*), sum(total)
    FROM orders_order
    WHERE status = 'completed' AND created_at >= %(lo)s AND created_at < %(hi)s
    GROUP BY 1
"""
BARE_LINES = """
    SELECT (o.created_at AT TIME ZONE %(zone)s)::date AS day, l.product_id, sum(l.quantity), sum(l.unit_price * l.quantity)
    FROM orders_orderline l JOIN orders_order o ON o.id = l.order_id
    WHERE o.status = 'completed' AND o.created_at >= %(lo)s AND o.created_at < %(hi)s
    GROUP BY 1, 2
"""


def seed(count: int) -> float:
    """Orders spread over the month (seed_orders, as a user would run it); returns seconds taken."""
    from django.core.management import call_command

    reset_tables("orders.Order", "orders.OrderLine", "reports.Report")
    started = time.perf_counter()
    call_command(
        "seed_orders", count=count, start=MONTH_START.isoformat(), end=MONTH_END.isoformat(), seed=7, verbosity=0
    )
    from django.db import connection

    with connection.cursor() as cursor:  # fresh statistics, as autovacuum would give after a bulk load
        cursor.execute("ANALYZE orders_order; ANALYZE orders_orderline")
    return time.perf_counter() - started


def bare_query_seconds() -> float:
    from django.conf import settings
    from django.db import connection

    zone = ZoneInfo(settings.TIME_ZONE)
    params = {
        "zone": settings.TIME_ZONE,
        "lo": datetime.combine(MONTH_START, datetime.min.time(), tzinfo=zone),
        "hi": datetime.combine(MONTH_END + timedelta(days=1), datetime.min.time(), tzinfo=zone),
    }
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for sql in (BARE_DAYS, BARE_LINES):
            cursor.execute(sql, params)
            cursor.fetchall()
    return time.perf_counter() - started


def report_round(env: dict[str, str], first: bool) -> dict:
    from django.db.models import Max
    from django_celery_results.models import TaskResult

    from reports.models import Report
    from reports.services import requesting

    reset_tables("django_celery_results.TaskResult")
    flush_broker()
    with running_worker(env, 2) as worker:
        report = requesting.request_report(kind="monthly", start=MONTH_START, end=MONTH_END, regenerate=not first)
        done = Report.objects.filter(pk=report.pk, status__in=["done", "failed"])
        wait_until(done.exists, ROUND_TIMEOUT, "the monthly report", 0.1)
        rss = worker.peak_rss_mb()
    report.refresh_from_db()
    if report.status != "done":
        raise AssertionError(f"the report failed: {report.error}")
    slices_done = TaskResult.objects.filter(
        task_name="reports.tasks.aggregate_report_slice", status="SUCCESS"
    ).aggregate(last=Max("date_done"))["last"]
    return {
        "aggregation": (slices_done - report.started_at).total_seconds(),
        "whole": (report.finished_at - report.started_at).total_seconds(),
        "slices": report.slices_total,
        "orders": report.summary["order_count"],
        "rss": rss,
    }


def run(env: dict[str, str], quick: bool) -> dict:
    count, rounds = (100_000, 1) if quick else (1_000_000, 3)
    seeded = seed(count)
    log(f"reports: seeded {count} orders in {seeded:.0f}s")
    bare_query_seconds()  # warm the cache the same way the first report would
    reports, bare = [], []
    for index in range(rounds):
        reports.append(report_round(env, first=index == 0))
        bare.append(bare_query_seconds())
        log(
            f"reports round {index + 1}/{rounds}: aggregation {reports[-1]['aggregation']:.2f}s, "
            f"whole {reports[-1]['whole']:.2f}s, bare SQL {bare[-1]:.2f}s, worker RSS {reports[-1]['rss']}"
        )
    aggregation, whole, base = (
        median([r["aggregation"] for r in reports]),
        median([r["whole"] for r in reports]),
        median(bare),
    )
    # The largest single process (main or child), as the target was set; "total" adds them up.
    peak = max(max(r["rss"]["main"], r["rss"]["child"]) for r in reports)
    return {
        "name": "Reports",
        "what": (
            f"a monthly report over {count} orders ({reports[0]['orders']} completed), a chord of "
            f"{reports[0]['slices']} slices on 2 worker processes, against the bare GROUP BY queries"
        ),
        "unit": "s",
        "seed_seconds": round(seeded, 1),
        "aggregation_rounds": [round(r["aggregation"], 2) for r in reports],
        "whole_rounds": [round(r["whole"], 2) for r in reports],
        "bare_rounds": [round(value, 3) for value in bare],
        "aggregation_s": round(aggregation, 2),
        "whole_s": round(whole, 2),
        "bare_s": round(base, 3),
        "aggregation_ratio": ratio(aggregation / base),
        "whole_ratio": ratio(whole / base),
        "worker_peak_rss_mb": peak,
    }
