"""Blob storage (s2s/storage/): the same behaviour from every backend.

Each test runs against a directory, the test redis-server and a real S3 API server
(moto_server on 127.0.0.1). What is stored is checked from outside s2s.storage: the
files on disk, the Redis keys, the bucket listed with boto3.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest

from s2s.keys import Keys
from s2s.settings import Settings, SettingsError
from s2s.storage import BlobStore, job_blob, job_prefix, open_store
from tests.fakes import s3_server as s3
from tests.helpers import photo_bytes

PHOTO = photo_bytes("JPEG", (64, 80))
PICTURE = photo_bytes("PNG", (48, 72), seed=7)
DAY = 86400


@attrs.define
class Backend:
    name: str
    settings: Settings
    raw: Callable[[], list[str]]  # the keys stored, seen without s2s.storage

    def run(self, body):
        """``await body(store)`` on a fresh event loop, with a store opened from the settings."""

        async def main():
            store = open_store(self.settings)
            try:
                return await body(store)
            finally:
                await store.close()

        return asyncio.run(main())


def file_backend(settings: Settings, root: Path) -> Backend:
    def raw():
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []

    return Backend("file", attrs.evolve(settings, storage_url=f"file://{root}"), raw)


def redis_backend(settings: Settings, redis_client) -> Backend:
    base = Keys(settings.key_prefix).blob("")

    def raw():
        return sorted(k.decode()[len(base):] for k in redis_client.keys(base + "*"))

    return Backend("redis", attrs.evolve(settings, storage_url="redis://"), raw)


def s3_backend(settings: Settings, server: s3.S3Server) -> Backend:
    client = server.client()
    bucket = f"s2s-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    prefix = "deploy/blobs/"

    def raw():
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert all(k.startswith(prefix) for k in keys), f"objects outside the store's prefix: {keys}"
        return sorted(k[len(prefix):] for k in keys)

    return Backend("s3", attrs.evolve(
        settings, storage_url=f"s3://{bucket}/{prefix}", aws_endpoint_url=server.endpoint, aws_region=s3.REGION,
        aws_access_key_id=s3.ACCESS_KEY, aws_secret_access_key=s3.SECRET_KEY), raw)


def make_backend(name: str, request, settings, tmp_path, redis_client) -> Backend:
    if name == "file":
        return file_backend(settings, tmp_path / "blobs")
    if name == "redis":
        return redis_backend(settings, redis_client)
    return s3_backend(settings, request.getfixturevalue("s3_server"))


@pytest.fixture(params=["file", "redis", "s3"])
def backend(request, settings, tmp_path, redis_client) -> Backend:
    return make_backend(request.param, request, settings, tmp_path, redis_client)


def test_a_blob_comes_back_as_it_was_put(backend):
    key = job_blob("job1", "photo")

    async def body(store: BlobStore):
        assert store.scheme == backend.name
        await store.put(key, PHOTO, ttl_s=DAY, content_type="image/jpeg")
        assert await store.get(key) == PHOTO
        await store.put(key, PICTURE, ttl_s=DAY, content_type="image/png")
        return await store.get(key), await store.list()

    assert backend.run(body) == (PICTURE, [key])
    assert backend.raw() == [key]


def test_a_missing_blob_is_none(backend):
    async def body(store: BlobStore):
        return await store.get(job_blob("nobody", "photo")), await store.expires_at(job_blob("nobody", "photo"))

    assert backend.run(body) == (None, None)


def test_delete_is_idempotent(backend):
    key = job_blob("job1", "picture")

    async def body(store: BlobStore):
        await store.put(key, PICTURE, ttl_s=DAY)
        await store.delete(key)
        await store.delete(key, job_blob("never", "photo"))
        await store.delete()
        return await store.get(key)

    assert backend.run(body) is None
    assert backend.raw() == []


def test_deleting_a_job_removes_every_blob_of_it_and_nothing_else(backend):
    # "job" is a string prefix of "job2": deletion goes by whole path segments
    mine = [job_blob("job", "photo"), job_blob("job", "picture"), job_blob("job", "drafts/1")]
    other = job_blob("job2", "photo")

    async def body(store: BlobStore):
        for key in [*mine, other]:
            await store.put(key, PHOTO, ttl_s=DAY)
        assert await store.list(job_prefix("job")) == sorted(mine)
        removed = await store.delete_prefix(job_prefix("job"))
        again = await store.delete_prefix(job_prefix("job"))
        return removed, again, [await store.get(k) for k in mine], await store.get(other)

    assert backend.raw() == []
    removed, again, gone, kept = backend.run(body)
    assert (removed, again, gone, kept) == (3, 0, [None, None, None], PHOTO)
    assert backend.raw() == [other]


def test_expiry_counts_from_the_moment_of_put(backend):
    key = job_blob("job1", "photo")

    async def body(store: BlobStore):
        before = time.time()
        await store.put(key, PHOTO, ttl_s=3600)
        after = time.time()
        return before, await store.expires_at(key), after

    before, expires, after = backend.run(body)
    # Redis answers a TTL left, turned into a time on arrival: allow a second for that trip under load
    assert before + 3600 - 1 <= expires <= after + 3600 + 1


def test_an_expired_blob_is_gone_and_the_sweep_clears_it(backend):
    short, long = job_blob("job1", "photo"), job_blob("job2", "photo")

    async def body(store: BlobStore):
        await store.put(short, PHOTO, ttl_s=1)
        await store.put(long, PHOTO, ttl_s=DAY)
        assert await store.get(short) == PHOTO
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while await store.get(short) is not None:
            assert loop.time() < deadline, "the blob outlived its expiry by 14 s"
            await asyncio.sleep(0.05)
        await store.sweep()
        return await store.get(long), await store.url(short, ttl_s=60)

    assert backend.run(body) == (PHOTO, None)
    assert backend.raw() == [long]


def test_keys_cannot_leave_the_store(backend):
    async def body(store: BlobStore):
        for bad in ("../escape", "/etc/passwd", "jobs/../x", "jobs//x", ".tmp-x", ""):
            with pytest.raises(ValueError, match="blob key"):
                await store.put(bad, PHOTO, ttl_s=DAY)
        return True

    assert backend.run(body)
    assert backend.raw() == []


def test_the_store_answers_ping(backend):
    async def body(store: BlobStore):
        await store.ping()
        return True

    assert backend.run(body)


def test_a_presigned_link_serves_the_picture_without_the_api(settings, s3_server):
    backend = s3_backend(settings, s3_server)
    key = job_blob("job1", "picture")

    async def body(store: BlobStore):
        await store.put(key, PICTURE, ttl_s=DAY, content_type="image/png")
        await store.put(job_blob("job1", "photo"), PHOTO, ttl_s=5, content_type="image/jpeg")
        return (await store.url(key, ttl_s=60), await store.url(job_blob("job1", "photo"), ttl_s=60),
                await store.url(job_blob("nobody", "picture"), ttl_s=60))

    link, soon, missing = backend.run(body)
    assert missing is None
    assert urlsplit(link).netloc == urlsplit(s3_server.endpoint).netloc
    query = parse_qs(urlsplit(link).query)
    assert query["X-Amz-Expires"] == ["60"] and query["X-Amz-Signature"]
    # a link never outlives its object
    assert 1 <= int(parse_qs(urlsplit(soon).query)["X-Amz-Expires"][0]) <= 5
    with urllib.request.urlopen(link, timeout=10) as resp:
        assert (resp.status, resp.headers["Content-Type"], resp.read()) == (200, "image/png", PICTURE)


@pytest.mark.parametrize("name", ["file", "redis"])
def test_file_and_redis_stores_have_no_links(name, request, settings, tmp_path, redis_client):
    backend = make_backend(name, request, settings, tmp_path, redis_client)

    async def body(store: BlobStore):
        await store.put(job_blob("job1", "picture"), PICTURE, ttl_s=DAY)
        return await store.url(job_blob("job1", "picture"), ttl_s=60)

    assert backend.run(body) is None


def test_a_bucket_that_is_not_there_fails_ping(settings, s3_server):
    backend = s3_backend(settings, s3_server)
    backend = attrs.evolve(backend, settings=attrs.evolve(backend.settings, storage_url="s3://no-such-bucket/x"))

    async def body(store: BlobStore):
        with pytest.raises(Exception, match="no-such-bucket|NoSuchBucket"):
            await store.ping()
        return True

    assert backend.run(body)


def test_a_file_write_leaves_no_temp_file_behind(settings, tmp_path):
    backend = file_backend(settings, tmp_path / "blobs")

    async def body(store: BlobStore):
        await asyncio.gather(*(store.put(job_blob("job1", "photo"), PHOTO, ttl_s=DAY) for _ in range(20)))
        return await store.get(job_blob("job1", "photo"))

    assert backend.run(body) == PHOTO
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == ["photo"]


@pytest.mark.parametrize(("raw", "rule"), [
    ("ftp://host/x", "must be file:///absolute/dir, s3://bucket/prefix or redis://"),
    ("blobs", "must be file:///absolute/dir, s3://bucket/prefix or redis://"),
    ("file://relative/dir", "needs an absolute path"),
    ("s3:///prefix-without-bucket", "names its bucket"),
])
def test_a_bad_storage_url_stops_start_up_naming_the_variable(raw, rule):
    with pytest.raises(SettingsError, match="S2S_STORAGE_URL") as err:
        Settings.from_env({"S2S_STORAGE_URL": raw}, dotenv=None)
    assert rule in str(err.value)


def test_storage_urls_are_normalised():
    def parsed(raw):
        return Settings.from_env({"S2S_STORAGE_URL": raw}, dotenv=None).storage_url

    assert parsed("file:///srv/s2s/blobs/") == "file:///srv/s2s/blobs"
    assert parsed("s3://bucket/a/b/") == "s3://bucket/a/b"
    assert parsed("s3://bucket") == "s3://bucket"
    assert parsed("redis://") == "redis://"
    assert parsed("") is None
