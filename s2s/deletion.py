"""Deletion by the parent: the delete token a submit answers with, and who may delete a job.

A token is 144 random bits, shown once in the submit's 202. Redis keeps only its SHA-256
(the job's ``deleteHash``): a token this random needs no slow hash, and a copy of the store
deletes nothing. So that a retried submit whose first answer was lost (the reason for an
``Idempotency-Key``) can show the token again, the idempotency entry keeps it *sealed*: XORed
with an HMAC keyed by the Idempotency-Key, which Redis never holds (only a hash of it, with the
client, names the entry). Only the client that sent the key can open it, with the same request.

The removal (:func:`delete_job`) is the job's blobs, then one Lua script (s2s/lua/delete.lua)
for everything Redis holds, then the blobs once more.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from attrs import frozen

from s2s import scripts
from s2s.keys import Keys
from s2s.logs import JOB_FIELD, job_digest
from s2s.replies import text
from s2s.storage import job_prefix

if TYPE_CHECKING:
    from s2s.job_requests import IdempotencyKey
    from s2s.queue import Queue

log = logging.getLogger("s2s.deletion")

TOKEN_BYTES = 18  # 144 bits, as job ids
_SEAL_CONTEXT = b"s2s delete token\0"


def new_token() -> str:
    """A fresh delete token: URL-safe, 24 characters."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """What the job record keeps of its token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(given: str, digest: str | None) -> bool:
    """Whether ``given`` is the token of the record that keeps ``digest``; in constant time."""
    return digest is not None and hmac.compare_digest(token_digest(given).encode(), digest.encode())


def _pad(client: str, key: str, job_id: str) -> bytes:
    mac = hmac.new(key.encode(), _SEAL_CONTEXT + client.encode() + b"\0" + job_id.encode(), hashlib.sha256)
    return mac.digest()[:TOKEN_BYTES]


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


def seal(token: str, client: str, key: str, job_id: str) -> str:
    """The token as the idempotency entry keeps it: opened only with the client's Idempotency-Key."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return base64.urlsafe_b64encode(_xor(raw, _pad(client, key, job_id))).decode().rstrip("=")


unseal = seal  # the same XOR undoes it


def entry(fingerprint: str, token: str, idempotency: IdempotencyKey, job_id: str) -> str:
    """The Idempotency-Key entry's value, less the job id enqueue.lua appends: fingerprint and sealed token."""
    return f"{fingerprint} {seal(token, idempotency.client, idempotency.key, job_id)}"


def read_entry(value: str, idempotency: IdempotencyKey) -> tuple[str, str, str | None]:
    """A stored entry: (fingerprint, job id, delete token); no token in an entry from before delete tokens."""
    parts = value.split(" ")
    fingerprint, job_id = parts[0], parts[-1]
    token = unseal(parts[1], idempotency.client, idempotency.key, job_id) if len(parts) == 3 else None
    return fingerprint, job_id, token


@frozen
class Owner:
    """What deciding a DELETE needs of a job record."""

    delete_digest: str | None  # None: a job from before delete tokens; only the operator deletes it
    idem_key: str | None  # the Redis key of its Idempotency-Key entry, if it was sent with one


async def owner(redis: aioredis.Redis, keys: Keys, job_id: str) -> Owner | None:
    """The job's deletion facts; None when there is no such job."""
    found, digest, idem_key = await redis.hmget(keys.job(job_id), "id", "deleteHash", "idemKey")
    if found is None:
        return None
    return Owner(delete_digest=text(digest) if digest else None, idem_key=text(idem_key) if idem_key else None)


def _redacted(exc: Exception, job_id: str) -> str:
    """The store's error, for a log: a path or key in it names the job by its digest, as logs do."""
    return repr(exc).replace(job_id, job_digest(job_id))


class StorageUnavailable(Exception):
    """The blob store could not delete the job's blobs: nothing was deleted, the DELETE can be sent again."""


async def delete_job(queue: Queue, job_id: str, idem_key: str | None) -> str:
    """Remove the job everywhere, stopping it if it runs; return the status it had ('' when unknown).

    The blobs go first, so that a store that is down leaves the record (and the DELETE can be sent
    again: :class:`StorageUnavailable`); then the script; then the blobs once more, for a picture a
    worker stored meanwhile (its complete is refused now, and it deletes that picture itself too).
    ``idem_key``: the record's ``idemKey`` (:func:`owner`).
    """
    prefix = job_prefix(job_id)
    try:
        await queue.blobs.delete_prefix(prefix)
    except Exception as exc:  # any backend's failure: file, S3, Redis
        raise StorageUnavailable(_redacted(exc, job_id)) from exc
    k = queue.keys
    was = text(await scripts.call(
        queue.redis, "delete",
        [k.job(job_id), k.job_events(job_id), k.waiting, k.active, k.delayed, k.completed, k.failed, k.cancelled,
         k.totals, idem_key or k.job(job_id) + ":noidem"],
        [k.events_channel, k.control_channel]))
    try:
        await queue.blobs.delete_prefix(prefix)
    except Exception as exc:  # the worker's own cleanup and the blobs' expiry remain
        log.warning("blob store unavailable after deleting a job",
                    extra={JOB_FIELD: job_id, "error": _redacted(exc, job_id)})
    return was
