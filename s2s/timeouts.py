"""Deadlines and cancellation that hold on every Python s2s supports.

Before Python 3.12, ``asyncio.wait_for`` returns the inner result and drops a
cancellation that lands just as the inner call finishes (CPython gh-86296). A
cancelled job must stop, so: :func:`within` uses ``asyncio.timeout`` where it
exists (3.11+), and :func:`cancel_requested` tells a loop that a cancellation
was swallowed below it (redis-py sends every command through ``wait_for``)
while the task still counts it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, raising ``asyncio.TimeoutError`` after ``seconds``."""
    if hasattr(asyncio, "timeout"):  # 3.11+
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # pragma: no cover - Python 3.10


_requested: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()  # Python 3.10 has no Task.cancelling()


def cancel(task: asyncio.Task) -> None:
    """``task.cancel()``, remembered so :func:`cancel_requested` sees it even on Python 3.10."""
    _requested.add(task)
    task.cancel()


def cancel_requested() -> bool:
    """True when someone asked to cancel the current task, even if the CancelledError got lost on the way."""
    task = asyncio.current_task()
    if task in _requested:
        return True
    cancelling = getattr(task, "cancelling", None)  # 3.11+
    return bool(cancelling and cancelling())
