"""1. The Celery floor: a no-op task through the project's Celery settings, 2 worker processes.

Each round also measures the floor with django-celery-results' own backend
(bench/library_backend_settings.py), so the upsert's gain is a same-round ratio.
"""

from __future__ import annotations

from bench.harness import flush_broker, log, median, reset_tables, wait_until
from bench.processes import running_worker

ROUND_TIMEOUT = 300


def publish_noops(count: int) -> None:
    from bench.tasks import noop
    from config import celery_app

    with celery_app.producer_or_acquire() as producer:
        for _ in range(count):
            noop.apply_async(producer=producer)


def one_round(env: dict[str, str], count: int, settings_module: str = "config.settings") -> float:
    """Tasks per second, from the first to the last stored result."""
    from django.db.models import Max, Min
    from django_celery_results.models import TaskResult

    reset_tables("django_celery_results.TaskResult")
    flush_broker()
    publish_noops(count)
    with running_worker({**env, "DJANGO_SETTINGS_MODULE": settings_module}, 2, ["-I", "bench.tasks"]):
        done = TaskResult.objects.filter(task_name="bench.noop", status="SUCCESS")
        wait_until(lambda: done.count() >= count, ROUND_TIMEOUT, f"{count} no-op tasks", 0.2)
    span = done.aggregate(first=Min("date_done"), last=Max("date_done"))
    return (count - 1) / (span["last"] - span["first"]).total_seconds()


def run(env: dict[str, str], quick: bool) -> dict:
    count, rounds = (1000, 1) if quick else (5000, 3)
    rates, library = [], []
    for index in range(rounds):
        rates.append(one_round(env, count))
        library.append(one_round(env, count, "bench.library_backend_settings"))
        log(
            f"floor round {index + 1}/{rounds}: {rates[-1]:.0f} tasks/s, "
            f"{library[-1]:.0f} with the library's result backend"
        )
    ratios = [ours / theirs for ours, theirs in zip(rates, library, strict=True)]
    return {
        "name": "Celery floor",
        "what": f"{count} no-op tasks, 2 worker processes, the project's Celery settings",
        "unit": "tasks/s",
        "rounds": [round(rate, 1) for rate in rates],
        "median": round(median(rates), 1),
        "library_backend_rounds": [round(rate, 1) for rate in library],
        "library_backend_median": round(median(library), 1),
        "upsert_ratio_rounds": [round(ratio, 3) for ratio in ratios],
        "upsert_ratio": round(median(ratios), 2),
    }
