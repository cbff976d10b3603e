"""A task stopped mid-send, by its soft time limit or by a termination: it stops cleanly and no email goes twice.

Real prefork workers, which enforce Celery's time limits and terminate tasks
(a lost broker connection, `revoke --terminate`), against a real SMTP server
that answers slowly. The limits are made small per message (send_task's
soft_time_limit), as a worker would apply the task's own.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.utils import timezone

from config import celery_app
from notifications.models import Campaign, Notification
from tests.notifications.helpers import make_customers
from tests.support.broker import sweep_until, wait_until_idle
from tests.support.processes import WorkerProcess, wait_for
from tests.support.servers import RabbitMQServer, own_broker_server
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


def queued_email(name: str) -> Notification:
    """One queued email to <name>@example.com (no task sent for it yet)."""
    return Notification.objects.create(
        kind="test", recipient=f"{name}@example.com", subject=name, body_text="Hello", dedup_key=f"{name}-1"
    )


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
        row = queued_email("slow")
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


def test_an_email_send_terminated_mid_conversation_is_recorded_sent_and_delivered_once(
    start_worker_process, broker
) -> None:
    # The server takes 5 s to answer the message; the worker terminates the task
    # (SIGTERM to its pool process, as on a lost connection) while it waits.
    with SmtpServer(delay=5) as server:
        worker = start_worker_process(EMAIL_URL=server.url, **FAST)
        row = queued_email("cut")
        task_id = celery_app.send_task("notifications.tasks.send_notification", [row.pk]).id
        wait_for(lambda: server.inbox.begun() == 1, 30, 0.05, "the send to begin")
        celery_app.control.revoke(task_id, terminate=True)

        reaches(row, Notification.FINAL_STATUSES, timeout=30)
        wait_for(lambda: server.inbox.count() == 1, 30, 0.1, "the server to take the message")
        wait_until_idle(broker, "the terminated send")
        output = worker.output()

    assert "terminated during a send and its record" in output, output[-3000:]
    assert (row.status, row.last_error, row.attempts) == ("sent", "", 1)
    assert deliveries(server) == {"cut@example.com": 1}


@pytest.mark.rabbitmq
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_an_email_whose_broker_connection_drops_mid_send_is_recorded_sent_and_its_redelivery_skips_it(
    process_env: dict[str, str], pool: str
) -> None:
    """Celery terminates the tasks it runs when the connection drops (acks_late): the send finishes first.

    A threads pool cannot terminate a task (Celery logs that it failed to): the
    send runs to its end and is recorded all the same.
    """
    with own_broker_server() as broker_server, SmtpServer(delay=5) as server:
        env = {**process_env, **FAST, "CELERY_BROKER_URL": broker_server.url, "EMAIL_URL": server.url}
        with WorkerProcess(env, concurrency=1, pool=pool) as worker:
            worker.wait_started()
            row = queued_email("lost")
            with celery_app.connection_for_write(broker_server.url) as connection:
                task_id = celery_app.send_task(
                    "notifications.tasks.send_notification", [row.pk], connection=connection
                ).id
            wait_for(lambda: server.inbox.begun() == 1, 30, 0.05, "the send to begin")
            broker_server.stop()
            wait_for(lambda: "Connection to broker lost" in worker.output(), 30, 0.1, "the worker to notice")

            reaches(row, Notification.FINAL_STATUSES, timeout=30)
            broker_server.start()
            if isinstance(broker_server, RabbitMQServer):
                # The quorum queue kept the unacknowledged message: it comes back, finds the row sent.
                # (A terminated prefork run reports nothing; a thread's run reported its success.)
                runs = 1 if pool == "prefork" else 2
                wait_for(
                    lambda: (
                        worker.output().count(f"send_notification[{task_id}] received") == 2
                        and worker.output().count(f"id={task_id} state=SUCCESS") == runs
                    ),
                    90,
                    0.2,
                    "the redelivered task to run",
                )
            output = worker.output()
            assert worker.alive(), output[-3000:]

    assert f"send_notification[{task_id}] cannot be acknowledged after a connection loss" in output, output[-3000:]
    if pool == "prefork":
        assert "terminated during a send and its record" in output, output[-3000:]
    else:
        assert "Failed to cancel active request" in output, output[-3000:]
    row.refresh_from_db()
    assert (row.status, row.last_error, row.attempts) == ("sent", "", 1)
    assert deliveries(server) == {"lost@example.com": 1}


def test_a_campaign_chunk_terminated_mid_send_records_what_it_sent_and_gives_the_rest_back(
    start_worker_process, broker
) -> None:
    campaign, ids = sending_campaign(8, "term")
    with SmtpServer(delay=0.5) as server:
        worker = start_worker_process(EMAIL_URL=server.url, NOTIFICATION_REQUEUE_AFTER="1s", **FAST)
        task_id = celery_app.send_task("notifications.tasks.send_campaign_chunk", [campaign.pk, ids[0], ids[-1]]).id
        wait_for(lambda: server.inbox.begun() == 3, 30, 0.02, "the third email to begin")
        celery_app.control.revoke(task_id, terminate=True)
        wait_for(lambda: "stopped by a termination" in worker.output(), 30, 0.1, "the chunk to stop")

        rows = Notification.objects.filter(campaign=campaign)
        # The email in flight when the signal came was finished (every message begun was
        # taken), what went out is recorded sent, and every other row is free again, its
        # attempt uncounted: none waits under the dead task's lease. (A slow revoke may
        # let one more email begin first.)
        sent = server.inbox.count()
        assert 3 <= sent < 8 and server.inbox.begun() == sent, (sent, server.inbox.begun())
        assert Counter(rows.values_list("status", "attempts")) == {("sent", 1): sent, ("queued", 0): 8 - sent}
        assert set(rows.filter(status="queued").values_list("lease_owner", flat=True)) == {""}
        # The revoked message is gone (a lost connection would deliver it again); the sweep sends the rest.
        sweep_until(
            celery_app.conf.broker_url, "notifications.tasks.requeue_stale_notifications", campaign, "done", "the rest"
        )

    assert Counter(rows.values_list("status", flat=True)) == {"sent": 8}
    assert deliveries(server) == {f"term{i}@example.com": 1 for i in range(8)}
