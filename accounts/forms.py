from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordResetForm, UserCreationForm
from django.template.loader import render_to_string


class SignUpForm(UserCreationForm):
    """Sign-up for customers: username, email (for order emails) and a password."""

    email = forms.EmailField(required=True, help_text="Order confirmations are sent here.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip()
        if get_user_model().objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("An account with this email address already exists.")
        return email


class OutboxPasswordResetForm(PasswordResetForm):
    """Django's password reset, with the email queued in the outbox instead of sent inside the request."""

    def send_mail(
        self, subject_template_name: str, email_template_name: str, context: dict, from_email: str | None,
        to_email: str, html_email_template_name: str | None = None,
    ) -> None:  # fmt: skip
        from notifications.services.outbox import queue_password_reset

        subject = "".join(render_to_string(subject_template_name, context).splitlines())
        body = render_to_string(email_template_name, context)
        html = render_to_string(html_email_template_name, context) if html_email_template_name else ""
        queue_password_reset(
            recipient=to_email, user_id=context["user"].pk, subject=subject, body_text=body, body_html=html
        )
