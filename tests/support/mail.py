"""Email backends for tests that need something to happen at a given message."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from django.core import mail
from django.core.mail import EmailMessage
from django.core.mail.backends.locmem import EmailBackend

from core.interruptions import SOFT_LIMIT_SIGNAL


class SoftLimitDuringThirdEmail(EmailBackend):
    """The locmem backend; the soft time limit's signal arrives while the third email is being sent.

    In a process whose SIGUSR1 handler is billiard's (a prefork child, or a test
    that installs it), that is Celery's soft time limit hitting mid-send.
    """

    def send_messages(self, messages: Sequence[EmailMessage]) -> int:
        if len(mail.outbox) == 2:
            os.kill(os.getpid(), SOFT_LIMIT_SIGNAL)
        return super().send_messages(messages)


class NotesUnrecordedEmails(EmailBackend):
    """The locmem backend; before each send it notes how many emails it already sent are still unrecorded.

    `unrecorded` is what a worker killed at that moment would leave to the sweep to
    send again. `pause` makes each send take that many seconds, as a slow server does.
    """

    unrecorded: list[int] = []
    pause = 0.0

    def send_messages(self, messages: Sequence[EmailMessage]) -> int:
        from notifications.models import Notification

        delivered = [address for message in mail.outbox for address in message.to]
        waiting = Notification.objects.filter(recipient__in=delivered, status=Notification.Status.SENDING).count()
        type(self).unrecorded.append(waiting)
        time.sleep(self.pause)
        return super().send_messages(messages)


class SlowNotesUnrecordedEmails(NotesUnrecordedEmails):
    pause = 0.03
