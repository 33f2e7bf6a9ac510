"""/ws frames as plain functions: client commands in, replies and errors out.

Nothing here touches a socket, a thread or Redis, so every wire shape of /ws is
tested alone (tests/test_ws.py). Job events, which the actors frame too, are in
:mod:`s2s.events`.
"""

from __future__ import annotations

import json

from attrs import frozen

from s2s.events import encode
from s2s.models import is_job_id

MAX_FRAME_BYTES = 64 * 1024  # a command is a few dozen bytes; anything near this is a mistake or abuse
SUBSCRIPTION_PREFIX = "job:"  # the websocketSubscription form the POST answer gives
TYPES = ("subscribe_to_job", "unsubscribe_from_job", "ping", "subscribe_to_stats")
PONG = encode({"type": "pong"})


# ---- client to server ----------------------------------------------------------------------
class FrameError(Exception):
    """A frame the server cannot act on; answered with an ``error`` frame, the socket stays open."""

    def __init__(self, code: str, sentence: str, job_id: str | None = None, retry_after_ms: int | None = None):
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence
        self.job_id = job_id
        self.retry_after_ms = retry_after_ms  # "try again after": the client waits at least this long


@frozen
class Subscribe:
    job_id: str
    last_seq: int | None = None  # None: send the job's current state first; else every kept event after it


@frozen
class Unsubscribe:
    job_id: str


@frozen
class Ping:
    pass


@frozen
class SubscribeStats:
    token: str | None = None  # the operator token, when the upgrade carried no Authorization header


Command = Subscribe | Unsubscribe | Ping | SubscribeStats


def parse_command(message: str | bytes, max_bytes: int = MAX_FRAME_BYTES) -> Command:
    """One client frame as a command, or :class:`FrameError` saying what is wrong with it."""
    if isinstance(message, bytes):
        raise FrameError("binary_not_supported", "Frames must be JSON text, not binary.")
    if len(message) > max_bytes or len(message.encode()) > max_bytes:
        raise FrameError("frame_too_large", f"A frame may be at most {max_bytes} bytes.")
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        raise FrameError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(data, dict):
        raise FrameError("invalid_frame", 'A frame must be a JSON object with a "type".')
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise FrameError("missing_type", 'A frame needs a "type" (a string).')
    if kind == "ping":
        return Ping()
    if kind == "subscribe_to_job":
        return Subscribe(_job_id(data), _last_seq(data))
    if kind == "unsubscribe_from_job":
        return Unsubscribe(_job_id(data))
    if kind == "subscribe_to_stats":
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            raise FrameError("invalid_token", 'The "token" must be a string.')
        return SubscribeStats(token or None)
    raise FrameError("unknown_type", f"Unknown frame type {kind[:40]!r}; expected one of {', '.join(TYPES)}.")


def _job_id(data: dict) -> str:
    raw = data.get("jobId")
    if raw is None or raw == "":
        raise FrameError("missing_job_id", 'This frame needs a "jobId".')
    if not isinstance(raw, str):
        raise FrameError("invalid_job_id", 'The "jobId" must be a string.')
    job_id = raw[len(SUBSCRIPTION_PREFIX):] if raw.startswith(SUBSCRIPTION_PREFIX) else raw
    if not is_job_id(job_id):
        raise FrameError("invalid_job_id", 'The "jobId" is not a job id (1-64 letters, digits, "_" or "-").')
    return job_id


def _last_seq(data: dict) -> int | None:
    raw = data.get("lastSeq")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise FrameError("invalid_last_seq", 'The "lastSeq" must be a whole number, 0 or more.',
                         data.get("jobId") if isinstance(data.get("jobId"), str) else None)
    return raw


class FrameBudget:
    """A token bucket per socket: ``rate`` frames a second, ``burst`` at once; one float pair, no timer.

    A flood of subscribe/unsubscribe costs Redis reads and actor messages for every frame; past its
    budget a socket's frames are answered with :data:`RATE_LIMITED` and dropped, others untouched.
    """

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at = now

    def take(self, now: float) -> bool:
        """Spend one frame's token; False when there is none (``rate`` 0: never limited)."""
        if not self.rate:
            return True
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# ---- server to client ----------------------------------------------------------------------
PING = b"\x89\x00"  # a whole ping frame (FIN, opcode 9, no payload)


def confirmed_frame(client_id: str) -> str:
    return encode({"type": "connection_confirmed", "clientId": client_id})


def stats_frame(stats: dict) -> str:
    """``queue_stats``: the body of GET /api/jobs/stats, with its type."""
    return encode({"type": "queue_stats", **stats})


def rate_limited_frame(rate: int) -> str:
    return error_frame(FrameError("rate_limited", f"Too many frames: at most {rate} a second; this one was dropped."))


def error_frame(error: FrameError) -> str:
    frame = {"type": "error", "error": error.sentence, "code": error.code}
    if error.job_id:
        frame["jobId"] = error.job_id
    if error.retry_after_ms is not None:
        frame["retryAfterMs"] = error.retry_after_ms
    return encode(frame)
