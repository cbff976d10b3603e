"""The sandbox providers' own records: their ledger, and the faults tests and demos script for an order."""

from __future__ import annotations

from django.db import models


class SandboxLedgerEntry(models.Model):
    """The sandbox payment provider's own books, kept apart from our Payment rows as a real provider's would be."""

    class Kind(models.TextChoices):
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    # The provider's dedup: a second request with the same key returns this entry.
    idempotency_key = models.CharField(max_length=255, unique=True)
    reference = models.CharField(max_length=255, db_index=True, help_text="The merchant's reference, e.g. order:42.")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    charge = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="refunds")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        verbose_name_plural = "sandbox ledger entries"

    def __str__(self) -> str:
        return f"sandbox {self.kind} {self.amount} ({self.reference})"

    @property
    def provider_reference(self) -> str:
        return f"sbx_{self.kind}_{self.pk}"


class SandboxFault(models.Model):
    """A scripted failure for the sandbox providers, so tests (and demos) can force one on a given order."""

    class Operation(models.TextChoices):
        CHARGE = "charge", "Charge"
        REFUND = "refund", "Refund"
        SHIP = "ship", "Ship"

    class Fault(models.TextChoices):
        TRANSIENT = "transient", "Transient error (timeout)"
        DECLINE = "decline", "Permanent refusal (declined)"
        CRASH_AFTER = "crash_after", "Kill the worker process right after the operation succeeded"
        HANG = "hang", "No answer: the call times out after PROVIDER_TIMEOUT"

    reference = models.CharField(max_length=255, help_text="Which order, e.g. order:42.")
    operation = models.CharField(max_length=8, choices=Operation.choices)
    fault = models.CharField(max_length=16, choices=Fault.choices)
    remaining = models.PositiveIntegerField(default=1, help_text="How many calls it applies to.")

    class Meta:
        indexes = [models.Index(fields=["reference", "operation"], name="sandboxfault_lookup_idx")]

    def __str__(self) -> str:
        return f"{self.fault} on {self.operation} of {self.reference} (×{self.remaining})"
