"""Submit benchmark: ONE `s2s serve` process, one noop worker, a real redis-server, all on 127.0.0.1.

Prints, against the goals of issue 15:
  1. worst case: rounds of 32 parallel uploads of a 6000x6000 single-colour PNG, then of a max-size noisy
     JPEG; peak API RSS (goal <= 300 MB) and /api/jobs/health p99 polled meanwhile (goal < 100 ms), from
     a process of its own (as a load balancer polls it: the client's own loop lag is not the API's)
  2. throughput: a photo-like 4000x3000 JPEG (~2 MB) at 8 in flight; submits/s (goal >= 40), p50/p99, RSS

Bounded: every phase stops after its count or its time limit. The rate limit and the waiting cap are off
(S2S_SUBMIT_PER_MINUTE=0, S2S_MAX_WAITING=0) so the figures are the process's own.
The noop worker does not decode photos (a worker for a real provider does: s2s/photo_prep.py, ~27 ms of
CPU for this one); --no-worker leaves the API process alone with Redis and the client (the jobs wait).
Usage: python bench/submit_throughput.py [--rounds 2] [--submits 400] [--seconds 30] [--phases photo,worst]
       [--set S2S_UPLOAD_BODY_MB=64 ...] [--no-worker]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import io
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import aiohttp
import psutil
from PIL import Image, ImageFilter
from ws_bench import wait_healthy  # the same start-up check as the /ws benches

from s2s.embedded import EmbeddedRedis
from s2s.settings import Settings

PHASE_LIMIT_S = 120
HOST = "127.0.0.1"


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def photo_like(size: tuple[int, int], target_bytes: int) -> bytes:
    """Noise over a colour gradient, softened: it compresses like a phone photo (a few bits a pixel)."""
    w, h = size
    base = Image.linear_gradient("L").resize(size)
    channels = [Image.blend(base, Image.effect_noise(size, 60).filter(ImageFilter.GaussianBlur(s)), 0.5)
                for s in (1.2, 1.5, 1.8)]
    img = Image.merge("RGB", channels)
    best = None
    for quality in (95, 92, 90, 88, 85, 80, 75, 70, 60, 50, 40):
        data = _jpeg(img, quality)
        if len(data) <= target_bytes:
            best = data
            break
    return best or _jpeg(img, 30)


def flat_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 140, 220)).save(out, format="PNG")
    return out.getvalue()


def submission(data: bytes, mime: str) -> bytes:
    return json.dumps({"heroName": "Bench", "originalImageBase64": f"data:{mime};base64,"
                       + base64.b64encode(data).decode()}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def poll_health(base: str, stop, out) -> None:
    """In a process of its own: GET /api/jobs/health every 50 ms until ``stop`` is set; sends back the
    latencies (ms) and how many were not 200. The bench client's own loop, busy sending 32 uploads, would
    otherwise add its own lag to every poll (measured: p99 240 ms from the client's loop, 51 ms from here)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    latencies, bad = [], 0
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            conn.request("GET", "/api/jobs/health")
            resp = conn.getresponse()
            resp.read()
            bad += resp.status != 200
        except (OSError, http.client.HTTPException):
            bad += 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
        latencies.append((time.perf_counter() - start) * 1000)
        stop.wait(0.05)
    out.send((latencies, bad))


class Sampler:
    """Peak RSS of the API process (sampled in a thread) and health latencies (polled from a process of
    its own), while a phase runs."""

    def __init__(self, pid: int, base: str):
        self.proc = psutil.Process(pid)
        self.base = base
        self.peak = 0
        self.peak_all = 0
        self.cpu_s = 0.0
        self.own_cpu_s = 0.0
        self.health_ms: list[float] = []
        self.health_bad = 0

    def rss(self, stop: threading.Event) -> None:
        """The API process's RSS, and in ``peak_all`` its PSS with its children's (the decode processes)."""
        while not stop.is_set():
            own = self.proc.memory_full_info()
            children = 0
            for child in self.proc.children(recursive=True):
                try:
                    children += child.memory_full_info().pss  # PSS: pages shared after fork counted once
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, own.rss)
            self.peak_all = max(self.peak_all, own.pss + children)
            stop.wait(0.02)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop_health, self._stop_rss = context.Event(), threading.Event()
        self._results, sender = context.Pipe(duplex=False)
        self._poller = context.Process(target=poll_health, args=(self.base, self._stop_health, sender), daemon=True)
        self._poller.start()
        self._rss_thread = threading.Thread(target=self.rss, args=(self._stop_rss,), daemon=True)
        self._rss_thread.start()

    def stop(self) -> None:
        self._stop_health.set()
        self._stop_rss.set()
        if self._results.poll(30):
            self.health_ms, self.health_bad = self._results.recv()
        self._poller.join(10)
        self._rss_thread.join(10)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) so far of the API process and its children, and of the API process alone."""
    total = own = 0.0
    proc = psutil.Process(pid)
    for p in (proc, *proc.children(recursive=True)):
        try:
            times = p.cpu_times()
            total += times.user + times.system
            own = own or times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total, own


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


async def post(session, base: str, body: bytes, statuses: dict, latencies: list) -> None:
    start = time.perf_counter()
    async with session.post(f"{base}/api/jobs/generate-image", data=body,
                            headers={"Content-Type": "application/json"}) as resp:
        await resp.read()
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
    latencies.append((time.perf_counter() - start) * 1000)


async def measured(api_pid: int, base: str, load) -> tuple[Sampler, dict, list, float]:
    sampler = Sampler(api_pid, base)
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=PHASE_LIMIT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        sampler.start()
        start = time.perf_counter()
        cpu_start = cpu_seconds(api_pid)
        try:
            await asyncio.wait_for(load(session, statuses, latencies), PHASE_LIMIT_S)
        except TimeoutError:  # a loaded machine: report what was answered within the limit
            statuses["unanswered"] = statuses.get("unanswered", 0) + 1
            print(f"phase stopped at its {PHASE_LIMIT_S} s limit", flush=True)
        finally:
            elapsed = time.perf_counter() - start
            cpu_end = cpu_seconds(api_pid)
            sampler.cpu_s, sampler.own_cpu_s = cpu_end[0] - cpu_start[0], cpu_end[1] - cpu_start[1]
            sampler.stop()
    return sampler, statuses, latencies, elapsed


async def worst_case(api_pid: int, base: str, rounds: int, bodies: list[bytes]):
    async def load(session, statuses, latencies):
        for _ in range(rounds):
            for body in bodies:
                await asyncio.gather(*[post(session, base, body, statuses, latencies) for _ in range(32)])
    return await measured(api_pid, base, load)


async def throughput(api_pid: int, base: str, body: bytes, submits: int, seconds: float, in_flight: int = 8):
    async def load(session, statuses, latencies):
        deadline = time.perf_counter() + seconds
        left = iter(range(submits))

        async def one_lane():
            for _ in left:
                if time.perf_counter() > deadline:
                    return
                await post(session, base, body, statuses, latencies)
        await asyncio.gather(*[one_lane() for _ in range(in_flight)])
    return await measured(api_pid, base, load)


def report(title: str, sampler: Sampler, statuses: dict, latencies: list, elapsed: float) -> None:
    n = sum(v for k, v in statuses.items() if k != "unanswered")
    answers = dict(sorted(statuses.items(), key=str))
    print(f"{title}: {n} submits in {elapsed:.1f} s = {n / elapsed:.1f}/s, answers {answers}, "
          f"latency p50 {statistics.median(latencies or [float('nan')]):.0f} ms p99 {pct(latencies, 0.99):.0f} ms, "
          f"API CPU {1000 * sampler.cpu_s / max(1, n):.0f} ms a submit "
          f"({1000 * sampler.own_cpu_s / max(1, n):.0f} ms of it in the API process itself); "
          f"peak API RSS {sampler.peak / 2**20:.0f} MB "
          f"(PSS with its decode processes {sampler.peak_all / 2**20:.0f} MB); "
          f"health p99 {pct(sampler.health_ms, 0.99):.0f} ms max {max(sampler.health_ms, default=float('nan')):.0f} ms "
          f"over {len(sampler.health_ms)} polls, {sampler.health_bad} not 200")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 32 parallel worst-case uploads")
    parser.add_argument("--submits", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--set", action="append", default=[], metavar="S2S_NAME=VALUE",
                        help="a setting for the API, e.g. --set S2S_UPLOAD_BODY_MB=64 (repeatable)")
    parser.add_argument("--phases", default="photo,worst", help="which phases run: photo, worst or both")
    parser.add_argument("--no-worker", action="store_true",
                        help="no worker: the API process alone with Redis and the client")
    args = parser.parse_args()
    png = flat_png((6000, 6000))
    settings0 = Settings.from_env({}, dotenv=None)
    big_jpeg = photo_like((7200, 5500), settings0.max_image_bytes)
    photo = photo_like((4000, 3000), 2 * 1024 * 1024)
    import s2s
    print(f"s2s from {os.path.dirname(s2s.__file__)}; {os.cpu_count()} CPUs")
    print(f"worst case: 6000x6000 PNG {len(png) / 1024:.0f} KB; 7200x5500 JPEG {len(big_jpeg) / 2**20:.1f} MB; "
          f"photo: 4000x3000 JPEG {len(photo) / 2**20:.2f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(tmp, persistent=False)
        url = server.start()
        port = free_port()
        settings = Settings.from_env({}, dotenv=None, redis_url=url, port=port, retention_seconds=600)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("S2S_")}, **settings.environ(),
               "S2S_SUBMIT_PER_MINUTE": "0", "S2S_MAX_WAITING": "0", "S2S_PROVIDER": "noop",
               "S2S_LOG_LEVEL": "warning", "WORKER_CONCURRENCY": "50",
               **dict(item.split("=", 1) for item in args.set)}
        procs = [subprocess.Popen([sys.executable, "-m", "s2s", role], env=env, stdout=subprocess.DEVNULL)
                 for role in ("serve",) + (() if args.no_worker else ("worker",))]
        base = f"http://{HOST}:{port}"
        try:
            wait_healthy(base, procs[0])
            print(f"idle API RSS {psutil.Process(procs[0].pid).memory_info().rss / 2**20:.0f} MB")
            if "photo" in args.phases:
                report("4000x3000 photo at 8 in flight",
                       *asyncio.run(throughput(procs[0].pid, base, submission(photo, "image/jpeg"), args.submits,
                                               args.seconds)))
            if "worst" in args.phases:
                report(f"worst case, {args.rounds} rounds x (32 PNG, 32 JPEG) in parallel",
                       *asyncio.run(worst_case(procs[0].pid, base, args.rounds,
                                               [submission(png, "image/png"), submission(big_jpeg, "image/jpeg")])))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            server.stop()


if __name__ == "__main__":
    main()
