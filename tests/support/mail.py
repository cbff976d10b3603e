"""Email backends for tests that need something to happen at a given message."""

from __future__ import annotations

import os
from collections.abc import Sequence

from django.core import mail
from django.core.mail import EmailMessage
from django.core.mail.backends.locmem import EmailBackend

from core.time_limits import SOFT_LIMIT_SIGNAL


class SoftLimitDuringThirdEmail(EmailBackend):
    """The locmem backend; the soft time limit's signal arrives while the third email is being sent.

    In a process whose SIGUSR1 handler is billiard's (a prefork child, or a test
    that installs it), that is Celery's soft time limit hitting mid-send.
    """

    def send_messages(self, messages: Sequence[EmailMessage]) -> int:
        if len(mail.outbox) == 2:
            os.kill(os.getpid(), SOFT_LIMIT_SIGNAL)
        return super().send_messages(messages)
