"""Turning an outbox row into an email, and reading what an SMTP error means."""

from __future__ import annotations

import secrets
import smtplib

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import SafeMIMEMultipart

from notifications.models import Notification


class OutboxEmail(EmailMultiAlternatives):
    """Django's text+HTML email, with its MIME boundary chosen up front instead of by the email package.

    The email package makes a random boundary for each message and compiles a new
    regular expression to scan the text for it: 7% of a campaign chunk's time,
    and every new pattern pushes another out of `re`'s cache. This boundary is
    random too; "=_" never occurs in quoted-printable or base64 text, so only the
    raw bodies are checked, with a substring test, and the package's own way is
    kept in the (astronomically unlikely) case of a hit.
    """

    def message(self) -> SafeMIMEMultipart:
        message = super().message()
        boundary = f"=_{secrets.token_hex(12)}"
        bodies = (self.body, *(content for content, _ in self.alternatives))
        if message.is_multipart() and not any(boundary in str(body) for body in bodies):
            message.set_boundary(boundary)
        return message


def build_message(notification: Notification, connection: BaseEmailBackend | None = None) -> EmailMultiAlternatives:
    domain = settings.DEFAULT_FROM_EMAIL.rsplit("@", 1)[-1].rstrip(">") or "localhost"
    # Stable per row: if a crash makes us send twice, mail systems can tell it is one message.
    headers = {**notification.headers, "Message-ID": f"<notification-{notification.pk}@{domain}>"}
    message = OutboxEmail(
        subject=notification.subject,
        body=notification.body_text,
        to=[notification.recipient],
        headers=headers,
        connection=connection,
    )
    if notification.body_html:
        message.attach_alternative(notification.body_html, "text/html")
    return message


def is_transient(exc: BaseException) -> bool:
    """Network trouble and 4xx answers may go away; 5xx answers and anything else will not."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError))


def describe_smtp_error(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{address} refused: {code} {text!r}" for address, (code, text) in exc.recipients.items())
    return f"{type(exc).__name__}: {exc}"
