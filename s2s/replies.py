"""Redis's replies as Python values: its bytes as text, its clock in milliseconds.

Every process reads time from Redis, not from its own clock, so that ages and
deadlines agree with the ones the Lua scripts compute (see ``clock()`` in
s2s/lua/_lib.lua) whatever host a process runs on.
"""

from __future__ import annotations

import redis.asyncio as aioredis


def text(value) -> str:
    """A reply (bytes, or already a str or a number) as a str."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def now_ms(redis: aioredis.Redis) -> int:
    """Redis's clock (TIME), in milliseconds since the epoch."""
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000
