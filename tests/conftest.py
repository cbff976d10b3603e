"""Fixtures shared by the whole suite: the Celery app, the real broker and real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.db import connection

from tests.support.broker import RabbitMQBroker, RedisBroker, connect
from tests.support.processes import PIPELINE_WORKERS, PROJECT_ROOT, ManagedProcess, WorkerProcess


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker) -> Iterator[None]:
    """pytest-django's test database, dropped at the end even if a stopped process's session lingers.

    Worker threads, live-server threads and just-killed worker processes can leave
    a PostgreSQL session behind for a moment, and DROP DATABASE refuses while one exists.
    """
    yield
    if connection.vendor != "postgresql":
        return  # SQLite's test database lives in memory
    if connection.settings_dict["NAME"] == urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/"):
        return  # no test database was created in this run
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _static_files_without_collectstatic(settings) -> None:
    """Production uses the manifest storage that collectstatic builds; tests render pages without it."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    """Users made in-process need no slow hashing; tests that log in over HTTP set a real hash."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the tests about another broker's own behaviour (only_on_broker), so none is skipped."""
    broker = "rabbitmq" if settings.BROKER_IS_RABBITMQ else "redis"
    kept, left_out = [], []
    for item in items:
        marker = item.get_closest_marker("only_on_broker")
        (left_out if marker is not None and marker.args[0] != broker else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """A worker left running consumes the next tests' tasks with its own settings; stop it and say who left it."""
    yield
    leftovers = [process for process in ManagedProcess.running if process.alive()]
    for process in list(ManagedProcess.running):
        process.kill_group()
    if leftovers:
        pytest.fail(f"the test left processes running: {', '.join(p.label for p in leftovers)}")


@pytest.fixture(scope="session")
def celery_app():
    from config import celery_app

    return celery_app


@pytest.fixture
def broker() -> Iterator[RedisBroker | RabbitMQBroker]:
    """The real broker (Redis, or RabbitMQ in the `rabbitmq` pass), with the project's queues emptied before and after."""
    client = connect(settings.CELERY_BROKER_URL)
    client.purge()
    yield client
    client.purge()
    client.close()


@pytest.fixture
def process_env(transactional_db: None) -> dict[str, str]:
    """Environment for worker/beat/web subprocesses: the same settings, pointed at the test database."""
    env = os.environ.copy()
    url = urlsplit(env["DATABASE_URL"])
    env["DATABASE_URL"] = url._replace(path="/" + connection.settings_dict["NAME"]).geturl()
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Static files collected once, as the Docker image does, for real web processes (DEBUG off)."""
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "STATIC_ROOT": str(root)},
        check=True,
    )
    return str(root)


@pytest.fixture
def web_env(process_env: dict[str, str], static_root: str) -> dict[str, str]:
    """Environment for a real web process: the test database and collected static files."""
    return {**process_env, "STATIC_ROOT": static_root}


@pytest.fixture
def worker(process_env: dict[str, str], broker: RedisBroker | RabbitMQBroker, celery_app) -> Iterator[WorkerProcess]:
    """A real prefork worker process consuming all three queues of the real broker."""
    with WorkerProcess(process_env) as process:
        process.wait_ready(celery_app)
        yield process


@pytest.fixture
def start_worker_process(process_env: dict[str, str], broker: RedisBroker | RabbitMQBroker, celery_app):
    """Start real worker processes with extra env values; all are stopped when the test ends."""
    started: list[WorkerProcess] = []

    def start(concurrency: int = 2, **env: str) -> WorkerProcess:
        process = WorkerProcess({**process_env, **env}, concurrency=concurrency).start()
        started.append(process)
        try:
            return process.wait_ready(celery_app)
        except AssertionError:
            raise AssertionError(process.output()[-4000:]) from None

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_shipped_workers(process_env: dict[str, str], broker: RedisBroker | RabbitMQBroker, celery_app):
    """Start the workers compose ships for orders and their emails (worker-default, worker-high), with extra env."""
    started: list[WorkerProcess] = []

    def start(*services: str, **env: str) -> list[WorkerProcess]:
        processes = [WorkerProcess.shipped({**process_env, **env}, service) for service in services or PIPELINE_WORKERS]
        for process in processes:
            started.append(process.start())
        for process in processes:
            try:
                process.wait_ready(celery_app)
            except AssertionError:
                raise AssertionError(process.output()[-4000:]) from None
        return processes

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def thread_worker(transactional_db: None, broker: RedisBroker | RabbitMQBroker, celery_app) -> Iterator[object]:
    """An in-process worker thread (solo pool), for tasks that tests define themselves."""
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as worker:
        yield worker
    if isinstance(broker, RabbitMQBroker):  # its own durable queue would outlive it on the vhost
        broker.delete_queue(f"{worker.hostname}.dq2")


@pytest.fixture
def customer(db: None):
    from tests.factories import UserFactory

    return UserFactory()


@pytest.fixture
def staff(db: None):
    from tests.factories import StaffFactory

    return StaffFactory()


@pytest.fixture
def customer_client(client, customer):
    client.force_login(customer)
    return client


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch):
    """Headless Chromium (Debian's package), driven by Playwright."""
    from tests.browser import chromium

    # Playwright's sync API runs an event loop in this thread; the test's own ORM
    # calls are still synchronous, so let Django allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with chromium() as launched:
        yield launched


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server; this process's email settings point at it (workers get it through env)."""
    from notifications import mailer
    from tests.support.smtp import SmtpServer

    with SmtpServer() as server:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
        yield server
        mailer.close()  # this process's kept connection (notifications.mailer) goes with its server
