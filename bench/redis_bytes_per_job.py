"""Redis bytes per job, for each blob storage: what a Key Value plan must hold per job of traffic.

A real redis-server, a directory, and a real S3 API (moto_server) on 127.0.0.1. For each
storage (file, s3, redis) N jobs are submitted the way the API does (a phone-like JPEG, 1.4 MP
or a phone's 12 MP, stripped by s2s.uploads.prepare_photo, stored, queued), claimed, and completed with a
picture of a provider's size (1024x1536 PNG). Redis is measured twice, queued and completed:
MEMORY USAGE of every key naming the job (its record, events, idempotency entry, and with
Redis storage its photo/picture blobs), plus the job's share of the queue's list and sets
(their MEMORY USAGE growth over N jobs). Bounded: N jobs (at most 200) per storage.

Usage: python bench/redis_bytes_per_job.py [--jobs 20] [--phone]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import tempfile
import time
import uuid
from pathlib import Path

import attrs
import redis.asyncio as aioredis
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s2s import uploads  # noqa: E402
from s2s.embedded import EmbeddedRedis  # noqa: E402
from s2s.job_requests import IdempotencyKey, NewJob  # noqa: E402
from s2s.queue import Queue  # noqa: E402
from s2s.settings import Settings  # noqa: E402
from tests.fakes import s3_server as s3  # noqa: E402

MAX_JOBS = 200
KIB = 1024


def phone_photo(size=(1440, 1080)) -> str:
    """A camera-like JPEG (gradient under sensor noise) as a data URL, as the demo page sends it."""
    noise = Image.effect_noise(size, 40).convert("RGB")
    img = Image.blend(noise, Image.linear_gradient("L").resize(size).convert("RGB"), 0.55)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def provider_picture(size=(1024, 1536)) -> bytes:
    noise = Image.effect_noise(size, 24).convert("RGB")
    img = Image.blend(noise, Image.linear_gradient("L").resize(size).convert("RGB"), 0.7)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def job_bytes(redis: aioredis.Redis, job_id: str) -> int:
    keys = [k async for k in redis.scan_iter(match=f"*{job_id}*", count=1000)]
    return sum([await redis.memory_usage(k) or 0 for k in keys])


async def structures(redis: aioredis.Redis, q: Queue) -> int:
    k = q.keys
    return sum([await redis.memory_usage(key) or 0 for key in (k.waiting, k.active, k.completed)])


async def measure(settings: Settings, jobs: int, photo_url: str, picture: bytes) -> dict:
    redis = aioredis.Redis.from_url(settings.redis_url)
    await redis.flushdb()
    q = Queue(redis, settings)
    try:
        prepared = uploads.prepare_photo(photo_url, max_bytes=settings.max_image_bytes,
                                         max_pixels=settings.max_image_pixels)
        job = NewJob(hero_name="Mia", theme_id="space", style_key="cartoon", kind="cover", photo=prepared.data,
                     photo_type=prepared.content_type)
        base = await structures(redis, q)
        ids = [(await q.enqueue(job, IdempotencyKey("203.0.113.9", uuid.uuid4().hex)))[0] for _ in range(jobs)]
        queued = [await job_bytes(redis, j) for j in ids]
        queued_share = (await structures(redis, q) - base) / jobs
        done = 0
        while done < jobs:
            for claim in (await q.claim("bench", jobs)).claims:
                assert await q.complete(claim, picture, "image/png", "noop")
                done += 1
        completed = [await job_bytes(redis, j) for j in ids]
        completed_share = (await structures(redis, q) - base) / jobs
        return {"photo": len(prepared.data), "queued": max(queued) + queued_share,
                "completed": max(completed) + completed_share}
    finally:
        await q.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--phone", action="store_true",
                        help="a 4000x3000 phone photo of ~1.9 MB (bench/submit_throughput.py's), not 1440x1080")
    args = parser.parse_args()
    jobs = max(1, min(args.jobs, MAX_JOBS))
    if args.phone:
        from submit_throughput import photo_like
        photo_url = "data:image/jpeg;base64," + base64.b64encode(photo_like((4000, 3000), 2_000_000)).decode()
    else:
        photo_url = phone_photo()
    picture = provider_picture()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis", persistent=False)
        moto = s3.S3Server(Path(tmp) / "moto.log").start()
        try:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            moto.client().create_bucket(Bucket=bucket)
            base = Settings.from_env({}, dotenv=None, redis_url=server.start(), env="test")
            storages = {
                "file": attrs.evolve(base, storage_url=f"file://{tmp}/blobs"),
                "s3": attrs.evolve(base, storage_url=f"s3://{bucket}/s2s", aws_endpoint_url=moto.endpoint,
                                   aws_region=s3.REGION, aws_access_key_id=s3.ACCESS_KEY,
                                   aws_secret_access_key=s3.SECRET_KEY),
                "redis": attrs.evolve(base, storage_url="redis://"),
            }
            print(f"{jobs} jobs per storage; photo {len(photo_url) * 3 // 4 / KIB:.0f} KiB uploaded; "
                  f"picture {len(picture) / KIB:.0f} KiB (1024x1536 PNG); retention {base.retention_seconds} s")
            print(f"{'storage':8} {'photo KiB':>10} {'queued KiB/job':>15} {'completed KiB/job':>18}")
            started = time.monotonic()
            for name, settings in storages.items():
                got = asyncio.run(measure(settings, jobs, photo_url, picture))
                print(f"{name:8} {got['photo'] / KIB:10.0f} {got['queued'] / KIB:15.1f} {got['completed'] / KIB:18.1f}")
            print(f"({time.monotonic() - started:.1f} s; MEMORY USAGE of every key naming a job, the largest job, "
                  "plus its share of the waiting list and active/completed sets)")
        finally:
            moto.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
