"""What every benchmark needs: a database and a broker of its own, logging, waiting and medians.

The processes it starts and measures (workers, the SMTP sink) are in bench/processes.py.

The bench runs against the same PostgreSQL and Redis as the tests (bin/services.py
finds or starts them), in a database (`backoffice_bench`) and a Redis database
number (14) of its own, so it never touches an app's or the test suite's data.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALL_QUEUES = "high_priority,default,low_priority"
# The queues the order pipeline uses: orders (default) and their emails (high_priority).
# Workers compared for the pipeline take only these: a worker that also takes reports
# (low_priority) loads the chart library as it starts (reports.tasks), about 40 MB a
# process that the pipeline never uses, and before issue 19 compose ran reports in a
# worker of their own (worker-low) too.
PIPELINE_QUEUES = "high_priority,default"
BENCH_DATABASE = "backoffice_bench"
BENCH_REDIS_DB = 14
# Documented bench settings (README "Performance"): values any user could set.
PRODUCT_ENV = {
    "PAYMENT_SANDBOX_LATENCY_MS": "0",
    "EMAIL_RATE_LIMIT": "off",
    # Scenarios that send mail point it at their SMTP sink; DEBUG is off, so it must be set.
    "EMAIL_URL": "dummy://",
    "DEBUG": "0",
}


class RoundFailed(Exception):
    """A round did not finish (timeout or a process died); reported, never hidden."""


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(value: float) -> float:
    """A ratio a target is checked against, as reported: three decimals.

    With two, a median efficiency of 0.498 was reported, and checked, as a met 0.5.
    """
    return round(value, 3)


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RoundFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- environment --------------------------------------------------------------------------


def bench_urls() -> tuple[str, str]:
    """DATABASE_URL and CELERY_BROKER_URL for the bench: the services' servers, bench database and Redis db.

    A RabbitMQ URL (bin/bench's second pass) is used as given: its vhost is the bench's.
    """
    database = urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{BENCH_DATABASE}").geturl()
    broker = os.environ["CELERY_BROKER_URL"]
    if not broker.startswith(("amqp://", "amqps://")):
        broker = urlsplit(broker)._replace(path=f"/{BENCH_REDIS_DB}").geturl()
    return database, broker


_LOCK = Path(tempfile.gettempdir()) / "backoffice-bench.lock"


def _one_bench_at_a_time() -> None:
    """Two runs would drop each other's database (and share two cores); the second one stops here."""
    import fcntl

    handle = _LOCK.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"bench: another benchmark is running (lock {_LOCK}); wait for it to finish.")
    atexit.register(handle.close)  # keeps the lock for the life of this process


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the `with` blocks stop the workers, servers and sinks they started.

    They run in sessions of their own (a Ctrl-C in the terminal must not reach
    a worker mid-round), so nothing else would stop them when the bench is killed.
    """

    def leave(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping the processes this run started")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def prepare_environment() -> dict[str, str]:
    """Point this process at a fresh bench database and Redis db, migrate, and return the env for children."""
    import psycopg

    _one_bench_at_a_time()
    database_url, broker_url = bench_urls()
    parts = urlsplit(database_url)
    admin = psycopg.connect(
        host=parts.hostname,
        port=parts.port or 5432,
        user=parts.username or "postgres",
        password=parts.password or None,
        dbname="postgres",
        autocommit=True,
    )
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    data_dir = tempfile.mkdtemp(prefix="backoffice-bench-")
    atexit.register(shutil.rmtree, data_dir, ignore_errors=True)
    os.environ.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY=os.environ.get("SECRET_KEY") or "bench-" + os.urandom(16).hex(),
        DATA_DIR=data_dir,
        **PRODUCT_ENV,
    )
    import django

    django.setup()
    # The processes measured log as users get them (to their own files); this
    # one, which places orders and starts rounds, only says what went wrong.
    logging.getLogger().setLevel(logging.WARNING)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    # As the Docker image does: DEBUG is off, so pages need the collected, hashed static files.
    call_command("collectstatic", interactive=False, verbosity=0)
    flush_broker()
    return dict(os.environ)


def flush_broker() -> None:
    import redis
    from django.conf import settings

    if settings.BROKER_IS_RABBITMQ:
        _purge_rabbitmq()
        return
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    client.close()


def _purge_rabbitmq() -> None:
    """Empty the project's queues and RabbitMQ's delay queues on the bench's vhost (missing ones are skipped)."""
    from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

    from config import celery_app
    from ops.catalog import queue_names

    with celery_app.connection_for_write() as connection:
        for queue in [*queue_names(), *(level_name(level) for level in range(MAX_LEVEL + 1))]:
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
            except connection.channel_errors:
                pass  # not declared yet: nothing to empty
            finally:
                with contextlib.suppress(Exception):
                    channel.close()


def reset_tables(*labels: str) -> None:
    """Empty tables between rounds (TRUNCATE ... CASCADE), so every round starts alike."""
    from django.apps import apps
    from django.db import connection

    tables = [apps.get_model(label)._meta.db_table for label in labels]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
