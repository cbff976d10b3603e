"""Staff views of the sandbox providers: their ledger (read only) and the scripted faults."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from sandbox.models import SandboxFault, SandboxLedgerEntry


@admin.register(SandboxLedgerEntry)
class SandboxLedgerEntryAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "amount", "reference", "idempotency_key", "created_at")
    list_filter = ("kind",)
    search_fields = ("reference", "idempotency_key")
    readonly_fields = [field.name for field in SandboxLedgerEntry._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(SandboxFault)
class SandboxFaultAdmin(admin.ModelAdmin):
    list_display = ("reference", "operation", "fault", "remaining")
    list_filter = ("operation", "fault")
    search_fields = ("reference",)
