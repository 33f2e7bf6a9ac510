"""Where a job's time goes: one worker drains a backlog of no-op jobs; Redis's and the worker's side.

Redis side: ``INFO commandstats`` reset before the drain, read after it: calls and microseconds per
command (EVALSHA is every script together; SLOWLOG names the slow scripts), divided by the jobs.
Worker side: with ``--py-spy`` the worker runs under ``py-spy record`` (if installed) and the top
functions by own time are printed, as a share of the worker's samples.

Bounded: one drain of ``--jobs`` jobs, at most ``the phase limit`` s.
Usage: python bench/queue_profile.py [--jobs 10000] [--delay-ms 0] [--py-spy /tmp/worker.txt] [--per-script]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis as sync_redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from queue_throughput import completed, enqueue_many, start_worker, stop_worker, wait_done  # noqa: E402

from s2s.embedded import EmbeddedRedis  # noqa: E402
from s2s.queue import Queue  # noqa: E402
from s2s.scripts import SCRIPTS  # noqa: E402
from s2s.settings import Settings  # noqa: E402

SPY_RATE = 250  # samples/s
SLOWLOG_LEN = 200_000  # the last this many commands are kept, for the time per script


def per_script(client: sync_redis.Redis) -> list[tuple[str, int, float, float]]:
    """Each script's (name, calls, median us, p90 us), from the slowlog of every command.

    Lua's own share is what commandstats cannot split: EVALSHA's time holds its commands'.
    """
    by_sha = {s.sha: name for name, s in SCRIPTS.items()}
    times: dict[str, list[int]] = collections.defaultdict(list)
    for entry in client.slowlog_get(SLOWLOG_LEN):
        parts = entry["command"].split(b" ") if isinstance(entry["command"], bytes) else entry["command"].split(" ")
        if parts and parts[0].upper() in (b"EVALSHA", "EVALSHA") and len(parts) > 1:
            sha = parts[1].decode() if isinstance(parts[1], bytes) else parts[1]
            times[by_sha.get(sha, sha[:8])].append(entry["duration"])
    out = []
    for name, durations in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        durations.sort()
        out.append((name, len(durations), durations[len(durations) // 2], durations[len(durations) * 9 // 10]))
    return out


def commandstats(client: sync_redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec)."""
    return {name.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for name, v in client.info("commandstats").items()}


#: where a sample's innermost frame is -> what the README's breakdown calls it
_LOOP = "asyncio (loop, tasks, socket writes)"
LAYERS = [("(s2s/", "s2s (worker, queue, scripts)"), ("(redis/", "redis-py (commands, pipelines, replies)"),
          ("(asyncio/", _LOOP), ("(selectors.py", _LOOP)]


def py_spy_layers(raw_path: Path) -> tuple[int, dict[str, int]]:
    """Samples in all, and per layer of the innermost frame."""
    layers: collections.Counter[str] = collections.Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        layers[next((name for mark, name in LAYERS if mark in leaf), "other (logging, attrs, stdlib)")] += int(count)
    return sum(layers.values()), dict(layers)


def py_spy_top(raw_path: Path, top: int) -> list[tuple[float, str]]:
    """Own-time share per function from py-spy's --format raw (collapsed stacks: 'a;b;c count')."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        own[stack.split(";")[-1]] += n
    return [(n / total, frame) for frame, n in own.most_common(top)] if total else []


async def drain(settings: Settings, client: sync_redis.Redis, n: int, delay_ms: int, spy: Path | None,
                per_script_times: bool) -> float:
    queue = Queue.connect(settings)
    await enqueue_many(queue, n)
    base = completed(client, queue)
    client.config_resetstat()
    if per_script_times:  # every command in the slowlog, for the time per script (slows Redis by a fifth)
        client.config_set("slowlog-log-slower-than", 0)
        client.config_set("slowlog-max-len", SLOWLOG_LEN)
    client.slowlog_reset()
    cpu_at_start = redis_cpu_s(client)
    started = time.monotonic()
    worker = start_worker(settings, 50, delay_ms)
    recorder = None
    if spy:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        recorder = subprocess.Popen([py_spy, "record", "--pid", str(worker.pid),
                                     "--format", "raw", "--rate", str(SPY_RATE), "--nonblocking", "-o", str(spy)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_done(client, queue, n, base)
    finally:
        elapsed = time.monotonic() - started
        if recorder:
            recorder.send_signal(2)  # SIGINT: py-spy writes what it has
            recorder.wait(30)
        stop_worker(worker)
    await queue.close()
    return elapsed, cpu_at_start


def redis_cpu_s(client: sync_redis.Redis) -> float:
    """Redis's own CPU time so far (user and system, all its threads): what a job costs it in all."""
    cpu = client.info("cpu")
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--py-spy", metavar="FILE", help="record the worker with py-spy into FILE (raw stacks)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--per-script", action="store_true",
                        help="log every command in the slowlog and print each script's median time (slower)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(tmp, persistent=False)
        url = server.start()
        try:
            settings = Settings.from_env({}, dotenv=None, redis_url=url, retention_seconds=3600)
            client = sync_redis.Redis.from_url(url)
            spy = Path(args.py_spy) if args.py_spy else None
            elapsed, cpu_at_start = asyncio.run(drain(settings, client, args.jobs, args.delay_ms, spy,
                                                       args.per_script))
            cpu_s = redis_cpu_s(client) - cpu_at_start
            stats = commandstats(client)
            info = client.info("stats")
            n = args.jobs
            print(f"{n} no-op jobs drained in {elapsed:.1f} s (incl. worker start-up) by one worker at concurrency 50")
            print("Redis side, per job:   command          calls/job   usec/call   usec/job")
            for name, (calls, usec) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
                if calls / n < 0.01:
                    continue
                print(f"                       {name:16s} {calls / n:9.2f} {usec / calls:11.1f} {usec / n:10.1f}")
            print("                       (EVALSHA's time holds the commands its scripts ran, listed below it)")
            print(f"Redis CPU per job (INFO cpu, user + sys, the bench's polling included): {cpu_s / n * 1e6:.0f} us")
            print(f"Round trips per job: {info['total_reads_processed'] / n:.2f} reads and "
                  f"{info['total_writes_processed'] / n:.2f} writes by Redis; "
                  f"{info['total_net_input_bytes'] / n:.0f} bytes in, {info['total_net_output_bytes'] / n:.0f} out")
            if args.per_script:
                print("Per script (slowlog of every command; the last calls):  calls  median us  p90 us")
            for name, calls, median, p90 in per_script(client) if args.per_script else ():
                print(f"                       {name:16s} {calls:9d} {median:10d} {p90:7d}")
            if spy and spy.exists():
                total_samples, layers = py_spy_layers(spy)
                print(f"Worker side (py-spy at {SPY_RATE} Hz, busy samples): "
                      f"{total_samples / SPY_RATE / n * 1e6:.0f} us of CPU per job")
                for name, count in sorted(layers.items(), key=lambda kv: -kv[1]):
                    print(f"  {name:42s} {count / SPY_RATE / n * 1e6:6.0f} us/job  {count / total_samples:6.1%}")
                print("Top functions by own time, share of samples:")
                for share, frame in py_spy_top(spy, args.top):
                    print(f"  {share * 100:5.1f}%  {frame}")
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
