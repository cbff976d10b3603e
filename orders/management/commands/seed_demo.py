from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from orders.seeding import seed_catalogue, seed_demo_customer


class Command(BaseCommand):
    help = "Create the demo products and a demo customer (safe to run again; nothing is duplicated or reset)."

    def handle(self, *args: Any, **options: Any) -> None:
        products = seed_catalogue()
        customer = seed_demo_customer()
        self.stdout.write(f"{len(products)} demo products in the catalogue.")
        if customer.password:
            self.stdout.write(
                self.style.SUCCESS(f"Created customer {customer.username!r} with password {customer.password}")
                + " (shown once). Log in at /accounts/login/."
            )
        else:
            self.stdout.write(
                f"Customer {customer.username!r} already exists; "
                f"set a new password with `bin/manage changepassword {customer.username}` (locally)."
            )
