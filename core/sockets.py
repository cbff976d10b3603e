"""Checking a kept-open connection's socket without talking to the server."""

from __future__ import annotations

import select


def is_quiet(sock: object) -> bool:
    """True when the peer has sent nothing and has not hung up: no data, error or close is waiting.

    A server that ends a session (PostgreSQL on restart or idle timeout, an SMTP
    server's "421" before it hangs up) says so on the socket first, so a quiet
    socket is as good as one just checked. No I/O is done.
    """
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
