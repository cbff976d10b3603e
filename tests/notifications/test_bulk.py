"""Rate limit, campaigns, the weekly digest and unsubscribing, at the service level."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from core.base_task import Attempt
from notifications import ratelimit
from notifications.models import Campaign, EmailPreference, Notification
from notifications.services import bulk, campaigns, digest, outbox, preferences
from orders.models import Order
from tests.factories import UserFactory
from tests.notifications.helpers import campaign
from tests.orders.helpers import place, product
from tests.support.broker import messages_in, queue_keys
from tests.support.smtp import body_text

# Service tests: bin/test runs them on PostgreSQL and again on SQLite, the embedded default.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded_db]


def test_the_bucket_grants_its_burst_then_says_how_long_to_wait() -> None:
    limit = ratelimit.RateLimit(count=100, period=60)  # bursts of 10, then 1.5/s

    first = ratelimit.take("test", 25, limit)
    second = ratelimit.take("test", 1, limit)

    assert (first.granted, second.granted) == (10, 0)
    assert 0 < second.wait <= 1 / limit.refill_per_second + 0.01


def test_bulk_senders_leave_a_reserve_for_transactional_email() -> None:
    limit = ratelimit.RateLimit(count=100, period=60)
    assert limit.bulk_reserve == 2

    bulk = ratelimit.take("test", 25, limit, reserve=limit.bulk_reserve)
    transactional = ratelimit.take("test", 5, limit)

    assert (bulk.granted, transactional.granted) == (8, 2)


def test_the_bucket_refills_over_time() -> None:
    from notifications.models import SendRateBucket

    limit = ratelimit.RateLimit(count=60, period=60)  # bursts of 6, then 54/min
    ratelimit.take("test", 6, limit)
    SendRateBucket.objects.filter(name="test").update(updated_at=timezone.now() - timedelta(seconds=2))

    assert ratelimit.take("test", 6, limit).granted == 1  # 2 s at 0.9/s


def test_the_audience_is_active_customers_with_an_email_who_did_not_unsubscribe() -> None:
    keep = UserFactory()
    UserFactory(is_active=False)
    UserFactory(is_staff=True)
    UserFactory(email="")
    gone = UserFactory()
    EmailPreference.objects.create(user=gone, unsubscribed_at=timezone.now())
    resubscribed = UserFactory()
    EmailPreference.objects.create(user=resubscribed, unsubscribed_at=None)

    assert set(campaigns.audience(campaign()).values_list("pk", flat=True)) == {keep.pk, resubscribed.pk}


def test_the_ordered_since_audience_counts_days_in_the_shop_time_zone(settings) -> None:
    settings.TIME_ZONE = "Europe/Amsterdam"
    early, late = UserFactory(), UserFactory()
    for user, moment in ((early, datetime(2026, 3, 31, 23, 30)), (late, datetime(2026, 4, 1, 0, 30))):
        order = place(user, (product(), 1))
        Order.objects.filter(pk=order.pk).update(created_at=moment.replace(tzinfo=ZoneInfo("Europe/Amsterdam")))

    chosen = campaigns.audience(campaign(audience="ordered_since", ordered_since=date(2026, 4, 1)))
    assert list(chosen.values_list("pk", flat=True)) == [late.pk]


def test_a_campaign_with_an_empty_audience_cannot_be_started() -> None:
    empty = campaign()
    with pytest.raises(campaigns.CampaignError, match="audience is empty"):
        campaigns.start_campaign(empty.pk)
    empty.refresh_from_db()
    assert empty.status == "draft" and not Notification.objects.exists()


def test_only_a_draft_can_be_started(smtp_server) -> None:
    UserFactory()
    sent = campaign(status="done")
    with pytest.raises(campaigns.CampaignError, match="Only a draft campaign"):
        campaigns.start_campaign(sent.pk)


def assert_unsubscribes(link: str, user: object) -> None:
    """The link is signed with a timestamp, so check what it resolves to rather than its exact text."""
    prefix = preferences.unsubscribe_url(user.pk).rstrip("/").rsplit("/", 1)[0] + "/"
    assert link.startswith(prefix) and link.endswith("/")
    assert preferences.user_for_unsubscribe_token(link.removeprefix(prefix).rstrip("/")) == user


def test_launching_writes_one_personal_row_per_recipient_with_unsubscribe_headers_once(broker) -> None:
    users = [UserFactory(first_name=f"Ann{i}") for i in range(3)]
    spring = campaign()
    campaigns.start_campaign(spring.pk)

    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    campaigns.launch_campaign(spring.pk, task_id="launch-2")  # a redelivered launch

    rows = Notification.objects.filter(campaign=spring).order_by("user_id")
    assert rows.count() == 3
    first = rows[0]
    assert first.subject == f"Hi {users[0].first_name}" and f"Hello {users[0].username}!" in first.body_text
    assert first.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = first.headers["List-Unsubscribe"].strip("<>")
    assert_unsubscribes(link, users[0])
    assert link in first.body_text
    spring.refresh_from_db()
    assert spring.total == 3
    assert broker.llen("low_priority") >= 1  # the chunk group


def test_a_chunk_sends_its_range_and_the_counts_match_the_rows(smtp_server, settings) -> None:
    settings.EMAIL_RATE_LIMIT = None
    for _ in range(30):
        UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    ids = list(Notification.objects.filter(campaign=spring).order_by("pk").values_list("pk", flat=True))
    Notification.objects.filter(pk=ids[-1]).update(recipient="refused@example.com")

    result = campaigns.send_campaign_chunk(spring.pk, ids[0], ids[-1], attempt=Attempt("chunk-1"))

    spring.refresh_from_db()
    assert (result.sent, result.failed) == (30, 0)
    assert spring.sent == Notification.objects.filter(campaign=spring, status="sent").count() == 30
    assert spring.status == "done"
    assert smtp_server.inbox.count() == 30
    assert smtp_server.inbox.connections() == 1, "a chunk must send over one SMTP connection"


def _chunk_noting_unrecorded(settings, backend: str, recipients: int) -> list[int]:
    from tests.support import mail as test_mail

    settings.EMAIL_RATE_LIMIT = None
    for _ in range(recipients):
        UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    ids = list(Notification.objects.filter(campaign=spring).order_by("pk").values_list("pk", flat=True))
    settings.EMAIL_BACKEND = f"tests.support.mail.{backend}"
    test_mail.NotesUnrecordedEmails.unrecorded = []

    result = campaigns.send_campaign_chunk(spring.pk, ids[0], ids[-1], attempt=Attempt("chunk-1"))

    spring.refresh_from_db()
    assert (result.sent, spring.sent, spring.status) == (recipients, recipients, "done")
    return test_mail.NotesUnrecordedEmails.unrecorded


def test_a_chunk_records_its_emails_every_few_so_a_kill_could_resend_fewer_than_that(settings, monkeypatch) -> None:
    monkeypatch.setattr(bulk, "RECORD_WITHIN", 60.0)  # the count alone decides here
    unrecorded = _chunk_noting_unrecorded(settings, "NotesUnrecordedEmails", 2 * bulk.RECORD_EVERY + 5)
    assert max(unrecorded) == bulk.RECORD_EVERY - 1
    assert unrecorded[bulk.RECORD_EVERY] == 0, "the first RECORD_EVERY were recorded before the next send"


def test_on_a_slow_server_a_chunk_records_each_email_before_sending_the_next(settings, monkeypatch) -> None:
    monkeypatch.setattr(bulk, "RECORD_WITHIN", 0.02)  # each send takes 0.03 s
    assert set(_chunk_noting_unrecorded(settings, "SlowNotesUnrecordedEmails", 4)) == {0}


def test_a_throttled_chunk_stops_and_reschedules_itself(smtp_server, settings, broker) -> None:
    settings.EMAIL_RATE_LIMIT = (20, 60)  # bursts of 2; bulk leaves one token for order emails
    for _ in range(5):
        UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    broker.delete("low_priority")
    ids = list(Notification.objects.filter(campaign=spring).values_list("pk", flat=True))

    result = campaigns.send_campaign_chunk(spring.pk, min(ids), max(ids), attempt=Attempt("chunk-1"))

    assert (result.sent, smtp_server.inbox.count()) == (1, 1)
    assert result.throttled_for > 0
    assert Notification.objects.filter(campaign=spring, status="queued").count() == 4
    import json

    [again] = [json.loads(raw) for raw in broker.lrange("low_priority", 0, -1)]
    assert again["headers"]["task"] == "notifications.tasks.send_campaign_chunk"
    assert again["headers"]["eta"] is not None


def test_cancelling_a_campaign_cancels_its_queued_rows_and_keeps_counts_true(settings) -> None:
    for _ in range(4):
        UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    [first, *_] = Notification.objects.filter(campaign=spring).order_by("pk")
    Notification.objects.filter(pk=first.pk).update(status="sent")
    spring.__class__.objects.filter(pk=spring.pk).update(sent=1)

    campaigns.cancel_campaign(spring.pk)

    spring.refresh_from_db()
    statuses = sorted(Notification.objects.filter(campaign=spring).values_list("status", flat=True))
    assert statuses == ["cancelled", "cancelled", "cancelled", "sent"]
    assert (spring.status, spring.sent, spring.failed) == ("cancelled", 1, 0)
    with pytest.raises(campaigns.CampaignError, match="already cancelled"):
        campaigns.cancel_campaign(spring.pk)


def test_the_weekly_digest_covers_last_iso_week_skips_unsubscribed_and_runs_twice_safely(broker, settings) -> None:
    settings.TIME_ZONE = "Europe/Amsterdam"
    zone = ZoneInfo("Europe/Amsterdam")
    buyer, quiet, gone = UserFactory(), UserFactory(), UserFactory()
    EmailPreference.objects.create(user=gone, unsubscribed_at=timezone.now())
    in_week = [place(buyer, (product(), 1)) for _ in range(2)]
    before = place(quiet, (product(), 1))
    gone_order = place(gone, (product(), 1))
    Order.objects.filter(pk=in_week[0].pk).update(created_at=datetime(2026, 11, 9, 0, 10, tzinfo=zone))  # Monday
    Order.objects.filter(pk=in_week[1].pk).update(created_at=datetime(2026, 11, 15, 23, 50, tzinfo=zone))  # Sunday
    Order.objects.filter(pk=before.pk).update(created_at=datetime(2026, 11, 8, 23, 50, tzinfo=zone))
    Order.objects.filter(pk=gone_order.pk).update(created_at=datetime(2026, 11, 10, 12, 0, tzinfo=zone))

    assert digest.send_weekly_digest(today=date(2026, 11, 16)) == 1
    assert digest.send_weekly_digest(today=date(2026, 11, 16)) == 0

    [message] = Notification.objects.filter(kind="digest")
    assert (message.user, message.dedup_key) == (buyer, f"digest:2026-W46:user:{buyer.pk}")
    assert all(f"#{order.pk} " in message.body_text for order in in_week), message.body_text
    assert f"#{before.pk}" not in message.body_text
    assert "List-Unsubscribe" in message.headers


def test_the_unsubscribe_link_works_without_logging_in_and_cannot_be_forged(customer) -> None:
    other = UserFactory()
    url = preferences.unsubscribe_url(customer.pk).removeprefix(settings.SITE_URL)
    browser = Client(enforce_csrf_checks=True)

    page = browser.get(url)
    assert page.status_code == 200 and customer.email in page.content.decode()
    assert not EmailPreference.objects.filter(unsubscribed_at__isnull=False).exists()  # GET changes nothing

    forged = url.replace(preferences.unsubscribe_token(customer.pk).split(":")[0], str(other.pk))
    assert browser.post(forged, {"action": "unsubscribe"}).status_code == 404
    assert browser.get("/unsubscribe/garbage/").status_code == 404

    one_click = browser.post(url, {"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    assert EmailPreference.objects.get(user=customer).unsubscribed_at is not None
    assert not EmailPreference.objects.filter(user=other).exists()

    browser.post(url, {"action": "subscribe"})
    assert EmailPreference.objects.get(user=customer).unsubscribed_at is None


def test_unsubscribing_drops_marketing_already_queued_but_not_order_email(customer) -> None:
    outbox.queue_email(
        kind="digest", recipient=customer.email, user_id=customer.pk, subject="d", body_text="d", dedup_key="d1"
    )
    outbox.queue_email(
        kind="order_completed",
        recipient=customer.email,
        user_id=customer.pk,
        subject="o",
        body_text="o",
        dedup_key="o1",
    )

    preferences.set_marketing_subscription(customer.pk, subscribed=False)

    assert dict(Notification.objects.values_list("dedup_key", "status")) == {"d1": "cancelled", "o1": "queued"}


def test_campaign_emails_render_the_body_and_the_unsubscribe_link(smtp_server, settings) -> None:
    settings.EMAIL_RATE_LIMIT = None
    user = UserFactory(first_name="Zoë")
    spring = campaign(body="Dear {{ first_name }}, spring is here.")
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    row = Notification.objects.get(campaign=spring)
    campaigns.send_campaign_chunk(spring.pk, row.pk, row.pk, attempt=Attempt("chunk-1"))

    [message] = smtp_server.inbox.to(user.email)
    assert "Dear Zoë, spring is here." in body_text(message)
    assert_unsubscribes(message["List-Unsubscribe"].strip().strip("<>"), user)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.fixture
def prefork_soft_limit_handler() -> Iterator[None]:
    """The SIGUSR1 handler billiard installs in every pool child: it raises SoftTimeLimitExceeded."""
    import signal

    from billiard.pool import soft_timeout_sighandler

    previous = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_a_chunk_stopped_by_its_soft_time_limit_records_what_it_sent_and_sends_the_rest_as_a_new_task(
    settings, broker, mailoutbox, prefork_soft_limit_handler
) -> None:
    settings.EMAIL_RATE_LIMIT = None
    for _ in range(6):
        UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    broker.delete(*queue_keys("low_priority"))
    ids = list(Notification.objects.filter(campaign=spring).order_by("pk").values_list("pk", flat=True))
    settings.EMAIL_BACKEND = "tests.support.mail.SoftLimitDuringThirdEmail"

    result = campaigns.send_campaign_chunk(spring.pk, ids[0], ids[-1], attempt=Attempt("chunk-1"))

    assert (result.sent, result.failed, result.stopped) == (3, 0, True)  # the third went out and was recorded
    assert len(mailoutbox) == 3
    rows = Notification.objects.filter(campaign=spring).order_by("pk")
    assert [row.status for row in rows] == ["sent"] * 3 + ["queued"] * 3
    assert {(row.lease_owner, row.attempts) for row in rows if row.status == "queued"} == {("", 0)}  # not a try
    spring.refresh_from_db()
    assert (spring.status, spring.sent) == ("sending", 3)
    [again] = messages_in(broker, "low_priority")
    assert again["headers"]["task"] == "notifications.tasks.send_campaign_chunk"
    assert json.loads(base64.b64decode(again["body"]))[0] == [spring.pk, ids[0], ids[-1]]


def test_a_launch_stopped_by_its_soft_time_limit_is_sent_again_not_failed(
    broker, monkeypatch, prefork_soft_limit_handler
) -> None:
    import os
    import signal

    for _ in range(3):
        UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    broker.delete(*queue_keys("low_priority"))
    write = campaigns.campaign_message

    def slow_write(campaign: Campaign, user: object, subject: object, body: object) -> Notification:
        os.kill(os.getpid(), signal.SIGUSR1)  # the soft limit, while the rows are being written
        return write(campaign, user, subject, body)

    monkeypatch.setattr(campaigns, "campaign_message", slow_write)

    assert campaigns.launch_campaign(spring.pk, task_id="launch-1") == 0

    spring.refresh_from_db()
    assert (spring.status, spring.error, spring.launched_at) == ("sending", "", None)
    [again] = messages_in(broker, "low_priority")
    assert again["headers"]["task"] == "notifications.tasks.launch_campaign"
    assert spring.task_id == again["headers"]["id"] != "launch-1"
    monkeypatch.setattr(campaigns, "campaign_message", write)
    campaigns.launch_campaign(spring.pk, task_id=spring.task_id)
    assert Notification.objects.filter(campaign=spring, status="queued").count() == 3
