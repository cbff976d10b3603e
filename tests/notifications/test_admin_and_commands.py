"""Staff tools for email: the outbox and campaign admin, the progress endpoint and send_test_email."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from notifications.models import Campaign, Notification
from tests.factories import UserFactory
from tests.notifications.helpers import transactional

pytestmark = pytest.mark.django_db


def test_the_outbox_filters_by_status_and_kind_and_searches(admin_client) -> None:
    a = transactional(recipient="alice@example.com", key="a")
    b = transactional(recipient="bob@example.com", key="b", kind="order_completed")
    Notification.objects.filter(pk=b.pk).update(status="failed", last_error="550 no such user")

    def listed(query: str) -> set[int]:
        response = admin_client.get(f"/admin/notifications/notification/?{query}")
        assert response.status_code == 200
        return {row.pk for row in response.context["cl"].result_list}

    assert listed("status__exact=failed") == {b.pk}
    assert listed("kind__exact=test") == {a.pk}
    assert listed("q=alice") == {a.pk}
    page = admin_client.get(f"/admin/notifications/notification/{b.pk}/change/").content.decode()
    assert "550 no such user" in page


def test_cancel_queued_from_the_admin(admin_client) -> None:
    queued = transactional(key="q")
    response = admin_client.post(
        "/admin/notifications/notification/", {"action": "cancel_queued", "_selected_action": [queued.pk]}, follow=True
    )
    assert "Cancelled 1 queued message(s)." in response.content.decode()
    queued.refresh_from_db()
    assert queued.status == "cancelled"


def test_a_campaign_with_a_template_error_or_no_date_is_refused_with_form_errors(admin_client) -> None:
    response = admin_client.post(
        "/admin/notifications/campaign/add/",
        {
            "name": "Bad",
            "subject": "Hi {{ first_name|shout }}",
            "body": "{% if %}",
            "audience": "ordered_since",
            "ordered_since": "",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "template error" in errors["subject"][0] and "template error" in errors["body"][0]
    assert "Choose the date" in errors["ordered_since"][0]
    assert not Campaign.objects.exists()


def test_starting_a_campaign_with_an_empty_audience_shows_the_reason(admin_client) -> None:
    campaign = Campaign.objects.create(name="Nobody", subject="Hi", body="Hello")
    response = admin_client.post(f"/admin/notifications/campaign/{campaign.pk}/start/", follow=True)
    assert "The audience is empty" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == "draft"


def test_the_campaign_page_shows_progress_and_start_cancel_buttons(admin_client) -> None:
    UserFactory()
    campaign = Campaign.objects.create(name="Spring", subject="Hi", body="Hello", status="sending", total=10, sent=4)
    page = admin_client.get(f"/admin/notifications/campaign/{campaign.pk}/change/").content.decode()
    assert '<progress max="100" value="40"' in page
    assert "Cancel campaign" in page and "Start sending" not in page
    assert admin_client.get(f"/admin/notifications/campaign/{campaign.pk}/start/").status_code == 405


def test_the_progress_endpoint_is_staff_only(admin_client, customer_client) -> None:
    campaign = Campaign.objects.create(name="Spring", subject="Hi", body="Hello", status="sending", total=10, sent=4)
    assert admin_client.get(f"/api/campaigns/{campaign.pk}/").json() == {
        "id": campaign.pk,
        "status": "sending",
        "total": 10,
        "sent": 4,
        "failed": 0,
        "progress": 40,
    }
    assert customer_client.get(f"/api/campaigns/{campaign.pk}/").status_code == 403
    assert Client().get(f"/api/campaigns/{campaign.pk}/").status_code == 401
    assert admin_client.get("/api/campaigns/999999/").status_code == 404


def test_send_test_email_rejects_a_bad_address() -> None:
    with pytest.raises(CommandError, match="not a valid email address"):
        call_command("send_test_email", "not-an-address", stdout=StringIO())
    assert not Notification.objects.exists()


def test_send_test_email_says_when_no_worker_sent_it_in_time() -> None:
    with pytest.raises(CommandError, match=r"Not sent after 0\.5 s"):
        call_command("send_test_email", "ops@example.com", "--timeout", "0.5", stdout=StringIO())


def test_send_test_email_has_help() -> None:
    with pytest.raises(SystemExit) as exit_info:
        call_command("send_test_email", "--help", stdout=StringIO())
    assert exit_info.value.code == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_send_test_email_goes_through_a_worker_to_the_mail_server(start_worker_process, smtp_server) -> None:
    start_worker_process(EMAIL_URL=smtp_server.url, EMAIL_RATE_LIMIT="off")
    out = StringIO()

    call_command("send_test_email", "ops@example.com", "--timeout", "60", stdout=out)

    assert "Sent at" in out.getvalue()
    [message] = smtp_server.inbox.to("ops@example.com")
    assert message["Subject"] == "Test email from the shop back office"


def test_staff_resume_or_cancel_a_failed_campaign_from_its_page(
    admin_client, django_capture_on_commit_callbacks
) -> None:
    UserFactory()
    failed = Campaign.objects.create(name="Spring", subject="Hi", body="Hello", status="failed", error="boom")
    page = admin_client.get(f"/admin/notifications/campaign/{failed.pk}/change/").content.decode()
    assert "Resume sending" in page and "Cancel campaign" in page
    assert admin_client.get(f"/admin/notifications/campaign/{failed.pk}/resume/").status_code == 405

    with django_capture_on_commit_callbacks() as sent:
        response = admin_client.post(f"/admin/notifications/campaign/{failed.pk}/resume/", follow=True)
    assert "is being sent again" in response.content.decode()
    failed.refresh_from_db()
    assert failed.status == "sending" and len(sent) == 1

    again = admin_client.post(f"/admin/notifications/campaign/{failed.pk}/resume/", follow=True)
    assert "Only a failed campaign can be resumed; this one is sending." in again.content.decode()

    other = Campaign.objects.create(name="Summer", subject="Hi", body="Hello", status="failed", error="boom")
    response = admin_client.post(
        "/admin/notifications/campaign/", {"action": "cancel_selected", "_selected_action": [other.pk]}, follow=True
    )
    assert "is cancelled" in response.content.decode()
    other.refresh_from_db()
    assert other.status == "cancelled"


def test_resuming_a_campaign_needs_the_right_to_change_campaigns(client) -> None:
    from django.contrib.auth.models import Permission

    failed = Campaign.objects.create(name="Spring", subject="Hi", body="Hello", status="failed", error="boom")
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_campaign"))
    client.force_login(viewer)

    assert client.post(f"/admin/notifications/campaign/{failed.pk}/resume/").status_code == 403
    failed.refresh_from_db()
    assert failed.status == "failed"
