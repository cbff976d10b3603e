"""Emails that carry a credential: readable by their recipient only, and gone when the credential expires.

Also: order emails keep their share of EMAIL_RATE_LIMIT when resets flood in, an
over-long address is refused, and a campaign that cannot render is refused on save.
"""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.mail.backends.base import BaseEmailBackend
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from core.base_task import Attempt
from notifications.models import Campaign, Notification
from notifications.services import outbox, sweeps
from tests.factories import client_of, staff_with
from tests.notifications.helpers import transactional
from tests.support.processes import wait_for

pytestmark = pytest.mark.django_db

RESET_LINK = re.compile(r"/accounts/reset/[^/\s]+/[^/\s]+/")


@pytest.fixture
def reset_email(customer, settings) -> Notification:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    Client().post("/accounts/password_reset/", {"email": customer.email})
    return Notification.objects.get(kind="password_reset")


def viewer_of_notifications() -> Client:
    """Staff with only "view notification": the issue's attacker."""
    return client_of(staff_with("notifications.view_notification"))


def test_staff_who_may_view_the_outbox_never_see_a_reset_link(reset_email) -> None:
    assert RESET_LINK.search(reset_email.body_text), "the queued email carries its link"
    staff = viewer_of_notifications()

    page = staff.get(f"/admin/notifications/notification/{reset_email.pk}/change/").content.decode()
    listing = staff.get("/admin/notifications/notification/").content.decode()

    assert not RESET_LINK.search(page) and not RESET_LINK.search(listing)
    assert "carries a one-time link" in page


def test_once_sent_the_body_of_a_reset_email_is_gone_and_an_order_emails_stays(reset_email, mailoutbox) -> None:
    order_email = transactional(kind=Notification.Kind.ORDER_COMPLETED, body_text="Your order #1 is on its way")

    for notification in (reset_email, order_email):
        assert outbox.send_notification(notification.pk, attempt=Attempt("t")) == outbox.Outcome.SENT
    reset_email.refresh_from_db()
    order_email.refresh_from_db()

    assert RESET_LINK.search(mailoutbox[0].body), "the recipient got the link"
    assert reset_email.body_text == Notification.REDACTED_BODY and reset_email.body_html == ""
    assert order_email.body_text == "Your order #1 is on its way"


@pytest.mark.parametrize("ending", ["failed", "expired", "cancelled"])
def test_a_reset_email_that_ends_any_other_way_loses_its_body_too(reset_email, settings, ending) -> None:
    if ending == "failed":
        settings.EMAIL_BACKEND = "tests.security.test_credential_emails.RefusingBackend"
        outbox.send_notification(reset_email.pk, attempt=Attempt("t", is_last=True))
    elif ending == "expired":
        Notification.objects.filter(pk=reset_email.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        sweeps.requeue_stale_notifications()
    else:
        outbox.cancel_queued(reset_email.pk)
    reset_email.refresh_from_db()

    assert reset_email.status == ending
    assert reset_email.body_text == Notification.REDACTED_BODY


def test_a_failed_reset_email_is_not_resent_the_customer_asks_again(reset_email, settings) -> None:
    settings.EMAIL_BACKEND = "tests.security.test_credential_emails.RefusingBackend"
    outbox.send_notification(reset_email.pk, attempt=Attempt("t", is_last=True))

    assert outbox.resend(reset_email.pk) is False
    reset_email.refresh_from_db()
    assert reset_email.status == "failed"


def test_rows_with_a_credential_are_deleted_when_it_expires_not_after_the_retention(reset_email, settings) -> None:
    order_email = transactional(kind=Notification.Kind.ORDER_COMPLETED)
    Notification.objects.update(status="sent", sent_at=timezone.now())
    expected = timezone.now() + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT)
    assert abs(reset_email.credential_expires_at - expected) < timedelta(seconds=30)

    sweeps.cleanup_notifications()
    assert Notification.objects.count() == 2, "nothing expired yet"
    Notification.objects.filter(pk=reset_email.pk).update(credential_expires_at=timezone.now())
    sweeps.cleanup_notifications()

    assert list(Notification.objects.values_list("pk", flat=True)) == [order_email.pk]


def test_a_kind_that_carries_a_credential_must_say_when_it_expires() -> None:
    with pytest.raises(ValueError, match="credential_expires_at"):
        transactional(kind=Notification.Kind.PASSWORD_RESET)


def test_the_sent_log_line_names_the_notification_not_the_address(caplog, settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    notification = transactional(recipient="secret-person@example.com")
    with caplog.at_level("INFO"):
        outbox.send_notification(notification.pk, attempt=Attempt("t"))
    assert f"notification {notification.pk} sent" in caplog.text
    assert "secret-person" not in caplog.text


class RefusingBackend(BaseEmailBackend):
    """An email backend whose server refuses every message for good (550)."""

    def send_messages(self, messages: list) -> int:
        import smtplib

        raise smtplib.SMTPDataError(550, b"refused")


# --- the send budget --------------------------------------------------------------------------


def test_a_flood_of_reset_emails_leaves_order_emails_their_share_of_the_rate_limit(settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.EMAIL_RATE_LIMIT = (60, 3600)  # a burst of 6, then one a minute: nothing refills during the test
    resets = [
        transactional(
            kind=Notification.Kind.PASSWORD_RESET,
            key=f"r{i}",
            recipient=f"user{i}@example.com",
            credential_expires_at=timezone.now() + timedelta(days=3),
        )
        for i in range(10)
    ]
    outcomes = [outbox.send_notification(reset.pk, attempt=Attempt(f"r{reset.pk}")) for reset in resets]
    order_email = transactional(kind=Notification.Kind.ORDER_COMPLETED, key="order")

    assert outcomes.count(outbox.Outcome.SENT) == 5 and outcomes[5:] == [outbox.Outcome.THROTTLED] * 5
    assert outbox.send_notification(order_email.pk, attempt=Attempt("o")) == outbox.Outcome.SENT


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_with_a_real_worker_an_order_email_goes_out_while_a_reset_flood_waits(
    start_worker_process, smtp_server
) -> None:
    start_worker_process(EMAIL_URL=smtp_server.url, EMAIL_RATE_LIMIT="30/m")
    for i in range(30):
        transactional(
            kind=Notification.Kind.PASSWORD_RESET,
            key=f"r{i}",
            recipient=f"user{i}@example.com",
            credential_expires_at=timezone.now() + timedelta(days=3),
        )
    wait_for(lambda: Notification.objects.filter(kind="password_reset", status="sent").exists(), 30, 0.1, "resets")
    order_email = transactional(kind=Notification.Kind.ORDER_COMPLETED, key="order")

    wait_for(lambda: Notification.objects.get(pk=order_email.pk).status == "sent", 30, 0.1, "the order email")
    # 30 resets at 30 a minute take a minute; the order email did not wait for them.
    assert Notification.objects.filter(kind="password_reset").exclude(status="sent").count() > 10


# --- bad input on the way in ----------------------------------------------------------------------


def test_send_test_email_refuses_an_address_longer_than_the_column() -> None:
    with pytest.raises(CommandError, match="not a valid email address of at most 254"):
        call_command("send_test_email", "a" * 250 + "@example.com", "--no-wait", stdout=StringIO())
    assert not Notification.objects.exists()


@pytest.mark.parametrize(
    "body",
    ['{% include "no/such/template.txt" %}', "Hello {{ first_name }}, see {% url 'no-such-page' %}"],
)
def test_a_campaign_that_compiles_but_cannot_render_is_refused_when_saved(admin_client, body) -> None:
    response = admin_client.post(
        "/admin/notifications/campaign/add/",
        {"name": "Spring", "subject": "Hello", "body": body, "audience": "all_customers", "ordered_since": ""},
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["body"]
    assert not Campaign.objects.exists()
