"""Sign-up that tells nobody whether an address is registered, and its confirmation link.

The sign-up page answers the same for a new address and for a registered one, and
a new account cannot log in before its address is confirmed; otherwise trying to
log in with the password just chosen would tell an attacker which addresses exist.
A new address gets a confirmation link; a registered one gets a note to its owner.
"""

from __future__ import annotations

import hashlib
import logging
import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode

from accounts import throttle
from accounts.tokens import confirmation_tokens
from notifications.services import outbox

logger = logging.getLogger(__name__)


def address_key(email: str) -> str:
    """A per-address throttle key that does not keep the address itself."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:40]


def sign_up(*, username: str, email: str, password: str) -> None:
    """Create an inactive account and email it a confirmation link; for a registered address, tell its owner instead."""
    users = get_user_model()
    email = users.objects.normalize_email(email.strip())
    with transaction.atomic():
        existing = users.objects.filter(email__iexact=email).order_by("pk").first()
        if existing is None:
            user = users(username=username, email=email, is_active=False)
            user.set_password(password)
            user.save()
            logger.info("user %s signed up; confirmation sent", user.pk)
            _queue_confirmation(user)
        elif not existing.is_active and existing.last_login is None:
            _queue_confirmation(existing)  # signed up before and never confirmed: a fresh link
        else:
            _queue_existing_account_notice(existing)


def _queue_confirmation(user: AbstractBaseUser) -> None:
    if not throttle.hit(f"signup-mail:{address_key(user.email)}", 1, settings.PASSWORD_RESET_EMAIL_INTERVAL):
        return  # one email per address per interval, whoever asks
    token = confirmation_tokens.make_token(user)
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    link = settings.SITE_URL + reverse("confirm_email", args=[uid, token])
    outbox.queue_email(
        kind=outbox.Kind.EMAIL_CONFIRMATION,
        recipient=user.email,
        user_id=user.pk,
        subject="Confirm your email address",
        body_text=render_to_string("accounts/email/confirm_email.txt", {"user": user, "link": link}),
        dedup_key=f"email_confirmation:{user.pk}:{uuid.uuid4().hex}",
        expires_at=timezone.now() + outbox.PASSWORD_RESET_EMAIL_LIFETIME,
        credential_expires_at=outbox.credential_expiry(),
    )


def _queue_existing_account_notice(user: AbstractBaseUser) -> None:
    if not throttle.hit(f"signup-mail:{address_key(user.email)}", 1, settings.PASSWORD_RESET_EMAIL_INTERVAL):
        return
    context = {
        "user": user,
        "login_url": settings.SITE_URL + reverse("login"),
        "reset_url": settings.SITE_URL + reverse("password_reset"),
    }
    outbox.queue_email(
        kind=outbox.Kind.SIGNUP_EXISTING,
        recipient=user.email,
        user_id=user.pk,
        subject="Someone tried to create an account with your address",
        body_text=render_to_string("accounts/email/signup_existing.txt", context),
        dedup_key=f"signup_existing:{user.pk}:{uuid.uuid4().hex}",
    )


def confirm_email(uidb64: str, token: str, *, activate: bool) -> AbstractBaseUser | None:
    """The account a confirmation link belongs to, if the link is valid; with activate=True it becomes active."""
    try:
        pk = urlsafe_base64_decode(uidb64).decode()
        user = get_user_model().objects.filter(pk=int(pk)).first()
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None
    if user is None or not confirmation_tokens.check_token(user, token):
        return None
    if activate:
        user.is_active = True
        user.save(update_fields=["is_active"])
        logger.info("user %s confirmed their address", user.pk)
    return user
