from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.models import Notification
from notifications.services import outbox


class Command(BaseCommand):
    help = (
        "Check the mail set-up end to end: queue a test email in the outbox and wait until a worker has sent it "
        "through EMAIL_URL. With --no-wait, only queue it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("address", help="Where to send the test email.")
        parser.add_argument("--timeout", type=float, default=60, help="Seconds to wait for a worker (default 60).")
        parser.add_argument("--no-wait", action="store_true", help="Queue it and return at once.")

    def handle(self, *args: Any, address: str, timeout: float, no_wait: bool, **options: Any) -> None:
        try:
            notification = outbox.queue_test_email(address)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.message_dict["recipient"])) from None
        self.stdout.write(f"Queued test email {notification.pk} to {notification.recipient}.")
        if no_wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            notification.refresh_from_db()
            if notification.status == Notification.Status.SENT:
                self.stdout.write(self.style.SUCCESS(f"Sent at {notification.sent_at:%Y-%m-%d %H:%M:%S %Z}."))
                return
            if notification.status == Notification.Status.FAILED:
                raise CommandError(f"Sending failed: {notification.last_error}")
            time.sleep(0.5)
        raise CommandError(
            f"Not sent after {timeout:g} s (status {notification.status}, last error: "
            f"{notification.last_error or 'none'}). Is a worker consuming high_priority?"
        )
