"""Soft time limits hit by an email send and a campaign chunk: the task stops cleanly and no email goes twice.

Real prefork workers, which enforce Celery's time limits, against a real SMTP
server that answers slowly. The limits are made small per message
(send_task's soft_time_limit), as a worker would apply the task's own.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.utils import timezone

from config import celery_app
from notifications.models import Campaign, Notification
from tests.notifications.helpers import make_customers
from tests.support.broker import wait_until_idle
from tests.support.processes import wait_for
from tests.support.smtp import SmtpServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FAST = {"EMAIL_RATE_LIMIT": "off", "PAYMENT_SANDBOX_LATENCY_MS": "0"}


def reaches(row: Notification | Campaign, statuses: tuple[str, ...], timeout: float = 90) -> None:
    def reached() -> bool:
        row.refresh_from_db()
        return row.status in statuses

    wait_for(reached, timeout, 0.1, f"{row} to reach {statuses}")


def sending_campaign(recipients: int, prefix: str) -> tuple[Campaign, list[int]]:
    """A launched campaign with one queued row per new customer (no task sent for it yet); the row ids."""
    users = make_customers(recipients, prefix=prefix)
    now = timezone.now()
    campaign = Campaign.objects.create(
        name=prefix, subject="News", body="Hello", status="sending", total=recipients, started_at=now, launched_at=now
    )
    Notification.objects.bulk_create(
        Notification(
            kind="campaign",
            campaign=campaign,
            user_id=pk,
            recipient=f"{prefix}{i}@example.com",
            subject="News",
            body_text="Hello",
            dedup_key=f"campaign:{campaign.pk}:user:{pk}",
        )
        for i, pk in enumerate(sorted(users))
    )
    ids = list(Notification.objects.filter(campaign=campaign).order_by("pk").values_list("pk", flat=True))
    return campaign, ids


def deliveries(server: SmtpServer) -> Counter:
    with server.inbox.lock:
        return Counter(message["To"] for message in server.inbox.messages)


def test_a_soft_time_limit_during_an_email_send_records_it_sent_and_it_is_delivered_once(
    start_worker_process, broker
) -> None:
    # The server takes the message, then takes 3 s to say so: the soft limit (1 s)
    # comes while the send waits for that answer.
    with SmtpServer(delay=3) as server:
        worker = start_worker_process(EMAIL_URL=server.url, **FAST)
        row = Notification.objects.create(
            kind="test", recipient="slow@example.com", subject="Slow", body_text="Hello", dedup_key="slow-1"
        )
        celery_app.send_task("notifications.tasks.send_notification", [row.pk], soft_time_limit=1, time_limit=30)

        reaches(row, Notification.FINAL_STATUSES)
        wait_until_idle(broker, "the send and anything it re-sent")
        wait_for(lambda: "Soft time limit (1s) exceeded" in worker.output(), 30, 0.1, "the soft limit to be logged")

    assert (row.status, row.last_error, row.attempts) == ("sent", "", 1)
    assert deliveries(server) == {"slow@example.com": 1}


def test_a_campaign_chunk_stopped_by_its_soft_time_limit_records_what_it_sent_and_the_rest_follows_once(
    start_worker_process, broker
) -> None:
    campaign, ids = sending_campaign(8, "soft")
    with SmtpServer(delay=0.5) as server:  # 8 emails take 4 s; the chunk's soft limit is 2 s
        worker = start_worker_process(EMAIL_URL=server.url, **FAST)
        celery_app.send_task(
            "notifications.tasks.send_campaign_chunk", [campaign.pk, ids[0], ids[-1]], soft_time_limit=2, time_limit=60
        )

        reaches(campaign, ("done", "failed", "cancelled"))
        wait_until_idle(broker, "the chunk and its continuation")
        wait_for(lambda: "Soft time limit (2s) exceeded" in worker.output(), 30, 0.1, "the soft limit to be logged")

    rows = Notification.objects.filter(campaign=campaign)
    assert campaign.status == "done"
    assert Counter(rows.values_list("status", flat=True)) == {"sent": 8}
    assert (campaign.sent, campaign.failed) == (8, 0)
    assert deliveries(server) == {f"soft{i}@example.com": 1 for i in range(8)}
    assert "stopped at its soft time limit" in worker.output()
