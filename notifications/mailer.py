"""One kept-open SMTP connection per worker process for the emails sent one at a time.

send_notification sends one email per task. A new connection for each costs the
TCP handshake, the server's greeting, EHLO (plus STARTTLS and AUTH where used) and
QUIT: more round trips than the message itself. Instead each process (each thread,
for a threaded pool) keeps the connection it opened, for the email settings it was
opened with, and reuses it for the next message.

A kept connection can go stale: servers close idle sessions (Postfix after 300 s,
with a "421" first) and some close after a number of messages. Before reuse the
socket is polled without blocking; a server that said anything or hung up has
ended the session, so a new connection is opened. A connection that raised an
error while sending is dropped too, since its state is unknown; the task's own
retry sends the message again.

Bulk sending (campaign and digest chunks) opens one connection per chunk itself.
Backends other than SMTP (console locally, locmem in tests) keep nothing.
"""

from __future__ import annotations

import contextlib
import smtplib
import threading

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend

from core.sockets import is_quiet

_local = threading.local()


def send(message: EmailMessage) -> None:
    """Send one message over this process's kept connection (or the configured non-SMTP backend)."""
    connection, kept = _connection()
    if not kept:
        with connection:
            connection.send_messages([message])
        return
    try:
        connection.send_messages([message])
    except BaseException:
        close()
        raise


def close() -> None:
    """Say goodbye to the server and forget the kept connection, if there is one (never raises)."""
    connection = getattr(_local, "connection", None)
    _local.connection = _local.key = None
    if connection is not None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            connection.close()


def close_on_shutdown(**signal_kwargs: object) -> None:
    close()


def _settings_key() -> tuple:
    return (
        settings.EMAIL_BACKEND,
        settings.EMAIL_HOST,
        settings.EMAIL_PORT,
        settings.EMAIL_HOST_USER,
        settings.EMAIL_HOST_PASSWORD,
        settings.EMAIL_USE_TLS,
        settings.EMAIL_USE_SSL,
        settings.EMAIL_TIMEOUT,
    )


def _connection() -> tuple[BaseEmailBackend, bool]:
    """The kept SMTP connection (opened if need be) and True; or a fresh non-SMTP backend and False."""
    key = _settings_key()
    kept = getattr(_local, "connection", None)
    if kept is not None and _local.key == key and _still_open(kept):
        return kept, True
    close()
    backend = get_connection()
    if not isinstance(backend, SMTPBackend):
        return backend, False
    backend.open()  # raises on a refused connection, like a send would
    _local.connection, _local.key = backend, key
    return backend, True


def _still_open(connection: SMTPBackend) -> bool:
    """True while the SMTP session is open and the server has sent nothing unasked (no 421, no hang-up)."""
    sock = getattr(connection.connection, "sock", None)  # smtplib drops its socket when the session ends
    return sock is not None and is_quiet(sock)
