"""Queue benchmark: ONE worker process, the noop provider, a real redis-server on loopback.

Prints three figures (all from Redis's own clock, recorded in each job):
  1. backlog drain: N jobs queued first, then drained (noop delay 0), jobs/s
  2. jobs/s for M jobs of 50 ms each at concurrency 50
  3. enqueue-to-start latency p50/p99 at a steady R jobs/s

Bounded: each phase stops after its job count or its time limit, whichever comes first.
Usage: python bench/queue_throughput.py [--drain 20000] [--timed 2000] [--rate 200] [--seconds 10]
       [--only drain|timed|latency]  (one figure; repeatable)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

import redis as sync_redis
from PIL import Image

from s2s.embedded import EmbeddedRedis
from s2s.job_requests import NewJob
from s2s.queue import Queue
from s2s.settings import Settings

PHASE_LIMIT_S = 180
PHASES = ("drain", "timed", "latency")


def tiny_photo() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


JOB = NewJob(hero_name="Bench", theme_id="adventure", style_key="watercolor", kind="cover", photo=tiny_photo(),
             photo_type="image/png")


def start_worker(settings: Settings, concurrency: int, delay_ms: int) -> subprocess.Popen:
    env = {**os.environ, **settings.environ(), "S2S_PROVIDER": "noop", "S2S_NOOP_DELAY_MS": str(delay_ms),
           "WORKER_CONCURRENCY": str(concurrency), "S2S_LOG_LEVEL": "warning"}
    return subprocess.Popen([sys.executable, "-m", "s2s", "worker"], env=env)


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


async def enqueue_many(queue: Queue, n: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 500):
        results = await asyncio.gather(*[queue.enqueue(JOB) for _ in range(min(500, n - start))])
        ids += [job_id for job_id, _ in results]
    return ids


def times(client: sync_redis.Redis, queue: Queue, ids: list[str], *fields: str) -> list[tuple[int, ...]]:
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(queue.keys.job(job_id), *fields)
    return [tuple(int(v) for v in row) for row in pipe.execute() if all(row)]


def wait_done(client: sync_redis.Redis, queue: Queue, total: int, baseline: int) -> None:
    deadline = time.monotonic() + PHASE_LIMIT_S
    while time.monotonic() < deadline:
        done = int(client.hget(queue.keys.totals, "completed") or 0) - baseline
        if done >= total:
            return
        time.sleep(0.05)
    raise SystemExit(f"phase did not finish within {PHASE_LIMIT_S} s")


def completed(client, queue) -> int:
    return int(client.hget(queue.keys.totals, "completed") or 0)


async def phase_backlog(settings, client, n: int, delay_ms: int) -> float:
    """Queue ``n`` jobs first, then let one worker (concurrency 50) drain them; jobs/s."""
    queue = Queue.connect(settings)
    ids = await enqueue_many(queue, n)
    base = completed(client, queue)
    worker = start_worker(settings, 50, delay_ms)
    try:
        wait_done(client, queue, n, base)
    finally:
        stop_worker(worker)
    rows = times(client, queue, ids, "startedAtUs", "completedAtUs")
    await queue.close()
    span = (max(r[1] for r in rows) - min(r[0] for r in rows)) / 1e6
    return len(rows) / span


async def phase_latency(settings, client, rate: int, seconds: float) -> tuple[float, float, int]:
    queue = Queue.connect(settings)
    worker = start_worker(settings, 50, 0)
    base = completed(client, queue)
    try:
        await asyncio.sleep(2.0)  # let the worker start and block on the empty queue
        ids = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds)
        for i in range(total):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            ids.append((await queue.enqueue(JOB))[0])
        wait_done(client, queue, total, base)
    finally:
        stop_worker(worker)
    rows = times(client, queue, ids, "createdAtUs", "startedAtUs")
    await queue.close()
    lat = sorted((s - c) / 1000 for c, s in rows)
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], len(lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drain", type=int, default=20000)
    parser.add_argument("--timed", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--redis-url", default=os.environ.get("S2S_BENCH_REDIS_URL"))
    parser.add_argument("--only", action="append", choices=PHASES, help="run just this figure (repeatable)")
    args = parser.parse_args()
    phases = args.only or PHASES
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        url = args.redis_url
        if not url:
            server = EmbeddedRedis(tmp, persistent=False)
            url = server.start()
        try:
            settings = Settings.from_env({}, dotenv=None, redis_url=url, retention_seconds=3600)
            client = sync_redis.Redis.from_url(url)
            client.flushdb()
            print(f"redis {client.info('server')['redis_version']} at {url}; one worker process, noop provider")
            if "drain" in phases:
                rate = asyncio.run(phase_backlog(settings, client, args.drain, 0))
                print(f"backlog drain: {args.drain} jobs, concurrency 50, delay 0: {rate:,.0f} jobs/s")
                client.flushdb()
            if "timed" in phases:
                rate = asyncio.run(phase_backlog(settings, client, args.timed, 50))
                print(f"{args.timed} jobs of 50 ms, concurrency 50: {rate:,.0f} jobs/s")
                client.flushdb()
            if "latency" in phases:
                p50, p99, n = asyncio.run(phase_latency(settings, client, args.rate, args.seconds))
                print(f"enqueue-to-start at {args.rate} jobs/s ({n} jobs): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            client.close()
        finally:
            if server:
                server.stop()


if __name__ == "__main__":
    main()
