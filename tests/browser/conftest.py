"""Fixtures of the browser tests: headless Chromium through Playwright, and the demo site.

Without Chromium or Playwright the tests skip, saying which is missing; with
``CI=true`` that is a failure instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.demo_server import DemoServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Chromium as it runs in a container: no sandbox, no GPU, no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1180, "height": 720}


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true needs the browser tests to run, but {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


def find_chromium() -> tuple[str | None, str]:
    """The Chromium to drive, or ``None`` and why not.

    ``$CHROMIUM`` when set (and only it), else Debian's ``/usr/bin/chromium``,
    else a ``chromium`` or ``chromium-browser`` on PATH.
    """
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit, ""
        return None, f"$CHROMIUM={explicit!r} is not an executable file"
    for found in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if found and os.access(found, os.X_OK):
            return found, ""
    return None, "no Chromium was found (apt-get install chromium, or set $CHROMIUM)"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium, shared by the tests of a module."""
    executable, missing = find_chromium()
    if executable is None:
        _unavailable(missing)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def browser_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the demo's database and server logs go."""
    return tmp_path_factory.mktemp("browser")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember whether a test failed, so the server fixtures can print their logs.
    report = yield
    if report.failed:
        item.browser_failed = True  # type: ignore[attr-defined]
    return report


@pytest.fixture
def start_servers(
    browser_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., list[DemoServer]]]:
    """Start demo servers (in parallel) sharing one database; stop them after the test.

    ``port`` (with ``count=1``) starts one where an earlier one was; ``env`` sets
    the demo's environment settings, e.g. ``DEMO_PRESENCE``.
    """
    started: list[DemoServer] = []

    def start(
        count: int = 1,
        *,
        redis_url: str | None = None,
        database: Path | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> list[DemoServer]:
        database = database or browser_dir / f"{request.node.name[:40]}.sqlite3"
        servers = [
            DemoServer(
                browser_dir,
                database=database,
                redis_url=redis_url,
                name=f"s{len(started) + i}",
                port=port,
                env=env,
            )
            for i in range(count)
        ]
        for server in servers:
            started.append(server)
            server.start()
        for server in servers:
            server.wait_ready()
        return servers

    yield start
    for server in started:
        server.stop()
    if getattr(request.node, "browser_failed", False):
        for server in started:
            print(f"\n----- log of the demo server on port {server.port} -----\n{server.log()}")


@pytest.fixture(scope="module")
def demo_site(browser: Any, browser_dir: Path) -> Iterator[DemoServer]:
    """The demo on the embedded default, one server for the module's tests."""
    server = DemoServer(browser_dir, database=browser_dir / "demo.sqlite3")
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        print(f"\n----- log of the demo server on port {server.port} -----\n{server.log()}")


@pytest.fixture
def new_context(browser: Any) -> Iterator[Callable[[], Any]]:
    """Fresh browser contexts (separate cookie jars: separate "browsers"), closed after."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()
