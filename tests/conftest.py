"""Real things, started once: one redis-server per test session (flushed per test),
and factories for API and worker processes that clean up what they start."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import redis
import tornado.ioloop

from s2s.embedded import EmbeddedRedis, free_port
from s2s.keys import Keys
from s2s.settings import Settings
from tests.fakes.s3_server import S3Server
from tests.helpers import Processes, child_env, http_json, wait_until


@pytest.fixture
def io_loop():
    """pytest-tornado's per-test loop, without its deprecated make_current/clear_current,
    which leave an unclosed asyncio loop behind for the next test file."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    io_loop = tornado.ioloop.IOLoop.current()
    yield io_loop
    io_loop.close(all_fds=True)
    asyncio.set_event_loop(None)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("S2S_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persistent=False)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API (moto_server) on 127.0.0.1, started on first use, stopped after the session."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto_server.log").start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(redis_url, redis_client) -> Settings:
    """Test settings: short leases and retry delays so fault tests take seconds, not minutes."""
    return Settings.from_env(
        {}, dotenv=None, redis_url=redis_url, env="test", lease_ms=1500, retry_base_ms=100, retry_max_ms=400,
        shutdown_grace_ms=5000, log_level="info", cors_origins=("http://localhost:3000",),
        submit_per_minute=0, max_sockets_per_client=0)


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


class Stack:
    """API and worker processes for one test, sharing the test's settings and Redis."""

    def __init__(self, settings: Settings, processes: Processes, redis_client):
        self.settings = settings
        self.processes = processes
        self.redis = redis_client
        self.keys = Keys(settings.key_prefix)

    def api(self, port: int | None = None, **env) -> str:
        """Start ``s2s serve`` on ``port`` (a free one by default); return its base URL once it answers."""
        port = port or free_port()
        proc = self.processes.start(["serve"], child_env(self.settings, PORT=port, **env), name=f"api-{port}")
        url = f"http://127.0.0.1:{port}"

        def healthy():
            assert proc.poll() is None, f"API exited: {proc.log_path.read_text()}"
            try:
                return http_json("GET", url + "/api/jobs/health", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(healthy, timeout=20, what="the API to answer")
        return url

    def worker(self, **env):
        """Start ``s2s worker``; return the process once it has registered in Redis."""
        proc = self.processes.start(["worker"], child_env(self.settings, **env))

        def registered():
            assert proc.poll() is None, f"worker exited: {proc.log_path.read_text()}"
            return any(f":{proc.pid}:".encode() in w for w in self.redis.zrange(self.keys.workers, 0, -1))

        wait_until(registered, timeout=20, what="the worker to register")
        return proc

    def worker_id(self, proc) -> str:
        return next(w.decode() for w in self.redis.zrange(self.keys.workers, 0, -1) if f":{proc.pid}:".encode() in w)

    def job(self, job_id: str) -> dict:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.keys.job(job_id)).items()}

    def events(self, job_id: str) -> list[dict]:
        return [json.loads(e) for e in self.redis.lrange(self.keys.job_events(job_id), 0, -1)]


@pytest.fixture
def stack(settings, processes, redis_client) -> Stack:
    return Stack(settings, processes, redis_client)
