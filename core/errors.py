"""The exceptions every layer shares: bad input, refused operations and errors that may go away."""

from __future__ import annotations


class FieldErrors(Exception):
    """Input that breaks a rule; `errors` maps each field path (e.g. "lines.0.quantity") to its messages.

    Views answer it with 400 and the errors as JSON, forms show them on their
    fields, commands turn them into a CommandError. Nothing has been saved.
    """

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items()))
        self.errors = errors


class Refused(Exception):
    """The operation is not possible in the object's current state; the message says why, for people."""


class TransientError(Exception):
    """A failure that may go away (network, timeout, SMTP 4xx): the task that met it retries with backoff."""


class PermanentFailure(Exception):
    """Work that failed for good after its service compensated (a declined order, a refused email).

    Tasks let it end them in FAILURE, so the domain's own failures count as
    failures wherever failures are counted: the results admin, the failures page
    (/admin/ops/failures/), the metrics and the overview. Celery records it
    without a traceback in the logs: it is expected (ProjectTask.throws).
    """
