"""A worker's side loops besides its jobs and leases (operator commands, the blob sweep), and the retry of
a job's Redis calls through an outage."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions

from s2s import timeouts
from s2s.backoff import Backoff
from s2s.queue import Queue
from s2s.storage import BlobStore

log = logging.getLogger("s2s.worker")

SWEEP_EVERY_S = 60.0  # expired blobs are removed from file/S3 storage this often, by one worker of the cluster
SETTLE_BACKOFF = Backoff(initial=0.25, maximum=2.0)  # s, between tries to reach Redis with a job's last write
T = TypeVar("T")


async def settle(job_id: str, worker_id: str, write: Callable[[], Awaitable[T]]) -> T:
    """A Redis call for a job in hand (its photo, the write that ends it), retried while Redis is unreachable.

    An outage spends no attempt and throws no made picture away: the lease keeps the job ours (the
    heartbeat renews it once Redis is back); if the reaper took it back first, the heartbeat stops the
    job or the fencing token refuses the late write. Bounded at shutdown by the grace period.
    """
    failures = 0
    while True:
        try:
            return await write()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            failures += 1
            log.log(logging.WARNING if failures == 1 else logging.DEBUG, "cannot reach Redis for a job in hand; "
                    "retrying", extra={"job": job_id, "worker": worker_id, "error": str(exc)})
            await asyncio.sleep(SETTLE_BACKOFF.delay(failures))


async def leave(queue: Queue, worker_id: str, send_counts: Callable[[], Awaitable[object]]) -> None:
    """A stopping worker's last counts, then out of the registry (best effort: its entry expires anyway)."""
    try:
        await send_counts()
        await queue.redis.zrem(queue.keys.workers, worker_id)
        await queue.redis.delete(queue.keys.worker(worker_id))
    except redis.exceptions.RedisError:
        pass


def quiet(future: asyncio.Future) -> None:
    """A fire-and-forget call: a lost one (Redis unreachable) must not log 'exception never retrieved'."""
    if not future.cancelled():
        future.exception()


async def sweep_blobs(queue: Queue, blobs: BlobStore, worker_id: str) -> None:
    """Expired photos and pictures off the disk or bucket (Redis storage expires its own: nothing to do)."""
    if blobs.scheme == "redis":
        return
    while not timeouts.cancel_requested():
        try:
            removed = await queue.sweep_blobs(SWEEP_EVERY_S)
            if removed:
                log.info("expired blobs removed", extra={"worker": worker_id, "blobs": removed})
        except Exception as exc:  # noqa: BLE001 (a store or Redis hiccup: the next round tries again)
            log.warning("blob sweep failed", extra={"worker": worker_id, "error": str(exc)})
        await asyncio.sleep(SWEEP_EVERY_S)


async def follow_commands(queue: Queue, worker_id: str, stop: Callable[[str, str], None], wake: asyncio.Event) -> None:
    """Operator commands over pub/sub: cancel a job this worker runs (``stop(job_id, "cancelled")``),
    wake up on resume."""
    while not timeouts.cancel_requested():
        pubsub = queue.redis.pubsub()
        try:
            await pubsub.subscribe(queue.keys.control_channel)
            async for message in pubsub.listen():
                if timeouts.cancel_requested():
                    return
                if message.get("type") != "message":
                    continue
                command = json.loads(message["data"])
                if command.get("type") == "cancel":
                    stop(command.get("jobId", ""), "cancelled")
                elif command.get("type") == "resume":
                    wake.set()
        except redis.exceptions.RedisError as exc:
            log.warning("control channel lost; resubscribing", extra={"worker": worker_id, "error": str(exc)})
            await asyncio.sleep(1.0)
        finally:
            await pubsub.aclose()
