"""Small tools the tests share: test photos, polling with a deadline, child processes."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PIL import Image, ImageDraw

from s2s.embedded import free_port
from s2s.keys import Keys
from s2s.replies import now_ms
from s2s.settings import Settings

T = TypeVar("T")


def photo_bytes(fmt: str = "JPEG", size: tuple[int, int] = (320, 400), seed: int = 0) -> bytes:
    """A small picture with shapes in it, as a phone photo stands in for a child's portrait."""
    img = Image.new("RGB", size, (200 - seed % 50, 170, 140))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.ellipse((w * 0.25, h * 0.15, w * 0.75, h * 0.6), fill=(240, 200, 170))
    draw.ellipse((w * 0.38, h * 0.3, w * 0.45, h * 0.36), fill=(40, 40, 40))
    draw.ellipse((w * 0.55, h * 0.3, w * 0.62, h * 0.36), fill=(40, 40, 40))
    draw.rectangle((w * 0.2, h * 0.62, w * 0.8, h), fill=(30 + seed % 200, 90, 200))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
                           what: str = "condition"):
    """:func:`wait_until` on an event loop: ``check`` may return an awaitable, and the loop runs meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def redis_clock_past(queue, ms: int) -> bool:
    """Whether Redis's clock, the one the queue stamps and judges leases by, is past ``ms``."""
    return await now_ms(queue.redis) > ms


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S2S_") and k not in ("REDIS_URL", "PORT")}
    env.update(settings.environ())
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Processes:
    """Starts ``python -m s2s ...`` children and makes sure none outlives the test."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.children: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict[str, str], name: str | None = None) -> subprocess.Popen:
        name = name or f"{args[0]}-{len(self.children)}"
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "s2s", *args], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        proc.log_path = self.log_dir / f"{name}.log"
        self.children.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)


def http_json(method: str, url: str, body: bytes | None = None, headers: dict | None = None,
              timeout: float = 10) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class Stack:
    """API and worker processes for one test, sharing the test's settings and Redis."""

    def __init__(self, settings: Settings, processes: Processes, redis_client):
        self.settings = settings
        self.processes = processes
        self.redis = redis_client
        self.keys = Keys(settings.key_prefix)

    def api(self, port: int | None = None, *, ready: tuple[int, ...] = (200,), **env) -> str:
        """Start ``s2s serve`` on ``port`` (a free one by default); return its base URL once health answers one
        of ``ready``."""
        port = port or free_port()
        proc = self.processes.start(["serve"], child_env(self.settings, PORT=port, **env), name=f"api-{port}")
        url = f"http://127.0.0.1:{port}"

        def healthy():
            assert proc.poll() is None, f"API exited: {proc.log_path.read_text()}"
            try:
                return http_json("GET", url + "/api/jobs/health", timeout=1)[0] in ready
            except OSError:
                return False

        wait_until(healthy, timeout=30, what="the API to answer")
        return url

    def worker(self, *, name: str | None = None, **env):
        """Start ``s2s worker``; return the process once it has registered in Redis."""
        proc = self.processes.start(["worker"], child_env(self.settings, **env), name=name)

        def registered():
            assert proc.poll() is None, f"worker exited: {proc.log_path.read_text()}"
            return any(f":{proc.pid}:".encode() in w for w in self.redis.zrange(self.keys.workers, 0, -1))

        wait_until(registered, timeout=30, what="the worker to register")
        return proc

    def worker_id(self, proc) -> str:
        return next(w.decode() for w in self.redis.zrange(self.keys.workers, 0, -1) if f":{proc.pid}:".encode() in w)

    def job(self, job_id: str) -> dict:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.keys.job(job_id)).items()}

    def events(self, job_id: str) -> list[dict]:
        return [json.loads(e) for e in self.redis.lrange(self.keys.job_events(job_id), 0, -1)]
