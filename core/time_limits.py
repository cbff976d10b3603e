"""Celery's soft time limit, held off while a side effect and its record happen, so a task stops between them.

The prefork pool enforces a task's soft limit by sending SIGUSR1 to the child,
whose handler raises SoftTimeLimitExceeded wherever the task happens to be. In
the middle of an SMTP conversation that leaves an email neither known sent nor
known unsent: the server may have accepted it, and nothing recorded it. Inside
`soft_limit_deferred()` the signal's handler only notes it; a soft limit that
arrives then is raised as the block ends, after the email went out and was recorded, so
the task stops at a boundary where it knows what it finished. The hard limit
(SIGKILL from the pool) is not affected, and every outside call has a timeout
of its own, so a deferred soft limit is late by at most that timeout.

Pools other than prefork (threads, solo) do not enforce time limits, and the
block applies only to the main thread of a prefork child (where billiard's
handler is installed).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from billiard.pool import soft_timeout_sighandler
from celery.exceptions import SoftTimeLimitExceeded

logger = logging.getLogger(__name__)

# billiard.pool.SIG_SOFT_TIMEOUT: the signal the prefork pool sends at the soft limit.
SOFT_LIMIT_SIGNAL = getattr(signal, "SIGUSR1", None)

__all__ = ["SoftTimeLimitExceeded", "soft_limit_deferred"]


@contextmanager
def soft_limit_deferred() -> Iterator[None]:
    """Run the block whole; a soft time limit that comes meanwhile is raised when it ends (see the module docstring).

    If the block itself raises, that exception wins and a soft limit that came
    meanwhile is dropped: the task is ending through that exception anyway. Not
    to be nested.
    """
    # The handler is swapped rather than the signal blocked: a blocked signal
    # can still reach another thread of the process, and Python then runs the
    # handler in the main thread all the same.
    if (
        SOFT_LIMIT_SIGNAL is None
        or threading.current_thread() is not threading.main_thread()
        # Only where the signal means a soft time limit (a prefork child): in a
        # worker's main process (solo pool) it asks for a traceback dump instead.
        or signal.getsignal(SOFT_LIMIT_SIGNAL) is not soft_timeout_sighandler
    ):
        yield
        return
    arrived: list[int] = []
    previous = signal.signal(SOFT_LIMIT_SIGNAL, lambda signum, frame: arrived.append(signum))
    try:
        yield
    except BaseException:
        signal.signal(SOFT_LIMIT_SIGNAL, previous)
        if arrived:
            logger.warning("soft time limit reached while the task was already failing; the failure stands")
        raise
    signal.signal(SOFT_LIMIT_SIGNAL, previous)
    if arrived:
        raise SoftTimeLimitExceeded()
