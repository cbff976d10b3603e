"""6. Beat with N periodic tasks in django-celery-beat's tables: start-up load, one tick, reload after an edit.

Measured in this process on django-celery-beat's DatabaseScheduler, twice: as
it ships, and as the project runs it (ops.beat wraps every tick with the leader
lock check and the heartbeat). No task is due during the measurement, so a tick
is the scheduler's own bookkeeping. Figures only; no target yet.
"""

from __future__ import annotations

import time
from datetime import timedelta

from bench.harness import log, median, reset_tables

TICKS = 20


def prepare(count: int) -> None:
    from django.utils import timezone
    from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

    reset_tables("django_celery_beat.PeriodicTask", "django_celery_beat.IntervalSchedule", "ops.BeatHeartbeat")
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    just_ran = timezone.now() - timedelta(minutes=1)  # nothing falls due while we measure
    PeriodicTask.objects.bulk_create(
        [
            PeriodicTask(
                name=f"bench-{index:05d}",
                task="orders.tasks.check_pending_orders",
                interval=hourly,
                last_run_at=just_ran,
                expire_seconds=3000,
            )
            for index in range(count)
        ],
        batch_size=2000,
    )
    PeriodicTasks.update_changed()


def timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - started


def measure(guarded: bool) -> dict:
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from config import celery_app
    from ops.beat import BeatLeadership, guard

    leadership = None

    def start() -> DatabaseScheduler:
        nonlocal leadership
        scheduler = DatabaseScheduler(app=celery_app, lazy=False)
        if guarded:
            leadership = BeatLeadership()
            guard(scheduler, leadership)
        scheduler.tick()  # the first tick builds the heap of every entry
        return scheduler

    started = time.perf_counter()
    scheduler = start()
    startup = time.perf_counter() - started
    try:
        ticks = [timed(scheduler.tick) for _ in range(TICKS)]
        edited = PeriodicTask.objects.get(name="bench-00000")
        edited.description = f"edited at {time.time()}"
        edited.save()  # django-celery-beat's signal marks the schedule as changed
        reload = timed(scheduler.tick)
    finally:
        if leadership is not None and leadership.connection is not None:
            leadership.connection.close()  # releases the leader lock
    return {"startup_s": startup, "tick_ms": median(ticks) * 1000, "reload_s": reload}


def run(env: dict[str, str], quick: bool) -> dict:
    count, rounds = (1000, 1) if quick else (10_000, 3)
    prepare(count)
    stock, ours = [], []
    for index in range(rounds):
        stock.append(measure(guarded=False))
        ours.append(measure(guarded=True))
        log(
            f"beat round {index + 1}/{rounds}: stock start {stock[-1]['startup_s']:.2f}s tick {stock[-1]['tick_ms']:.1f}ms "
            f"reload {stock[-1]['reload_s']:.2f}s; project start {ours[-1]['startup_s']:.2f}s "
            f"tick {ours[-1]['tick_ms']:.1f}ms reload {ours[-1]['reload_s']:.2f}s"
        )

    def summary(rows: list[dict]) -> dict:
        return {key: round(median([row[key] for row in rows]), 3) for key in ("startup_s", "tick_ms", "reload_s")}

    return {
        "name": "Beat",
        "what": f"{count} periodic tasks; DatabaseScheduler as shipped, and with the project's leader lock and heartbeat",
        "unit": "s / ms",
        "stock": summary(stock),
        "project": summary(ours),
    }
