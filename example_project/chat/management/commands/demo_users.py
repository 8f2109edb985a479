"""``manage.py demo_users``: create (or repair) the demo accounts. Safe to run again."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import IntegrityError, transaction

# The README gives these; the log-in page shows them too.
DEMO_USERS = {"alice": "alice-pass", "bob": "bob-pass"}


class Command(BaseCommand):
    help = "Create the demo users alice/alice-pass and bob/bob-pass, if they are missing."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, password in DEMO_USERS.items():
            try:
                with transaction.atomic():
                    user, created = User.objects.get_or_create(username=username)
            except IntegrityError:
                # Another server process created it between our read and write.
                user, created = User.objects.get(username=username), False
            if created or not user.check_password(password):
                user.set_password(password)
                user.save(update_fields=["password"])
            self.stdout.write(f"demo user {username} / {password}" + (" (new)" if created else ""))
