"""Marketing preferences: customers opt out of campaigns and the digest with a signed link; order emails go on."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.urls import reverse
from django.utils import timezone

from notifications.models import EmailPreference, Notification

Status = Notification.Status


UNSUBSCRIBE_SALT = "notifications.unsubscribe"


class InvalidUnsubscribeLink(Exception):
    """The unsubscribe token was altered or is not one of ours."""


def unsubscribe_token(user_id: int) -> str:
    return signing.dumps(user_id, salt=UNSUBSCRIBE_SALT)


def unsubscribe_url(user_id: int) -> str:
    return settings.SITE_URL + reverse("notifications:unsubscribe", args=[unsubscribe_token(user_id)])


def user_for_unsubscribe_token(token: str) -> object:
    try:
        user_id = signing.loads(token, salt=UNSUBSCRIBE_SALT)
        return get_user_model().objects.get(pk=user_id)
    except (signing.BadSignature, get_user_model().DoesNotExist, TypeError, ValueError):
        raise InvalidUnsubscribeLink("This unsubscribe link is not valid.") from None


def set_marketing_subscription(user_id: int, *, subscribed: bool) -> EmailPreference:
    """Opt a customer in or out of campaigns and the digest; order emails are not affected."""
    preference, _ = EmailPreference.objects.update_or_create(
        user_id=user_id, defaults={"unsubscribed_at": None if subscribed else timezone.now()}
    )
    # Marketing messages already queued for them are dropped too.
    if not subscribed:
        Notification.objects.filter(user_id=user_id, kind__in=Notification.BULK_KINDS, status=Status.QUEUED).update(
            status=Status.CANCELLED, last_error="The customer unsubscribed.", updated_at=timezone.now()
        )
    return preference


def marketing_headers(unsubscribe: str) -> dict[str, str]:
    """The List-Unsubscribe headers for a link signed once per message (signing is costly: a third of a launch)."""
    # RFC 8058 one-click: mail clients POST "List-Unsubscribe=One-Click" to the link.
    return {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
