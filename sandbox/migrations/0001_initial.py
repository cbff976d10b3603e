"""The sandbox providers' tables move here from the orders app, rows and all.

Orders kept the sandbox's ledger and faults until they became an app of their
own, so that the orders schema holds only orders. No row is copied: the tables
are renamed (orders_sandbox* -> sandbox_sandbox*), the models' state moves from
orders to sandbox (orders 0004 removes it there), and the content types move
with them, so staff permissions and admin history stay attached.
"""

import django.db.models.deletion
from django.db import migrations, models

TABLES = (("orders_sandboxledgerentry", "sandbox_sandboxledgerentry"), ("orders_sandboxfault", "sandbox_sandboxfault"))


def move_content_types(apps, schema_editor, source="orders", target="sandbox"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.using(schema_editor.connection.alias)
    models = ["sandboxledgerentry", "sandboxfault"]
    # A content type already made for the new label (by a migrate that ran the
    # apps' post_migrate in between) wins; the old one is then left as it is.
    taken = types.filter(app_label=target, model__in=models).values_list("model", flat=True)
    types.filter(app_label=source, model__in=models).exclude(model__in=list(taken)).update(app_label=target)


def move_content_types_back(apps, schema_editor):
    move_content_types(apps, schema_editor, source="sandbox", target="orders")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("orders", "0003_order_fillfactor"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    [f"ALTER TABLE {old} RENAME TO {new}" for old, new in TABLES],
                    [f"ALTER TABLE {new} RENAME TO {old}" for old, new in TABLES],
                ),
            ],
            state_operations=[
                migrations.CreateModel(
                    name="SandboxFault",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("reference", models.CharField(help_text="Which order, e.g. order:42.", max_length=255)),
                        ("operation", models.CharField(choices=[("charge", "Charge"), ("refund", "Refund"), ("ship", "Ship")], max_length=8)),
                        ("fault", models.CharField(choices=[("transient", "Transient error (timeout)"), ("decline", "Permanent refusal (declined)"), ("crash_after", "Kill the worker process right after the operation succeeded")], max_length=16)),
                        ("remaining", models.PositiveIntegerField(default=1, help_text="How many calls it applies to.")),
                    ],
                    options={
                        "indexes": [models.Index(fields=["reference", "operation"], name="sandboxfault_lookup_idx")],
                    },
                ),
                migrations.CreateModel(
                    name="SandboxLedgerEntry",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("kind", models.CharField(choices=[("charge", "Charge"), ("refund", "Refund")], max_length=8)),
                        ("idempotency_key", models.CharField(max_length=255, unique=True)),
                        ("reference", models.CharField(db_index=True, help_text="The merchant's reference, e.g. order:42.", max_length=255)),
                        ("amount", models.DecimalField(decimal_places=2, max_digits=12)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("charge", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="refunds", to="sandbox.sandboxledgerentry")),
                    ],
                    options={
                        "verbose_name_plural": "sandbox ledger entries",
                        "ordering": ["created_at", "id"],
                    },
                ),
            ],
        ),
        migrations.RunPython(move_content_types, move_content_types_back),
    ]
