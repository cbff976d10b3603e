"""A real SMTP server (aiosmtpd) that the tests start, stop and read."""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.support.processes import free_port


class Inbox:
    """aiosmtpd handler that keeps every message it accepts."""

    def __init__(self, delay: float = 0.0, mail_delay: float = 0.0) -> None:
        self.delay = delay  # before the answer to the message's data: the message is taken even if the client goes
        self.mail_delay = mail_delay  # before the answer to MAIL FROM: a client that goes then sent nothing
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.peers: list[object] = []  # the client's (host, port) per message: one per SMTP connection
        self.mails_begun = 0  # MAIL FROM commands received: messages begun, delivered or not

    async def handle_MAIL(
        self, server: object, session: object, envelope: object, address: str, mail_options: list[str]
    ) -> str:
        with self.lock:
            self.mails_begun += 1
        if self.mail_delay:
            await asyncio.sleep(self.mail_delay)
        envelope.mail_from = address  # type: ignore[attr-defined]
        envelope.mail_options.extend(mail_options)  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)  # type: ignore[attr-defined]
        with self.lock:
            self.messages.append(message)
            self.peers.append(session.peer)  # type: ignore[attr-defined]
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def begun(self) -> int:
        with self.lock:
            return self.mails_begun

    def connections(self) -> int:
        """How many SMTP connections delivered the messages."""
        with self.lock:
            return len(set(self.peers))


class SmtpServer:
    def __init__(
        self, port: int | None = None, delay: float = 0.0, session_timeout: float = 300, mail_delay: float = 0.0
    ) -> None:
        self.port = port or free_port()
        self.inbox = Inbox(delay, mail_delay)
        self.session_timeout = session_timeout  # idle seconds before the server says 421 and hangs up
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, timeout=self.session_timeout)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def body_text(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def body_html(message: EmailMessage) -> str:
    return message.get_body(preferencelist=("html",)).get_content()
