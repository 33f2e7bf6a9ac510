"""Subscribe-storm benchmark: N sockets on ONE API process subscribing to one job at once, then reconnecting at once.

Loopback only: its own redis-server and ``s2s serve``, N sockets from a few client processes (aiohttp).
Events are written as the Lua scripts do (job record seq, the job's event log, the events channel).

  1. subscribe storm: a job has some events; every socket subscribes to it with lastSeq 0 at the same
     moment; more events follow, then the job's end.
  2. restart storm: every socket follows a second job; the API gets TERM (it closes every socket 1001),
     events go on while it is down (kept in the log, published to no one), a new API starts on the same
     port and every client reconnects as soon as it can, resubscribing with its lastSeq; more events, the end.

For each it prints how many sockets got every event of the job exactly once, the error frames by code
(``unavailable`` is what the issue counts), and the time until every socket had caught up (had every
event that existed when the storm began). A client told ``unavailable`` or ``overloaded`` subscribes
again after retryAfterMs (or 0.25-0.5 s, as the JS client did), like a browser.

Bounded: N sockets, a fixed number of events, a time limit on every wait.
Usage: python bench/ws_storm.py [--sockets 10000] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import redis as sync_redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ws_bench import KEYS, ClientProcesses, raise_open_files_limit, stop_api, wait_healthy  # noqa: E402

from s2s.embedded import EmbeddedRedis, free_port  # noqa: E402

WAIT_LIMIT_S = 240
ENDS = ("job_completed", "job_failed", "job_cancelled")


# ---- client processes -----------------------------------------------------------------------------
class Follower:
    """One socket following one job: the seqs it got, when it had caught up, and its error frames."""

    def __init__(self):
        self.job = ""
        self.seqs: list[int] = []
        self.caught_at: float | None = None
        self.ended = False


async def client_main(url: str, count: int, batch: int) -> None:
    import aiohttp

    raise_open_files_limit(count + 100)
    loop = asyncio.get_running_loop()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    followers = [Follower() for _ in range(count)]
    sockets: list = [None] * count
    errors: Counter = Counter()
    state = {"caught_seq": 0, "deadline": 0.0}

    async def connect(i: int) -> None:
        while True:
            try:
                ws = await session.ws_connect(url + "/ws", autoping=True)
                break
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > state["deadline"]:
                    raise
                await asyncio.sleep(0.05)
        await ws.receive_str(timeout=60)  # connection_confirmed
        sockets[i] = ws

    async def subscribe(i: int) -> None:
        f = followers[i]
        try:
            await sockets[i].send_str(json.dumps({"type": "subscribe_to_job", "jobId": f.job,
                                                  "lastSeq": f.seqs[-1] if f.seqs else 0}))
        except (aiohttp.ClientError, ConnectionError):
            pass  # the server closed it: follow() reads the close, reconnects and subscribes again

    async def follow(i: int) -> None:
        """Read until the job ends; after a close (the API restarting) reconnect at once and resubscribe."""
        f = followers[i]
        while not f.ended and time.monotonic() < state["deadline"]:
            msg = await sockets[i].receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                await connect(i)
                await subscribe(i)
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("type") == "error":
                errors[frame.get("code")] += 1
                wait_ms = frame.get("retryAfterMs") or 250 + random.random() * 250
                await asyncio.sleep(wait_ms / 1000)
                await subscribe(i)
            elif frame.get("jobId") == f.job and "seq" in frame:
                f.seqs.append(frame["seq"])
                if f.caught_at is None and frame["seq"] >= state["caught_seq"]:
                    f.caught_at = time.time()
                f.ended = frame["type"] in ENDS

    state["deadline"] = time.monotonic() + WAIT_LIMIT_S
    for start in range(0, count, batch):
        await asyncio.gather(*[connect(i) for i in range(start, min(count, start + batch))])
    print(json.dumps({"ready": count}), flush=True)

    commands: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=lambda: [loop.call_soon_threadsafe(commands.put_nowait, line.split())
                                     for line in sys.stdin], daemon=True).start()
    tasks: list[asyncio.Future] = []
    while True:
        command = await commands.get()
        if not command or command[0] == "quit":
            break
        if command[0] == "follow":  # follow <job> <caught_seq>: subscribe every socket at once
            errors.clear()
            state["caught_seq"] = int(command[2])
            state["deadline"] = time.monotonic() + WAIT_LIMIT_S
            for f in followers:
                f.job, f.seqs, f.caught_at, f.ended = command[1], [], None, False
            await asyncio.gather(*[subscribe(i) for i in range(count)])
            tasks = [asyncio.ensure_future(follow(i)) for i in range(count)]
        elif command[0] == "caught":  # caught <seq>: from now on, caught up means having seq
            state["caught_seq"] = int(command[1])
            for f in followers:
                f.caught_at = None
        elif command[0] == "report":  # report <total>: once every socket ended (or the deadline passed)
            total = int(command[1])
            await asyncio.wait(tasks, timeout=max(0.1, state["deadline"] - time.monotonic()))
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
            expected = list(range(1, total + 1))
            caught = [f.caught_at for f in followers if f.caught_at is not None]
            print(json.dumps({"complete": sum(f.seqs == expected for f in followers), "errors": dict(errors),
                              "caught": len(caught), "last_caught_at": max(caught, default=0.0),
                              "failed": len(failed)}), flush=True)
    await asyncio.gather(*[ws.close() for ws in sockets if ws is not None], return_exceptions=True)
    await session.close()


# ---- the driver -----------------------------------------------------------------------------------
class Clients(ClientProcesses):
    def __init__(self, url: str, sockets: int, processes: int, batch: int):
        share = -(-sockets // processes)
        super().__init__([[__file__, "--client", "--url", url, "--count", str(min(share, sockets - p * share)),
                           "--batch", str(batch)] for p in range(processes)])

    def ask(self, line: str) -> list[dict]:
        self.tell(line)
        return [json.loads(p.stdout.readline()) for p in self.procs]


class Events:
    """Writes a job's events as the Lua scripts' emit() does."""

    def __init__(self, redis_url: str):
        self.redis = sync_redis.Redis.from_url(redis_url)

    def seed(self, job_id: str) -> None:
        self.redis.hset(KEYS.job(job_id), mapping={"id": job_id, "status": "processing", "progress": 0,
                                                   "message": "Drawing", "createdAt": int(time.time() * 1000),
                                                   "seq": 0})

    def emit(self, job_id: str, seqs: range, last: int = 0, per_s: float = 0) -> None:
        for seq in seqs:
            frame = {"type": "job_progress", "jobId": job_id, "status": "processing", "progress": 50,
                     "message": f"step {seq}", "seq": seq}
            if seq == last:
                frame = {"type": "job_cancelled", "jobId": job_id, "status": "cancelled", "seq": seq}
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(KEYS.job(job_id), mapping={"seq": seq, "status": frame["status"]})
            pipe.rpush(KEYS.job_events(job_id), json.dumps(frame))
            pipe.publish(KEYS.events_channel, json.dumps(frame))
            pipe.execute()
            if per_s:
                time.sleep(1 / per_s)


def summary(name: str, answers: list[dict], sockets: int, started: float, note: str = "") -> None:
    errors: Counter = Counter()
    for a in answers:
        errors.update(a["errors"])
    caught = sum(a["caught"] for a in answers)
    last = max(a["last_caught_at"] for a in answers)
    took = f"{last - started:.1f} s" if caught == sockets else f"not all ({caught:,} of {sockets:,})"
    print(f"  {name}: {sum(a['complete'] for a in answers):,} of {sockets:,} sockets got every event exactly once; "
          f"unavailable: {errors.pop('unavailable', 0):,}; other error frames: {dict(errors) or 'none'}; "
          f"clients that gave up: {sum(a['failed'] for a in answers)}; all caught up after {took}{note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--batch", type=int, default=200, help="sockets each client opens at once at the start")
    parser.add_argument("--phases", default="1,2", help="which storms to run: 1 subscribe, 2 restart")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main(args.url, args.count, args.batch))
        return

    limit = raise_open_files_limit(args.sockets + 1000)
    if limit < args.sockets + 200:
        raise SystemExit(f"the open-files limit is {limit}; {args.sockets} sockets need more")
    with tempfile.TemporaryDirectory(prefix="s2s-ws-storm-") as tmp:
        embedded = EmbeddedRedis(tmp, persistent=False)
        redis_url = embedded.start()
        events = Events(redis_url)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "S2S_LOG_LEVEL": "error",
               "S2S_ENV": "production", "S2S_MAX_SOCKETS_PER_CLIENT": "0"}  # every socket comes from 127.0.0.1
        api_proc = subprocess.Popen([sys.executable, "-m", "s2s", "serve"], env=env)
        clients = None
        try:
            wait_healthy(url, api_proc)
            print(f"ws storm: {args.sockets:,} sockets on one API process, {args.clients} client processes",
                  flush=True)
            clients = Clients(url, args.sockets, args.clients, args.batch)
            sum(int(json.loads(p.stdout.readline())["ready"]) for p in clients.procs)

            if "1" in args.phases:
                events.seed("storm-1")
                events.emit("storm-1", range(1, 21))
                started = time.time()
                clients.tell("follow storm-1 20")  # every socket at once, lastSeq 0, 20 events kept
                events.emit("storm-1", range(21, 41), last=40, per_s=20)
                summary("1. subscribe storm (lastSeq 0, 20 events kept, 20 more live)", clients.ask("report 40"),
                        args.sockets, started)
            if "2" not in args.phases:
                return

            events.seed("storm-2")
            clients.tell("follow storm-2 10")
            events.emit("storm-2", range(1, 11), per_s=20)
            api_proc.send_signal(signal.SIGTERM)
            try:
                api_proc.wait(60)
            except subprocess.TimeoutExpired:
                print("  (the API had not exited 60 s after TERM; killed it)", flush=True)
                api_proc.kill()
                api_proc.wait(30)
            events.emit("storm-2", range(11, 21))  # while no API is up: in the log only
            clients.tell("caught 20")
            started = time.time()
            api_proc = subprocess.Popen([sys.executable, "-m", "s2s", "serve"], env=env)
            wait_healthy(url, api_proc)
            up = time.time() - started
            events.emit("storm-2", range(21, 41), last=40, per_s=20)
            summary("2. restart storm (TERM, a new API on the port, every client back at once with lastSeq)",
                    clients.ask("report 40"), args.sockets, started,
                    f" of starting the new API (it answered /health after {up:.1f} s)")
        finally:
            if clients is not None:
                clients.stop()
            stop_api(api_proc)
            embedded.stop()


if __name__ == "__main__":
    main()
