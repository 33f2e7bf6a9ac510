"""Blob storage: where a job's photo and picture bytes live, behind one small async interface.

``S2S_STORAGE_URL`` picks the backend (:func:`open_store`): a directory (``file:///dir``),
an S3-compatible bucket (``s3://bucket/prefix``) or Redis itself (``redis://``). Every blob
is put with an expiry counted from the moment it is stored, so nothing is kept forever
even when nobody deletes it; job records in Redis say which blobs a job has.
"""

from __future__ import annotations

import abc
import asyncio
import re
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from s2s.settings import Settings

_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")  # one match per key: it is checked a few times per job


def check_key(key: str) -> str:
    """A blob key is '/'-separated segments of letters, digits, ``_ - .``, none starting with a dot.

    That keeps keys the same on every backend, keeps a file key inside its directory
    (no ``..``, no absolute path) and keeps them apart from the file store's temp files.
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"blob key {key!r}: must be '/'-separated segments of [A-Za-z0-9_.-], none starting with '.'")
    return key


JOBS = "jobs"  # the top segment every job's blobs live under


def job_prefix(job_id: str) -> str:
    """Every blob of one job is under this prefix: ``delete_prefix(job_prefix(id))`` removes them all."""
    return check_key(f"{JOBS}/{job_id}")


def job_blob(job_id: str, name: str) -> str:
    """The key of one blob of a job, e.g. ``job_blob(id, "photo")``."""
    return check_key(f"{JOBS}/{job_id}/{name}")  # valid whole, so its prefix is (one match: a few per job)


class BlobStore(abc.ABC):
    """Bytes by key, each with an expiry. Every method is safe to call from many tasks at once."""

    #: ``file``, ``s3`` or ``redis``: for logs and health
    scheme: str

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, *, ttl_s: int, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` under ``key`` (replacing it atomically), to expire ``ttl_s`` seconds from now.

        ``content_type`` is kept where the store serves the bytes itself (S3 links); with the
        others the API answers with the type the job record holds.
        """

    async def put_or_undo(self, key: str, data: bytes, *, ttl_s: int,
                          content_type: str = "application/octet-stream") -> None:
        """:meth:`put`, undone when the caller is cancelled meanwhile (its job was stopped or deleted).

        A cancelled put may land all the same (a thread still writing the file, a request S3 already
        has): it is waited for, then deleted, so no blob is left that no record will name.
        """
        put = asyncio.ensure_future(self.put(key, data, ttl_s=ttl_s, content_type=content_type))
        try:
            await asyncio.shield(put)
        except asyncio.CancelledError:
            await asyncio.wait([put])
            if not put.cancelled() and put.exception() is None:
                await self.delete(key)
            raise

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The blob's bytes; None when it is missing or has expired."""

    @abc.abstractmethod
    async def expires_at(self, key: str) -> float | None:
        """When the blob expires (Unix time, seconds); None when it is missing, inf if it has no expiry.

        (Only a blob not put by s2s has none: an S3 object without the metadata, a Redis key without a TTL.)
        """

    @abc.abstractmethod
    async def delete(self, *keys: str) -> None:
        """Remove these blobs; a key that is not there is no error."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Remove the blob ``prefix`` and every blob under ``prefix/``; return how many there were."""

    @abc.abstractmethod
    async def list(self, prefix: str | None = None) -> list[str]:
        """Keys stored now under ``prefix/`` (all keys when None), sorted; expired ones not yet swept included."""

    async def url(self, key: str, *, ttl_s: int) -> str | None:
        """A short-lived URL a browser can GET the blob from directly.

        None: this backend has none (or the blob is gone), and the API serves the bytes itself.
        """
        return None

    async def sweep(self, *, min_age_s: float = 0) -> int:
        """Remove expired blobs (backends whose store does not expire them itself); return how many.

        ``min_age_s``: no blob put less than this long ago can have expired (the shortest expiry the
        caller uses), so a backend that pays per look (S3: a HEAD) may skip those unlooked.
        """
        return 0

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the store cannot be reached (for health)."""

    async def close(self) -> None:  # noqa: B027 (optional: the file store holds nothing to release)
        """Release connections this store opened."""


def open_store(settings: Settings, *, redis: aioredis.Redis | None = None) -> BlobStore:
    """The store ``settings.storage_url`` names (validated by Settings).

    ``redis``: the process's client of ``REDIS_URL``, reused when the blobs live there too.
    """
    url = settings.storage_url or "redis://"
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from s2s.storage.file_store import FileStore

        return FileStore(urlsplit(url).path)
    if scheme == "s3":
        from s2s.storage.s3_store import S3BlobStore

        return S3BlobStore.from_settings(settings)
    from s2s.storage.redis_store import RedisStore

    return RedisStore.from_settings(settings, redis=redis)
