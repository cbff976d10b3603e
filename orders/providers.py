"""The outside parties of the pipeline: the payment gateway and the carrier, chosen by settings.

Both are called outside any database transaction, with an idempotency key, so a
retry after a crash asks them again with the same key and gets the same answer.

Every call must give up after settings.PROVIDER_TIMEOUT (an adapter passes it to
its HTTP client, e.g. `timeout=settings.PROVIDER_TIMEOUT.total_seconds()`) and
raise TransientProviderError when it does: orders run on a threads pool, where
Celery's task time limits do not apply, so a call without a timeout of its own
could hold a worker thread for ever (the order's lease would still hand the
order to another task, after ORDER_LEASE_TIMEOUT).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string


class ProviderError(Exception):
    """Base of the errors a provider raises."""


class TransientProviderError(ProviderError):
    """A failure that may go away: network error, timeout, 5xx. The call is retried."""


class PermanentProviderError(ProviderError):
    """A refusal that will not change on retry, e.g. a declined card. The order fails."""


@dataclass(frozen=True)
class ProviderResult:
    reference: str


class PaymentGateway(Protocol):
    def charge(self, *, amount: Decimal, idempotency_key: str, reference: str) -> ProviderResult: ...

    def refund(
        self, *, charge_reference: str, amount: Decimal, idempotency_key: str, reference: str
    ) -> ProviderResult: ...

    def find_charge(self, *, idempotency_key: str) -> ProviderResult | None:
        """The successful charge made under this key, or None: how a charge left unknown by a crash is reconciled."""
        ...


class Carrier(Protocol):
    def book_shipment(self, *, idempotency_key: str, reference: str, parcels: int) -> ProviderResult: ...


@cache
def payment_gateway() -> PaymentGateway:
    """The gateway named by settings.PAYMENT_GATEWAY (a dotted path to a class)."""
    return import_string(settings.PAYMENT_GATEWAY)()


@cache
def carrier() -> Carrier:
    """The carrier named by settings.SHIPPING_CARRIER (a dotted path to a class)."""
    return import_string(settings.SHIPPING_CARRIER)()
