"""The outbox and sending one email, against a real SMTP server and real PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from core.base_task import Attempt
from notifications.models import EmailPreference, Notification
from notifications.services import messages, outbox, sweeps
from orders.services import actions, pipeline
from tests.notifications.helpers import transactional
from tests.orders.helpers import place, product
from tests.support.smtp import body_html, body_text

# Service tests: bin/test runs them on PostgreSQL and again on SQLite, the embedded default.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded_db]


@pytest.fixture(autouse=True)
def _no_rate_limit_or_latency(settings) -> None:
    settings.EMAIL_RATE_LIMIT = None
    settings.PAYMENT_SANDBOX_LATENCY_MS = 0


@pytest.mark.parametrize("address", ["not-an-address", "a@b", "two@example.com, three@example.com", ""])
def test_an_invalid_address_is_rejected_when_the_row_is_created(address: str) -> None:
    with pytest.raises(ValidationError, match="not a valid email address"):
        transactional(recipient=address)
    assert not Notification.objects.exists()


def test_the_same_dedup_key_never_makes_a_second_message() -> None:
    first = transactional(key="order:42:completed")
    second = transactional(key="order:42:completed", subject="Another subject")
    assert first.pk == second.pk
    assert Notification.objects.count() == 1


def test_a_completed_order_queues_one_templated_text_and_html_email(customer, smtp_server) -> None:
    mug = product(stock=5, price="12.50")
    order = place(customer, (mug, 2))
    pipeline.process_order(order.pk, attempt=Attempt("task-1"))

    notification = Notification.objects.get(kind="order_completed")
    assert outbox.send_notification(notification.pk, attempt=Attempt("send-1")) == outbox.Outcome.SENT

    [message] = smtp_server.inbox.to(customer.email)
    assert message["Subject"] == f"Your order #{order.pk} is on its way"
    order.refresh_from_db()
    assert f"2 x {mug.name}" in body_text(message) and order.tracking_number in body_text(message)
    assert "€25.00" in body_html(message) and f"/orders/{order.pk}/" in body_html(message)
    notification.refresh_from_db()
    assert (notification.status, notification.attempts, notification.user) == ("sent", 1, customer)
    assert notification.subject_object == f"orders.order:{order.pk}"


@pytest.mark.parametrize(("status", "subject"), [("failed", "We could not complete"), ("cancelled", "is cancelled")])
def test_failed_and_cancelled_orders_get_their_own_email(customer, status: str, subject: str) -> None:
    order = place(customer, (product(), 1))
    if status == "cancelled":
        actions.cancel_order(order.pk, customer_id=customer.pk)
    else:
        from tests.orders.helpers import fault

        fault(order, "charge", "decline")
        pipeline.process_order(order.pk, attempt=Attempt("task-1"))

    notification = Notification.objects.get(kind=f"order_{status}")
    assert subject in notification.subject
    assert notification.dedup_key == f"order:{order.pk}:{status}:0"


def test_an_unsubscribed_customer_still_gets_order_emails(customer) -> None:
    EmailPreference.objects.create(user=customer, unsubscribed_at=timezone.now())
    order = place(customer, (product(), 1))
    pipeline.process_order(order.pk, attempt=Attempt("task-1"))
    assert Notification.objects.filter(user=customer, kind="order_completed").exists()


def test_a_sent_row_is_never_sent_again(smtp_server) -> None:
    notification = transactional()
    assert outbox.send_notification(notification.pk, attempt=Attempt("send-1")) == outbox.Outcome.SENT
    assert outbox.send_notification(notification.pk, attempt=Attempt("send-1")) == outbox.Outcome.SKIPPED
    assert outbox.send_notification(notification.pk, attempt=Attempt("send-2")) == outbox.Outcome.SKIPPED
    assert smtp_server.inbox.count() == 1


@pytest.mark.parametrize("task_id", ["send-2", "send-1"])
def test_a_row_being_sent_is_left_alone_even_by_a_second_delivery_of_the_same_task(smtp_server, task_id: str) -> None:
    notification = transactional()
    Notification.objects.filter(pk=notification.pk).update(
        status="sending", lease_owner="send-1", lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert outbox.send_notification(notification.pk, attempt=Attempt(task_id)) == outbox.Outcome.SKIPPED
    assert smtp_server.inbox.count() == 0


def test_a_row_abandoned_mid_send_is_taken_over_once_its_lease_expires(smtp_server) -> None:
    notification = transactional()
    Notification.objects.filter(pk=notification.pk).update(
        status="sending", lease_owner="crashed", lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert outbox.send_notification(notification.pk, attempt=Attempt("sweep-sent")) == outbox.Outcome.SENT
    assert smtp_server.inbox.count() == 1


def test_a_late_message_is_expired_not_sent(smtp_server) -> None:
    notification = transactional(expires_at=timezone.now() - timedelta(seconds=1))

    assert outbox.send_notification(notification.pk, attempt=Attempt("send-1")) == outbox.Outcome.EXPIRED

    notification.refresh_from_db()
    assert notification.status == "expired"
    assert smtp_server.inbox.count() == 0


def test_an_unknown_id_finishes_with_a_logged_reason(caplog: pytest.LogCaptureFixture) -> None:
    assert outbox.send_notification(987654, attempt=Attempt("send-1")) == outbox.Outcome.MISSING
    assert "notification 987654 does not exist" in caplog.text


def test_smtp_down_is_a_transient_error_until_the_last_attempt(settings) -> None:
    from tests.support.processes import free_port

    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", free_port()  # nothing listens there
    notification = transactional()

    with pytest.raises(outbox.TransientSendError, match="ConnectionRefused"):
        outbox.send_notification(notification.pk, attempt=Attempt("send-1", retry_in=30))
    notification.refresh_from_db()
    assert (notification.status, notification.lease_owner) == ("queued", "send-1")  # held for its own retry
    assert notification.lease_expires_at > timezone.now() + timedelta(seconds=30)
    assert outbox.send_notification(notification.pk, attempt=Attempt("sweep-sent")) == outbox.Outcome.SKIPPED

    assert outbox.send_notification(notification.pk, attempt=Attempt("send-1", is_last=True)) == outbox.Outcome.FAILED
    notification.refresh_from_db()
    assert notification.status == "failed"
    assert "ConnectionRefused" in notification.last_error
    assert notification.attempts == 2


def test_smtp_errors_are_transient_only_for_network_trouble_and_4xx_replies() -> None:
    import smtplib

    assert messages.is_transient(smtplib.SMTPRecipientsRefused({"x@example.com": (450, b"mailbox busy")}))
    assert not messages.is_transient(smtplib.SMTPRecipientsRefused({"x@example.com": (550, b"no such user")}))
    assert not messages.is_transient(smtplib.SMTPDataError(554, b"rejected"))
    assert messages.is_transient(smtplib.SMTPServerDisconnected("gone"))


def test_emails_sent_one_by_one_share_the_process_s_smtp_connection(smtp_server) -> None:
    rows = [transactional(key=f"k-{i}") for i in range(3)]
    for row in rows:
        assert outbox.send_notification(row.pk, attempt=Attempt(f"send-{row.pk}")) == outbox.Outcome.SENT
    assert smtp_server.inbox.count() == 3
    assert smtp_server.inbox.connections() == 1


def test_a_session_the_server_ended_while_idle_is_replaced_before_the_next_email(settings) -> None:
    from notifications import mailer
    from tests.support.smtp import SmtpServer

    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    with SmtpServer(session_timeout=0.3) as server:
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
        first, second = transactional(key="k-1"), transactional(key="k-2")
        assert outbox.send_notification(first.pk, attempt=Attempt("send-1")) == outbox.Outcome.SENT
        time.sleep(1)  # the server says "421 timeout" and hangs up, as Postfix does after 300 s
        assert outbox.send_notification(second.pk, attempt=Attempt("send-2")) == outbox.Outcome.SENT
        assert (server.inbox.count(), server.inbox.connections()) == (2, 2)
        mailer.close()


def test_changed_email_settings_take_the_next_email_to_the_new_server(smtp_server, settings) -> None:
    from notifications import mailer
    from tests.support.smtp import SmtpServer

    first, second = transactional(key="k-1"), transactional(key="k-2")
    assert outbox.send_notification(first.pk, attempt=Attempt("send-1")) == outbox.Outcome.SENT
    with SmtpServer() as other:
        settings.EMAIL_PORT = other.port
        assert outbox.send_notification(second.pk, attempt=Attempt("send-2")) == outbox.Outcome.SENT
        assert (smtp_server.inbox.count(), other.inbox.count()) == (1, 1)
        mailer.close()


def test_resend_and_cancel_queued_only_touch_the_right_rows() -> None:
    failed = transactional(key="a")
    queued = transactional(key="b")
    Notification.objects.filter(pk=failed.pk).update(status="failed", last_error="boom")

    assert outbox.resend(queued.pk) is False
    assert outbox.cancel_queued(failed.pk) is False
    assert outbox.resend(failed.pk) is True
    assert outbox.cancel_queued(queued.pk) is True
    assert dict(Notification.objects.values_list("pk", "status")) == {failed.pk: "queued", queued.pk: "cancelled"}


def test_the_stale_sweep_resends_only_old_unsent_rows(settings, broker) -> None:
    settings.NOTIFICATION_REQUEUE_AFTER = timedelta(minutes=5)
    old, _fresh, sent = transactional(key="old"), transactional(key="fresh"), transactional(key="sent")
    Notification.objects.filter(pk__in=[old.pk, sent.pk]).update(created_at=timezone.now() - timedelta(minutes=10))
    Notification.objects.filter(pk=sent.pk).update(status="sent")

    assert sweeps.requeue_stale_notifications() == 1
    assert sweeps.requeue_stale_notifications() == 0

    [message] = [json.loads(raw) for raw in broker.lrange("high_priority", 0, -1)]
    assert (message["headers"]["task"], message["headers"]["argsrepr"]) == (
        "notifications.tasks.send_notification",
        f"[{old.pk}]",  # ops.publish records the arguments as JSON
    )


def test_cleanup_removes_only_old_sent_and_expired_rows(settings) -> None:
    settings.NOTIFICATION_RETENTION = timedelta(days=30)
    long_ago = timezone.now() - timedelta(days=31)
    rows = {status: transactional(key=status) for status in ("sent", "expired", "failed", "queued")}
    recent_sent = transactional(key="recent")
    for status, row in rows.items():
        Notification.objects.filter(pk=row.pk).update(status=status, sent_at=long_ago, updated_at=long_ago)
    Notification.objects.filter(pk=recent_sent.pk).update(status="sent", sent_at=timezone.now())

    assert sweeps.cleanup_notifications() == 2
    assert set(Notification.objects.values_list("dedup_key", flat=True)) == {"failed", "queued", "recent"}


def test_password_reset_goes_through_the_outbox_and_expires_within_the_hour(client, customer) -> None:
    response = client.post("/accounts/password_reset/", {"email": customer.email})

    assert response.status_code == 302
    notification = Notification.objects.get(kind="password_reset")
    assert notification.recipient == customer.email
    assert "/accounts/reset/" in notification.body_text
    assert timedelta(minutes=59) < notification.expires_at - timezone.now() <= timedelta(hours=1)
