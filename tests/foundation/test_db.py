"""core.db.insert_unless_exists: one INSERT that saves a new row as save() would, or finds its unique value taken."""

from __future__ import annotations

import pytest
from django.db import connection, models, transaction
from django.db.models import F
from django.test.utils import isolate_apps

from core.db import insert_unless_exists

pytestmark = pytest.mark.django_db


@isolate_apps("tests")
def test_it_saves_defaults_db_defaults_and_generated_fields_as_save_does_and_skips_a_taken_value() -> None:
    class Parcel(models.Model):
        key = models.CharField(max_length=20, unique=True)
        created_at = models.DateTimeField(auto_now_add=True)
        weight = models.IntegerField(db_default=7)
        doubled = models.GeneratedField(expression=F("weight") * 2, output_field=models.IntegerField(), db_persist=True)
        note = models.CharField(max_length=20, default="fragile")

        class Meta:
            app_label = "tests"

        def __str__(self) -> str:
            return self.key

    with connection.schema_editor() as editor:
        editor.create_model(Parcel)

    first = Parcel(key="a")
    assert insert_unless_exists(first) is True
    assert first.pk is not None and not first._state.adding
    assert (first.weight, first.created_at is not None) == (7, True)  # db_default comes back as save() returns it

    saved = Parcel.objects.get(pk=first.pk)
    assert (saved.key, saved.weight, saved.doubled, saved.note) == ("a", 7, 14, "fragile")
    assert saved.created_at == first.created_at

    with transaction.atomic():  # no savepoint is needed: the transaction stays usable after a taken value
        assert insert_unless_exists(Parcel(key="a", note="again")) is False
        assert Parcel.objects.count() == 1
    assert Parcel.objects.get().note == "fragile"
