"""Staff forms for notifications."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from notifications.models import Campaign
from notifications.services import campaigns


class CampaignForm(forms.ModelForm):
    class Meta:
        model = Campaign
        fields = ("name", "subject", "body", "audience", "ordered_since")

    def clean_subject(self) -> str:
        subject = self.cleaned_data["subject"]
        campaigns.check_campaign_template(subject)
        return subject

    def clean_body(self) -> str:
        body = self.cleaned_data["body"]
        campaigns.check_campaign_template(body)
        return body

    def clean(self) -> dict[str, object]:
        cleaned = super().clean()
        if cleaned.get("audience") == Campaign.Audience.ORDERED_SINCE and not cleaned.get("ordered_since"):
            raise ValidationError({"ordered_since": "Choose the date for the 'ordered since' audience."})
        return cleaned
