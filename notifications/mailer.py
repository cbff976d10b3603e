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
import select
import smtplib
import threading

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend

_local = threading.local()


def send(message: EmailMessage) -> None:
    """Send one message over this process's kept connection (or the configured non-SMTP backend)."""
    connection = _kept_connection()
    if connection is None:
        with get_connection() as backend:
            backend.send_messages([message])
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
        settings.EMAIL_BACKEND, settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_HOST_USER,
        settings.EMAIL_HOST_PASSWORD, settings.EMAIL_USE_TLS, settings.EMAIL_USE_SSL, settings.EMAIL_TIMEOUT,
    )  # fmt: skip


def _kept_connection() -> SMTPBackend | None:
    key = _settings_key()
    connection = getattr(_local, "connection", None)
    if connection is not None and (_local.key != key or not _still_open(connection)):
        close()
        connection = None
    if connection is None:
        backend = get_connection()
        if not isinstance(backend, SMTPBackend):
            return None
        backend.open()  # raises on a refused connection, like a send would
        _local.connection, _local.key = backend, key
        connection = backend
    return connection


def _still_open(connection: SMTPBackend) -> bool:
    """True while the session is open and the server has sent nothing unasked (no 421, no close); no I/O is done."""
    smtp = connection.connection
    sock = getattr(smtp, "sock", None)
    if sock is None:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
