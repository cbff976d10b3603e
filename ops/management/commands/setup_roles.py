from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ops import roles


class Command(BaseCommand):
    help = (
        "Create the staff groups (Support, Operations, Marketing, Finance) with exactly the permissions each "
        "needs (ops/roles.py). Idempotent: a second run changes nothing. A permission added to or removed from "
        "one of these groups by hand is put back as ops/roles.py says; make your own groups for anything else."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", action="store_true", help="Show each role and its permissions; change nothing.")

    def handle(self, *args: Any, list: bool, **options: Any) -> None:
        if list:
            for role in roles.ROLES:
                self.stdout.write(f"{role.name}: {role.description}")
                for name in sorted(role.permissions):
                    self.stdout.write(f"    {name}")
            return
        try:
            changes = roles.install()
        except roles.UnknownPermission as exc:
            raise CommandError(f"{exc} Run migrate first.") from None
        for change in changes:
            if change.created:
                self.stdout.write(f"Created {change.name!r} with {len(change.added)} permission(s).")
            elif change.added or change.removed:
                self.stdout.write(
                    f"{change.name!r}: added {', '.join(change.added) or 'none'}; "
                    f"removed {', '.join(change.removed) or 'none'}."
                )
        untouched = sum(1 for c in changes if not (c.created or c.added or c.removed))
        self.stdout.write(self.style.SUCCESS(f"{len(changes)} role(s) set up, {untouched} already as defined."))
