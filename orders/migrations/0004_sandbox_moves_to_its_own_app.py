"""The sandbox ledger and faults now belong to the sandbox app (sandbox 0001 renamed their tables)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0003_order_fillfactor"),
        ("sandbox", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="SandboxFault"),
                migrations.DeleteModel(name="SandboxLedgerEntry"),
            ],
        ),
    ]
