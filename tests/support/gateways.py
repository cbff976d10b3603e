"""Payment gateways that misbehave in ways the sandbox no longer does, to prove the pipeline's own defences."""

from __future__ import annotations

from decimal import Decimal

from orders.providers import ProviderResult
from sandbox.models import SandboxLedgerEntry
from sandbox.providers import SandboxGateway, _crash_if, _record, _simulate_call


class ForgetfulGateway(SandboxGateway):
    """The sandbox as it was: it draws a failure before it looks the idempotency key up.

    A repeated key can then be declined, or time out, although the first request
    charged the card: what a real gateway may do when its own dedup is not
    consulted first (or has lost the key).
    """

    def charge(self, *, amount: Decimal, idempotency_key: str, reference: str) -> ProviderResult:
        after = _simulate_call(reference, "charge", random_faults=True)
        entry = _record(SandboxLedgerEntry.Kind.CHARGE, idempotency_key, reference, amount)
        _crash_if(after)
        return ProviderResult(reference=entry.provider_reference)
