"""Every Lua script s2s runs (s2s/lua/), loaded once and called by SHA, batched into pipelines.

Every state change of a job is one script, so it is atomic: a job is always in
exactly one of waiting, processing (leased), delayed, completed, failed or
cancelled, and stats are exact. The submit limits (admit) and the providers'
shared rate limits (rate_*) are scripts too; each script is prefixed with the
library files: _webhooks.lua, the recording of a job's webhook by the scripts that
end (or start) it; _lib.lua, the one copy of Redis's clock and of the sliding window;
and _run_times.lua, the recent run times the queue's ETA is made of.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

LIBRARIES = ("_webhooks", "_lib", "_run_times")  # prepended to every script, in this order (_lib uses _webhooks)
_LIB = "\n".join(resources.files("s2s.lua").joinpath(f"{name}.lua").read_text() for name in LIBRARIES)
NAMES = ("enqueue", "claim", "extend", "progress", "complete", "fail", "release", "reap", "stats", "cancel",
         "retry", "upstream", "admit", "rate_acquire", "rate_renew", "rate_pause", "delete", "places",
         "webhook_claim", "webhook_settle", "webhook_redeliver")


class Script:
    def __init__(self, name: str):
        self.name = name
        self.source = _LIB + "\n" + resources.files("s2s.lua").joinpath(f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


SCRIPTS = {name: Script(name) for name in NAMES}


async def load_all(redis: aioredis.Redis) -> None:
    pipe = redis.pipeline(transaction=False)
    for script in SCRIPTS.values():
        pipe.script_load(script.source)
    await pipe.execute()


async def call(redis: aioredis.Redis, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run one script now (EVALSHA, falling back to EVAL when Redis does not know it yet)."""
    script = SCRIPTS[name]
    try:
        return await redis.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:  # a fresh or restarted Redis: EVAL runs the script and caches it, one round trip
        return await redis.eval(script.source, len(keys), *keys, *args)


MAX_BATCH = 25  # calls per pipeline (see Pipeliner)
LANES = 4  # pipelines a worker may have in flight for its jobs' calls at once (see Lanes)


class Pipeliner:
    """Coalesce calls made while a round trip is in flight into the next pipeline.

    With fifty jobs finishing at once this turns fifty round trips into a few,
    without delaying a lone call: the first call goes out at once. A pipeline holds at
    most :data:`MAX_BATCH` calls, so the first jobs' answers (and the next jobs they
    claim) come back while the rest are still in Redis: jobs that finished together do
    not all start their next one together, and a worker's slots drift out of lockstep.
    """

    def __init__(self, redis: aioredis.Redis):
        self._redis = redis
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    def call(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future:
        """Run a script in the next pipeline."""
        return self.command("EVALSHA", SCRIPTS[name].sha, len(keys), *keys, *args)

    def command(self, *args: Any) -> asyncio.Future:
        """Run any Redis command in the next pipeline."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((args, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                results = await self._run([args for args, _ in batch])
            except Exception as exc:  # connection trouble: every caller hears of it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def _run(self, commands: list[tuple]) -> list:
        results = await self._pipeline(commands)
        again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if again:  # Redis restarted and forgot the scripts: run again only what it refused, never what ran
            try:
                await load_all(self._redis)
                retried = await self._pipeline([commands[i] for i in again])
            except Exception as exc:  # only the refused calls hear of it: the others have their answers
                retried = [exc] * len(again)
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        return results

    async def _pipeline(self, commands: list[tuple]) -> list:
        pipe = self._redis.pipeline(transaction=False)
        for args in commands:
            pipe.execute_command(*args)
        return await pipe.execute(raise_on_error=False)

    @property
    def busy(self) -> bool:
        """A pipeline is out (calls made meanwhile wait for the same flusher, which takes them next)."""
        return self._flusher is not None and not self._flusher.done()

    async def drain(self) -> None:
        """Wait until every call made so far has its answer."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)


class Lanes:
    """Several pipeliners, so jobs that end together wait for no other clump's round trip.

    A job's calls (its photo, upstream count, progress, the write that ends it) all go on the lane of
    its id, in the order they were made: a lane has one pipeline in flight at a time, so Redis runs a
    job's calls in that order (the upstream count before the completion) while up to ``count`` other
    lanes' pipelines are out. Calls for no one job (heartbeats) have a lane of their own. At most
    ``count + 1`` pipelines are out at once, so as many pooled connections, whatever the concurrency.
    """

    def __init__(self, redis: aioredis.Redis, count: int = LANES):
        self._jobs = [Pipeliner(redis) for _ in range(max(1, count))]
        self.shared = Pipeliner(redis)  # calls about no one job, or about many (heartbeats)
        self._all = (*self._jobs, self.shared)

    def of(self, job_id: str) -> Pipeliner:
        """The lane every call of this job goes on (str hashes are fixed for the life of a process)."""
        return self._jobs[hash(job_id) % len(self._jobs)]

    async def drain(self) -> None:
        """Wait until every call made so far, on every lane, has its answer (and those made meanwhile)."""
        while any(lane.busy for lane in self._all):
            for lane in self._all:
                await lane.drain()
