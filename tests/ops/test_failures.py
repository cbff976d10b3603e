"""Failures in one place: every task that failed for good is recorded, grouped, replayed or dismissed, and expires."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from ops import failures, runs
from ops.models import Failure, TaskRun
from tests.factories import UserFactory
from tests.support.processes import wait_for

pytestmark = pytest.mark.django_db


def staff_with(*codenames: str) -> Client:
    user = UserFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("message", "label"),
    [
        ("Payment declined: card declined by the issuer", "Payment declined: card declined by the issuer"),
        ("Out of stock: not enough SKU-0042 left for 3.", "Out of stock: not enough SKU-# left for #."),
        ("ann@example.com refused: 550 b'no such user'", "<address> refused: # b'no such user'"),
        ("task 9f1c2b1e-5d9a-4c1e-8b9a-0a1b2c3d4e5f lost\nTraceback ...", "task <id> lost"),
    ],
)
def test_the_group_label_leaves_out_what_varies_from_one_failure_to_the_next(message: str, label: str) -> None:
    assert failures.label_for(message) == label


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_task_that_fails_for_good_on_a_real_worker_is_recorded_with_what_it_worked_on(worker, admin_user) -> None:
    run = runs.run_task("reports.tasks.aggregate_report_slice", [7, "2025-13-01", "2025-01-31"], {}, user=admin_user)

    failure = wait_for(lambda: Failure.objects.filter(task_id=run.task_id).first(), 30, message="the failure")

    assert failure.task_name == "reports.tasks.aggregate_report_slice"
    assert (failure.subject_label, failure.subject_id) == ("reports.Report", "7")
    assert (failure.error_type, failure.status, failure.args) == ("ValueError", "open", [7, "2025-13-01", "2025-01-31"])
    assert "month must be in" in failure.error


def _failure(task_id: str, message: str = "Payment declined: card declined", **fields: object) -> Failure:
    order_id = int(task_id[-1])
    error = RuntimeError(message)
    return failures.record(
        task_id=task_id, task_name="orders.tasks.process_order", error=error, args=[order_id], **fields
    )


def test_the_failures_page_groups_open_failures_by_error_with_counts_dates_and_objects(admin_client) -> None:
    for index in range(3):
        _failure(f"declined-{index}", failed_at=timezone.now() - timedelta(hours=index))
    _failure("stock-1", "Out of stock: not enough MUG left for 2.")
    Failure.objects.filter(task_id="declined-2").update(status="dismissed")

    page = admin_client.get("/admin/ops/failures/").content.decode()

    assert "Payment declined: card declined <span" in page and "×2" in page
    assert "Out of stock: not enough MUG left for #." in page and "×1" in page
    assert page.index("Payment declined") < page.index("Out of stock")  # the largest group first
    assert "/admin/orders/order/0/change/" in page and "/admin/orders/order/1/change/" in page


def test_replaying_a_group_goes_through_the_domain_s_replay_and_is_audited(admin_client, admin_user) -> None:
    _failure("declined-1")
    group = Failure.objects.get().fingerprint

    response = admin_client.post("/admin/ops/failures/", {"action": "replay", "fingerprint": group}, follow=True)

    # Order 1 does not exist here, so the domain's replay refuses, with its reason, and nothing changes.
    assert "order 1 does not exist" in response.content.decode()
    assert Failure.objects.get().status == "open" and not TaskRun.objects.exists()


def test_dismissing_needs_a_note_and_the_permission(admin_client) -> None:
    _failure("declined-1")
    group = Failure.objects.get().fingerprint

    admin_client.post("/admin/ops/failures/", {"action": "dismiss", "fingerprint": group, "note": "  "})
    assert Failure.objects.get().status == "open"
    admin_client.post("/admin/ops/failures/", {"action": "dismiss", "fingerprint": group, "note": "test order"})
    dismissed = Failure.objects.get()
    assert (dismissed.status, dismissed.note, dismissed.resolved_by.username) == ("dismissed", "test order", "admin")

    viewer = staff_with("view_failure")
    assert viewer.get("/admin/ops/failures/").status_code == 200
    assert (
        viewer.post("/admin/ops/failures/", {"action": "dismiss", "fingerprint": group, "note": "x"}).status_code == 403
    )
    assert viewer.post("/admin/ops/failures/", {"action": "replay", "fingerprint": group}).status_code == 403
    assert staff_with().get("/admin/ops/failures/").status_code == 403


def test_failures_are_kept_for_failure_retention_whatever_happens_to_task_results(settings) -> None:
    settings.FAILURE_RETENTION = timedelta(days=30)
    _failure("old-1", failed_at=timezone.now() - timedelta(days=31))
    _failure("new-1", failed_at=timezone.now() - timedelta(days=29))

    assert failures.cleanup() == 1
    assert list(Failure.objects.values_list("task_id", flat=True)) == ["new-1"]
