"""Campaign launches: chunks sent as rows are written, a launch that fails or is cancelled, resuming a failed campaign."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from core.base_task import Attempt
from notifications.models import Campaign, EmailPreference, Notification
from notifications.services import campaigns, sweeps
from tests.factories import UserFactory
from tests.notifications.helpers import campaign
from tests.support.broker import messages_in, queue_keys

# Service tests: bin/test runs them on PostgreSQL and again on SQLite, the embedded default.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded_db]


def test_a_campaign_whose_launch_breaks_is_marked_failed_with_the_error(broker) -> None:
    UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    Campaign.objects.filter(pk=spring.pk).update(body="{% load no_such_library %}")  # broken after it started

    with pytest.raises(Exception, match="no_such_library"):
        campaigns.launch_campaign(spring.pk, task_id="launch-1")

    spring.refresh_from_db()
    assert spring.status == "failed"
    assert "no_such_library" in spring.error


def queued_chunks(broker) -> list[tuple[int, int]]:
    """The (first id, last id) of every send_campaign_chunk message waiting in Redis."""
    ranges = []
    for message in messages_in(broker, "low_priority"):
        if message["headers"]["task"] == "notifications.tasks.send_campaign_chunk":
            args = json.loads(base64.b64decode(message["body"]))[0]
            ranges.append((args[1], args[2]))
    return sorted(ranges)


def test_launching_sends_each_batch_s_chunks_as_it_is_written_covering_every_row_once(broker, monkeypatch) -> None:
    monkeypatch.setattr(campaigns, "MATERIALISE_BATCH_SIZE", 3)
    for _ in range(7):
        UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)

    # Batches of 3, 3 and 1 rows, each sent as its own chunk once written (one chunk
    # holds up to CHUNK_SIZE rows, so writing everything first would make one).
    assert campaigns.launch_campaign(spring.pk, task_id="launch-1") == 3

    ids = sorted(Notification.objects.filter(campaign=spring).values_list("pk", flat=True))
    ranges = queued_chunks(broker)
    covered = [pk for first, last in ranges for pk in ids if first <= pk <= last]
    assert covered == ids  # every row in exactly one chunk
    spring.refresh_from_db()
    assert (spring.total, spring.status) == (7, "sending") and spring.launched_at is not None


def test_a_campaign_is_not_done_before_its_launch_has_written_every_row(smtp_server, settings) -> None:
    settings.EMAIL_RATE_LIMIT = None
    UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")
    row = Notification.objects.get(campaign=spring)
    Campaign.objects.filter(pk=spring.pk).update(launched_at=None)  # as if later batches were still being written

    campaigns.send_campaign_chunk(spring.pk, row.pk, row.pk, attempt=Attempt("chunk-1"))
    spring.refresh_from_db()
    assert (spring.status, spring.sent) == ("sending", 1)

    Campaign.objects.filter(pk=spring.pk).update(launched_at=timezone.now())
    assert campaigns.finish_campaign_if_done(spring.pk)


def test_a_cancel_during_the_launch_stops_it_and_leaves_no_queued_row(broker, monkeypatch) -> None:
    monkeypatch.setattr(campaigns, "MATERIALISE_BATCH_SIZE", 2)
    users = [UserFactory() for _ in range(5)]
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    render = campaigns.campaign_message

    def staff_cancel_while_the_second_batch_is_written(campaign: Campaign, user: object, *args: object) -> object:
        if user.pk == users[2].pk:
            campaigns.cancel_campaign(campaign.pk)
        return render(campaign, user, *args)

    monkeypatch.setattr(campaigns, "campaign_message", staff_cancel_while_the_second_batch_is_written)
    campaigns.launch_campaign(spring.pk, task_id="launch-1")

    rows = Notification.objects.filter(campaign=spring)
    assert rows.count() == 4  # the third batch was never written
    assert not rows.filter(status="queued").exists()
    assert len(queued_chunks(broker)) == 1  # only the first batch's chunk went out
    spring.refresh_from_db()
    assert spring.status == "cancelled" and spring.launched_at is None


def test_a_launch_whose_audience_emptied_since_the_start_finishes_with_nothing_to_send(broker) -> None:
    customer = UserFactory()
    spring = campaign()
    campaigns.start_campaign(spring.pk)
    EmailPreference.objects.create(user=customer, unsubscribed_at=timezone.now())

    assert campaigns.launch_campaign(spring.pk, task_id="launch-1") == 0
    spring.refresh_from_db()
    assert (spring.status, spring.total) == ("done", 0)


def test_the_sweep_relaunches_a_campaign_whose_launch_message_never_arrived(broker, settings) -> None:
    UserFactory.create_batch(2)
    stalled, recent = campaign(name="Stalled"), campaign(name="Recent")
    # In this test's transaction the launch that start_campaign sends after the commit never goes out.
    campaigns.start_campaign(stalled.pk)
    campaigns.start_campaign(recent.pk)
    settings.NOTIFICATION_REQUEUE_AFTER = timedelta(minutes=5)
    Campaign.objects.filter(pk=stalled.pk).update(started_at=timezone.now() - timedelta(minutes=6))

    assert sweeps.requeue_stale_notifications() == 1
    assert sweeps.requeue_stale_notifications() == 0  # the next sweep leaves it to the launch it sent

    [message] = messages_in(broker, "low_priority")
    assert message["headers"]["task"] == "notifications.tasks.launch_campaign"
    assert json.loads(message["headers"]["argsrepr"]) == [stalled.pk]
    stalled.refresh_from_db()
    assert stalled.task_id == message["headers"]["id"]
    assert Campaign.objects.get(pk=recent.pk).task_id == ""  # started a moment ago: its launch may still come

    campaigns.launch_campaign(stalled.pk, task_id=stalled.task_id)
    assert Notification.objects.filter(campaign=stalled).count() == 2
    broker.delete(*queue_keys("low_priority"))
    # Should the original message turn up after all, it stops: the campaign is launched.
    assert campaigns.launch_campaign(stalled.pk, task_id="the-original-launch") == 0
    assert Notification.objects.filter(campaign=stalled).count() == 2
    assert messages_in(broker, "low_priority") == []


def a_campaign_whose_launch_failed_after_writing_three_rows(monkeypatch) -> Campaign:
    """7 customers, rows written 3 at a time; the 5th customer's row cannot be rendered, so the launch fails."""
    monkeypatch.setattr(campaigns, "MATERIALISE_BATCH_SIZE", 3)
    users = [UserFactory() for _ in range(7)]
    users[4].username = "breaks"
    users[4].save()
    spring = campaign(body='{% if username == "breaks" %}{% url "no-such-page" %}{% endif %}Hello')
    campaigns.start_campaign(spring.pk)
    with pytest.raises(Exception, match="no-such-page"):
        campaigns.launch_campaign(spring.pk, task_id="launch-1")
    spring.refresh_from_db()
    return spring


def test_a_failed_launch_cancels_its_queued_rows_and_the_stale_sweep_leaves_them_alone(
    broker, monkeypatch, settings
) -> None:
    spring = a_campaign_whose_launch_failed_after_writing_three_rows(monkeypatch)
    broker.delete(*queue_keys("low_priority"))  # the first batch's chunk, which found the campaign failed

    rows = Notification.objects.filter(campaign=spring)
    assert spring.status == "failed"
    assert set(rows.values_list("status", "last_error")) == {("cancelled", campaigns.LAUNCH_FAILED_NOTE)}
    assert rows.count() == 3
    rows.update(created_at=timezone.now() - timedelta(hours=1))
    for _ in range(2):
        assert sweeps.requeue_stale_notifications() == 0
    assert messages_in(broker, "low_priority") == []


def test_the_stale_sweep_cancels_rows_left_queued_by_a_failed_or_cancelled_campaign(broker, monkeypatch) -> None:
    spring = a_campaign_whose_launch_failed_after_writing_three_rows(monkeypatch)
    rows = Notification.objects.filter(campaign=spring)
    rows.update(status="queued", last_error="", created_at=timezone.now() - timedelta(hours=1))  # as before the fix

    sweeps.requeue_stale_notifications()

    assert set(rows.values_list("status", "last_error")) == {("cancelled", campaigns.LAUNCH_FAILED_NOTE)}


def test_a_failed_campaign_resumed_sends_every_recipient_one_email(
    smtp_server, settings, broker, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    settings.EMAIL_RATE_LIMIT = None
    spring = a_campaign_whose_launch_failed_after_writing_three_rows(monkeypatch)
    UserFactory._meta.model.objects.filter(username="breaks").update(username="mended")  # what made it fail is gone
    broker.delete(*queue_keys("low_priority"))

    with django_capture_on_commit_callbacks(execute=True):
        campaigns.resume_campaign(spring.pk, actor_id=None)

    spring.refresh_from_db()
    assert (spring.status, spring.error, spring.launched_at) == ("sending", "", None)
    assert Notification.objects.filter(campaign=spring, status="queued").count() == 3
    [launch] = messages_in(broker, "low_priority")
    assert launch["headers"]["task"] == "notifications.tasks.launch_campaign"
    campaigns.launch_campaign(spring.pk, task_id=launch["headers"]["id"])
    ids = list(Notification.objects.filter(campaign=spring).order_by("pk").values_list("pk", flat=True))
    campaigns.send_campaign_chunk(spring.pk, ids[0], ids[-1], attempt=Attempt("chunk-1"))

    spring.refresh_from_db()
    assert (spring.status, spring.total, spring.sent, spring.failed) == ("done", 7, 7, 0)
    assert smtp_server.inbox.count() == 7
    assert len({message["To"] for message in smtp_server.inbox.messages}) == 7


@pytest.mark.parametrize("status", ["draft", "sending", "done", "cancelled"])
def test_only_a_failed_campaign_can_be_resumed(status: str) -> None:
    spring = campaign(status=status)
    with pytest.raises(campaigns.CampaignError, match="Only a failed campaign can be resumed"):
        campaigns.resume_campaign(spring.pk)
    spring.refresh_from_db()
    assert spring.status == status


def test_a_failed_campaign_can_be_cancelled_for_good(monkeypatch, broker) -> None:
    spring = a_campaign_whose_launch_failed_after_writing_three_rows(monkeypatch)

    campaigns.cancel_campaign(spring.pk)

    spring.refresh_from_db()
    assert spring.status == "cancelled"
    with pytest.raises(campaigns.CampaignError):
        campaigns.resume_campaign(spring.pk)
