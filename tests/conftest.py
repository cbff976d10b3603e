"""Fixtures shared by the whole suite: the Celery app, the real broker and real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.db import connection

from tests.support.processes import WorkerProcess

# Keys kombu's Redis transport keeps besides the queues themselves.
KOMBU_BOOKKEEPING = ("unacked", "unacked_index", "unacked_mutex")


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings) -> None:
    """Production uses the manifest storage that collectstatic builds; tests render pages without it."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(scope="session")
def celery_app():
    from config import celery_app

    return celery_app


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    """The real Redis broker, with the project's queues emptied before and after the test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    keys = [queue.name for queue in settings.CELERY_TASK_QUEUES] + list(KOMBU_BOOKKEEPING)
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


@pytest.fixture
def process_env(transactional_db: None) -> dict[str, str]:
    """Environment for worker/beat/web subprocesses: the same settings, pointed at the test database."""
    env = os.environ.copy()
    url = urlsplit(env["DATABASE_URL"])
    env["DATABASE_URL"] = url._replace(path="/" + connection.settings_dict["NAME"]).geturl()
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def worker(process_env: dict[str, str], broker: redis.Redis, celery_app) -> Iterator[WorkerProcess]:
    """A real prefork worker process consuming all three queues of the real broker."""
    with WorkerProcess(process_env) as process:
        process.wait_ready(celery_app)
        yield process


@pytest.fixture
def thread_worker(transactional_db: None, broker: redis.Redis, celery_app) -> Iterator[object]:
    """An in-process worker thread (solo pool), for tasks that tests define themselves."""
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as worker:
        yield worker
    # The worker thread's persistent connection outlives the thread; end it so
    # the test database can be flushed and dropped.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
