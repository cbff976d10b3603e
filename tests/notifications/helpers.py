"""Helpers for notification tests."""

from __future__ import annotations

from notifications.models import Campaign, Notification
from notifications.services import outbox


def transactional(recipient: str = "alice@example.com", key: str = "t-1", **fields: object) -> Notification:
    return outbox.queue_email(
        kind=fields.pop("kind", Notification.Kind.TEST),
        recipient=recipient,
        subject=fields.pop("subject", "Hello"),
        body_text=fields.pop("body_text", "Hello there"),
        dedup_key=key,
        **fields,
    )


def make_customers(count: int, prefix: str = "bulk") -> list[int]:
    """Many customers at once (bulk insert), for campaign tests."""
    from django.contrib.auth import get_user_model

    users = get_user_model()
    batch = [users(username=f"{prefix}{i}", email=f"{prefix}{i}@example.com", password="!") for i in range(count)]
    users.objects.bulk_create(batch, batch_size=1000)
    return list(users.objects.filter(username__startswith=prefix).values_list("pk", flat=True))


def campaign(**fields: object) -> Campaign:
    defaults = {"name": "Spring", "subject": "Hi {{ first_name }}", "body": "Hello {{ username }}!"}
    return Campaign.objects.create(**{**defaults, **fields})
