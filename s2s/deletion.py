"""Deletion by the parent: the delete token a submit answers with, and who may delete a job.

A token is 144 random bits, shown once in the submit's 202. Redis keeps only its SHA-256
(the job's ``deleteHash``): a token this random needs no slow hash, and a copy of the store
deletes nothing. So that a retried submit whose first answer was lost (the reason for an
``Idempotency-Key``) can show the token again, the idempotency entry keeps it *sealed*: XORed
with an HMAC keyed by the Idempotency-Key, which Redis never holds (only a hash of it, with the
client, names the entry). Only the client that sent the key can open it, with the same request.

The removal itself is one Lua script (s2s/lua/delete.lua, :meth:`s2s.queue.Queue.delete`);
the blobs go afterwards (:mod:`s2s.web.delete`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import redis.asyncio as aioredis
from attrs import frozen

from s2s.keys import Keys
from s2s.replies import text

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
