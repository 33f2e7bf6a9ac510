"""Blobs in an S3-compatible bucket (``s3://bucket/prefix``): AWS S3, Cloudflare R2, Backblaze B2, MinIO.

Requests are signed by obstore (the Rust ``object_store`` crate), never by hand. S3 has no
per-object expiry (lifecycle rules are per bucket and count whole days), so each object
carries its expiry as user metadata (``x-amz-meta-s2s-expires-ms``): reads and presigned
links refuse an object past it, :meth:`S3BlobStore.sweep` deletes such objects, and a
bucket lifecycle rule (README, "Storage") is the backstop should no sweeper run.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

import obstore
from obstore.store import S3Store

from s2s.settings import Settings
from s2s.storage import BlobStore, check_key

EXPIRES = "s2s-expires-ms"  # user metadata: when the object expires, Unix ms
DELETE_BATCH = 1000  # keys per DeleteObjects request (the S3 maximum)
SWEEP_HEADS = 2000  # objects looked at (HEAD) per sweep, at most: a sweep stays bounded however big the bucket


def _expiry(attributes: dict) -> float | None:
    raw = attributes.get(EXPIRES)
    return int(raw) / 1000 if raw is not None else None


class S3BlobStore(BlobStore):
    scheme = "s3"

    def __init__(self, store: S3Store, where: str):
        self.store = store
        self.where = where  # s3://bucket/prefix, for error messages

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        """The bucket and prefix of ``S2S_STORAGE_URL`` with the endpoint, region and keys of settings.

        Everything is passed explicitly (obstore would also look at the environment, but the
        values given here win).
        """
        url = settings.storage_url
        bucket, _, prefix = url[len("s3://"):].partition("/")
        config = {"region": settings.aws_region}
        if settings.aws_endpoint_url:
            config["endpoint"] = settings.aws_endpoint_url
        if settings.aws_access_key_id:
            config["access_key_id"] = settings.aws_access_key_id
        if settings.aws_secret_access_key:
            config["secret_access_key"] = settings.aws_secret_access_key
        client = {"timeout": timedelta(seconds=30), "connect_timeout": timedelta(seconds=5),
                  "allow_http": bool(settings.aws_endpoint_url and settings.aws_endpoint_url.startswith("http://"))}
        retry = {"max_retries": 3, "retry_timeout": timedelta(seconds=20),
                 "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2),
                             "base": 2}}
        store = S3Store(bucket, prefix=prefix.strip("/") or None, config=config, client_options=client,
                        retry_config=retry)
        return cls(store, url)

    async def put(self, key: str, data: bytes, *, ttl_s: int, content_type: str = "application/octet-stream") -> None:
        expires_ms = int((time.time() + ttl_s) * 1000)
        await obstore.put_async(self.store, check_key(key), data, use_multipart=False,
                                attributes={"Content-Type": content_type, EXPIRES: str(expires_ms)})

    async def _head(self, key: str) -> float | None:
        """The object's expiry (inf if it has none); None when it is missing."""
        try:
            result = await obstore.get_async(self.store, check_key(key), options={"head": True})
        except FileNotFoundError:
            return None
        expiry = _expiry(result.attributes)
        return math.inf if expiry is None else expiry

    async def get(self, key: str) -> bytes | None:
        try:
            result = await obstore.get_async(self.store, check_key(key))
        except FileNotFoundError:
            return None
        expiry = _expiry(result.attributes)
        if expiry is not None and expiry <= time.time():
            return None
        return bytes(await result.bytes_async())

    async def expires_at(self, key: str) -> float | None:
        return await self._head(key)

    async def delete(self, *keys: str) -> None:
        paths = [check_key(k) for k in keys]
        for i in range(0, len(paths), DELETE_BATCH):
            await obstore.delete_async(self.store, paths[i:i + DELETE_BATCH])

    async def _list(self, prefix: str | None) -> list[str]:
        stream = obstore.list(self.store, check_key(prefix) if prefix else None, chunk_size=DELETE_BATCH)
        return [meta["path"] async for chunk in stream for meta in chunk]

    async def delete_prefix(self, prefix: str) -> int:
        paths = await self._list(prefix)
        if await self._head(prefix) is not None:
            paths.append(prefix)
        await self.delete(*paths)
        return len(paths)

    async def list(self, prefix: str | None = None) -> list[str]:
        return sorted(await self._list(prefix))

    async def url(self, key: str, *, ttl_s: int) -> str | None:
        """A presigned GET valid for ``ttl_s`` seconds, or less when the object expires sooner; None if it is gone."""
        expiry = await self._head(key)
        left = (expiry or 0) - time.time()
        if left <= 0:
            return None
        seconds = max(1, math.floor(min(ttl_s, left)))
        return await obstore.sign_async(self.store, "GET", check_key(key), timedelta(seconds=seconds))

    async def sweep(self, *, min_age_s: float = 0) -> int:
        """Delete expired objects: one listing, and a HEAD per object older than ``min_age_s`` (at most
        :data:`SWEEP_HEADS` a sweep; the next sweep goes on with the rest)."""
        now = time.time()
        stream = obstore.list(self.store, None, chunk_size=DELETE_BATCH)
        old = [m["path"] async for chunk in stream for m in chunk
               if m["last_modified"].timestamp() <= now - min_age_s]
        expired = [p for p in old[:SWEEP_HEADS] if (await self._head(p) or math.inf) <= now]
        await self.delete(*expired)
        return len(expired)

    async def ping(self) -> None:
        # a listing, not a HEAD: HEAD answers a missing bucket and a missing key with the same bodiless 404
        await obstore.list_with_delimiter_async(self.store, "ping")
