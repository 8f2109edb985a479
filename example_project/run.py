#!/usr/bin/env python
"""Run the channels-presence demo with one command.

    python example_project/run.py                   # http://127.0.0.1:8000
    python example_project/run.py --port 8001       # another port
    REDIS_URL=redis://127.0.0.1:6379/0 python example_project/run.py --port 8001

It migrates the SQLite database, creates the demo users (alice/alice-pass and
bob/bob-pass) and serves the site with uvicorn (or daphne) on localhost.
Without REDIS_URL everything lives in this one process; with it, presence and
the channel layer live in Redis, so two servers on two ports share them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the channels-presence demo site.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="port to listen on"
    )
    parser.add_argument(
        "--server",
        choices=("uvicorn", "daphne"),
        default="uvicorn",
        help="the ASGI server to run the site with",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def setup_lock(database: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the database while migrating.

    Two servers started together in Redis mode share the SQLite file; the lock
    makes the second wait for the first's migrations instead of racing them.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; start the servers one after the other.
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare() -> None:
    """Migrate and create the demo users. Safe to run any number of times."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    django.setup()
    with setup_lock(Path(settings.DATABASES["default"]["NAME"])):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("demo_users")


def require_server(name: str) -> None:
    """Exit with the command that installs ``name`` when it is not installed."""
    if importlib.util.find_spec(name) is None:
        sys.exit(
            f"--server {name} needs the {name} package, which is not installed here. "
            f'Install the demo\'s servers with: pip install -e ".[example]" '
            f"(from the repository root), or: pip install {name}"
        )


def serve(args: argparse.Namespace) -> None:
    app = "demo_site.asgi:application"
    mode = (
        "Redis (" + os.environ["REDIS_URL"] + ")"
        if os.environ.get("REDIS_URL")
        else ("embedded default (local memory, one process)")
    )
    print(f"channels-presence demo on http://{args.host}:{args.port}/  [{mode}]", flush=True)
    if args.server == "daphne":
        from daphne.cli import CommandLineInterface

        CommandLineInterface().run(["--bind", args.host, "--port", str(args.port), app])
        return
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info", lifespan="off")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_server(args.server)
    # Importable as "demo_site" and "chat" from any working directory.
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")
    prepare()
    serve(args)


if __name__ == "__main__":
    main()
