"""``manage.py demo_users``: create (or repair) the demo accounts. Safe to run again."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import IntegrityError, transaction

# The README gives these; the log-in page shows them too.
DEMO_USERS = {"alice": "alice-pass", "bob": "bob-pass"}
# A superuser for the admin's "Presence" pages (/admin/channels_presence/).
DEMO_ADMINS = {"admin": "admin-pass"}


class Command(BaseCommand):
    help = (
        "Create the demo users alice/alice-pass and bob/bob-pass, and the superuser "
        "admin/admin-pass, if they are missing."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for username, password in DEMO_USERS.items():
            self.ensure(username, password, admin=False)
        for username, password in DEMO_ADMINS.items():
            self.ensure(username, password, admin=True)

    def ensure(self, username: str, password: str, *, admin: bool) -> None:
        User = get_user_model()
        try:
            with transaction.atomic():
                user, created = User.objects.get_or_create(username=username)
        except IntegrityError:
            # Another server process created it between our read and write.
            user, created = User.objects.get(username=username), False
        changed = []
        if created or not user.check_password(password):
            user.set_password(password)
            changed.append("password")
        if admin and not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
            changed += ["is_staff", "is_superuser"]
        if changed:
            user.save(update_fields=changed)
        role = " (superuser)" if admin else ""
        self.stdout.write(
            f"demo user {username} / {password}{role}" + (" (new)" if created else "")
        )
