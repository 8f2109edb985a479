"""Create the database, ``--users`` users and one logged-in session each.

Run with the server's own Python (``python -m benchserver.setup_db --users 50``)
and the server's environment; prints the session keys as one JSON list.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchserver.settings")


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.cache import SessionStore
    from django.core.management import call_command

    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()

    call_command("migrate", verbosity=0, interactive=False)
    keys = []
    for i in range(args.users):
        user, _ = User.objects.get_or_create(username=f"bench{i}")
        user.set_unusable_password()
        user.save()
        # What django.contrib.auth.login() stores, without a request.
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        keys.append(session.session_key)
    sys.stdout.write(json.dumps(keys) + "\n")


if __name__ == "__main__":
    main()
