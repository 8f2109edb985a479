"""A throwaway Sentinel set-up for the tests: real redis-server and redis-sentinel processes.

One primary, its replicas and three sentinels, each on a free port with its
own temporary directory and nothing saved to disk. The sentinels watch the
primary as :data:`SERVICE` with a quick ``down-after-milliseconds``, so
:meth:`SentinelSetup.kill_primary` followed by
:meth:`SentinelSetup.wait_for_promotion` is a real failover in a second or two.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.redis_server import free_port, wait_for_port

#: The name the sentinels know the primary by (a django-redis LOCATION's host).
SERVICE = "presence"
#: How long a primary may not answer before a sentinel thinks it down.
DOWN_AFTER_MS = 500
#: How long one failover attempt may take before another is tried.
FAILOVER_TIMEOUT_MS = 3000
SENTINELS = 3
QUORUM = 2


def find_redis_sentinel() -> str | None:
    """The redis-sentinel binary, if this machine has one."""
    return shutil.which("redis-sentinel") or next(
        (
            p
            for p in ("/usr/bin/redis-sentinel", "/usr/local/bin/redis-sentinel")
            if os.path.exists(p)
        ),
        None,
    )


class _Process:
    """One redis-server or redis-sentinel child on a port of its own."""

    def __init__(self, args: list[str], port: int, folder: str) -> None:
        self.args = args
        self.port = port
        self.dir = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to hand anything over."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2
        )


class SentinelSetup:
    """A primary, ``replicas`` replicas and three sentinels watching them."""

    def __init__(self, server_binary: str, sentinel_binary: str, replicas: int = 1) -> None:
        self.root = tempfile.mkdtemp(prefix="presence-sentinel-")
        self.servers: list[_Process] = []
        for i in range(1 + replicas):
            port = free_port()
            folder = self._folder(f"redis-{i}")
            args = [
                server_binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                folder,
                # A replica's first sync streams from memory, at once.
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]
            if i > 0:
                args += ["--replicaof", "127.0.0.1", str(self.servers[0].port)]
            self.servers.append(_Process(args, port, folder))
        self.sentinels: list[_Process] = []
        for i in range(SENTINELS):
            port = free_port()
            folder = self._folder(f"sentinel-{i}")
            conf = Path(folder) / "sentinel.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {folder}",
                        f"sentinel monitor {SERVICE} 127.0.0.1 {self.servers[0].port} {QUORUM}",
                        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                        f"sentinel parallel-syncs {SERVICE} 1",
                        "",
                    ]
                )
            )
            self.sentinels.append(_Process([sentinel_binary, str(conf)], port, folder))

    def _folder(self, name: str) -> str:
        folder = os.path.join(self.root, name)
        os.mkdir(folder)
        return folder

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``[(host, port), ...]`` as django-redis's ``SENTINELS`` takes them."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def location(self, db: int = 0) -> str:
        """A django-redis Sentinel ``LOCATION``: the service name as the host."""
        return f"redis://{SERVICE}/{db}"

    def cache_config(self, db: int = 0) -> dict[str, object]:
        """A ``CACHES`` entry for this set-up, as django-redis documents it."""
        return {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": self.location(db),
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "SENTINELS": self.sentinel_addresses,
            },
        }

    def start(self, timeout: float = 30.0) -> None:
        """Start everything and wait until the sentinels agree on who is who."""
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until_settled(timeout)

    def wait_until_settled(self, timeout: float = 30.0) -> None:
        """Every replica in sync, and every sentinel knows every other and every replica."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            last = self._unsettled()
            if not last:
                return
            time.sleep(0.1)
        raise TimeoutError(f"the Sentinel set-up did not settle within {timeout}s: {last}")

    def _unsettled(self) -> str:
        primary = self.primary()
        replicas = [s for s in self.servers if s.process is not None and s is not primary]
        for server in replicas:
            with server.client() as c:
                info = c.info("replication")
            if info.get("role") != "slave" or info.get("master_link_status") != "up":
                return f"replica on {server.port} not in sync: {info.get('master_link_status')}"
        for sentinel in self.sentinels:
            if sentinel.process is None:
                continue
            with sentinel.client() as c:
                state = c.sentinel_master(SERVICE)
            if state["port"] != primary.port:
                return f"sentinel {sentinel.port} still names port {state['port']}"
            if state["num-other-sentinels"] < len(self.sentinels) - 1:
                return f"sentinel {sentinel.port} knows {state['num-other-sentinels']} others"
            if state["num-slaves"] < len(replicas) or state["is_sdown"] or state["is_odown"]:
                return f"sentinel {sentinel.port} sees {state['num-slaves']} replicas"
        return ""

    def primary(self) -> _Process:
        """The server that the sentinels name as the primary (and that says so itself)."""
        with self.sentinels[0].client() as c:
            _, port = c.sentinel_get_master_addr_by_name(SERVICE)
        return next(s for s in self.servers if s.port == int(port))

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Wait until every replica has every write the primary answered so far."""
        primary = self.primary()
        with primary.client() as c:
            target = c.info("replication")["master_repl_offset"]
        deadline = time.monotonic() + timeout
        for server in self.servers:
            if server is primary or server.process is None:
                continue
            with server.client() as c:
                while c.info("replication").get("slave_repl_offset", -1) < target:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"replica {server.port} did not catch up in {timeout}s")
                    time.sleep(0.02)

    def cut_off_replicas(self) -> None:
        """Stop every replica (SIGSTOP) and drop its link to the primary.

        Writes the primary answers from now on reach no replica: a failover
        after :meth:`kill_primary` loses them, as asynchronous replication
        can. :meth:`resume_replicas` lets the replicas run again.
        """
        primary = self.primary()
        for server in self.servers:
            if server is not primary and server.process is not None:
                server.process.send_signal(signal.SIGSTOP)
        with primary.client() as c:
            c.client_kill_filter(_type="replica")

    def resume_replicas(self) -> None:
        for server in self.servers:
            if server.process is not None:
                server.process.send_signal(signal.SIGCONT)

    def replicas(self) -> list[_Process]:
        """The running servers that are not the primary (by the sentinels' word)."""
        primary = self.primary()
        return [s for s in self.servers if s is not primary and s.process is not None]

    def kill_primary(self) -> _Process:
        """SIGKILL the primary; returns it (it can be started again as a server)."""
        old = self.primary()
        old.kill()
        return old

    def wait_for_promotion(self, old: _Process, timeout: float = 30.0) -> _Process:
        """Wait until the sentinels promoted a replica in ``old``'s place; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                new = self.primary()
            except (redis.RedisError, StopIteration):
                new = old
            if new is not old:
                with new.client() as c:
                    if c.info("replication").get("role") == "master":
                        return new
            time.sleep(0.05)
        raise TimeoutError(f"no replica was promoted within {timeout}s of the primary's death")

    def close(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()
        shutil.rmtree(self.root, ignore_errors=True)
