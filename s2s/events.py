"""Job events on their way to a socket: parsed off the events channel, framed for the wire once.

The Lua scripts publish every job event as JSON; the registry actor routes it and
/ws writes it. Both need the same few shapes, so they live here, below both: no
socket, thread or Redis. Only a completed job's ``result.imageUrl`` is rewritten
(made absolute); every other event goes out as the very text Redis carried.
"""

from __future__ import annotations

import json
import struct
from typing import NamedTuple

from s2s.models import Job, JobStatus, image_path

_COMPACT = (",", ":")
TERMINAL_TYPES = frozenset({"job_completed", "job_failed", "job_cancelled"})  # a job's last event


def encode(frame: dict) -> str:
    """A frame as compact JSON text, as the Lua scripts write theirs."""
    return json.dumps(frame, separators=_COMPACT, ensure_ascii=False)


class Event(NamedTuple):
    """One job event off the events channel: its text as published and the fields routing needs."""

    job_id: str
    seq: int
    type: str
    text: str
    frame: dict


def parse_event(raw: str | bytes) -> Event | None:
    """An event published by the Lua scripts, or None for anything else on the channel."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        frame = json.loads(text)
        return Event(frame["jobId"], int(frame["seq"]), frame["type"], text, frame)
    except (ValueError, KeyError, TypeError):
        return None


def with_base_url(frame: dict, base_url: str) -> dict:
    """The frame with a relative ``result.imageUrl`` made absolute, as GET /status shows it."""
    result = frame.get("result")
    if not isinstance(result, dict):
        return frame
    url = result.get("imageUrl")
    if not isinstance(url, str) or not url.startswith("/"):
        return frame
    return {**frame, "result": {**result, "imageUrl": base_url + url}}


def event_text(event: Event, base_url: str) -> str:
    """What a socket is sent for a live event: the published text, unless it carries a link to fix."""
    if event.type != "job_completed":
        return event.text
    return encode(with_base_url(event.frame, base_url))


def state_frame(job: Job, base_url: str) -> dict:
    """The job's current state as the event that put it there (for a subscriber without lastSeq)."""
    head = {"jobId": job.id, "status": job.status.value}
    if job.status is JobStatus.COMPLETED:
        return {"type": "job_completed", **head, "progress": 100,
                "result": {"imageUrl": base_url + image_path(job.id)}, "seq": job.seq}
    if job.status is JobStatus.FAILED:
        return {"type": "job_failed", **head, "error": job.error or "The picture could not be made.",
                "code": job.error_code or "failed", "seq": job.seq}
    if job.status is JobStatus.CANCELLED:
        return {"type": "job_cancelled", **head, "seq": job.seq}
    return {"type": "job_progress", **head, "progress": job.progress, "message": job.message, "seq": job.seq}


def wire(text: str) -> bytes:
    """A whole server-to-client text frame (RFC 6455 5.2: FIN, opcode 1, unmasked, no extension).

    Built once per event and written as is to every socket watching it: Tornado's
    write_message would re-encode and re-frame the same text for each socket and
    wrap every write in a new task, which was half of the API's time under load.
    """
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def websocket_frame(event: Event, text: str) -> bytes:
    """How /ws frames an event for the registry (``Watcher.framing``): one WebSocket text frame."""
    return wire(text)


class StreamFrame(NamedTuple):
    """One Server-Sent Event, ready for the response, and whether it is the job's last."""

    data: bytes
    ends: bool


def stream_frame(event: Event, text: str) -> StreamFrame:
    """How GET /stream frames an event for the registry (``Watcher.framing``): ``id:`` is its seq."""
    return sse(text, event.seq, event.type in TERMINAL_TYPES)


def sse(text: str, seq: int, ends: bool) -> StreamFrame:
    """A Server-Sent Event whose ``data:`` is the frame's text (one line per line, as the format wants)."""
    return StreamFrame(f"id: {seq}\n".encode() + sse_data(text), ends)


def sse_data(text: str) -> bytes:
    """A Server-Sent Event with no ``id:`` (a place in line, which has no seq): the browser's
    Last-Event-ID stays the last event's."""
    lines = "".join(f"data: {line}\n" for line in text.splitlines() or [""])
    return f"{lines}\n".encode()
