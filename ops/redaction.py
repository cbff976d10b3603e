"""Secrets that travel in URLs, cut out of anything written to a log.

A password-reset link and an unsubscribe link carry their credential in the path.
gunicorn's access log prints every path, and Django logs the path of a 404, so
the token of a link someone clicked would sit in the logs, readable by whoever
reads them. redact() replaces the token with "[redacted]"; the route stays.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# Each pattern keeps group 1 (the route) and drops what follows (the credential).
SECRET_URL_PARTS = (
    # /accounts/reset/<uidb64>/<token>/ (Django's own next step, set-password, is no secret)
    re.compile(r"(/accounts/reset/[^/?#\s\"]+/)(?!set-password/)[^/?#\s\"]+"),
    # /accounts/confirm/<uidb64>/<token>/, the sign-up confirmation link
    re.compile(r"(/accounts/confirm/[^/?#\s\"]+/)[^/?#\s\"]+"),
    # /unsubscribe/<token>/
    re.compile(r"(/unsubscribe/)[^/?#\s\"]+"),
)


def redact(text: str) -> str:
    for pattern in SECRET_URL_PARTS:
        text = pattern.sub(rf"\g<1>{REDACTED}", text)
    return text


class RedactSecretsFilter(logging.Filter):
    """Cut the credential out of reset and unsubscribe links in any record (Django logs the path of a 404)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
