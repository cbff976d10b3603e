from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Local development: when no superuser exists, create one with a random password and print it. "
        "Refused when DEBUG is off; use createsuperuser in production."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin", help="Username for the new superuser (default: admin).")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("bootstrap_admin only runs with DEBUG on; use `manage.py createsuperuser`.")
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write("Admin login: use your superuser, or reset a password with `bin/manage changepassword`.")
            return
        if user_model.objects.filter(username=username).exists():
            raise CommandError(f"A user named {username!r} exists but is not a superuser; pick another --username.")
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(
            self.style.SUCCESS(f"Created superuser {username!r} with password {password}")
            + "\n(shown once; change it with `bin/manage changepassword admin`)"
        )
