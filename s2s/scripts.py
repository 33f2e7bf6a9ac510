"""Every Lua script s2s runs (s2s/lua/), loaded once and called by SHA, batched into pipelines.

Every state change of a job is one script, so it is atomic: a job is always in
exactly one of waiting, processing (leased), delayed, completed, failed or
cancelled, and stats are exact. The submit limits (admit) and the providers'
shared rate limits (rate_*) are scripts too; each script that uses them is prefixed
with the library files: _webhooks.lua, the recording of a job's webhook by the scripts that
end (or start) it; _lib.lua, the one copy of Redis's clock and of the sliding window;
and _run_times.lua, the recent run times the queue's ETA is made of.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from s2s import timeouts

LIBRARIES = ("_webhooks", "_lib", "_run_times")  # prepended in this order (_lib uses _webhooks)
_LIB = "\n".join(resources.files("s2s.lua").joinpath(f"{name}.lua").read_text() for name in LIBRARIES)
#: a script that calls none of these gets no library: Redis would define every one of them on each call
_LIB_FUNCTIONS = re.findall(r"^local function (\w+)\(", _LIB, re.MULTILINE)
_USES_LIB = re.compile(r"\b(?:" + "|".join(_LIB_FUNCTIONS) + r")\(")
NAMES = ("enqueue", "claim", "extend", "progress", "complete", "fail", "release", "reap", "stats", "cancel",
         "retry", "upstream", "admit", "rate_acquire", "rate_renew", "rate_pause", "delete", "places",
         "webhook_claim", "webhook_settle", "webhook_redeliver")


class Script:
    def __init__(self, name: str):
        self.name = name
        body = resources.files("s2s.lua").joinpath(f"{name}.lua").read_text()
        self.source = _LIB + "\n" + body if _USES_LIB.search(body) else body
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


def evalsha(name: str, keys: Sequence[Any], args: Sequence[Any]) -> tuple:
    """The command that runs a script by its SHA (a pipeline runs it again as EVAL if Redis forgot it)."""
    return ("EVALSHA", SCRIPTS[name].sha, len(keys), *keys, *args)


MAX_BATCH = 25  # calls per pipeline (see Pipeliner)
LANES = 4  # pipelines a worker may have in flight for its jobs' calls at once (see Lanes)


class Merged(Protocol):
    """Calls of one kind that ride as one command when they meet in a pipeline (see :meth:`Pipeliner.merged`).

    Compared by identity: calls of one object merge. ``command`` makes the one command of several
    calls' items, ``split`` gives each item its answer from that command's reply. The command takes the
    place of the kind's last call in the pipeline, or of its first when the kind says ``first = True``.
    """

    first: bool

    def command(self, items: list) -> tuple: ...

    def split(self, reply: Any, items: list) -> list: ...


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
        self._pending: list[tuple[Merged | None, Any, asyncio.Future]] = []  # (kind, item or command, answer)
        self._flusher: asyncio.Task | None = None
        self._conn: AbstractConnection | None = None  # taken from the pool at the first round trip, kept

    def call(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future:
        """Run a script in the next pipeline."""
        return self.command(*evalsha(name, keys, args))

    def command(self, *args: Any) -> asyncio.Future:
        """Run any Redis command in the next pipeline."""
        return self._add(None, args)

    def merged(self, kind: Merged, item: Any) -> asyncio.Future:
        """Run a call that shares one command with the calls of its kind in the same pipeline.

        That command takes the place of the kind's last call in the pipeline: every call made before
        any of them still runs first, and a call made between two of them runs before both, so this is
        for calls after which their caller makes no other (a job's completion). A kind with ``first``
        set takes its first call's place instead: each call runs before every call made after it, and
        after those made before the first of them (an upstream call's count, before its job's end).
        """
        return self._add(kind, item)

    def _add(self, kind: Merged | None, payload: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((kind, payload, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return fut

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            commands, owners = _assemble(batch)
            try:
                results = await self._run(commands)
            except Exception as exc:  # connection trouble: every caller hears of it
                results = [exc] * len(commands)
            for (kind, items, futures), result in zip(owners, results, strict=True):
                if kind is not None and not isinstance(result, Exception):
                    try:
                        result = kind.split(result, items)
                    except Exception as exc:  # noqa: BLE001 (a reply of the wrong shape: its callers hear of it)
                        result = exc
                for i, fut in enumerate(futures):
                    if fut.done():
                        continue
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result[i] if kind is not None else result)

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
        """One round trip on the lane's own connection: redis-py's Pipeline less its command stack, pool
        checkout and hooks (they were a fifth of a draining worker's CPU), with the same retry."""
        if self._conn is None:  # a lane has one pipeline out at a time, so one connection is all it needs
            self._conn = await self._redis.connection_pool.get_connection()
        conn = self._conn
        return await conn.retry.call_with_retry(lambda: _exchange(conn, commands), lambda _error: conn.disconnect())

    @property
    def busy(self) -> bool:
        """A pipeline is out (calls made meanwhile wait for the same flusher, which takes them next)."""
        return self._flusher is not None and not self._flusher.done()

    async def drain(self) -> None:
        """Wait until every call made so far has its answer."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)


async def _exchange(conn: AbstractConnection, commands: list[tuple]) -> list:
    """Send the commands in one write and read every answer, all within one read timeout.

    One deadline for the whole round trip: redis-py's ``read_response`` arms a timer of its own for each
    answer, which was half this function's CPU for a full pipeline. An answer Redis refused is that
    command's answer (as ``Pipeline.execute(raise_on_error=False)`` gives); a connection error propagates
    for the retry (s2s.connections: once more on a fresh connection), a timeout does not.
    """
    try:
        return await timeouts.within(conn.socket_timeout, _send_and_read(conn, commands))
    except asyncio.TimeoutError:
        await conn.disconnect(nowait=True)  # half-read answers would be the next pipeline's
        raise RedisTimeoutError(f"Timeout reading {len(commands)} answers from Redis") from None


async def _send_and_read(conn: AbstractConnection, commands: list[tuple]) -> list:
    await conn.send_packed_command(conn.pack_commands(commands))
    replies: list = []
    for _ in commands:
        try:
            replies.append(await conn.read_response(timeout=math.inf))  # inf: no timer per answer, ours holds
        except ResponseError as exc:
            replies.append(exc)
    return replies


def _assemble(batch: list[tuple[Merged | None, Any, asyncio.Future]]) -> tuple[list[tuple], list[tuple]]:
    """A batch's commands, and whose answer each is: (kind or None, items, futures) per command.

    Plain commands keep their order; each kind's calls become one command where its last call was (or
    its first, for a kind that says ``first``).
    """
    groups: dict[int, tuple[list, list, list[int]]] = {}  # per kind: items, futures, [where its command goes]
    for i, (kind, payload, fut) in enumerate(batch):
        if kind is not None:
            items, futures, at = groups.setdefault(id(kind), ([], [], [i]))
            items.append(payload)
            futures.append(fut)
            if not kind.first:
                at[0] = i
    commands, owners = [], []
    for i, (kind, payload, fut) in enumerate(batch):
        if kind is None:
            commands.append(payload)
            owners.append((None, None, [fut]))
        elif groups[id(kind)][2][0] == i:
            items, futures, _ = groups[id(kind)]
            commands.append(kind.command(items))
            owners.append((kind, items, futures))
    return commands, owners


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
