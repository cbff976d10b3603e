"""The custom report request: two dates, checked against the rules in reports.services."""

from __future__ import annotations

from django import forms

from core.errors import FieldErrors
from reports.services import periods


class ReportRangeForm(forms.Form):
    start = forms.DateField(help_text="First day, YYYY-MM-DD.", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(help_text="Last day, included.", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, object]:
        cleaned = super().clean()
        if not self.errors:
            try:
                periods.validate_period(cleaned["start"], cleaned["end"])
            except FieldErrors as exc:
                for name, messages in exc.errors.items():
                    for message in messages:
                        self.add_error(name, message)
        return cleaned
