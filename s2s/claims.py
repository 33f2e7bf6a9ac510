"""A job in a worker's hands: what the claim script hands out, parsed once."""

from __future__ import annotations

from attrs import field, frozen

from s2s.replies import text


@frozen
class Claim:
    """A job in a worker's hands, for one attempt."""

    job_id: str
    fence: str
    attempt: int
    max_attempts: int
    hero_name: str
    theme_id: str
    style_key: str
    kind: str
    photo_type: str
    #: the photo's bytes when the claim script brought them (the photos are in this Redis and fit its
    #: budget); None: the worker reads it from the blob store. Never in a repr (logs).
    photo: bytes | None = field(default=None, repr=False, eq=False)


@frozen
class ClaimBatch:
    claims: list[Claim]
    paused: bool
    next_delayed_ms: int | None  # when the earliest retry becomes due (Redis clock)
    now_ms: int


CLAIM_HEAD = 3  # paused, next retry due, Redis's clock: before the claimed jobs in claim_jobs's answer (_lib.lua)
CLAIM_FIELDS = 10  # values per claimed job there


def parse_claims(reply: list) -> ClaimBatch:
    paused, next_due, now = int(reply[0]), int(reply[1]), int(reply[2])
    claims = []
    rest = reply[CLAIM_HEAD:]
    for i in range(0, len(rest), CLAIM_FIELDS):
        job_id, fence, attempt, hero, theme, style, kind, photo_type, max_attempts, photo = rest[i:i + CLAIM_FIELDS]
        claims.append(Claim(job_id=text(job_id), fence=text(fence), attempt=int(attempt),
                            max_attempts=int(max_attempts or 1), hero_name=text(hero or b""),
                            theme_id=text(theme or b""), style_key=text(style or b""), kind=text(kind or b""),
                            photo_type=text(photo_type or b"image/png"), photo=photo or None))
    return ClaimBatch(claims=claims, paused=bool(paused), next_delayed_ms=None if next_due < 0 else next_due,
                      now_ms=now)
