"""4. A campaign to N recipients over SMTP, chunked as the product sends it, against one task per email.

Both go to the same local SMTP server with the rate limit off. The product's way
is what staff get: start_campaign -> launch_campaign writes the rows and fans
out send_campaign_chunk tasks (200 emails over one SMTP connection each). The
baseline queues the same number of emails as single messages, each sent by its
own send_notification task over its own connection.
"""

from __future__ import annotations

from bench.harness import flush_broker, log, median, ratio, reset_tables, wait_until
from bench.processes import running_worker, smtp_sink

ROUND_TIMEOUT = 1800
SUBJECT = "Spring sale, {{ first_name }}"
BODY = (
    "Hello {{ first_name }},\n\nEverything in the shop is 20% off this week. Thank you for being a customer.\n\n"
    "The shop team"
)


def prepare_audience(count: int) -> None:
    """Exactly `count` active customers with an email address, and nobody else."""
    from django.contrib.auth import get_user_model

    reset_tables("auth.User", "notifications.Notification", "notifications.Campaign")
    users = get_user_model()
    users.objects.bulk_create(
        [
            users(username=f"fan{index:05d}", email=f"fan{index:05d}@example.com", first_name=f"Fan{index}")
            for index in range(count)
        ],
        batch_size=2000,
    )


def chunked_round(env: dict[str, str], count: int) -> dict:
    """The product's campaign: emails/s from start to done, and the worker's peak RSS."""
    from notifications.models import Campaign
    from notifications.services import campaigns

    reset_tables("notifications.Notification", "notifications.Campaign", "django_celery_results.TaskResult")
    flush_broker()
    with smtp_sink(env) as sink, running_worker({**env, "EMAIL_URL": sink.url}, 2) as worker:
        campaign = Campaign.objects.create(name="Bench", subject=SUBJECT, body=BODY)
        campaigns.start_campaign(campaign.pk)
        finished = Campaign.objects.filter(pk=campaign.pk, status__in=["done", "failed", "cancelled"])
        wait_until(finished.exists, ROUND_TIMEOUT, f"the campaign to {count} recipients", 0.2)
        rss = worker.peak_rss_mb()
    campaign.refresh_from_db()
    if (campaign.status, campaign.sent) != ("done", count):
        raise AssertionError(f"campaign ended {campaign.status} with {campaign.sent} of {count} sent")
    return {"rate": count / (campaign.finished_at - campaign.started_at).total_seconds(), "rss": rss}


def one_task_per_email_round(env: dict[str, str], count: int) -> float:
    """The baseline: the same emails as single messages, one send_notification task each; emails/s."""
    from django.db.models import Max, Min

    from notifications.models import Notification
    from notifications.tasks import send_notification

    reset_tables("notifications.Notification", "django_celery_results.TaskResult")
    flush_broker()
    body = BODY.replace("{{ first_name }}", "Fan")
    rows = Notification.objects.bulk_create(
        [
            Notification(
                kind=Notification.Kind.TEST,
                recipient=f"fan{index:05d}@example.com",
                subject="Spring sale, Fan",
                body_text=body,
                body_html=f"<p>{body}</p>",
                dedup_key=f"bench:{index}",
            )
            for index in range(count)
        ],
        batch_size=2000,
    )
    from config import celery_app

    with celery_app.producer_or_acquire() as producer:
        for row in rows:
            send_notification.apply_async((row.pk,), producer=producer)
    with smtp_sink(env) as sink, running_worker({**env, "EMAIL_URL": sink.url}, 2):
        sent = Notification.objects.filter(status=Notification.Status.SENT)
        wait_until(lambda: sent.count() >= count, ROUND_TIMEOUT, f"{count} single emails", 0.25)
    span = sent.aggregate(first=Min("sent_at"), last=Max("sent_at"))
    return (count - 1) / (span["last"] - span["first"]).total_seconds()


def run(env: dict[str, str], quick: bool) -> dict:
    small, large, rounds = (200, 1000, 1) if quick else (1000, 10_000, 3)
    prepare_audience(small)
    small_round = chunked_round(env, small)
    log(f"campaign ({small} recipients): {small_round['rate']:.0f} emails/s, worker RSS {small_round['rss']}")
    prepare_audience(large)
    chunked, baseline = [], []
    for index in range(rounds):
        chunked.append(chunked_round(env, large))
        baseline.append(one_task_per_email_round(env, large))
        log(
            f"campaign round {index + 1}/{rounds} ({large} recipients): chunked {chunked[-1]['rate']:.0f} emails/s, "
            f"one task per email {baseline[-1]:.0f} emails/s"
        )
    rate, base = median([r["rate"] for r in chunked]), median(baseline)
    return {
        "name": "Campaign",
        "what": f"{large} recipients to a local SMTP server, rate limit off, 2 worker processes",
        "unit": "emails/s",
        "rounds": [round(r["rate"], 1) for r in chunked],
        "median": round(rate, 1),
        "baseline_rounds": [round(value, 1) for value in baseline],
        "baseline_median": round(base, 1),
        "ratio": ratio(rate / base),
        "worker_peak_rss_mb": {str(small): small_round["rss"], str(large): chunked[-1]["rss"]},
    }
