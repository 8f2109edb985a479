"""A throwaway Redis Cluster for the tests: real redis-server processes, real slots.

Three (or more) primaries on free ports, each in a temporary folder with
nothing saved, joined by ``redis-cli --cluster create``: the same cluster an
operator builds, so MOVED replies, per-node function libraries and
cross-slot refusals are the server's own.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence

import redis

from tests.redis_server import find_redis_server, free_port, wait_for_port


def find_redis_cli() -> str | None:
    """The redis-cli binary, if this machine has one."""
    return shutil.which("redis-cli")


def cluster_binaries() -> tuple[str, str] | str:
    """(redis-server, redis-cli), or why a cluster cannot be started here."""
    server, cli = find_redis_server(), find_redis_cli()
    missing = [name for name, path in (("redis-server", server), ("redis-cli", cli)) if not path]
    if missing:
        return f"Redis Cluster tests need {' and '.join(missing)} on PATH"
    return str(server), str(cli)


class RedisCluster:
    """``primaries`` redis-server processes in cluster mode, no replicas."""

    def __init__(self, server: str, cli: str, primaries: int = 3) -> None:
        if primaries < 3:
            raise ValueError(f"redis-cli --cluster create needs 3 primaries, not {primaries}")
        self.server, self.cli = server, cli
        self.ports = [free_port() for _ in range(primaries)]
        self.dir = tempfile.mkdtemp(prefix="presence-cluster-")
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """One seed node's URL; the client finds the others."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def start(self) -> None:
        for port in self.ports:
            folder = f"{self.dir}/{port}"
            subprocess.run(["mkdir", "-p", folder], check=True)
            self.processes.append(
                subprocess.Popen(
                    [
                        self.server,
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
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"{folder}/nodes.conf",
                        # The bus port would be port + 10000, maybe past 65535.
                        "--cluster-port",
                        str(free_port()),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_for_port(port)
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Block until every node reports cluster_state:ok."""
        deadline = time.monotonic() + timeout
        for port in self.ports:
            with redis.Redis(port=port, decode_responses=True) as client:
                while "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the cluster on {self.ports} never came up")
                    time.sleep(0.05)

    def dbsize(self, port: int) -> int:
        """Keys held by one primary, as ``redis-cli -p PORT DBSIZE`` reads them."""
        out = subprocess.run(
            [self.cli, "-p", str(port), "DBSIZE"], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    def sizes(self) -> dict[int, int]:
        return {port: self.dbsize(port) for port in self.ports}

    def flush(self) -> None:
        for port in self.ports:
            with redis.Redis(port=port) as client:
                client.flushall()

    def calls(self, ports: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
        """INFO commandstats calls per command, per primary."""
        out: dict[int, dict[str, int]] = {}
        for port in ports or self.ports:
            with redis.Redis(port=port, decode_responses=True) as client:
                stats = client.info("commandstats")
            out[port] = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        return out

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)
        self.processes = []

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
