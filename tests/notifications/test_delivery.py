"""Email delivery end to end: real worker processes, real Redis, real PostgreSQL and a real SMTP server."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import transaction
from django.test import Client
from django.utils import timezone
from django_celery_results.models import TaskResult

from config import celery_app
from core.base_task import Attempt
from notifications.models import Campaign, EmailPreference, Notification
from notifications.services import campaigns
from ops.models import Failure
from orders.models import Order
from tests.factories import StaffFactory, UserFactory
from tests.notifications.helpers import make_customers, transactional
from tests.orders.helpers import place, product
from tests.support.broker import sweep_until, wait_until_idle
from tests.support.processes import WorkerProcess, free_port, wait_for
from tests.support.servers import HttpSession, WebProcess, own_broker_server
from tests.support.smtp import SmtpServer, body_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FAST = {"EMAIL_RATE_LIMIT": "off", "PAYMENT_SANDBOX_LATENCY_MS": "0"}


def settled(row: Notification | Campaign, timeout: float = 60, statuses: tuple[str, ...] = ()) -> None:
    final = statuses or (
        Notification.FINAL_STATUSES if isinstance(row, Notification) else ("done", "cancelled", "failed")
    )

    def reached() -> bool:
        row.refresh_from_db()
        return row.status in final

    wait_for(reached, timeout, 0.1, f"{row} to reach {final}")


@pytest.mark.rabbitmq
def test_a_completed_order_sends_exactly_one_email_with_the_right_content(
    start_worker_process, customer, smtp_server, broker
) -> None:
    start_worker_process(EMAIL_URL=smtp_server.url, **FAST)
    mug = product(stock=5, price="12.50")
    with transaction.atomic():
        order = place(customer, (mug, 2))

    wait_for(lambda: smtp_server.inbox.to(customer.email), 60, 0.1, "the order email")
    wait_until_idle(broker, "anything else the order sends")

    [message] = smtp_server.inbox.to(customer.email)
    order.refresh_from_db()
    assert order.status == "completed"
    assert message["Subject"] == f"Your order #{order.pk} is on its way"
    assert f"2 x {mug.name}" in body_text(message) and order.tracking_number in body_text(message)
    assert smtp_server.inbox.count() == 1


@pytest.mark.rabbitmq
def test_an_order_email_whose_publish_was_lost_goes_out_once_when_the_order_task_comes_again(
    start_worker_process, customer, smtp_server, broker
) -> None:
    """The order completes, its email's publish (made after the commit) never reaches a worker.

    As when a worker's broker connection drops between the two: the order task,
    unacknowledged, is delivered again, finds the order complete, and sends the
    email's task again. No sweep runs here.
    """
    from orders.services import pipeline

    order = place(customer, (product(stock=5), 1))
    pipeline.process_order(order.pk, attempt=Attempt("first-run"))  # in this process; its email task is published...
    broker.purge()  # ...and lost
    email = Notification.objects.get(subject_object=f"orders.order:{order.pk}")
    assert email.status == "queued"

    worker = start_worker_process(EMAIL_URL=smtp_server.url, **FAST)
    celery_app.send_task("orders.tasks.process_order", [order.pk])

    settled(email, timeout=30)
    wait_until_idle(broker, "the order task and the email task it sent again")
    assert (email.status, email.attempts) == ("sent", 1)
    assert len(smtp_server.inbox.to(customer.email)) == 1
    assert f"notification {email.pk} still queued and untaken: its task is sent again" in worker.output()


@pytest.mark.rabbitmq
def test_an_email_asked_for_again_while_its_row_waits_is_published_again_and_sent_once(
    start_worker_process, smtp_server, broker
) -> None:
    # A task that queues an email and is delivered again (notify_report_ready, say) asks
    # with the same dedup key: the row is not duplicated, its lost publish is made good.
    with transaction.atomic():
        first = transactional(recipient="again@example.com", key="again")
    broker.purge()
    with transaction.atomic():
        second = transactional(recipient="again@example.com", key="again")
        assert broker.messages("high_priority") == [], "published before the commit"
    assert second.pk == first.pk
    assert len(broker.messages("high_priority")) == 1

    start_worker_process(EMAIL_URL=smtp_server.url, **FAST)
    settled(first, timeout=30)
    with transaction.atomic():
        transactional(recipient="again@example.com", key="again")  # sent: nothing more is published
    wait_until_idle(broker, "the email")
    assert (first.status, first.attempts) == ("sent", 1)
    assert len(smtp_server.inbox.to("again@example.com")) == 1


@pytest.mark.rabbitmq
def test_a_redelivered_notification_on_two_workers_is_sent_once(start_worker_process, smtp_server, broker) -> None:
    start_worker_process(EMAIL_URL=smtp_server.url, **FAST)
    start_worker_process(EMAIL_URL=smtp_server.url, **FAST)
    notification = Notification.objects.create(
        kind="test", recipient="once@example.com", subject="Once", body_text="Only once", dedup_key="once"
    )
    from notifications.tasks import send_notification as send

    for _ in range(3):
        send.apply_async((notification.pk,), task_id="same-delivery")
    for _ in range(3):
        send.delay(notification.pk)

    settled(notification)
    wait_until_idle(broker, "every copy of the delivery")
    assert notification.status == "sent"
    assert len(smtp_server.inbox.to("once@example.com")) == 1


@pytest.mark.rabbitmq
def test_smtp_down_retries_then_fails_with_a_reason_and_a_resend_works_once_it_is_back(
    start_worker_process, settings
) -> None:
    port = free_port()
    start_worker_process(EMAIL_URL=f"smtp://127.0.0.1:{port}", EMAIL_MAX_RETRIES="2", EMAIL_RETRY_BACKOFF="1", **FAST)
    with transaction.atomic():
        notification = transactional(recipient="patient@example.com", kind="order_completed")

    settled(notification)
    assert notification.status == "failed"
    assert "ConnectionRefused" in notification.last_error
    assert notification.attempts == 3
    # A failure for good, where staff look for failures: the task's result and the failures page.
    failure = wait_for(lambda: Failure.objects.filter(subject_id=str(notification.pk)).first(), 30)
    assert (failure.task_name, failure.error_type) == ("notifications.tasks.send_notification", "EmailFailed")
    assert failure.error == notification.last_error
    assert TaskResult.objects.get(task_id=failure.task_id).status == "FAILURE"

    with SmtpServer(port=port) as server:
        admin = Client()
        admin.force_login(StaffFactory())
        response = admin.post(
            "/admin/notifications/notification/",
            {"action": "resend_failed", "_selected_action": [notification.pk]},
            follow=True,
        )
        assert "Resending 1 failed message(s)." in response.content.decode()
        settled(notification)
        assert notification.status == "sent"
        assert len(server.inbox.to("patient@example.com")) == 1


@pytest.mark.rabbitmq
def test_a_late_message_is_dropped_by_the_broker_and_marked_expired_not_sent(
    start_worker_process, smtp_server, broker
) -> None:
    with transaction.atomic():
        notification = transactional(recipient="late@example.com", expires_at=timezone.now() + timedelta(seconds=1))
    [message] = broker.messages("high_priority")
    assert message["headers"]["expires"] is not None  # time-sensitive: Celery's expires is set too
    time.sleep(1.5)  # no worker was running: it is late now

    start_worker_process(EMAIL_URL=smtp_server.url, NOTIFICATION_REQUEUE_AFTER="1s", **FAST)
    if settings.BROKER_IS_RABBITMQ:
        # Celery gives the message a TTL from its expires, and RabbitMQ drops it itself.
        wait_for(lambda: broker.depth("high_priority") == 0, 30, 0.2, "RabbitMQ to drop the expired message")
        assert not TaskResult.objects.filter(task_id=message["headers"]["id"]).exists()  # no worker saw it
    else:
        wait_for(
            lambda: TaskResult.objects.filter(task_id=message["headers"]["id"], status="REVOKED").exists(),
            30,
            0.2,
            "the worker to drop the expired message",
        )
    celery_app.send_task("notifications.tasks.requeue_stale_notifications")

    settled(notification)
    assert notification.status == "expired"
    assert smtp_server.inbox.to("late@example.com") == []


@pytest.mark.rabbitmq
def test_a_campaign_of_2000_completes_with_counts_equal_to_the_rows_and_progress_mid_way(
    start_worker_process, broker
) -> None:
    make_customers(2000)
    spring = Campaign.objects.create(name="Spring", subject="Spring", body="Hello {{ first_name }}")
    with SmtpServer(delay=0.002) as server:
        start_worker_process(EMAIL_URL=server.url, **FAST)
        start_worker_process(EMAIL_URL=server.url, **FAST)
        with transaction.atomic():
            campaigns.start_campaign(spring.pk)

        seen_counts, seen_task_progress = set(), False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            spring.refresh_from_db()
            seen_counts.add(spring.sent)
            seen_task_progress |= TaskResult.objects.filter(
                task_name="notifications.tasks.send_campaign_chunk", status="PROGRESS"
            ).exists()
            if spring.status == "done":
                break
            time.sleep(0.02)

        assert spring.status == "done"
        rows = Notification.objects.filter(campaign=spring)
        assert spring.total == rows.count() == 2000
        assert spring.sent == rows.filter(status="sent").count() == 2000
        assert spring.failed == rows.filter(status="failed").count() == 0
        assert server.inbox.count() == 2000
        assert any(0 < count < 2000 for count in seen_counts), "progress was never seen mid-way"
        assert seen_task_progress, "no chunk reported PROGRESS through update_state"
        # The last chunk marks the campaign done, then returns; its result row follows.
        wait_until_idle(broker, "every chunk to store its result")
        chunks = TaskResult.objects.filter(task_name="notifications.tasks.send_campaign_chunk", status="SUCCESS")
        assert chunks.count() == 10  # 2000 rows in chunks of 200, not 2000 tasks


@pytest.mark.rabbitmq
def test_cancelling_a_campaign_mid_way_stops_it_with_consistent_counts(start_worker_process, broker) -> None:
    make_customers(2000)
    spring = Campaign.objects.create(name="Spring", subject="Spring", body="Hello")
    with SmtpServer(delay=0.01) as server:
        start_worker_process(EMAIL_URL=server.url, **FAST)
        with transaction.atomic():
            campaigns.start_campaign(spring.pk)
        wait_for(lambda: server.inbox.count() > 100, 60, 0.05, "the campaign to be under way")

        campaigns.cancel_campaign(spring.pk)
        wait_until_idle(broker, "the chunks under way to stop", timeout=30)  # it stops within seconds
        stopped_at = server.inbox.count()

        spring.refresh_from_db()
        rows = Notification.objects.filter(campaign=spring)
        assert spring.status == "cancelled"
        assert spring.sent == rows.filter(status="sent").count() == stopped_at < 2000
        assert spring.failed == rows.filter(status="failed").count()
        assert rows.filter(status__in=["queued", "sending"]).count() == 0
        assert rows.filter(status="cancelled").count() == 2000 - stopped_at


def test_the_rate_limit_holds_across_two_workers_and_campaign_chunks(start_worker_process) -> None:
    # 10/s: bursts of 1, then 9 per second, whoever sends.
    limited = {"EMAIL_RATE_LIMIT": "10/s", "PAYMENT_SANDBOX_LATENCY_MS": "0"}
    make_customers(20)
    spring = Campaign.objects.create(name="Spring", subject="Spring", body="Hello")
    with SmtpServer() as server:
        start_worker_process(EMAIL_URL=server.url, **limited)
        start_worker_process(EMAIL_URL=server.url, **limited)
        with transaction.atomic():
            for index in range(20):
                transactional(recipient=f"single{index}@example.com", key=f"single-{index}")
            campaigns.start_campaign(spring.pk)
        started = time.monotonic()

        wait_for(lambda: server.inbox.count() >= 40, 60, 0.05, "all 40 emails")
        elapsed = time.monotonic() - started

    minimum = (40 - 1) / 9  # what 10/s with a burst of 1 allows at best
    assert elapsed >= minimum * 0.95, (
        f"40 emails went out in {elapsed:.1f}s; the limit allows no less than {minimum:.1f}s"
    )


def test_an_order_placed_during_a_throttled_campaign_still_completes_promptly(start_worker_process, customer) -> None:
    make_customers(400)
    spring = Campaign.objects.create(name="Spring", subject="Spring", body="Hello")
    with SmtpServer() as server:
        # One worker on all three queues, the hardest case: throttled chunks must not hold its slots.
        start_worker_process(EMAIL_URL=server.url, EMAIL_RATE_LIMIT="50/s", PAYMENT_SANDBOX_LATENCY_MS="0")
        with transaction.atomic():
            campaigns.start_campaign(spring.pk)
        wait_for(lambda: server.inbox.count() > 20, 60, 0.05, "the campaign to be under way")
        with transaction.atomic():
            order = place(customer, (product(), 1))

        def order_email() -> bool:
            return any(m["Subject"].startswith("Your order #") for m in server.inbox.to(customer.email))

        wait_for(order_email, 30, 0.05, "the order email")
        order.refresh_from_db()
        assert order.status == "completed"
        with server.inbox.lock:
            subjects = [m["Subject"] for m in server.inbox.messages]
        before = next(i for i, subject in enumerate(subjects) if subject.startswith("Your order #"))
        assert before < 400, "the order email waited for the whole campaign instead of going first"


def test_unsubscribed_customers_get_order_emails_but_no_campaign_or_digest(
    start_worker_process, smtp_server, broker
) -> None:
    subscribed, unsubscribed = UserFactory(), UserFactory()
    EmailPreference.objects.create(user=unsubscribed, unsubscribed_at=timezone.now())
    start_worker_process(EMAIL_URL=smtp_server.url, **FAST)
    last_week = timezone.now() - timedelta(days=7)
    with transaction.atomic():
        orders = [place(user, (product(), 1)) for user in (subscribed, unsubscribed)]
    wait_for(lambda: len(smtp_server.inbox.messages) >= 2, 60, 0.1, "both order emails")
    Order.objects.filter(pk__in=[o.pk for o in orders]).update(created_at=last_week)
    spring = Campaign.objects.create(name="Spring", subject="Spring news", body="Hello")
    with transaction.atomic():
        campaigns.start_campaign(spring.pk)
    celery_app.send_task("notifications.tasks.send_weekly_digest")

    def kinds(user) -> list[str]:
        subjects = [m["Subject"] for m in smtp_server.inbox.to(user.email)]
        return sorted(
            "digest" if s.startswith("Your orders in week") else "order" if s.startswith("Your order #") else s
            for s in subjects
        )

    wait_for(lambda: len(kinds(subscribed)) >= 3, 60, 0.1, "campaign and digest")
    wait_until_idle(broker, "the campaign and the digest to finish")
    assert kinds(subscribed) == ["Spring news", "digest", "order"]
    assert kinds(unsubscribed) == ["order"]


@pytest.mark.rabbitmq
def test_a_campaign_started_while_the_broker_is_down_is_sent_by_the_sweep_once_it_is_back(
    web_env: dict[str, str], smtp_server
) -> None:
    make_customers(3, prefix="outage")
    spring = Campaign.objects.create(name="Spring", subject="Spring", body="Hello {{ username }}")
    staff = Client()
    staff.force_login(StaffFactory())

    with own_broker_server() as broker:
        env = {
            **web_env,
            **FAST,
            "CELERY_BROKER_URL": broker.url,
            "EMAIL_URL": smtp_server.url,
            "NOTIFICATION_REQUEUE_AFTER": "1s",
        }
        with WebProcess(env) as web, WorkerProcess(env, concurrency=1) as worker:
            web.wait_ready()
            worker.wait_started()
            broker.stop()

            response = HttpSession(web.base_url, staff.cookies["sessionid"].value).request(
                "POST", f"/admin/notifications/campaign/{spring.pk}/start/"
            )

            assert response.status == 200, response.body  # the campaign's page, after the redirect
            spring.refresh_from_db()
            assert (spring.status, spring.task_id) == ("sending", "")
            assert f"broker unavailable, notifications.tasks.launch_campaign[{spring.pk}] not sent" in web.output()

            broker.start()  # the launch message never made it (a Redis comes back empty, RabbitMQ never had it)
            sweep_until(
                broker.url,
                "notifications.tasks.requeue_stale_notifications",
                spring,
                "done",
                "the sweep to launch the campaign once the broker is back",
            )

    assert (spring.total, spring.sent) == (3, 3)
    for index in range(3):
        assert len(smtp_server.inbox.to(f"outage{index}@example.com")) == 1
