"""Redis connections with bounded waits: every pool s2s opens is made here.

A Redis that stops answering with its connections still open (a frozen process, a
failover, a partition) must cost a caller a bounded wait, never the minutes TCP
takes to give up: connect and read timeouts (``S2S_REDIS_TIMEOUT_MS``), TCP
keepalive, and redis-py's health check of a pooled connection that sat idle.
A caller that blocks on purpose (BLMOVE) adds its block time to the read timeout.
A refused or reset connection is retried once on a fresh one; a timeout is not
retried, so the bound holds.
"""

from __future__ import annotations

import socket
from operator import length_hint

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import HIREDIS_AVAILABLE, HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from s2s.settings import Settings

if HIREDIS_AVAILABLE:  # a dependency (redis[hiredis]); without it the pools keep redis-py's own connection class
    import hiredis

DEFAULT_URL = "redis://127.0.0.1:6379/0"
HEALTH_CHECK_S = 15  # a pooled connection idle this long is PINGed before use
MAX_CONNECTIONS = 64


def _keepalive() -> dict[int, int]:
    """Probe an idle connection after 10 s, every 5 s, give up after 3 probes (Linux names; others: defaults)."""
    options = {}
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options[getattr(socket, name)] = value
    return options


def options(settings: Settings, blocking_s: float = 0.0) -> dict:
    """Connection options; ``blocking_s``: the longest a caller blocks on purpose (BLMOVE), added to reads."""
    timeout_s = settings.redis_timeout_ms / 1000
    return {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s + blocking_s,
            "socket_keepalive": True, "socket_keepalive_options": _keepalive(),
            "health_check_interval": HEALTH_CHECK_S}


#: Above this an argument (a photo, a picture) is left to redis-py's packer, which sends it as it is: hiredis
#: copies every argument into one buffer, which for a 9 MB photo held the API's GIL for ms: half of the API
#: process's GIL time in the worst-case upload bench (py-spy --gil), 2026-12-02.
BIG_ARGUMENT = 64 * 1024
_HIREDIS_TYPES = frozenset({str, bytes, int, float})  # what hiredis.pack_command takes as it is


class HiredisPackedConnection(aioredis.Connection):
    """A TCP connection whose commands hiredis packs, as redis-py's sync connections do.

    redis-py's asyncio connections pack every command in Python: with a worker's calls in full
    pipelines that was a sixth of its CPU (a URL for TLS or a socket file keeps redis-py's own class).
    """

    _packer = HiredisRespSerializer()

    def pack_command(self, *args):
        # Both checks run in C (length_hint: a string's length, 0 for a number). A merged completion has
        # hundreds of arguments: redis-py's loop over them in Python (and the one here before) was a tenth
        # of a draining worker's CPU; hiredis itself takes str, bytes, int and float, not a bytearray.
        if max(map(length_hint, args), default=0) > BIG_ARGUMENT:
            return super().pack_command(*args)
        if type(args[0]) is str and " " not in args[0] and _HIREDIS_TYPES.issuperset(map(type, args)):
            return [hiredis.pack_command(args)]
        return self._packer.pack(*args)  # "SCRIPT LOAD" and the like split, bytearrays and views copied


def url_of(settings: Settings, url: str | None = None) -> str:
    return url or settings.redis_url or DEFAULT_URL


def async_client(settings: Settings, url: str | None = None, *, blocking_s: float = 0.0) -> aioredis.Redis:
    """The process's pool (API, worker): bounded, waiting at most one timeout for a free connection.

    RESP2: over RESP3 (redis-py 8's default) the pool skips its check of a pooled connection
    before use (redis/redis-py#4252), so after a Redis restart each one failed a request.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url_of(settings, url), max_connections=MAX_CONNECTIONS, timeout=settings.redis_timeout_ms / 1000 + blocking_s,
        connection_class=HiredisPackedConnection if HIREDIS_AVAILABLE else aioredis.Connection,
        protocol=2, retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        **options(settings, blocking_s))
    return aioredis.Redis.from_pool(pool)


def sync_client(settings: Settings, url: str | None = None) -> redis.Redis:
    """A thread's own client (the events subscriber)."""
    return redis.Redis.from_url(url_of(settings, url), retry=Retry(NoBackoff(), 1,
                                                                   supported_errors=(RedisConnectionError,)),
                                **options(settings))
