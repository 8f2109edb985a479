"""Create the shared SQLite database: ``python -m tests.e2e.project.setup_db NAME...``.

Migrates the file named by ``E2E_DB_PATH``, switches it to WAL so several
server processes can read while one writes, creates one user per NAME with
the password in ``E2E_PASSWORD``, and prints ``{"name": pk, ...}`` as JSON.
"""

from __future__ import annotations

import json
import os
import sys


def main(usernames: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.project.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode=WAL")
    password = os.environ["E2E_PASSWORD"]
    user_model = get_user_model()
    pks = {}
    for name in usernames:
        user, _ = user_model.objects.get_or_create(username=name)
        user.set_password(password)
        user.save()
        pks[name] = user.pk
    sys.stdout.write(json.dumps(pks) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
