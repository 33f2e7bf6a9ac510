"""When a failed delivery is tried again: Standard Webhooks' (Svix's) schedule, jittered, and Retry-After.

The first try is at once; then S2S_WEBHOOK_RETRY_S (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), each
wait with equal jitter so receivers that came back together are not hit together. The job's
retention ends the delivery before the schedule does, if it is shorter (s2s/lua/webhook_settle.lua).
"""

from __future__ import annotations

import email.utils
import random
import time

from s2s.backoff import equal_jitter

#: A receiver's Retry-After is honoured up to this many seconds (a day); the retention cuts it anyway.
MAX_RETRY_AFTER_S = 86400


def next_delay_s(schedule: tuple[float, ...], tries: int, retry_after_s: float | None = None,
                 rng: random.Random | None = None) -> float | None:
    """Seconds before the next try after ``tries`` tries of this round failed; None when the schedule is done."""
    if tries > len(schedule):
        return None
    wait = equal_jitter(schedule[tries - 1], rng) if schedule[tries - 1] else 0.0
    if retry_after_s is not None:
        wait = max(wait, min(retry_after_s, MAX_RETRY_AFTER_S))
    return wait


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
