"""Tasks only the tests send, with known outcomes; a worker runs them when started with `-I tests.support.tasks`.

Short time limits keep a schedule's grace (SCHEDULE_GRACE plus the task's time
limit) to seconds in tests.
"""

from __future__ import annotations

import os
import time

from celery import Task
from celery.exceptions import Reject

from config import celery_app

INCLUDE = ["-I", "tests.support.tasks"]


@celery_app.task(name="tests.support.tasks.succeeds", time_limit=2, soft_time_limit=1)
def succeeds() -> str:
    return "ok"


@celery_app.task(name="tests.support.tasks.always_fails", time_limit=2, soft_time_limit=1)
def always_fails() -> None:
    raise ValueError("this task fails every time")


@celery_app.task(name="tests.support.tasks.sleeps", time_limit=60, soft_time_limit=55)
def sleeps(seconds: float) -> None:
    time.sleep(seconds)


@celery_app.task(name="tests.support.tasks.rejects", time_limit=2, soft_time_limit=1)
def rejects() -> None:
    raise Reject("refused on purpose", requeue=False)


@celery_app.task(bind=True, name="tests.support.tasks.retries_once", time_limit=2, soft_time_limit=1, max_retries=1)
def retries_once(self: Task) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "retried once"


@celery_app.task(bind=True, name="tests.support.tasks.hangs_once", time_limit=60, soft_time_limit=55)
def hangs_once(self: Task, seconds: float) -> str:
    """Sleeps on its first run only (a test kills the process running it), then finishes at once."""
    if self.request.retries == 0:
        time.sleep(seconds)
    return "done"


@celery_app.task(
    name="tests.support.tasks.works_on_order",
    subject=("orders.Order", "order_id"),
    time_limit=120,
    soft_time_limit=110,
)
def works_on_order(order_id: int, until_file: str) -> str:
    """Runs, on an order, until the test creates `until_file` (at most 100 s): a task to look at while it runs."""
    deadline = time.monotonic() + 100
    while not os.path.exists(until_file) and time.monotonic() < deadline:
        time.sleep(0.1)
    return "done"
