"""The example site served by a real ASGI server subprocess, for the browser tests.

:class:`DemoServer` runs ``example_project/run.py`` (which migrates, creates the
demo users and serves with uvicorn) on a free port, in its own process group,
with its output in a log file the tests print when they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = REPO_ROOT / "example_project" / "run.py"
MANAGE_SCRIPT = REPO_ROOT / "example_project" / "manage.py"
#: Seconds from spawn to the log-in page answering (migrations included).
START_TIMEOUT = 60.0


class DemoServer:
    """One ``run.py`` process on 127.0.0.1 and a free port."""

    def __init__(
        self,
        workdir: Path,
        *,
        database: Path,
        redis_url: str | None = None,
        name: str = "demo",
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}-{self.port}.log"
        self.env = dict(os.environ, DEMO_DATABASE=str(database), PYTHONUNBUFFERED="1")
        # The package under test is the one in this tree, however it is installed.
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        # Without REDIS_URL the demo runs on the embedded default.
        self.env.pop("REDIS_URL", None)
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.env.pop("DEMO_PRESENCE", None)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        # Settings of the demo's own (DEMO_PRESENCE, ...), for this server only.
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(RUN_SCRIPT), "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self) -> None:
        """Return once the log-in page answers; raise with the log if it never does."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"The demo server exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/accounts/login/", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"The demo server did not answer in {START_TIMEOUT:g}s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def manage(self, *args: str) -> str:
        """Run ``manage.py`` of the demo on this server's database; its output."""
        done = subprocess.run(
            [sys.executable, str(MANAGE_SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return "(no log)"
