"""Leave room on each page of orders_order for the row's next versions (PostgreSQL only).

An order is updated about five times while it is processed. With free space on
its page, an update that changes no indexed column is heap-only (HOT): no new
index entries, less WAL. 90 is PostgreSQL's usual advice for such tables; it
applies to pages written from now on.
"""

from django.db import migrations


def set_fillfactor(apps, schema_editor, value=90):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE orders_order SET (fillfactor = {int(value)})")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE orders_order RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("orders", "0002_completed_orders_index")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]
