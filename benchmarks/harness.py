"""What every benchmark needs: its own Redis, a real server process, tables, a JSON line.

Every process started here is a child of the benchmark and is stopped in a
``finally`` (and at exit), so a failed or interrupted run leaks nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PEER_VENV = BENCH_DIR / ".venv-peer"
PEER_PACKAGE = "django-channels-more-than-present==2.0.1"
# The peer's server runs the same versions of everything around it as ours.
SHARED_PACKAGES = (
    "Django",
    "channels",
    "channels_redis",
    "django-redis",
    "redis",
    "uvicorn",
    "websockets",
    "asgiref",
)

_children: list[subprocess.Popen[bytes]] = []


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    if process in _children:
        _children.remove(process)


@atexit.register
def _stop_all_children() -> None:
    for process in list(_children):
        _stop(process, timeout=5)


def _start(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(list(args), **kwargs)
    _children.append(process)
    return process


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0, process: Any = None) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def redis_binary() -> str:
    """The redis-server binary, or a clear error."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if found is None:
        sys.exit("redis-server was not found on PATH or at /usr/bin/redis-server")
    return found


@contextlib.contextmanager
def redis_server(extra: Sequence[str] = ()) -> Iterator[str]:
    """A throwaway redis-server on a free port, nothing on disk; yields its URL."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="presence-bench-redis-")
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", workdir, *extra]
    process = _start(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def configure_django(
    presence_url: str, *, channel_layer: dict[str, Any], presence: dict[str, Any]
) -> None:
    """Django in this process, with presence on the Redis at ``presence_url``."""
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="presence-benchmark",
        USE_TZ=True,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "channels",
            "channels_presence",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": presence_url}},
        CHANNEL_LAYERS={"default": channel_layer},
        CHANNELS_PRESENCE=presence,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    django.setup()


def server_env(variant: str, redis_url: str, db: str, **extra: str) -> dict[str, str]:
    """The environment of a benchmark server (see ``benchserver/settings.py``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        DJANGO_SETTINGS_MODULE="benchserver.settings",
        BENCH_VARIANT=variant,
        BENCH_REDIS_URL=redis_url,
        BENCH_DB=db,
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def setup_database(python: str, env: dict[str, str], users: int) -> list[str]:
    """Migrate the server's SQLite file, create users, return their session keys."""
    out = subprocess.run(
        [python, "-m", "benchserver.setup_db", "--users", str(users)],
        cwd=BENCH_DIR,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    keys: list[str] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return keys


@contextlib.contextmanager
def asgi_server(python: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A uvicorn process serving ``benchserver``; yields it, with ``.port`` set.

    Runs with ``cwd=benchmarks/`` so the ``channels_presence`` it imports is the
    one installed in that Python's environment, never the source tree.
    """
    port = free_port()
    fd, log_path = tempfile.mkstemp(prefix="presence-bench-server-", suffix=".log")
    log = os.fdopen(fd, "wb")
    args = [
        python, "-m", "uvicorn", "benchserver.asgi:application",
        "--host", "127.0.0.1", "--port", str(port),
        "--ws", "websockets-sansio", "--lifespan", "off",
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = _start(args, cwd=BENCH_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port, process=process)
        except (RuntimeError, TimeoutError):
            log.flush()
            sys.stderr.write(Path(log_path).read_text()[-4000:])
            raise
        process.port = port  # type: ignore[attr-defined]
        yield process
    finally:
        _stop(process)
        log.close()
        text = Path(log_path).read_text(errors="replace")
        os.unlink(log_path)
        lines = [line for line in text.splitlines() if line.strip()]
        if lines:
            RESULTS_DIR.mkdir(exist_ok=True)
            kept = RESULTS_DIR / f"server-{env.get('BENCH_VARIANT', 'x')}-{port}.log"
            kept.write_text(text)
            sys.stderr.write(f"[the server logged {len(lines)} lines: {kept}; the last 5:]\n")
            sys.stderr.write("\n".join(lines[-5:]) + "\n")


def peer_python() -> str:
    """The Python of ``benchmarks/.venv-peer``, created and filled on first use.

    The peer is installed alone there because it uses the import name
    ``channels_presence`` too; everything else is pinned to our versions.
    """
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".installed"
    pins = [PEER_PACKAGE] + [f"{name}=={metadata.version(name)}" for name in SHARED_PACKAGES]
    if marker.exists() and marker.read_text() == "\n".join(pins):
        return str(python)
    print(f"installing {PEER_PACKAGE} into {PEER_VENV} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
        capture_output=True,
        timeout=600,
    )
    if done.returncode:
        sys.stderr.write(done.stdout.decode() + done.stderr.decode())
        raise RuntimeError(f"pip install into {PEER_VENV} failed ({done.returncode})")
    marker.write_text("\n".join(pins))
    return str(python)


def machine_info(redis_url: str | None = None) -> dict[str, Any]:
    """CPU, cores, Python, Redis and package versions of this run."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url)
        info["redis_server"] = client.info("server")["redis_version"]
        client.close()
    for name in ("channels-presence", *SHARED_PACKAGES):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info["redis-py" if name == "redis" else name] = metadata.version(name)
    return info


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: Any) -> float:
    """User + system CPU seconds the Redis server has used so far."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if any(len(row) != len(widths) for row in cells):
        raise ValueError(f"{title}: every row needs {len(widths)} cells")
    print(f"\n{title}")
    for n, row in enumerate(cells):
        padded = (
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  ".join(padded))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def emit(name: str, figures: dict[str, Any]) -> None:
    """Save the figures under ``benchmarks/results/`` and print them as the last line."""
    RESULTS_DIR.mkdir(exist_ok=True)
    line = json.dumps({"benchmark": name, **figures}, sort_keys=True)
    (RESULTS_DIR / f"{name}.json").write_text(line + "\n")
    print(line, flush=True)
