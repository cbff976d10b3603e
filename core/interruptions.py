"""A task's interruptions, held off while a side effect and its record happen, so a task stops between them.

Two signals stop a task of the prefork pool wherever it happens to be:

- SIGUSR1, at the task's soft time limit: billiard's handler raises
  `SoftTimeLimitExceeded`, and the task may clean up and end.
- SIGTERM, when the worker terminates the task: Celery does so to the tasks it
  is running when its broker connection drops
  (`CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS`), and for
  `celery control revoke --terminate`. Billiard's handler raises `SystemExit`;
  the task's `finally` blocks run, the process leaves without reporting the
  task, and its message (acknowledged late) is delivered again.

In the middle of an SMTP conversation either leaves an email neither known sent
nor known unsent: the server may have accepted it, and nothing recorded it, so
the outbox sweep sends it again once its lease expires. Inside `uninterrupted()`
both handlers only note their signal. As the block ends, a termination is
carried out (the handler that was there runs) and a soft limit is raised, after
the email went out and was recorded: the task stops at a boundary where it
knows what it finished. SIGKILL (the hard time limit, a pool that gives up
waiting) is not affected, and every outside call has a timeout of its own, so a
held signal is late by at most that timeout.

Pools other than prefork (threads, solo) do not enforce time limits and are not
terminated this way, and the block applies only to the main thread of a prefork
child (where billiard's handlers are installed).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from billiard.pool import soft_timeout_sighandler
from celery.exceptions import SoftTimeLimitExceeded

logger = logging.getLogger(__name__)

# billiard.pool.SIG_SOFT_TIMEOUT: the signal the prefork pool sends at the soft limit.
SOFT_LIMIT_SIGNAL = getattr(signal, "SIGUSR1", None)
# celery.worker.request.Request.cancel's default: the signal that terminates a task.
TERMINATE_SIGNAL = signal.SIGTERM

__all__ = ["SoftTimeLimitExceeded", "uninterrupted"]


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Run the block whole; a soft limit or a termination that comes meanwhile takes effect when it ends.

    A termination wins over everything: the process leaves as the block ends,
    whether the block finished or raised. Otherwise, if the block itself raises,
    that exception wins and a soft limit that came meanwhile is dropped: the
    task is ending through that exception anyway. Not to be nested.
    """
    # The handlers are swapped rather than the signals blocked: a blocked signal
    # can still reach another thread of the process, and Python then runs the
    # handler in the main thread all the same.
    if (
        SOFT_LIMIT_SIGNAL is None
        or threading.current_thread() is not threading.main_thread()
        # Only where the signal means a soft time limit (a prefork child): in a
        # worker's main process (solo pool) it asks for a traceback dump instead,
        # and SIGTERM there is the whole worker's warm shutdown.
        or signal.getsignal(SOFT_LIMIT_SIGNAL) is not soft_timeout_sighandler
    ):
        yield
        return
    arrived: list[int] = []

    def note(signum: int, frame: object) -> None:
        arrived.append(signum)

    held = {SOFT_LIMIT_SIGNAL: signal.signal(SOFT_LIMIT_SIGNAL, note)}
    if signal.getsignal(TERMINATE_SIGNAL) is not signal.SIG_IGN:
        held[TERMINATE_SIGNAL] = signal.signal(TERMINATE_SIGNAL, note)
    try:
        yield
    except BaseException:
        _restore(held, arrived)
        if SOFT_LIMIT_SIGNAL in arrived:
            logger.warning("soft time limit reached while the task was already failing; the failure stands")
        raise
    _restore(held, arrived)
    if SOFT_LIMIT_SIGNAL in arrived:
        raise SoftTimeLimitExceeded()


def _restore(held: dict[int, object], arrived: list[int]) -> None:
    """Put the handlers back; if a termination came, carry it out now, with the handler that was there."""
    for signum, handler in held.items():
        signal.signal(signum, handler)
    if TERMINATE_SIGNAL in arrived:
        logger.warning("task terminated during a send and its record; it stops now that both are done")
        handler = held[TERMINATE_SIGNAL]
        if callable(handler):
            handler(TERMINATE_SIGNAL, None)  # billiard's raises SystemExit
        else:
            os.kill(os.getpid(), TERMINATE_SIGNAL)  # SIG_DFL: the process ends here
