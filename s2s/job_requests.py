"""What a client asks for: a new job as submitted, and the Idempotency-Key that makes a retried POST safe."""

from __future__ import annotations

import hashlib
import secrets

from attrs import frozen


class IdempotencyConflict(Exception):
    """The client used its Idempotency-Key before for a different request.

    It names no job: the client's address may be shared (a household, a carrier's NAT), and a
    job id is the key to someone's picture.
    """


@frozen
class IdempotencyKey:
    """An ``Idempotency-Key`` and the client that sent it (:func:`s2s.admission.client_key`).

    The client is part of it: the same key from two clients names two requests, so no one can
    reach another's job by guessing or reusing a key.
    """

    client: str
    key: str


@frozen
class NewJob:
    hero_name: str
    theme_id: str
    style_key: str
    kind: str
    photo: bytes
    photo_type: str  # image/jpeg, image/png, image/webp
    webhook_url: str | None = None  # the submit's webhookUrl (S2S_WEBHOOK_PER_JOB), checked before queueing

    def fingerprint(self) -> str:
        """What makes two submissions the same request (for Idempotency-Key)."""
        h = hashlib.sha256()
        for part in (self.hero_name, self.theme_id, self.style_key, self.kind, self.photo_type):
            h.update(part.encode() + b"\0")
        if self.webhook_url is not None:  # only then: the fingerprints of jobs without one are unchanged
            h.update(b"webhookUrl\0" + self.webhook_url.encode() + b"\0")
        h.update(self.photo)
        return h.hexdigest()[:32]


def new_job_id() -> str:
    """Unguessable, URL-safe: 144 random bits."""
    return secrets.token_urlsafe(18)
