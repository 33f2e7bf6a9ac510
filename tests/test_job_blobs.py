"""A job's photo and picture in the blob store (S2S_STORAGE_URL), seen from outside s2s.

Real API and worker processes on the test Redis, with a directory or a real S3 API
(moto_server on 127.0.0.1). What is stored is read without s2s.storage: the files on
disk, the bucket listed with boto3, every Redis key of the job with MEMORY USAGE.
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import time
import urllib.request

import attrs
import pytest
from PIL import Image

from s2s.queue import QUEUED_PHOTO_S
from tests.api_client import submit, wait_ended
from tests.helpers import http_json, wait_until, wait_until_async
from tests.test_storage import file_backend, s3_backend

TOKEN = "operator-secret"
RECORD_BUDGET = 16 * 1024  # the most Redis may hold for one job when its bytes are elsewhere


def phone_photo(seed: int = 3) -> bytes:
    """Camera-like: a gradient under sensor noise, 1600x1200, as a phone would send it."""
    noise = Image.effect_noise((1600, 1200), 48).convert("RGB")
    gradient = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    img = Image.blend(noise, gradient, 0.5 + seed / 100)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(params=["file", "s3"])
def backend(request, settings, tmp_path):
    if request.param == "file":
        return file_backend(settings, tmp_path / "blobs")
    return s3_backend(settings, request.getfixturevalue("s3_server"))


def storage_env(backend) -> dict:
    s = backend.settings
    env = {"S2S_STORAGE_URL": s.storage_url, "S2S_ADMIN_TOKEN": TOKEN}
    if backend.name == "s3":
        env.update(AWS_ENDPOINT_URL=s.aws_endpoint_url, AWS_REGION=s.aws_region, AWS_ACCESS_KEY_ID=s.aws_access_key_id,
                   AWS_SECRET_ACCESS_KEY=s.aws_secret_access_key)
    return env


def job_keys_bytes(stack, job_id: str) -> dict[str, int]:
    """Every Redis key naming the job, with its MEMORY USAGE; and the job's share of the queue structures."""
    found = {k.decode(): stack.redis.memory_usage(k) for k in stack.redis.scan_iter(match=f"*{job_id}*", count=1000)}
    assert found, f"no Redis key names job {job_id}"
    return found


def blob_names(backend, job_id: str) -> list[str]:
    return [k.split("/", 2)[2] for k in backend.raw() if k.startswith(f"jobs/{job_id}/")]


def test_the_photo_and_the_picture_live_in_the_store_and_redis_keeps_records_only(stack, backend):
    env = storage_env(backend)
    url = stack.api(**env)
    photo = phone_photo()
    job_id = submit(url, photo)

    # queued (no worker yet): the prepared photo is in the store, with an expiry; Redis names it only
    assert blob_names(backend, job_id) == ["photo"]
    stored = backend.run(lambda store: store.get(f"jobs/{job_id}/photo"))
    assert len(stored) > RECORD_BUDGET, "a photo bigger than the budget, or the next check proves nothing"
    assert Image.open(io.BytesIO(stored)).format == "JPEG"
    expires = backend.run(lambda store: store.expires_at(f"jobs/{job_id}/photo"))
    assert time.time() < expires <= time.time() + stack.settings.retention_seconds + QUEUED_PHOTO_S
    queued = job_keys_bytes(stack, job_id)
    assert sum(queued.values()) <= RECORD_BUDGET, queued
    assert stack.job(job_id)["photo"] == f"jobs/{job_id}/photo"

    stack.worker(S2S_PROVIDER="noop", **env)
    found = wait_ended(url, job_id)
    assert found["status"] == "completed", found

    # completed: the photo is gone, the picture is there, and Redis still holds records only
    names = wait_until(lambda: (n := blob_names(backend, job_id)) and "photo" not in n and n,
                       timeout=10, what="the photo deleted at completion")
    assert len(names) == 1 and names[0].startswith("picture-"), names
    picture = backend.run(lambda store: store.get(f"jobs/{job_id}/{names[0]}"))
    assert Image.open(io.BytesIO(picture)).format == "PNG"
    done = job_keys_bytes(stack, job_id)
    assert sum(done.values()) <= RECORD_BUDGET, done

    # the image route: the bytes themselves (file), or a redirect to a presigned link that serves them (s3)
    image_url = found["result"]["imageUrl"]
    if backend.name == "file":
        code, headers, data = http_json("GET", image_url)
        assert code == 200 and data == picture
        assert headers["Content-Type"] == "image/png" and headers["Content-Disposition"].startswith("inline;")
    else:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(image_url, timeout=10)
            raise AssertionError("expected a redirect")
        except urllib.error.HTTPError as answer:
            assert answer.code == 302 and answer.headers["Cache-Control"] == "no-store"
            link = answer.headers["Location"]
        assert link.startswith(backend.settings.aws_endpoint_url) and "X-Amz-Signature" in link
        with urllib.request.urlopen(link, timeout=10) as resp:
            assert resp.read() == picture
            assert resp.headers["Content-Type"] == "image/png"


def test_a_failed_job_keeps_its_photo_until_its_expiry_and_an_operator_can_retry_it(stack, backend):
    env = storage_env(backend)
    url = stack.api(**env)
    failing = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_FAIL_ATTEMPTS=10, S2S_MAX_ATTEMPTS=1, **env)
    job_id = submit(url, phone_photo())
    assert wait_ended(url, job_id)["status"] == "failed"
    assert blob_names(backend, job_id) == ["photo"], "kept for a retry"
    expires = backend.run(lambda store: store.expires_at(f"jobs/{job_id}/photo"))
    assert time.time() < expires <= time.time() + stack.settings.retention_seconds + QUEUED_PHOTO_S
    failing.send_signal(signal.SIGTERM)
    assert failing.wait(15) == 0

    stack.worker(S2S_PROVIDER="noop", **env)
    code, _, raw = http_json("POST", f"{url}/api/jobs/{job_id}/retry", b"", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 202, raw
    assert wait_ended(url, job_id)["status"] == "completed"
    wait_until(lambda: "photo" not in blob_names(backend, job_id), timeout=10, what="the photo deleted")


def test_a_retry_after_the_photo_expired_is_409_photo_expired(stack, backend):
    env = storage_env(backend)
    url = stack.api(**env)
    job_id = submit(url, phone_photo())
    code, _, raw = http_json("POST", f"{url}/api/jobs/{job_id}/cancel", b"", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200, raw
    assert blob_names(backend, job_id) == ["photo"]
    backend.run(lambda store: store.delete(f"jobs/{job_id}/photo"))  # as its expiry and the sweep would

    code, _, raw = http_json("POST", f"{url}/api/jobs/{job_id}/retry", b"", {"Authorization": f"Bearer {TOKEN}"})
    assert (code, json.loads(raw)["code"]) == (409, "photo_expired"), raw


def test_health_names_the_store_and_its_round_trip(stack, backend):
    url = stack.api(**storage_env(backend))
    _, _, raw = http_json("GET", url + "/api/jobs/health")
    storage = json.loads(raw)["storage"]
    assert storage["ok"] is True and storage["scheme"] == backend.name and storage["rttMs"] >= 0, raw


def test_one_sweep_a_round_removes_expired_blobs_and_keeps_live_ones(backend):
    """The workers' sweep (file and S3 storage): expired blobs off the disk or bucket, once a round in the cluster."""
    from s2s.queue import Queue

    settings = attrs.evolve(backend.settings, retention_seconds=1)  # S3: blobs older than this are looked at

    async def body():
        import redis.asyncio as aioredis

        q = Queue(aioredis.Redis.from_url(settings.redis_url), settings)
        try:
            await q.blobs.put("jobs/a/photo", b"old", ttl_s=1)
            await q.blobs.put("jobs/b/photo", b"new", ttl_s=3600)

            async def expired():
                return await q.blobs.get("jobs/a/photo") is None

            await wait_until_async(expired, timeout=5, what="the short-lived blob to expire")
            assert backend.raw() == ["jobs/a/photo", "jobs/b/photo"], "expired, but still stored"
            assert await q.sweep_blobs(60) == 1
            assert await q.sweep_blobs(60) is None, "another sweep in the same round: not its turn"
        finally:
            await q.close()

    asyncio.run(body())
    assert backend.raw() == ["jobs/b/photo"]


def test_past_the_high_water_mark_a_submit_is_refused_before_its_body_is_sent(stack):
    url = stack.api(S2S_STORE_HIGH_WATER_PERCENT=1)
    used = int(stack.redis.info("memory")["used_memory"])
    stack.redis.config_set("maxmemory", used * 10)  # 10 % used: past a 1 % mark, with room for everything else
    try:  # health reads the fill afresh (the process keeps that reading for a second): the API knows
        wait_until(lambda: json.loads(http_json("GET", url + "/api/jobs/health")[2])["store"]["state"] == "full",
                   what="the API to read the store as full")
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"POST /api/jobs/generate-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")  # and not one byte of
            # the body: a client that waits is answered before it sends one (one that writes its whole body
            # first reads the same answer once the body is discarded, tests/test_bodies.py)
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = conn.recv(65536)
                assert chunk, f"closed before answering: {answer!r}"
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), head
        assert b"\r\nRetry-After: " in head
        assert json.loads(body)["code"] == "storage_full"
    finally:
        stack.redis.config_set("maxmemory", 0)


def test_a_fenced_out_worker_s_picture_neither_replaces_the_finished_one_nor_stays(backend):
    """Two completions of one job (a late worker, a repeated write): the record's picture stays, the other goes."""
    import redis.asyncio as aioredis

    from s2s.job_requests import NewJob
    from s2s.queue import Queue

    async def body():
        q = Queue(aioredis.Redis.from_url(backend.settings.redis_url), backend.settings)
        try:
            job_id, _ = await q.enqueue(NewJob(hero_name="Mia", theme_id="adventure", style_key="watercolor",
                                               kind="cover", photo=b"photo bytes", photo_type="image/jpeg"))
            (claim,) = (await q.claim("w", 1)).claims
            assert await q.complete(claim, b"first", "image/png", "noop")
            assert not await q.complete(claim, b"late", "image/png", "noop")  # no longer in hand: refused
            assert await q.result(job_id) == (b"first", "image/png")
            return job_id
        finally:
            await q.close()

    job_id = asyncio.run(body())
    names = blob_names(backend, job_id)
    assert len(names) == 1 and names[0].startswith("picture-"), f"the late picture was left behind: {names}"
