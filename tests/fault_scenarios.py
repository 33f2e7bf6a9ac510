"""Fault drills as functions: real processes, one fault each, and what the bill and a user saw.

Each drill runs its own redis-server (so it can be frozen with SIGSTOP or given a small
maxmemory), a fake OpenAI that counts its calls (every call is a paid picture), ``s2s
serve`` and ``s2s worker`` processes, and returns a :class:`Outcome`. tests/test_faults.py
asserts on them; bench/fault_drill.py prints them.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import redis as redis_lib
from attrs import define, field

from s2s.embedded import EmbeddedRedis
from s2s.keys import Keys
from s2s.settings import Settings
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import Processes, Stack, data_url, http_json, photo_bytes, wait_until

KEYS = Keys("s2s")
ENDED = ("completed", "failed", "cancelled")
OPERATOR_TOKEN = "drill-operator-token"


@define
class Outcome:
    """What one drill saw: jobs accepted and completed, calls the upstream received, and notes."""

    fault: str
    accepted: int = 0
    completed: int = 0
    upstream_calls: int = 0  # requests the fake OpenAI received: pictures paid for
    job_calls: list[int] = field(factory=list)  # each job's upstreamCalls, as the API reports it
    attempts: list[int] = field(factory=list)
    notes: dict = field(factory=dict)

    @property
    def calls_per_job(self) -> float:
        return self.upstream_calls / self.completed if self.completed else float("nan")


class Rig:
    """A redis-server, a fake OpenAI and s2s processes for one drill; everything stops on exit."""

    def __init__(self, work_dir: Path | None = None, *, lease_ms: int = 3000, call_s: float = 4.0, **settings):
        self._tmp = None if work_dir else tempfile.TemporaryDirectory(prefix="s2s-drill-")
        self.dir = Path(work_dir or self._tmp.name)
        self.redis_server = EmbeddedRedis(self.dir / "redis", persistent=False)
        self.call_s = call_s
        self.lease_ms = lease_ms
        self.extra_settings = settings
        self.upstream = FakeOpenAI(stream_gap_s=call_s / 4)
        self.processes = Processes(self.dir)
        self.health_seen: list[tuple[int, dict]] = []
        self._watching = False

    def __enter__(self) -> Rig:
        url = self.redis_server.start()
        self.redis = redis_lib.Redis.from_url(url)
        self.settings = Settings.from_env({}, dotenv=None, **{
            "redis_url": url, "env": "test", "lease_ms": self.lease_ms, "retry_base_ms": 100, "retry_max_ms": 400,
            "shutdown_grace_ms": 5000, "submit_per_minute": 0, "max_sockets_per_client": 0, **self.extra_settings})
        self.stack = Stack(self.settings, self.processes, self.redis)
        self.upstream.__enter__()
        # each call: call_s/2 before the answer starts, then two drafts call_s/4 apart (progress mid-call)
        self.upstream.plan(*[Reply(delay=self.call_s / 2)] * 200)
        return self

    def __exit__(self, *exc) -> None:
        self._watching = False
        self.processes.stop_all()
        self.upstream.__exit__(*exc)
        self.redis.close()
        if self.redis_server.process and self.redis_server.process.poll() is None:
            os.kill(self.redis_server.process.pid, signal.SIGCONT)  # a frozen one cannot stop
        self.redis_server.stop()
        if self._tmp:
            self._tmp.cleanup()

    # ---- processes ------------------------------------------------------------------------
    def api(self, **env) -> str:
        return self.stack.api(ready=(200, 503), **env)  # a drill starts APIs while the store is in trouble too

    def worker(self, **env):
        env = {"S2S_PROVIDER": "openai", "OPENAI_API_KEY": self.upstream.key, "OPENAI_BASE_URL": self.upstream.base_url,
               "S2S_OPENAI_PARTIAL_IMAGES": 2, "S2S_OPENAI_RPM": 0, **env}
        return self.stack.worker(name=f"worker-{len(self.processes.children)}", **env)

    # ---- the fault ------------------------------------------------------------------------
    def freeze_redis(self) -> None:
        os.kill(self.redis_server.process.pid, signal.SIGSTOP)

    def thaw_redis(self) -> None:
        os.kill(self.redis_server.process.pid, signal.SIGCONT)

    def fill_redis(self) -> None:
        """maxmemory (noeviction) at half of what Redis holds: every write that may grow memory is refused, and
        no swing of its own (a finished job's photo freed, buffers shrinking) brings it back under the limit or
        the high-water mark mid-drill, as a limit just under the reading did (a claim went on)."""
        self.redis.config_set("maxmemory", int(self.redis.info("memory")["used_memory"]) // 2)

    # ---- what a client does and sees ------------------------------------------------------
    def submit(self, url: str, n: int = 1, photo: bytes | None = None, timeout: float = 10) -> list[tuple[int, dict]]:
        body = json.dumps({"heroName": "Mia", "originalImageBase64": data_url(photo or photo_bytes())}).encode()
        out = []
        for _ in range(n):
            code, headers, raw = http_json("POST", url + "/api/jobs/generate-image", body,
                                           {"Content-Type": "application/json"}, timeout=timeout)
            out.append((code, {**json.loads(raw), "retryAfter": headers.get("Retry-After")}))
        return out

    def status(self, url: str, job_id: str) -> dict:
        return json.loads(http_json("GET", f"{url}/api/jobs/{job_id}/status")[2])

    def statuses(self) -> dict[str, str]:
        ids = [k.decode().split(":")[2] for k in self.redis.scan_iter("s2s:job:*") if k.count(b":") == 2]
        return {i: (self.redis.hget(KEYS.job(i), "status") or b"").decode() for i in ids}

    def wait_running(self, n: int, timeout: float = 30) -> None:
        wait_until(lambda: len(self.upstream.requests) >= n, timeout=timeout, what=f"{n} upstream calls in flight")

    def wait_ended(self, url: str, ids: list[str], timeout: float = 60) -> list[dict]:
        def ended():
            jobs = [self.status(url, i) for i in ids]
            return jobs if all(j["status"] in ENDED for j in jobs) else None

        return wait_until(ended, timeout=timeout, interval=0.2, what=f"{len(ids)} jobs to end")

    def watch_health(self, url: str) -> None:
        """Poll health in the background (every 0.25 s) and keep every answer."""
        self._watching = True

        def run():
            while self._watching:
                try:
                    code, _, raw = http_json("GET", url + "/api/jobs/health", timeout=3)
                    self.health_seen.append((code, json.loads(raw)))
                except OSError as exc:
                    self.health_seen.append((0, {"reason": repr(exc)}))
                time.sleep(0.25)

        threading.Thread(target=run, daemon=True).start()

    def outcome(self, fault: str, url: str, ids: list[str], **notes) -> Outcome:
        jobs = self.wait_ended(url, ids)
        return Outcome(fault=fault, accepted=len(ids), completed=sum(j["status"] == "completed" for j in jobs),
                       upstream_calls=len(self.upstream.requests), job_calls=[j["upstreamCalls"] for j in jobs],
                       attempts=[j["attempts"] for j in jobs], notes=notes)


def accepted_ids(answers: list[tuple[int, dict]]) -> list[str]:
    assert all(code == 202 for code, _ in answers), answers
    return [body["jobId"] for _, body in answers]


# ---- the drills ---------------------------------------------------------------------------------
def frozen_redis(rig: Rig, *, freeze_s: float = 8.0) -> Outcome:
    """Redis frozen (SIGSTOP, connections open) longer than the lease, 4 jobs running on 2 workers, 2 waiting."""
    url = rig.api()
    for _ in range(2):
        rig.worker(WORKER_CONCURRENCY=2)
    ids = accepted_ids(rig.submit(url, 6))
    rig.wait_running(4)
    rig.freeze_redis()
    time.sleep(freeze_s)  # the outage itself: nothing is polled
    rig.thaw_redis()
    return rig.outcome("Redis frozen past the lease", url, ids, freeze_s=freeze_s, lease_s=rig.lease_ms / 1000)


def deploy(rig: Rig) -> Outcome:
    """SIGTERM to a worker mid-call and a replacement started, as Render deploys.

    Three jobs on a worker of concurrency 3 whose account allows 2 calls at once: two calls
    run, the third job waits for a slot (its call has not begun) when SIGTERM comes.
    """
    url = rig.api()
    old = rig.worker(WORKER_CONCURRENCY=3, S2S_OPENAI_CONCURRENCY=2)
    ids = accepted_ids(rig.submit(url, 3))
    rig.wait_running(2)
    wait_until(lambda: list(rig.statuses().values()).count("processing") == 3, what="3 jobs claimed")
    time.sleep(rig.call_s / 4)  # mid-call
    old.send_signal(signal.SIGTERM)
    handed_back = wait_until(lambda: [i for i, s in rig.statuses().items() if s == "queued"] or None,
                             what="the job without a call to be handed back")
    rig.worker(WORKER_CONCURRENCY=3, S2S_OPENAI_CONCURRENCY=2)
    exit_code = old.wait(rig.call_s * 3)
    return rig.outcome("SIGTERM mid-call, replacement worker", url, ids, old_worker_exit=exit_code,
                       handed_back=handed_back)


def killed_worker(rig: Rig) -> Outcome:
    """SIGKILL to a worker mid-call: the one fault where the picture is paid twice (its call is lost)."""
    url = rig.api(S2S_ADMIN_TOKEN=OPERATOR_TOKEN)
    doomed = rig.worker(WORKER_CONCURRENCY=1)
    ids = accepted_ids(rig.submit(url, 1))
    rig.wait_running(1)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    rig.worker(WORKER_CONCURRENCY=1)
    outcome = rig.outcome("SIGKILL mid-call", url, ids)
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    listed = json.loads(http_json("GET", url + "/api/jobs?state=completed", headers=auth)[2])["jobs"]
    outcome.notes["operator_view_calls"] = [j["upstreamCalls"] for j in listed]
    outcome.notes["metrics"] = http_json("GET", url + "/metrics", headers=auth)[2].decode()
    return outcome


def full_redis(rig: Rig) -> Outcome:
    """Redis at maxmemory (noeviction) while 2 calls run and a job waits; later an operator gives it room.

    maxmemory is set below what Redis holds, so every write that may grow memory is refused:
    the running jobs' heartbeats, progress and completion must go on, claims and submits stop.
    """
    url = rig.api()
    rig.watch_health(url)
    rig.worker(WORKER_CONCURRENCY=2)
    ids = accepted_ids(rig.submit(url, 3))
    rig.wait_running(2)
    rig.fill_redis()
    wait_until(lambda: any(h.get("store", {}).get("state") == "full" for _, h in rig.health_seen[-2:]),
               what="health to say the store is full")
    refused = rig.submit(url, 3)
    running = ids[:2] if rig.status(url, ids[2])["status"] == "queued" else ids[1:]
    waiting = next(i for i in ids if i not in running)
    for job_id in running:  # the running jobs end while the store is full
        wait_until(lambda job_id=job_id: rig.status(url, job_id)["status"] in ENDED, timeout=rig.call_s * 4,
                   what="a running job to end while the store is full")
    # finishing a job claims the next in the same script, unless the worker knows the store is full
    waiting_status = rig.status(url, waiting)["status"]
    metrics_code = http_json("GET", url + "/metrics")[0]
    full_health = [h for _, h in rig.health_seen if h.get("store", {}).get("state") == "full"]
    rig.redis.config_set("maxmemory", 0)  # the operator gives it room
    outcome = rig.outcome("Redis at maxmemory", url, ids, refused=refused, waiting_while_full=waiting_status,
                          metrics_while_full=metrics_code)
    rig._watching = False
    outcome.notes["health_while_full"] = full_health
    outcome.notes["health"] = list(rig.health_seen)
    return outcome


def black_hole_answer_times(rig: Rig) -> Outcome:
    """Redis frozen with the API's connections open: how long a submit, health and a /ws subscribe wait."""
    import asyncio

    from tests.test_ws import ORIGIN, Client

    url = rig.api()
    job_id = accepted_ids(rig.submit(url, 1))[0]
    times: dict[str, float] = {}

    async def subscribe() -> None:
        client = await Client.connect(url, origin=ORIGIN)
        rig.freeze_redis()
        started = time.monotonic()
        await client.send(type="subscribe_to_job", jobId=job_id)
        frame = await client.recv(timeout=30)
        times["ws_unavailable_s"] = time.monotonic() - started
        times["ws_code"] = frame.get("code")
        client.ws.close()

    asyncio.run(subscribe())
    started = time.monotonic()
    code, _, _ = http_json("GET", url + "/api/jobs/health", timeout=30)
    times["health_s"], times["health_status"] = time.monotonic() - started, code
    started = time.monotonic()
    code, body = rig.submit(url, 1, timeout=30)[0]
    times["submit_s"], times["submit_code"] = time.monotonic() - started, body.get("code")
    rig.thaw_redis()
    return Outcome(fault="Redis black-holed (SIGSTOP)", notes=times)
