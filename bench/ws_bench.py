"""WebSocket benchmark: ONE API process holding many sockets, events driven through Redis pub/sub.

Loopback only: it starts its own redis-server and one ``s2s serve``, opens N
sockets from a few client processes (aiohttp, asyncio), subscribes each to one
of J jobs (seeded job records; so each event fans out to N/J sockets), then
publishes frames straight onto the events channel, as the Lua scripts do, each
carrying its publish time ``t``. Clients count what they receive and bin the
publish-to-receive latency. Prints:

  1. connections held by the API process, and its resident memory per connection; the time of one full
     garbage collection then, and the slowest natural one of the ramp (bench/gc_probe.py); then a warm-up
     phase, reported but not counted: see its note. ``--memory-only`` stops here.
  2. publish-to-receive latency p50/p99 at 1,000 delivered events/s, and at 1,000 published events/s
  3. delivered events/s, counted at the clients, at rising offered rates until the API falls behind

Bounded: N sockets, fixed-length phases, and a time limit on every wait.
Usage: python bench/ws_bench.py [--sockets 10000] [--jobs 1000] [--clients 2] [--seconds 8] [--memory-only]
       python bench/ws_bench.py --server node     (the anchor: Node ws, memory per socket only)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter

import psutil
import redis as sync_redis

from s2s.embedded import EmbeddedRedis, free_port
from s2s.keys import Keys

KEYS = Keys("s2s")
BIN_MS = 0.1  # latency histogram resolution
WAIT_LIMIT_S = 300


def raise_open_files_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def job_id(i: int) -> str:
    return f"bench-{i:06d}"


# ---- client processes -----------------------------------------------------------------------------
async def client_main(url: str, count: int, offset: int, jobs: int, batch: int) -> None:
    """Open ``count`` sockets, subscribe each, then count frames until stdin says 'quit'."""
    import aiohttp

    raise_open_files_limit(count + 100)
    received: Counter = Counter()  # 100 ms bucket -> frames
    latency: Counter = Counter()  # BIN_MS bin -> frames
    loop = asyncio.get_running_loop()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    sockets = []

    async def open_one(i: int):
        for attempt in range(5):
            try:
                ws = await session.ws_connect(url + "/ws", autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5))
                break
            except (aiohttp.ClientError, OSError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.5)
        await ws.receive_str(timeout=30)  # connection_confirmed
        await ws.send_str(json.dumps({"type": "subscribe_to_job", "jobId": job_id((offset + i) % jobs)}))
        await ws.receive_str(timeout=30)  # the job's current state
        return ws

    async def read(ws) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.time()
            data = msg.data
            if data.endswith("}") and '"t": ' in data[-30:]:  # the publisher puts "t" last; no JSON parse here
                sent = float(data[data.rindex(" ") + 1:-1])
                received[int(now * 10)] += 1
                latency[int((now - sent) * 1000 / BIN_MS)] += 1

    for start in range(0, count, batch):
        sockets += await asyncio.gather(*[open_one(i) for i in range(start, min(count, start + batch))])
    readers = [asyncio.ensure_future(read(ws)) for ws in sockets]
    print(json.dumps({"ready": len(sockets)}), flush=True)

    commands: asyncio.Queue = asyncio.Queue()
    threading.Thread(target=lambda: [loop.call_soon_threadsafe(commands.put_nowait, line.strip())
                                     for line in sys.stdin], daemon=True).start()
    while True:
        command = await commands.get()
        if command == "report":
            print(json.dumps({"received": dict(received), "latency": dict(latency),
                              "open": sum(not ws.closed for ws in sockets)}), flush=True)
            received.clear()
            latency.clear()
        elif command in ("quit", ""):
            break
    for task in readers:
        task.cancel()
    await asyncio.gather(*[ws.close() for ws in sockets], return_exceptions=True)
    await session.close()


# ---- the driver -----------------------------------------------------------------------------------
class ClientProcesses:
    """Client processes driven a line at a time: commands on their stdin, one JSON answer each on stdout."""

    def __init__(self, argvs: list[list[str]]):
        self.procs = [subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True) for argv in argvs]

    def tell(self, line: str) -> None:
        for p in self.procs:
            p.stdin.write(line + "\n")
            p.stdin.flush()

    def stop(self) -> None:
        for p in self.procs:
            try:
                p.stdin.write("quit\n")
                p.stdin.flush()
            except BrokenPipeError:
                pass
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


class Clients(ClientProcesses):
    def __init__(self, url: str, sockets: int, processes: int, jobs: int, batch: int):
        share = -(-sockets // processes)
        super().__init__([[__file__, "--client", "--url", url, "--count", str(min(share, sockets - p * share)),
                           "--offset", str(p * share), "--jobs", str(jobs), "--batch", str(batch)]
                          for p in range(processes)])

    def wait_ready(self) -> int:
        return sum(json.loads(p.stdout.readline())["ready"] for p in self.procs)

    def report(self) -> tuple[Counter, Counter, int]:
        received, latency, still_open = Counter(), Counter(), 0
        self.tell("report")
        for p in self.procs:
            answer = json.loads(p.stdout.readline())
            received.update({int(k): v for k, v in answer["received"].items()})
            latency.update({int(k): v for k, v in answer["latency"].items()})
            still_open += answer["open"]
        return received, latency, still_open


class Publisher:
    """Publishes progress frames round-robin over the jobs at a steady rate; seq rises per job."""

    def __init__(self, redis_url: str, jobs: int):
        self.redis = sync_redis.Redis.from_url(redis_url)
        self.jobs = jobs
        self.seq = [0] * jobs
        self.next_job = 0

    def run(self, rate: float, seconds: float) -> int:
        tick = 0.005
        started = time.perf_counter()
        sent = 0
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return sent
            due = int(rate * elapsed) - sent
            if due > 0:
                pipe = self.redis.pipeline(transaction=False)
                for _ in range(due):
                    j = self.next_job
                    self.next_job = (j + 1) % self.jobs
                    self.seq[j] += 1
                    pipe.publish(KEYS.events_channel, json.dumps(  # "t" (publish time) last: clients read it cheaply
                        {"type": "job_progress", "jobId": job_id(j), "status": "processing", "progress": 50,
                         "message": "Drawing (bench)", "seq": self.seq[j], "t": time.time()}))
                pipe.execute()
                sent += due
            time.sleep(max(0.0, tick - (time.perf_counter() - started - elapsed)))


def percentile(hist: Counter, q: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank = q * total
    seen = 0
    for bin_, n in sorted(hist.items()):
        seen += n
        if seen >= rank:
            return (bin_ + 1) * BIN_MS
    return float("nan")


def wait_healthy(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the API exited")
        try:
            with urllib.request.urlopen(url + "/api/jobs/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the API did not answer")


def gc_probe(api: psutil.Process, path: str) -> dict:
    """Have the API (run by bench/gc_probe.py) time one full collection; its answer, with its natural ones."""
    if os.path.exists(path):
        os.unlink(path)
    api.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit("the API's gc probe did not answer")
        time.sleep(0.05)
    with open(path) as f:
        return json.load(f)


def gc_line(probe: dict) -> str:
    full = probe["collections"]["2"]
    return (f"a full gc.collect() {probe['full_collect_s'] * 1000:.0f} ms (fastest of 3; slowest "
            f"{probe['full_collect_max_s'] * 1000:.0f} ms; CPU {probe['full_collect_cpu_s'] * 1000:.0f} ms) "
            f"over {probe['tracked']:,} tracked objects "
            f"({probe['frozen']:,} frozen); natural full collections since the last probe: {full['count']}, "
            f"slowest {full['max_s'] * 1000:.0f} ms, {full['total_s'] * 1000:.0f} ms in all")


def established(api: psutil.Process, port: int) -> int:
    return sum(1 for c in api.net_connections(kind="tcp") if c.status == "ESTABLISHED" and c.laddr.port == port)


def phase(name: str, clients: Clients, publisher: Publisher, rate: float, seconds: float, fanout: int,
          api: psutil.Process) -> tuple[float, float]:
    """Publish at ``rate`` for ``seconds``; return (delivered/s in the steady middle, share of offered)."""
    clients.report()  # reset counters
    watched = [api, *(psutil.Process(p.pid) for p in clients.procs)]
    for proc in watched:
        proc.cpu_percent()
    psutil.cpu_percent()
    started = time.time()
    sent = publisher.run(rate, seconds)
    cpu, *client_cpu = (proc.cpu_percent() for proc in watched)
    machine = psutil.cpu_percent() * psutil.cpu_count()
    time.sleep(1.0)  # let the tail arrive
    received, latency, _ = clients.report()
    lo, hi = int((started + 1) * 10), int((started + seconds - 1) * 10)  # skip the first and last second
    steady = sum(n for bucket, n in received.items() if lo <= bucket < hi) / ((hi - lo) / 10)
    offered = rate * fanout
    total = sum(received.values())
    print(f"  {name}: offered {offered:,.0f}/s ({rate:,.0f} published/s x {fanout}); delivered {steady:,.0f}/s "
          f"steady, {total:,}/{sent * fanout:,} in all; latency p50 {percentile(latency, 0.5):.1f} ms "
          f"p99 {percentile(latency, 0.99):.1f} ms max {max(latency, default=0) * BIN_MS:.1f} ms; "
          f"CPU: API {cpu:.0f}%, clients {sum(client_cpu):.0f}%, whole machine {machine:.0f}% of "
          f"{psutil.cpu_count() * 100}%", flush=True)
    return steady, total / max(1, sent * fanout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--batch", type=int, default=100, help="sockets each client opens at once")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each publishing phase")
    parser.add_argument("--rates", default="2000,2500,3000,4000", help="published events/s of the throughput steps")
    parser.add_argument("--ping-interval", type=int, default=25_000, help="WS_PING_INTERVAL of the API, ms")
    parser.add_argument("--memory-only", action="store_true", help="stop after the memory and gc figures")
    parser.add_argument("--server", choices=("s2s", "node"), default="s2s",
                        help="node: bench/ws_node_peer.cjs (Node ws) in place of the API, for the memory anchor")
    parser.add_argument("--node-ws", default="/tmp/sockets-node/node_modules/ws",
                        help="where `npm install --prefix /tmp/sockets-node ws@8` put ws")
    parser.add_argument("--gc-types", action="store_true", help="also count the API's tracked objects by type")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main(args.url, args.count, args.offset, args.jobs, args.batch))
        return

    limit = raise_open_files_limit(args.sockets + 1000)  # inherited by the API and client processes
    if limit < args.sockets + 200:
        raise SystemExit(f"the open-files limit is {limit}; {args.sockets} sockets need more")
    fanout = args.sockets // args.jobs
    with tempfile.TemporaryDirectory(prefix="s2s-ws-bench-") as tmp:
        embedded = EmbeddedRedis(tmp, persistent=False)
        redis_url = embedded.start()
        r = sync_redis.Redis.from_url(redis_url)
        now_ms = int(time.time() * 1000)
        pipe = r.pipeline(transaction=False)
        for j in range(args.jobs):
            pipe.hset(KEYS.job(job_id(j)), mapping={"id": job_id(j), "status": "processing", "progress": 0,
                                                    "message": "Drawing", "createdAt": now_ms, "seq": 0})
        pipe.execute()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "S2S_LOG_LEVEL": "warning",
               "S2S_ENV": "production", "S2S_MAX_SOCKETS_PER_CLIENT": "0",  # every socket comes from 127.0.0.1
               "WS_PING_INTERVAL": str(args.ping_interval),
               "WS_PING_TIMEOUT": str(max(60_000, 2 * args.ping_interval))}
        if args.gc_types:
            env["S2S_GC_PROBE_TYPES"] = "1"
        env["S2S_GC_PROBE_FILE"] = probe_file = os.path.join(tmp, "gc-probe.json")
        node = args.server == "node"
        if node:  # the anchor: Node ws holding the same sockets, measured the same way (memory only)
            env["S2S_NODE_WS"] = args.node_ws
            argv = ["node", os.path.join(os.path.dirname(__file__), "ws_node_peer.cjs")]
        else:
            argv = [sys.executable, os.path.join(os.path.dirname(__file__), "gc_probe.py"), "serve"]
        api_proc = subprocess.Popen(argv, env=env)
        clients = None
        try:
            wait_healthy(url, api_proc)
            api = psutil.Process(api_proc.pid)
            time.sleep(1.0)
            base = None if node else gc_probe(api, probe_file)
            base_rss = api.memory_info().rss
            server = "Node ws" if node else "API"
            print(f"ws bench: {args.sockets:,} sockets on one {server} process, {args.jobs:,} jobs ({fanout} sockets "
                  f"each), {args.clients} client processes, {psutil.cpu_count()} CPUs, a ping to every socket every "
                  f"{args.ping_interval / 1000:g} s", flush=True)
            started = time.monotonic()
            clients = Clients(url, args.sockets, args.clients, args.jobs, args.batch)
            ready = clients.wait_ready()
            took = time.monotonic() - started
            time.sleep(1.0)
            rss = api.memory_info().rss
            held = established(api, port)
            print(f"1. connections held: {held:,} (clients ready: {ready:,}; opened and subscribed in {took:.1f} s); "
                  f"{server} RSS {base_rss / 2**20:.0f} MiB -> {rss / 2**20:.0f} MiB: "
                  f"{(rss - base_rss) / max(1, held) / 1024:.1f} KiB per connection", flush=True)
            if node:
                return
            probe = gc_probe(api, probe_file)
            print(f"   gc at start-up: {base['tracked']:,} tracked objects; with the sockets: {gc_line(probe)}; "
                  f"{(probe['tracked'] - base['tracked']) / max(1, held):.1f} tracked objects per connection",
                  flush=True)
            if "types" in probe:
                grown = Counter(probe["types"])
                grown.subtract(base.get("types", {}))
                print("   tracked objects per connection by type: " + ", ".join(
                    f"{name} {n / max(1, held):.2f}" for name, n in grown.most_common(20)), flush=True)
            if "traced_growth" in probe:  # S2S_GC_PROBE_TRACEMALLOC=1
                print(f"   allocated by Python: {probe['traced_growth'] / max(1, held) / 1024:.1f} KiB per connection;"
                      " the lines that allocated most:", flush=True)
            for line in probe.get("allocated_by_line", [])[:25]:
                print("   " + line, flush=True)
            if args.memory_only:
                return

            publisher = Publisher(redis_url, args.jobs)
            print("   warm-up, not counted below (the first traffic after the ramp pays for the full garbage "
                  "collections that the new sockets' objects trigger):", flush=True)
            phase("warm-up", clients, publisher, 1000, 5, fanout, api)
            print(f"   gc after the warm-up: {gc_line(gc_probe(api, probe_file))}", flush=True)
            print("2. latency", flush=True)
            phase("1,000 delivered/s", clients, publisher, 1000 / fanout, args.seconds, fanout, api)
            phase("1,000 published/s", clients, publisher, 1000, args.seconds, fanout, api)
            print("3. throughput", flush=True)
            best = 0.0
            for rate in (float(x) for x in args.rates.split(",")):
                steady, share = phase(f"step {rate:,.0f}/s", clients, publisher, rate, args.seconds, fanout, api)
                if share >= 0.99:
                    best = max(best, steady)
                if share < 0.95:
                    break
            _, _, still_open = clients.report()
            print(f"sustained: {best:,.0f} delivered events/s with every event delivered; "
                  f"sockets still open at the end: {still_open:,}; API RSS now {api.memory_info().rss / 2**20:.0f} MiB",
                  flush=True)
        finally:
            if clients is not None:
                clients.stop()
            stop_api(api_proc)
            embedded.stop()


def stop_api(proc: subprocess.Popen) -> None:
    """TERM (the API drains), then KILL one still there after 30 s: a bench always ends."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


if __name__ == "__main__":
    main()
