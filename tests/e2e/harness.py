"""Real ASGI server processes, HTTP logins and websocket clients for the e2e tests.

The pieces, smallest first:

* :func:`http_request` / :func:`login`: a few lines of ``http.client``; a login
  GETs the form for the CSRF cookie and token, POSTs the credentials to
  Django's ``LoginView`` and keeps the ``sessionid`` cookie.
* :class:`AsgiServer`: one uvicorn (or daphne) process serving
  ``tests.e2e.project.asgi`` on a free port, in its own process group so that
  :meth:`~AsgiServer.kill` (SIGKILL) takes everything with it.
* :class:`Cluster`: N servers sharing one Redis, one channel-layer Redis and
  one SQLite file, started in parallel and stopped together.
* :class:`Client`: a ``websockets`` connection carrying the session cookie,
  which remembers every message and the close code it got.

Every wait is bounded. Every process started here is killed at the latest when
the interpreter exits, so a failing or interrupted test leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.protocol import State

from tests.redis_server import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS_MODULE = "tests.e2e.project.settings"
ASGI_APP = "tests.e2e.project.asgi:application"
PASSWORD = "e2e-password-123"
#: Seconds any single HTTP request may take.
HTTP_TIMEOUT = 10.0
#: Seconds a server may take from spawn to answering ``/health/``.
START_TIMEOUT = 20.0

# Every child still running; atexit kills them if a fixture never got to.
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _kill_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
        _live.clear()
    for process in leftovers:
        _kill_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


# -- HTTP -------------------------------------------------------------------


@dataclass
class Response:
    """An HTTP response, body read in full."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def cookies(self) -> dict[str, str]:
        """The cookies set by ``Set-Cookie`` headers."""
        jar: SimpleCookie = SimpleCookie()
        for name, value in self.headers:
            if name.lower() == "set-cookie":
                jar.load(value)
        return {key: morsel.value for key, morsel in jar.items()}

    def json(self) -> Any:
        """The body parsed as JSON; an error shows the status and the body."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(
                f"expected JSON, got HTTP {self.status}: {self.body[:500]!r}"
            ) from None


def http_request(
    url: str,
    method: str = "GET",
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT,
) -> Response:
    """One HTTP/1.1 request; no redirects are followed, no cookies are kept."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        reply = conn.getresponse()
        return Response(reply.status, reply.getheaders(), reply.read())
    finally:
        conn.close()


def cookie_header(cookies: dict[str, str]) -> str:
    """Cookies as one ``Cookie`` request header value."""
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


@dataclass(frozen=True)
class Login:
    """A logged-in browser session: the cookies to send, and who it is."""

    username: str
    user: int
    sessionid: str
    csrftoken: str

    @property
    def cookie(self) -> str:
        return cookie_header({"csrftoken": self.csrftoken, "sessionid": self.sessionid})


_CSRF_FIELD = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


def login(base_url: str, username: str, password: str = PASSWORD) -> Login:
    """Log in through Django's LoginView, exactly as a browser form would."""
    form = http_request(f"{base_url}/login/")
    assert form.status == 200, f"GET /login/ gave HTTP {form.status}: {form.body[:300]!r}"
    csrftoken = form.cookies().get("csrftoken")
    match = _CSRF_FIELD.search(form.body)
    assert csrftoken and match, "the login page set no CSRF cookie or token"
    posted = http_request(
        f"{base_url}/login/",
        "POST",
        body=urllib.parse.urlencode(
            {
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": match.group(1).decode(),
            }
        ).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": cookie_header({"csrftoken": csrftoken}),
        },
    )
    cookies = posted.cookies()
    assert posted.status == 302 and "sessionid" in cookies, (
        f"login of {username!r} failed: HTTP {posted.status}, cookies {sorted(cookies)}"
    )
    csrftoken = cookies.get("csrftoken", csrftoken)
    me = http_request(
        f"{base_url}/whoami/",
        headers={"Cookie": cookie_header({"sessionid": cookies["sessionid"]})},
    ).json()
    assert me["username"] == username, f"after login /whoami/ says {me}"
    return Login(username, me["user"], cookies["sessionid"], csrftoken)


def logout(base_url: str, session: Login) -> None:
    """Log out through Django's LogoutView (a POST carrying the CSRF token)."""
    reply = http_request(
        f"{base_url}/logout/",
        "POST",
        headers={"Cookie": session.cookie, "X-CSRFToken": session.csrftoken},
    )
    assert reply.status == 302, f"logout failed: HTTP {reply.status}: {reply.body[:300]!r}"


# -- the shared database ------------------------------------------------------


def setup_database(db_path: Path, redis_url: str, usernames: Iterable[str]) -> dict[str, int]:
    """Migrate the SQLite file and create the users, in a child process.

    A child process keeps the test process's own Django settings untouched.
    Returns ``{username: pk}``.
    """
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        "E2E_DB_PATH": str(db_path),
        "E2E_PASSWORD": PASSWORD,
        "REDIS_URL": redis_url,
        "PYTHONPATH": _pythonpath(),
    }
    if not (REPO_ROOT / "channels_presence" / "__init__.py").exists():
        # The package is not an importable app (yet): migrate Django's own apps.
        env["E2E_PLAIN"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.project.setup_db", *usernames],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"setup_db failed:\n{done.stderr.decode(errors='replace')}")
    pks: dict[str, int] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return pks


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return f"{REPO_ROOT}{os.pathsep}{current}" if current else str(REPO_ROOT)


# -- servers ------------------------------------------------------------------


@dataclass
class ServerConfig:
    """What every server of one cluster shares."""

    redis_url: str
    layer_redis_url: str
    db_path: Path
    log_dir: Path
    presence: dict[str, Any] = field(default_factory=dict)
    key_prefix: str = field(default_factory=lambda: f"e2e{uuid.uuid4().hex[:10]}")
    #: ``django_redis`` or ``django`` (Django's own RedisCache).
    cache_backend: str = "django_redis"
    #: ``False``: the websocket route has no presence at all (harness self-test).
    presence_enabled: bool = True
    #: Record every presence signal in the list :attr:`events_key` (project/recorder.py).
    record_events: bool = False
    #: ``[(host, port), ...]``: the presence cache is behind these Redis sentinels
    #: (``redis_url`` then names the service: ``redis://<service>/<db>``).
    sentinels: list[tuple[str, int]] | None = None

    @property
    def layer_prefix(self) -> str:
        """The channel layer's key prefix (see the project's settings)."""
        return f"{self.key_prefix}-layer"

    @property
    def events_key(self) -> str:
        """The list on the layer Redis holding the recorded presence signals."""
        return f"{self.key_prefix}-events"


class AsgiServer:
    """One ASGI server process serving the e2e project."""

    def __init__(self, name: str, config: ServerConfig, kind: str = "uvicorn") -> None:
        if kind not in ("uvicorn", "daphne"):
            raise ValueError(f"server kind {kind!r} is neither 'uvicorn' nor 'daphne'")
        self.name = name
        self.config = config
        self.kind = kind
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = config.log_dir / f"{config.key_prefix}-{name}.log"
        self.starts = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<AsgiServer {self.name} {self.kind} :{self.port} {state}>"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _command(self) -> list[str]:
        if self.kind == "daphne":
            return [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                ASGI_APP,
            ]
        return [
            sys.executable,
            "-m",
            "uvicorn",
            ASGI_APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lifespan",
            "off",
            "--log-level",
            "warning",
            "--no-access-log",
        ]

    def _env(self) -> dict[str, str]:
        c = self.config
        env = {
            **os.environ,
            "PYTHONPATH": _pythonpath(),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
            "REDIS_URL": c.redis_url,
            "E2E_LAYER_REDIS_URL": c.layer_redis_url,
            "E2E_DB_PATH": str(c.db_path),
            "E2E_PRESENCE": json.dumps(c.presence),
            "E2E_KEY_PREFIX": c.key_prefix,
            "E2E_CACHE_BACKEND": c.cache_backend,
            "E2E_SERVER_NAME": self.name,
        }
        env.pop("E2E_PLAIN", None)
        env.pop("E2E_RECORD_EVENTS", None)
        env.pop("E2E_SENTINELS", None)
        if c.sentinels:
            env["E2E_SENTINELS"] = json.dumps(c.sentinels)
        if not c.presence_enabled:
            env["E2E_PLAIN"] = "1"
        if c.record_events:
            env["E2E_RECORD_EVENTS"] = "1"
        return env

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the server on a fresh free port and wait until it answers HTTP."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        for attempt in range(3):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(f"--- start #{self.starts + 1} on port {self.port} ---\n".encode())
                log.flush()
                process = subprocess.Popen(
                    self._command(),
                    cwd=REPO_ROOT,
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            with _live_lock:
                _live.add(process)
            self.process = process
            self.starts += 1
            try:
                self._wait_ready(timeout)
                return
            except TimeoutError:
                self.kill()
                raise
            except _PortTaken:
                # Another process grabbed the free port first; try another one.
                self.kill()
                if attempt == 2:
                    raise RuntimeError(f"{self.name}: no free port after 3 tries") from None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log()
                if "address already in use" in log.lower():
                    raise _PortTaken
                raise RuntimeError(
                    f"{self.name} ({self.kind}) exited with {self.process.returncode} "
                    f"before serving:\n{log[-3000:]}"
                )
            with contextlib.suppress(TimeoutError):
                wait_for_port(self.port, timeout=0.2)
                with contextlib.suppress(OSError):
                    if http_request(f"{self.url}/health/", timeout=2).status == 200:
                        return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer within {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the process group: no cleanup code of the server runs."""
        self._end(signal.SIGKILL, grace=0)

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds."""
        self._end(signal.SIGTERM, grace=grace)

    def _end(self, sig: int, grace: float) -> None:
        self.signal(sig)
        self.reap(time.monotonic() + grace)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group, if it is running."""
        if self.process is not None and self.process.poll() is None:
            _kill_group(self.process, sig)

    def reap(self, deadline: float) -> None:
        """Wait for the process until ``deadline`` (monotonic), then SIGKILL it."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            process.wait(timeout=5)
        # uvicorn has no children, but be sure nothing of the group survives.
        _kill_group(process, signal.SIGKILL)
        with _live_lock:
            _live.discard(process)

    def restart(self) -> None:
        """Stop (SIGTERM) and start again, on a new port."""
        self.stop()
        self.start()

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # HTTP shortcuts, blocking and async.

    def get(self, path: str, cookie: str | None = None) -> Response:
        return http_request(self.url + path, headers={"Cookie": cookie} if cookie else None)

    def get_json(self, path: str) -> Any:
        """GET a JSON endpoint; fails on any status but 200."""
        response = self.get(path)
        assert response.status == 200, (
            f"{self.name} GET {path}: HTTP {response.status}: {response.body[:500]!r}"
        )
        return response.json()

    def post_json(self, path: str, payload: Any = None) -> Any:
        """POST JSON to a (CSRF-exempt) endpoint; fails on any status but 200."""
        response = http_request(
            self.url + path,
            "POST",
            body=json.dumps(payload or {}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status == 200, (
            f"{self.name} POST {path}: HTTP {response.status}: {response.body[:500]!r}"
        )
        return response.json()

    def login(self, username: str) -> Login:
        return login(self.url, username)

    def logout(self, session: Login) -> None:
        logout(self.url, session)

    async def alogout(self, session: Login) -> None:
        await asyncio.to_thread(self.logout, session)

    async def aget_json(self, path: str) -> Any:
        return await asyncio.to_thread(self.get_json, path)

    async def apost_json(self, path: str, payload: Any = None) -> Any:
        return await asyncio.to_thread(self.post_json, path, payload)

    async def alogin(self, username: str) -> Login:
        return await asyncio.to_thread(self.login, username)

    async def aget(self, path: str) -> Response:
        return await asyncio.to_thread(self.get, path)


class _PortTaken(Exception):
    pass


class Cluster:
    """Several servers of one configuration, started together."""

    def __init__(
        self, config: ServerConfig, names: Iterable[str], kind: str | Iterable[str] = "uvicorn"
    ) -> None:
        """``kind`` is one server kind for all, or one per name (a mixed cluster)."""
        self.config = config
        names = list(names)
        kinds = [kind] * len(names) if isinstance(kind, str) else list(kind)
        if len(kinds) != len(names):
            raise ValueError(f"{len(names)} server names but {len(kinds)} kinds: {kinds}")
        self.servers = [AsgiServer(n, config, k) for n, k in zip(names, kinds, strict=True)]

    def __getitem__(self, index: int) -> AsgiServer:
        return self.servers[index]

    def __iter__(self) -> Any:
        return iter(self.servers)

    def start(self) -> None:
        """Start every server in parallel; if one fails, stop them all and raise."""
        errors: list[BaseException] = []

        def run(server: AsgiServer) -> None:
            try:
                server.start()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in self.servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(START_TIMEOUT + 10)
        if errors:
            self.stop()
            raise errors[0]

    def stop(self, grace: float = 0.5) -> None:
        """Stop every server: SIGTERM to all, SIGKILL to those alive ``grace`` s later.

        The grace is short on purpose: a clean shutdown is not under test, and
        channels_redis can hold a closing consumer for its 5 s BZPOPMIN.
        """
        for server in self.servers:
            server.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for server in self.servers:
            server.reap(deadline)

    def logs(self) -> str:
        return "\n".join(f"===== {s.name} ({s.log_path}) =====\n{s.log()}" for s in self.servers)


# -- websocket clients ----------------------------------------------------------


class Client:
    """A websocket client with a session cookie; remembers messages and the close code."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ws: ClientConnection | None = None
        #: The first message the server sent (``{"type": "hello", ...}``), if any.
        self.hello: dict[str, Any] | None = None
        self.received: list[dict[str, Any]] = []
        self.closed_at: float | None = None
        self._code: int | None = None

    def __repr__(self) -> str:
        return f"<Client {self.label} channel={self.channel} code={self.close_code}>"

    @classmethod
    async def open(
        cls, ws_url: str, login: Login | None = None, *, label: str = "", timeout: float = 5.0
    ) -> Client:
        """Connect and wait for the hello message, or for the server to close.

        A connection the server accepts and closes at once (a rejected one)
        comes back closed, with :attr:`close_code` set and no :attr:`hello`.
        """
        client = cls(label or (login.username if login else "anonymous"))
        headers = {"Cookie": login.cookie} if login else {}
        client.ws = await asyncio.wait_for(
            connect(
                ws_url,
                additional_headers=headers,
                open_timeout=timeout,
                close_timeout=2,
                ping_interval=None,
                max_queue=None,
            ),
            timeout + 1,
        )
        try:
            first = await client.recv(timeout)
        except ConnectionClosed:
            return client
        client.hello = first
        return client

    @property
    def channel(self) -> str | None:
        return self.hello.get("channel") if self.hello else None

    @property
    def is_open(self) -> bool:
        return self.ws is not None and self.ws.state is State.OPEN

    @property
    def close_code(self) -> int | None:
        """The close code received from the server (1006 if none came), or None if open."""
        if self._code is not None:
            return self._code
        return self.ws.close_code if self.ws is not None else None

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next JSON message. Raises ConnectionClosed (recording the code) or TimeoutError."""
        assert self.ws is not None
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except ConnectionClosed as exc:
            self._closed(exc)
            raise
        message: dict[str, Any] = json.loads(raw)
        self.received.append(message)
        return message

    def _closed(self, exc: ConnectionClosed) -> None:
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self._code = exc.rcvd.code if exc.rcvd is not None else 1006

    async def send(self, payload: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(payload))

    async def request(
        self, payload: dict[str, Any], reply_type: str, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send a command and return the first reply of ``reply_type``."""
        await self.send(payload)
        return await self.expect(reply_type, timeout)

    async def expect(self, message_type: str, timeout: float = 5.0) -> dict[str, Any]:
        """Read until a message of ``message_type`` arrives (others are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.label}: no {message_type!r} within {timeout}s; got {self.received}"
                )
            message = await self.recv(remaining)
            if message.get("type") == message_type:
                return message

    async def wait_closed(self, timeout: float = 5.0) -> int:
        """Read (keeping messages) until the server closes; return the close code."""
        deadline = time.monotonic() + timeout
        while self._code is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.label} ({self.channel}) still open after {timeout}s")
            with contextlib.suppress(ConnectionClosed):
                await self.recv(remaining)
        return self._code

    async def still_open_after(self, seconds: float) -> bool:
        """Whether the server leaves the connection open for ``seconds`` more."""
        with contextlib.suppress(TimeoutError):
            await self.wait_closed(seconds)
        return self._code is None

    async def close(self) -> None:
        if self.ws is not None and self.ws.state is not State.CLOSED:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)


class Clients:
    """Every client a test opened, so that teardown closes them all."""

    def __init__(self) -> None:
        self.all: list[Client] = []

    async def open(
        self,
        server: AsgiServer,
        login: Login | None = None,
        *,
        label: str = "",
        timeout: float = 5.0,
    ) -> Client:
        """Open a client to ``server`` (see :meth:`Client.open`) and keep track of it."""
        try:
            client = await Client.open(server.ws_url, login, label=label, timeout=timeout)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise AssertionError(f"websocket to {server.name} failed: {exc!r}") from exc
        self.all.append(client)
        return client

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self.all))


async def eventually(
    probe: Callable[[], Any],
    check: Callable[[Any], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> tuple[Any, float]:
    """Call the async ``probe`` until ``check`` accepts its value.

    Returns the accepted value and the seconds it took; on timeout raises
    AssertionError showing the last value seen.
    """
    start = time.monotonic()
    last: Any = None
    while True:
        last = await probe()
        if check(last):
            return last, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)


# -- many clients at once -------------------------------------------------------------


class LiveClient:
    """A websocket client whose messages a task of its own reads as they arrive.

    Unlike :class:`Client`, nobody has to be reading for a close to be seen:
    with hundreds of clients, :attr:`close_code` is set the moment the server
    closes (or dies), which is what the load tests count open sockets by.
    Commands are sent with :meth:`request`, one at a time per client.
    """

    def __init__(self, label: str, login: Login | None = None, server: str = "") -> None:
        self.label = label
        self.login = login
        #: The name of the server this client connected to.
        self.server = server
        self.ws: ClientConnection | None = None
        self.hello: dict[str, Any] | None = None
        self.received: list[dict[str, Any]] = []
        #: The server's close code (1006 if the connection died); None while open.
        self.close_code: int | None = None
        self.closed_at: float | None = None
        #: Whether this side asked to close.
        self.closed_by_client = False
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    def __repr__(self) -> str:
        where = f"{self.label}@{self.server}"
        return f"<LiveClient {where} channel={self.channel} code={self.close_code}>"

    @classmethod
    async def open(
        cls,
        server: AsgiServer,
        login: Login | None = None,
        *,
        label: str = "",
        timeout: float = 5.0,
    ) -> LiveClient:
        """Connect, wait for the hello (or the server's close), then read in the background.

        Raises OSError, InvalidHandshake or TimeoutError when the server cannot be reached.
        """
        client = cls(label or (login.username if login else "anonymous"), login, server.name)
        headers = {"Cookie": login.cookie} if login else {}
        client.ws = await asyncio.wait_for(
            connect(
                server.ws_url,
                additional_headers=headers,
                open_timeout=timeout,
                close_timeout=2,
                ping_interval=None,
                max_queue=None,
            ),
            timeout + 1,
        )
        try:
            raw = await asyncio.wait_for(client.ws.recv(), timeout)
        except ConnectionClosed:
            client._ended()
            return client
        except TimeoutError:
            await client.close()
            raise
        client.hello = json.loads(raw)
        client._reader = asyncio.get_running_loop().create_task(client._read())
        return client

    @property
    def channel(self) -> str | None:
        return self.hello.get("channel") if self.hello else None

    @property
    def session(self) -> str | None:
        return self.hello.get("session") if self.hello else None

    @property
    def is_open(self) -> bool:
        """Accepted (a hello came) and not closed by either side."""
        return self.hello is not None and self.close_code is None and not self.closed_by_client

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                self.received.append(json.loads(raw))
                await self._notify()
        except ConnectionClosed:
            pass
        finally:
            self._ended()
            await self._notify()

    def _ended(self) -> None:
        if self.close_code is not None:
            return
        assert self.ws is not None
        received = self.ws.protocol.close_rcvd
        self.close_code = received.code if received is not None else 1006
        self.closed_at = time.monotonic()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(check), timeout)
            except TimeoutError:
                raise TimeoutError(f"{self!r}: no {what} within {timeout}s") from None

    async def request(
        self, payload: dict[str, Any], reply_type: str, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send a command and wait for its reply; ConnectionClosed if the socket ends first."""
        assert self.ws is not None
        start = len(self.received)
        try:
            await self.ws.send(json.dumps(payload))
        except ConnectionClosed:
            # The server closed first and the reader has not run yet: let it record
            # the close code, so the caller sees a closed tab, not a live one.
            with contextlib.suppress(TimeoutError):
                await self._wait(lambda: self.close_code is not None, 5.0, "close")
            raise

        def replied() -> bool:
            return self.close_code is not None or any(
                m.get("type") == reply_type for m in self.received[start:]
            )

        await self._wait(replied, timeout, f"{reply_type!r} reply")
        reply = next((m for m in self.received[start:] if m.get("type") == reply_type), None)
        if reply is None:
            raise ConnectionClosed(None, None)
        return reply

    async def wait_closed(self, timeout: float = 5.0) -> int:
        """Wait until the connection ends; return the close code."""
        await self._wait(lambda: self.close_code is not None, timeout, "close")
        assert self.close_code is not None
        return self.close_code

    async def close(self) -> None:
        """Close from this side (a tab closed); the reader task ends with the socket."""
        self.closed_by_client = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 3)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (servers started
    afterwards inherit it); returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def login_many(server: AsgiServer, usernames: Iterable[str], workers: int = 8) -> list[Login]:
    """Log each name in through ``server`` (a few at a time); one Login per name, in order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(server.login, usernames))


def presence_keys(redis_url: str, prefix: str) -> dict[str, float]:
    """Every key of the presence prefix in Redis, with its remaining expiry in
    seconds (-1: none)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}/*", count=1000))
        expiries = {k.decode(): client.pttl(k) for k in keys}
        # -2: expired since the scan saw it.
        return {k: ms / 1000 if ms >= 0 else -1.0 for k, ms in expiries.items() if ms != -2}
    finally:
        client.close()


def recorded_events(layer_redis_url: str, config: ServerConfig) -> list[dict[str, Any]]:
    """The presence signals the servers recorded so far, in the order they were sent."""
    import redis

    client = redis.Redis.from_url(layer_redis_url)
    try:
        return [json.loads(raw) for raw in client.lrange(config.events_key, 0, -1)]
    finally:
        client.close()
