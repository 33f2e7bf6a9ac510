"""A worker's side loops besides its jobs and leases: operator commands, and the blob sweep."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import redis.exceptions

from s2s import timeouts
from s2s.queue import Queue
from s2s.storage import BlobStore

log = logging.getLogger("s2s.worker")

SWEEP_EVERY_S = 60.0  # expired blobs are removed from file/S3 storage this often, by one worker of the cluster


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
