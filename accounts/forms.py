from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordResetForm, UserCreationForm
from django.template.loader import render_to_string

from accounts import throttle
from accounts.services import address_key


class SignUpForm(UserCreationForm):
    """Sign-up for customers: username, email (for order emails) and a password."""

    email = forms.EmailField(required=True, help_text="Order confirmations are sent here.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")

    # No uniqueness check on the address: saying "already registered" would tell anyone
    # which addresses have accounts. accounts.services.sign_up emails the owner instead.


class OutboxPasswordResetForm(PasswordResetForm):
    """Django's password reset, with the email queued in the outbox instead of sent inside the request.

    Links start with SITE_URL, never with the request's Host header, and one address
    gets at most one reset email per PASSWORD_RESET_EMAIL_INTERVAL however often it
    is asked for (the page answers the same either way).
    """

    def save(self, *args: Any, **kwargs: Any) -> None:
        email = self.cleaned_data["email"]
        if not throttle.hit(f"reset-mail:{address_key(email)}", 1, settings.PASSWORD_RESET_EMAIL_INTERVAL):
            return
        site = urlsplit(settings.SITE_URL)
        kwargs.update(domain_override=site.netloc, use_https=site.scheme == "https")
        kwargs["extra_email_context"] = {**(kwargs.get("extra_email_context") or {}), "site_url": settings.SITE_URL}
        super().save(*args, **kwargs)

    def send_mail(
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict,
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        from notifications.services.outbox import queue_password_reset

        subject = "".join(render_to_string(subject_template_name, context).splitlines())
        body = render_to_string(email_template_name, context)
        html = render_to_string(html_email_template_name, context) if html_email_template_name else ""
        queue_password_reset(
            recipient=to_email, user_id=context["user"].pk, subject=subject, body_text=body, body_html=html
        )
