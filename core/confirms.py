"""Publisher confirms settled at the end of a task instead of at each publish.

With publisher confirms (RabbitMQ) a publish returns once the broker has the
message, after a round trip to it; for a quorum queue, after the message is on
its log's disk. A worker that sends the next piece of work as it finishes one (the
order's email after the order's last commit) waited for that before storing its
own result, one wait after the other.

The publishes core.dispatch.send_on_commit makes while a prefork worker's child
runs a task (ops.worker.confirm_at_end says why only there) are published with
`later()` in effect: a transport that can (ops/broker_amqp.py)
writes the message and returns without waiting, and core.dispatch settles the
confirms when the task has ended, after its result is stored and before the
worker acknowledges the task's own message. Transports that cannot leave their
publishes as they are. This module only holds the flag, so that the transport
can read it without importing what sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_later: ContextVar[bool] = ContextVar("confirms_later", default=False)


def deferred() -> bool:
    """True while a publish may leave its confirm to be settled later (see the module docstring)."""
    return _later.get()


@contextmanager
def later() -> Iterator[None]:
    """Publishes in this block leave their confirm to be settled later by whoever opened the block."""
    token = _later.set(True)
    try:
        yield
    finally:
        _later.reset(token)
