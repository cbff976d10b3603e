"""Migrations: the models are in step with them, and a database made on an older layout migrates without losing rows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from sandbox.models import SandboxFault, SandboxLedgerEntry

BEFORE_THE_SANDBOX_APP = [("orders", "0003_order_fillfactor"), ("sandbox", None)]


@pytest.mark.django_db
def test_the_models_need_no_migration_that_is_not_written() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_the_sandbox_ledger_and_faults_move_out_of_orders_with_their_rows_and_permissions() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE_THE_SANDBOX_APP)
    old = executor.loader.project_state([BEFORE_THE_SANDBOX_APP[0]]).apps
    # As on a database made before the move: the content type and its permission belong to orders.
    ContentType.objects.filter(app_label="sandbox").delete()
    ledger_type, _ = ContentType.objects.get_or_create(app_label="orders", model="sandboxledgerentry")
    Permission.objects.get_or_create(
        content_type=ledger_type, codename="view_sandboxledgerentry", defaults={"name": "Can view"}
    )
    Entry = old.get_model("orders", "SandboxLedgerEntry")
    charge = Entry.objects.create(kind="charge", idempotency_key="order:1:charge:0", reference="order:1", amount="9.90")
    Entry.objects.create(
        kind="refund", idempotency_key="order:1:refund:0", reference="order:1", amount="9.90", charge=charge
    )
    old.get_model("orders", "SandboxFault").objects.create(reference="order:2", operation="charge", fault="decline")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    refund = SandboxLedgerEntry.objects.get(kind="refund")
    assert (refund.charge.idempotency_key, refund.amount) == ("order:1:charge:0", Decimal("9.90"))
    assert SandboxFault.objects.get().reference == "order:2"
    assert (
        SandboxLedgerEntry.objects.create(
            kind="charge", idempotency_key="order:3:charge:0", reference="order:3", amount="1.00"
        ).pk
        > charge.pk
    )  # the id sequence came along with the table
    ContentType.objects.clear_cache()
    moved = ContentType.objects.get(pk=ledger_type.pk)
    assert moved.app_label == "sandbox"
    assert Permission.objects.filter(content_type=moved, codename="view_sandboxledgerentry").exists()
    assert (
        connection.introspection.table_names()
        and "orders_sandboxledgerentry" not in connection.introspection.table_names()
    )
