"""2. The order pipeline: N orders placed, then processed end to end (with their emails) by 2 worker processes."""

from __future__ import annotations

import time
from collections.abc import Sequence

from bench.harness import flush_broker, log, median, ratio, reset_tables, wait_until
from bench.processes import PREFORK_TODAY, WorkerSpec, running_workers, smtp_sink

ROUND_TIMEOUT = 900
CUSTOMERS = 200
SKUS = 20


def prepare_catalogue(orders: int) -> tuple[list[int], list[str]]:
    """Customers with email addresses and products with stock for every order of every round."""
    from django.contrib.auth import get_user_model

    from orders.models import Product

    users = get_user_model()
    users.objects.bulk_create(
        [users(username=f"bench{index:04d}", email=f"bench{index:04d}@example.com") for index in range(CUSTOMERS)],
        ignore_conflicts=True,
    )
    Product.objects.bulk_create(
        [
            Product(sku=f"BENCH-{index:03d}", name=f"Bench product {index}", price="9.90", stock=0)
            for index in range(SKUS)
        ],
        ignore_conflicts=True,
    )
    Product.objects.filter(sku__startswith="BENCH-").update(stock=orders * 10)
    customer_ids = list(users.objects.filter(username__startswith="bench").values_list("pk", flat=True))
    return customer_ids, [f"BENCH-{index:03d}" for index in range(SKUS)]


def place_orders(count: int, customer_ids: list[int], skus: list[str]) -> float:
    """Place `count` orders through the service (each enqueues its task after commit); returns orders/s."""
    from orders.services import placing

    started = time.perf_counter()
    for index in range(count):
        lines = [
            placing.LineRequest(sku=skus[index % len(skus)], quantity=1),
            placing.LineRequest(sku=skus[(index + 7) % len(skus)], quantity=2),
        ]
        placing.place_order(customer_id=customer_ids[index % len(customer_ids)], lines=lines)
    return count / (time.perf_counter() - started)


def one_round(
    env: dict[str, str],
    count: int,
    settings_module: str = "config.settings",
    workers: Sequence[WorkerSpec] = PREFORK_TODAY,
    latency_ms: int = 0,
) -> dict:
    """Place `count` orders, then let `workers` process them; orders/s, with the workers' RSS and CPU."""
    from django.db.models import Max, Min, Sum

    from notifications.models import Notification
    from orders.models import Order, OrderEvent

    reset_tables(
        "orders.Order",
        "orders.OrderLine",
        "orders.OrderEvent",
        "orders.Payment",
        "sandbox.SandboxLedgerEntry",
        "notifications.Notification",
        "django_celery_results.TaskResult",
    )
    flush_broker()
    customer_ids, skus = prepare_catalogue(count)
    placing = place_orders(count, customer_ids, skus)
    with smtp_sink(env) as sink:
        worker_env = {
            **env,
            "EMAIL_URL": sink.url,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "PAYMENT_SANDBOX_LATENCY_MS": str(latency_ms),
        }
        with running_workers(worker_env, workers) as started:
            cpu_at_start = sum(worker.cpu_seconds() for worker in started)
            sent = Notification.objects.filter(status=Notification.Status.SENT)
            wait_until(lambda: sent.count() >= count, ROUND_TIMEOUT, f"{count} orders' emails", 0.25)
            cpu = sum(worker.cpu_seconds() for worker in started) - cpu_at_start
            rss = [worker.peak_rss_mb() for worker in started]
    completed = Order.objects.filter(status=Order.Status.COMPLETED).count()
    if completed != count:
        raise AssertionError(f"{completed} of {count} orders completed")
    began = OrderEvent.objects.filter(kind=OrderEvent.Kind.ATTEMPT).aggregate(t=Min("created_at"))["t"]
    ended = sent.aggregate(t=Max("sent_at"))["t"]
    seconds = (ended - began).total_seconds()
    executions = (Order.objects.aggregate(n=Sum("attempts"))["n"] or 0) + (
        Notification.objects.aggregate(n=Sum("attempts"))["n"] or 0
    )
    return {
        "orders_per_second": count / seconds,
        "tasks_per_order": executions / count,
        "placing_per_second": placing,
        # One worker: its main process and largest child, as before; several: each one's.
        "rss": rss[0] if len(rss) == 1 else rss,
        "rss_total_mb": round(sum(r["total"] for r in rss), 1),
        "cpu_ms_per_order": round(cpu * 1000 / count, 1),
    }


def run(env: dict[str, str], quick: bool) -> dict:
    """Rounds of floor, project and stock pipeline, side by side; every ratio is taken within one round.

    The machine is shared: a neighbour that slows it for ten minutes would skew a
    ratio between figures taken ten minutes apart. Each round measures the floor,
    the project's pipeline and the stock configuration's one after another, and
    the reported ratios are the medians of the per-round ratios.
    """
    from bench.scenarios import floor

    count, rounds, floor_count = (300, 1, 1000) if quick else (5000, 3, 5000)
    floors: list[float] = []
    ours: list[dict] = []
    stock: list[dict] = []
    for index in range(rounds):
        floors.append(floor.one_round(env, floor_count))
        ours.append(one_round(env, count, "config.settings"))
        stock.append(one_round(env, count, "bench.stock_settings"))
        log(
            f"pipeline round {index + 1}/{rounds}: floor {floors[-1]:.0f} tasks/s, "
            f"project {ours[-1]['orders_per_second']:.1f} orders/s (T {ours[-1]['tasks_per_order']:.2f}), "
            f"stock {stock[-1]['orders_per_second']:.1f} orders/s"
        )
    efficiencies = [r["orders_per_second"] * r["tasks_per_order"] / f for r, f in zip(ours, floors, strict=True)]
    vs_stock = [r["orders_per_second"] / s["orders_per_second"] for r, s in zip(ours, stock, strict=True)]
    return {
        "name": "Order pipeline",
        "what": f"{count} orders placed, then processed end to end with their emails by 2 worker processes",
        "unit": "orders/s",
        "rounds": [round(r["orders_per_second"], 1) for r in ours],
        "median": round(median([r["orders_per_second"] for r in ours]), 1),
        "tasks_per_order": round(median([r["tasks_per_order"] for r in ours]), 2),
        "placing_orders_per_second": round(median([r["placing_per_second"] for r in ours]), 1),
        "floor_rounds": [round(rate, 1) for rate in floors],
        "floor": round(median(floors), 1),
        "efficiency_rounds": [round(value, 3) for value in efficiencies],
        "efficiency": ratio(median(efficiencies)),
        "stock_rounds": [round(r["orders_per_second"], 1) for r in stock],
        "stock_median": round(median([r["orders_per_second"] for r in stock]), 1),
        "vs_stock_rounds": [round(value, 2) for value in vs_stock],
        "vs_stock": round(median(vs_stock), 2),
        "worker_peak_rss_mb": ours[-1]["rss"],
    }
