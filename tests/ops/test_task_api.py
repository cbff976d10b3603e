"""The staff task API: GET /api/tasks/<id>/ reads a task as run_task --wait does; DELETE stops it. Audited."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django_celery_results.models import TaskResult

from ops import runs, task_api
from ops.models import TaskApiCall
from orders.models import Order
from tests.factories import client_of, staff_with
from tests.orders.helpers import place, product
from tests.support.processes import WorkerProcess, wait_for

pytestmark = pytest.mark.django_db


def test_only_staff_with_the_operations_permission_may_look_and_only_those_who_may_run_tasks_may_stop(
    customer_client,
) -> None:
    url = "/api/tasks/some-task/"
    assert Client().get(url).status_code == 401
    assert customer_client.get(url).status_code == 403
    assert client_of(staff_with()).get(url).json() == {"error": "This needs the 'ops.view_operations' permission."}
    viewer = client_of(staff_with("ops.view_operations"))
    assert viewer.get(url).status_code == 200
    assert viewer.delete(url).status_code == 403
    assert viewer.post(url).status_code == 405
    assert viewer.get("/api/tasks/" + "x" * 300 + "/").status_code == 400
    assert list(TaskApiCall.objects.values_list("action", "task_id")) == [("view", "some-task")]  # refusals do nothing


def test_an_unknown_task_reads_as_celery_reads_it_pending_and_unknown(admin_client) -> None:
    body = admin_client.get("/api/tasks/nobody-sent-this/").json()
    assert body == {
        "id": "nobody-sent-this",
        "task": None,
        "state": "PENDING",
        "known": False,
        "progress": None,
        "result": None,
        "error": None,
        "subject": None,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_api_and_run_task_wait_agree_on_a_finished_task_and_its_failure(worker, admin_client, admin_user) -> None:
    out = StringIO()
    call_command("run_task", "orders.tasks.check_pending_orders", "--wait", stdout=out)
    task_id = out.getvalue().splitlines()[0]

    body = admin_client.get(f"/api/tasks/{task_id}/").json()
    assert (body["task"], body["state"], body["result"], body["error"]) == (
        "orders.tasks.check_pending_orders",
        "SUCCESS",
        0,
        None,
    )
    assert "SUCCESS: 0" in out.getvalue()

    failing = runs.run_task(
        "reports.tasks.aggregate_report_slice", [7, "2025-13-01", "2025-01-31"], {}, user=admin_user
    )
    wait_for(lambda: TaskResult.objects.filter(task_id=failing.task_id, status="FAILURE").exists(), 30)
    body = admin_client.get(f"/api/tasks/{failing.task_id}/").json()
    assert (body["state"], body["error"]["type"]) == ("FAILURE", "ValueError")
    assert body["subject"] is None  # report 7 does not exist
    assert TaskApiCall.objects.filter(action="view", actor=admin_user).count() == 2


def test_stopping_a_finished_task_is_refused_with_the_reason(admin_client) -> None:
    TaskResult.objects.create(task_id="done-1", task_name="orders.tasks.check_pending_orders", status="SUCCESS")

    response = admin_client.delete("/api/tasks/done-1/")

    assert response.status_code == 409
    assert "finished already (SUCCESS)" in response.json()["error"]
    assert TaskApiCall.objects.get(action="stop").outcome.startswith("refused (SUCCESS)")


def test_a_running_order_task_is_stopped_through_the_domain_which_cancels_the_order(admin_user, customer) -> None:
    order = place(customer, (product(stock=5), 1))
    args = f"[{order.pk}]"
    TaskResult.objects.create(
        task_id="running-1", task_name="orders.tasks.process_order", status="STARTED", task_args=f'"{args}"'
    )

    stopped = task_api.stop("running-1", user=admin_user)

    assert stopped.state == "STARTED" and "orders.services.actions.cancel_order" in stopped.outcome
    assert Order.objects.get(pk=order.pk).status == "cancelled"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_task_revoked_before_it_started_is_still_revoked_for_the_worker_after_a_restart(
    process_env, broker, celery_app, admin_client, admin_user, tmp_path
) -> None:
    env = {**process_env, "DATA_DIR": str(tmp_path)}  # the worker's state file lives under DATA_DIR
    first = WorkerProcess(env).start().wait_ready(celery_app)
    waiting = runs.run_task("orders.tasks.check_pending_orders", [], {}, countdown=600, user=admin_user)

    response = admin_client.delete(f"/api/tasks/{waiting.task_id}/")

    assert response.status_code == 202, response.content
    assert response.json() == {"id": waiting.task_id, "state": "PENDING", "outcome": "revoked: no worker will start it"}

    def revoked_on(worker: WorkerProcess) -> list[str]:
        replies = celery_app.control.inspect([worker.nodename], timeout=2).revoked() or {}
        return replies.get(worker.nodename, [])

    wait_for(lambda: waiting.task_id in revoked_on(first), 10, message="the worker to hold the revoke")
    # The worker that took the revoke marks the task's state too (Celery's revoke does).
    wait_for(lambda: TaskResult.objects.filter(task_id=waiting.task_id, status="REVOKED").exists(), 10)
    first.stop()
    # The same worker, restarted: its node name, so its state file (CELERY_WORKER_STATE_DB).
    again = WorkerProcess(env)
    again.args[again.args.index("-n") + 1] = again.nodename = first.nodename
    with again:
        again.wait_ready(celery_app)
        assert waiting.task_id in revoked_on(again)
    assert TaskApiCall.objects.get(action="stop").outcome == "PENDING: revoked: no worker will start it"
