"""A worker killed mid-chunk of a campaign: after the sweep every recipient has exactly one email."""

from __future__ import annotations

from collections import Counter

import pytest
from django.conf import settings
from django.db import transaction

from notifications.models import Campaign, Notification
from notifications.services import bulk, campaigns
from tests.notifications.helpers import make_customers
from tests.support.broker import sweep_until
from tests.support.processes import wait_for
from tests.support.smtp import SmtpServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FAST = {"EMAIL_RATE_LIMIT": "off", "PAYMENT_SANDBOX_LATENCY_MS": "0"}


def test_a_worker_killed_mid_chunk_loses_no_email_and_sends_none_twice_once_the_sweep_has_run(
    start_worker_process, broker
) -> None:
    make_customers(40, prefix="killed")
    spring = Campaign.objects.create(name="Spring", subject="Spring", body="Hello")
    timing = {**FAST, "NOTIFICATION_LEASE_TIMEOUT": "3s", "NOTIFICATION_REQUEUE_AFTER": "1s"}
    # The server waits before it answers MAIL FROM: an email cut off there was never
    # sent, so any second copy at the server would be the worker's doing. A send that
    # slow (over bulk.RECORD_WITHIN) has each email recorded before the next starts;
    # on a fast server a kill may resend up to RECORD_EVERY - 1 (tests/notifications/test_bulk.py).
    assert bulk.RECORD_WITHIN < 0.2, "this test needs each send slower than the record interval"
    with SmtpServer(mail_delay=0.2) as server:
        doomed = start_worker_process(concurrency=1, EMAIL_URL=server.url, **timing)
        with transaction.atomic():
            campaigns.start_campaign(spring.pk)
        wait_for(
            lambda: server.inbox.count() >= 10 and server.inbox.begun() > server.inbox.count(),
            90,
            0.01,
            "ten emails out and the next one begun",
        )
        doomed.kill_group()  # the whole worker: its chunk's message stays unacknowledged, only a sweep recovers it
        delivered_before = server.inbox.count()

        start_worker_process(concurrency=1, EMAIL_URL=server.url, **timing)

        # Done means no row is queued or being sent: no email can go out after this.
        # (The killed worker's message stays unacknowledged in Redis for the
        # visibility timeout, so the broker is not idle.)
        sweep_until(
            settings.CELERY_BROKER_URL,
            "notifications.tasks.requeue_stale_notifications",
            spring,
            "done",
            "the sweep to finish the campaign",
            timeout=120,
        )

    with server.inbox.lock:
        per_recipient = Counter(message["To"] for message in server.inbox.messages)
    assert 10 <= delivered_before < 40
    assert {address: n for address, n in per_recipient.items() if n != 1} == {}, "emails delivered twice"
    assert set(per_recipient) == {f"killed{i}@example.com" for i in range(40)}, "emails lost"
    rows = Notification.objects.filter(campaign=spring)
    assert Counter(rows.values_list("status", flat=True)) == {"sent": 40}
    assert (spring.sent, spring.failed, spring.total) == (40, 0, 40)
