"""The operations overview: what the Grafana dashboard shows, for a shop that runs no Prometheus."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tests.factories import UserFactory
from tests.support import tasks
from tests.support.processes import WorkerProcess, wait_for

URL = "/admin/ops/overview/"


@pytest.mark.rabbitmq
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_it_shows_each_queues_workers_late_schedules_and_each_tasks_figures_from_the_workers(
    process_env, broker, celery_app, client, staff, settings
) -> None:
    settings.WORKER_PING_MAX_AGE = timedelta(0)
    hourly = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.HOURS)
    stuck = PeriodicTask.objects.create(name="Hourly sweep", task="orders.tasks.check_pending_orders", interval=hourly)
    PeriodicTask.objects.filter(pk=stuck.pk).update(
        date_changed=timezone.now() - timedelta(days=1), last_run_at=timezone.now() - timedelta(hours=3)
    )
    PeriodicTask.objects.create(
        name="Switched off", task="orders.tasks.check_pending_orders", interval=hourly, enabled=False
    )
    client.force_login(staff)
    with WorkerProcess(process_env, queues="high_priority,default", extra=tasks.INCLUDE) as worker:
        worker.wait_ready(celery_app)
        for _ in range(2):
            assert tasks.succeeds.delay().get(timeout=30) == "ok"
        tasks.always_fails.delay()

        def page() -> str:
            return client.get(URL).content.decode()

        text = wait_for(lambda: (text := page()) and "ValueError ×1" in text and text, 30, 0.3, "the failure to show")

    tasks_table = text.split('id="tasks"')[1].split("</table>")[0]
    assert "1 worker(s) answered" in tasks_table
    row = tasks_table.split(tasks.succeeds.name)[1].split("</tr>")[0]
    assert "<td>2</td>" in row  # succeeded twice, each timed
    assert "≤ " in row
    assert tasks.always_fails.name in tasks_table

    queues = text.split('id="queues"')[1].split("</table>")[0]
    assert "<td>low_priority</td><td>0</td>" in queues and "<strong>none</strong>" in queues

    schedules = text.split('id="schedules"')[1].split("</div>")[0]
    assert "1 late" in schedules and "Hourly sweep" in schedules and "is beat running?" in schedules
    assert "Disabled:" in schedules and "Switched off" in schedules


@pytest.mark.django_db
def test_it_needs_the_admin_and_answers_without_any_worker(client, settings) -> None:
    settings.WORKER_PING_MAX_AGE = timedelta(minutes=5)
    assert client.get(URL).status_code == 302  # to the admin login
    user = UserFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="django_celery_beat"))
    client.force_login(user)
    assert client.get(URL).status_code == 403  # staff, but without the operations permission
    user.user_permissions.add(Permission.objects.get(codename="view_operations"))
    response = client.get(URL)
    assert response.status_code == 200
    assert "No worker has finished a task since it started, or none answered." in response.content.decode()
