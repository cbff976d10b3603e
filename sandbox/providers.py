"""Sandbox providers: a payment gateway and a carrier that behave like real ones, without money or parcels.

The sandbox gateway keeps its own ledger (SandboxLedgerEntry), honours idempotency
keys as a real provider does, and fails on demand:

* at random, with PAYMENT_SANDBOX_TRANSIENT_RATE / PAYMENT_SANDBOX_DECLINE_RATE;
* deterministically for one order, with a SandboxFault row (reference "order:<id>"),
  which is how tests force a timeout, a decline, or a worker crash right after a
  successful charge.

It is the default PAYMENT_GATEWAY and SHIPPING_CARRIER; point those settings at a
real provider's adapter in production.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import signal
import time
from decimal import Decimal

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from core.db import fetch_rows, insert_unless_exists
from orders.providers import PermanentProviderError, ProviderResult, TransientProviderError
from sandbox import sql
from sandbox.models import SandboxFault, SandboxLedgerEntry

logger = logging.getLogger(__name__)


def _take_fault(reference: str, operation: str) -> str | None:
    """Consume one scripted fault for this reference and operation, if there is one."""
    fault = SandboxFault.objects.filter(reference=reference, operation=operation, remaining__gt=0).first()
    if fault is None:
        return None
    used = SandboxFault.objects.filter(pk=fault.pk, remaining__gt=0).update(remaining=F("remaining") - 1)
    return fault.fault if used else None


def _wait_like_a_network_call() -> None:
    latency = settings.PAYMENT_SANDBOX_LATENCY_MS
    if latency:
        time.sleep(latency / 1000)


def _simulate_call(reference: str, operation: str, *, random_faults: bool) -> str | None:
    """Wait like a network call, then raise a scripted or random failure. Returns a fault to apply after."""
    fault = _take_fault(reference, operation)
    if fault is None and random_faults:
        fault = _draw_random_fault()
    return _answer(operation, fault)


def _draw_random_fault() -> str | None:
    """A failure drawn at PAYMENT_SANDBOX_TRANSIENT_RATE / PAYMENT_SANDBOX_DECLINE_RATE, or None."""
    roll = random.random()  # noqa: S311 - simulated failures, not security
    if roll < settings.PAYMENT_SANDBOX_TRANSIENT_RATE:
        return SandboxFault.Fault.TRANSIENT
    if roll < settings.PAYMENT_SANDBOX_TRANSIENT_RATE + settings.PAYMENT_SANDBOX_DECLINE_RATE:
        return SandboxFault.Fault.DECLINE
    return None


def _answer(operation: str, fault: str | None) -> str | None:
    """Wait like a network call and raise the failure `fault` calls for; returns a fault to apply after.

    Like a real provider's client, the call gives up after PROVIDER_TIMEOUT: a
    provider that does not answer (the "hang" fault, or a latency at least that
    long) costs the timeout and ends as a transient error, which the task retries.
    """
    timeout = settings.PROVIDER_TIMEOUT.total_seconds()
    wait = timeout if fault == SandboxFault.Fault.HANG else settings.PAYMENT_SANDBOX_LATENCY_MS / 1000
    if wait >= timeout:
        time.sleep(timeout)
        raise TransientProviderError(f"sandbox {operation} timed out: no answer within {timeout:g}s (PROVIDER_TIMEOUT)")
    if wait:
        time.sleep(wait)
    if fault == SandboxFault.Fault.TRANSIENT:
        raise TransientProviderError(f"sandbox {operation} timed out (gateway timeout)")
    if fault == SandboxFault.Fault.DECLINE:
        raise PermanentProviderError(f"sandbox {operation} declined: card declined by the issuer")
    return fault


def _crash_if(fault: str | None) -> None:
    if fault == SandboxFault.Fault.CRASH_AFTER:
        logger.warning("sandbox fault: killing worker process %s after a successful call", os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


def _earlier(kind: str, idempotency_key: str, amount: Decimal) -> SandboxLedgerEntry | None:
    """The entry a request with this key already made, checked against this request; None for a new key."""
    entry = SandboxLedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
    if entry is not None:
        _check_same_request(entry, kind, amount)
    return entry


def _check_same_request(entry: SandboxLedgerEntry, kind: str, amount: Decimal) -> None:
    if entry.kind != kind or entry.amount != amount:
        raise PermanentProviderError(f"idempotency key {entry.idempotency_key} was used for a different request")


def _record(kind: str, idempotency_key: str, reference: str, amount: Decimal, **extra: object) -> SandboxLedgerEntry:
    """Write a ledger entry once per idempotency key; a repeat returns the first entry."""
    entry = SandboxLedgerEntry(kind=kind, idempotency_key=idempotency_key, reference=reference, amount=amount, **extra)
    # Insert first, read only on a conflict: the usual new charge is one statement.
    # A conflict is a retry, or a concurrent call that won the insert.
    if not insert_unless_exists(entry):
        entry = SandboxLedgerEntry.objects.get(idempotency_key=idempotency_key)
    _check_same_request(entry, kind, amount)
    return entry


def _charge_in_one_statement(amount: Decimal, idempotency_key: str, reference: str) -> ProviderResult:
    """SandboxGateway.charge on PostgreSQL: sandbox.sql.CHARGE, its three statements in one round trip."""
    drawn = _draw_random_fault()  # used only when no fault is scripted, as on the ORM path
    params = {
        "idempotency_key": idempotency_key,
        "reference": reference,
        "amount": amount,
        "now": timezone.now(),
        "random_fault": drawn,
    }
    [row] = fetch_rows(sql.CHARGE, params)
    charge = SandboxLedgerEntry.Kind.CHARGE
    if row["earlier_id"] is not None:
        earlier = SandboxLedgerEntry(
            pk=row["earlier_id"],
            kind=row["earlier_kind"],
            amount=row["earlier_amount"],
            idempotency_key=idempotency_key,
        )
        _check_same_request(earlier, charge, amount)
        _wait_like_a_network_call()
        return ProviderResult(reference=earlier.provider_reference)
    after = _answer("charge", row["fault"] or drawn)
    if row["recorded_id"] is None:
        # A concurrent request with the same key recorded the charge first.
        entry = _record(charge, idempotency_key, reference, amount)
    else:
        entry = SandboxLedgerEntry(pk=row["recorded_id"], kind=charge)
    _crash_if(after)
    return ProviderResult(reference=entry.provider_reference)


class SandboxGateway:
    """The sandbox payment gateway (see the module docstring)."""

    # A repeated key is answered with the first result before any failure is drawn,
    # as a real gateway answers it: a retry after a crash that followed a
    # successful charge must learn of that charge, never meet a decline.
    def charge(self, *, amount: Decimal, idempotency_key: str, reference: str) -> ProviderResult:
        if sql.in_one_statement():
            return _charge_in_one_statement(amount, idempotency_key, reference)
        if (earlier := _earlier(SandboxLedgerEntry.Kind.CHARGE, idempotency_key, amount)) is not None:
            _wait_like_a_network_call()
            return ProviderResult(reference=earlier.provider_reference)
        after = _simulate_call(reference, "charge", random_faults=True)
        entry = _record(SandboxLedgerEntry.Kind.CHARGE, idempotency_key, reference, amount)
        _crash_if(after)
        return ProviderResult(reference=entry.provider_reference)

    def refund(self, *, charge_reference: str, amount: Decimal, idempotency_key: str, reference: str) -> ProviderResult:
        if (earlier := _earlier(SandboxLedgerEntry.Kind.REFUND, idempotency_key, amount)) is not None:
            _wait_like_a_network_call()
            return ProviderResult(reference=earlier.provider_reference)
        after = _simulate_call(reference, "refund", random_faults=False)
        try:
            charge = SandboxLedgerEntry.objects.get(pk=int(charge_reference.rsplit("_", 1)[-1]), kind="charge")
        except (SandboxLedgerEntry.DoesNotExist, ValueError):
            raise PermanentProviderError(f"no sandbox charge {charge_reference} to refund") from None
        entry = _record(SandboxLedgerEntry.Kind.REFUND, idempotency_key, reference, amount, charge=charge)
        _crash_if(after)
        return ProviderResult(reference=entry.provider_reference)

    def find_charge(self, *, idempotency_key: str) -> ProviderResult | None:
        """The charge made under this key, or None if the gateway never charged it."""
        _wait_like_a_network_call()
        entry = SandboxLedgerEntry.objects.filter(
            idempotency_key=idempotency_key, kind=SandboxLedgerEntry.Kind.CHARGE
        ).first()
        return None if entry is None else ProviderResult(reference=entry.provider_reference)


class SandboxCarrier:
    """The sandbox carrier: books a shipment and returns a tracking number derived from the idempotency key."""

    def book_shipment(self, *, idempotency_key: str, reference: str, parcels: int) -> ProviderResult:
        after = _simulate_call(reference, "ship", random_faults=False)
        tracking = "SBX" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:12].upper()
        _crash_if(after)
        return ProviderResult(reference=tracking)
