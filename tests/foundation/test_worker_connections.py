"""Workers reuse their database connection, and a broken one never reaches the next task."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from config import celery_app
from tests.support.processes import wait_for


@celery_app.task(name="tests.foundation.backend_pid")
def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@celery_app.task(name="tests.foundation.kill_own_connection")
def kill_own_connection() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")


@pytest.mark.django_db(transaction=True)
def test_it_reuses_the_connection_across_tasks(thread_worker: object) -> None:
    first = backend_pid.delay().get(timeout=20)
    second = backend_pid.delay().get(timeout=20)
    assert first == second


@pytest.mark.django_db(transaction=True)
def test_a_connection_broken_inside_a_task_is_replaced_before_the_next_task(thread_worker: object) -> None:
    before = backend_pid.delay().get(timeout=20)
    broken = kill_own_connection.delay()
    with pytest.raises(Exception, match="terminat"):
        broken.get(timeout=20)

    after = backend_pid.delay().get(timeout=20)
    assert after != before


def terminate(pid: int) -> None:
    """End a PostgreSQL session and wait until its process has gone, its goodbye sent to the client's socket."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])

    def gone() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
            return cursor.fetchone()[0] == 0

    wait_for(gone, 10, 0.02, f"backend {pid} to exit")


@pytest.mark.django_db(transaction=True)
def test_a_connection_dropped_while_idle_is_replaced_before_the_next_task(thread_worker: object) -> None:
    before = backend_pid.delay().get(timeout=20)
    terminate(before)

    after = backend_pid.delay().get(timeout=20)
    assert after != before


@pytest.mark.django_db(transaction=True)
def test_a_task_that_breaks_its_connection_still_records_its_failure(thread_worker: object) -> None:
    from django_celery_results.models import TaskResult

    broken = kill_own_connection.delay()
    with pytest.raises(Exception, match="terminat"):
        broken.get(timeout=20)

    row = TaskResult.objects.get(task_id=broken.id)
    assert row.status == "FAILURE"
    assert "terminating connection" in row.result


@pytest.mark.django_db(transaction=True)
def test_a_quiet_connection_skips_the_health_check_and_a_dropped_one_gets_it(thread_worker, monkeypatch) -> None:
    from django.db.backends.postgresql.base import DatabaseWrapper

    checks_by_worker: list[int] = []
    real_check = DatabaseWrapper.is_usable

    def counted(self: DatabaseWrapper) -> bool:
        if threading.current_thread() is not threading.main_thread():
            checks_by_worker.append(1)
        return real_check(self)

    monkeypatch.setattr(DatabaseWrapper, "is_usable", counted)
    pid = backend_pid.delay().get(timeout=20)
    checks_by_worker.clear()
    assert [backend_pid.delay().get(timeout=20) for _ in range(3)] == [pid] * 3
    assert checks_by_worker == [], "a healthy, quiet connection was health-checked"

    terminate(pid)
    assert backend_pid.delay().get(timeout=20) != pid
    assert checks_by_worker, "the dropped connection was not health-checked"
