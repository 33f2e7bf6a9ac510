"""Fault drills with real processes: a rolling restart, and a Redis outage, lose no job.

Rolling restart: two API processes and two workers serve a steady, bounded stream of
submits while WebSocket clients watch every job; each API, then each worker, is stopped
with SIGTERM and replaced, one at a time. Redis outage: our own redis-server (AOF,
``appendfsync always``) is killed under load, kept down 10 s and started again on the
same port and data; nothing else is restarted.

The clients behave as the contract asks a client to: a submit carries an Idempotency-Key
and is sent again (to the other API) when its connection is refused or cut; a socket
closed by the server reconnects, to another API if it can, and resubscribes with lastSeq.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis as redis_lib

from s2s.embedded import EmbeddedRedis, free_port
from s2s.keys import Keys
from tests.api_client import health
from tests.helpers import child_env, data_url, http_json, photo_bytes, wait_until
from tests.test_render_blueprint import SERVICES
from tests.test_ws import ORIGIN, Client

# the longest runs of real processes: tox runs them once, in its drills env (tox.ini), not in every Python
pytestmark = pytest.mark.drill

KEYS = Keys("s2s")
PHOTO = data_url(photo_bytes())
ENDED = ("job_completed", "job_failed", "job_cancelled")
API_KILLED_AFTER_S = SERVICES["snap2story-backend-api"]["maxShutdownDelaySeconds"]  # then Render SIGKILLs it
PROBE_TIMEOUT_S = 5  # Render fails a health probe with no answer by then (render.com/docs/health-checks)


# ---- processes ------------------------------------------------------------------------------------
def start_api(stack, port: int, **env):
    """``s2s serve`` on a given port (a restarted API comes back where its clients knew it)."""
    proc = stack.processes.start(["serve"], child_env(stack.settings, PORT=port, **env),
                                 name=f"api-{port}-{len(stack.processes.children)}")

    def answering():
        assert proc.poll() is None, f"API exited: {proc.log_path.read_text()}"
        try:
            return http_json("GET", f"http://127.0.0.1:{port}/api/jobs/health", timeout=1)[0] == 200
        except OSError:
            return False

    wait_until(answering, timeout=30, what=f"the API on {port} to answer")
    return proc


def start_worker(stack, r: redis_lib.Redis, **env):
    """``s2s worker``, once it has registered in the Redis ``r``."""
    proc = stack.processes.start(["worker"], child_env(stack.settings, **env))

    def registered():
        assert proc.poll() is None, f"worker exited: {proc.log_path.read_text()}"
        return any(f":{proc.pid}:".encode() in w for w in r.zrange(KEYS.workers, 0, -1))

    wait_until(registered, timeout=30, what="the worker to register")
    return proc


def submit_once(url: str, key: str, timeout: float = 10) -> tuple[int, dict]:
    body = json.dumps({"heroName": f"Kid {key}", "originalImageBase64": PHOTO}).encode()
    code, _, raw = http_json("POST", url + "/api/jobs/generate-image", body,
                             {"Content-Type": "application/json", "Idempotency-Key": key}, timeout=timeout)
    return code, json.loads(raw)


def job_states(r: redis_lib.Redis, ids) -> dict[str, str]:
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(KEYS.job(job_id), "status")
    return {job_id: (s or b"").decode() for job_id, s in zip(ids, pipe.execute(), strict=True)}


def assert_each_completed_exactly_once(r: redis_lib.Redis, ids) -> None:
    for job_id in ids:
        events = [json.loads(e) for e in r.lrange(KEYS.job_events(job_id), 0, -1)]
        assert [e["type"] for e in events].count("job_completed") == 1, (job_id, events)
        assert r.hget(KEYS.job(job_id), "status") == b"completed"
        picture = r.hget(KEYS.job(job_id), "picture")
        assert picture and r.exists(KEYS.blob(picture.decode())), f"job {job_id} has no image"
    assert r.zcard(KEYS.completed) == len(ids), "as many completions as accepted jobs: none twice, none extra"
    assert int(r.hget(KEYS.totals, "completed")) == len(ids)
    assert (r.llen(KEYS.waiting), r.zcard(KEYS.active), r.zcard(KEYS.delayed), r.zcard(KEYS.failed)) == (0, 0, 0, 0)


# ---- WebSocket watchers -------------------------------------------------------------------------
class Watcher:
    """A browser tab: follows each job it is given to its end on whichever API answers."""

    def __init__(self, urls: list[str], first: int):
        self.urls = urls
        self.at = first
        self.pending: set[str] = set()  # given, not ended yet
        self.last_seq: dict[str, int] = {}
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.ended: dict[str, str] = {}  # job id -> its terminal frame's type
        self.close_codes: list[int | None] = []
        self.errors: list[dict] = []
        self.connects: list[str] = []
        self.client: Client | None = None
        self.running = True

    def add(self, job_id: str) -> None:
        self.pending.add(job_id)
        if self.client is not None:
            asyncio.ensure_future(self._send(self.client, type="subscribe_to_job", jobId=job_id))

    async def _send(self, client: Client, **frame) -> None:
        try:
            await client.send(**frame)
        except Exception:  # the socket is closing: everything pending is resubscribed on reconnect
            pass

    async def run(self) -> None:
        while self.running:
            url = self.urls[self.at % len(self.urls)]
            try:
                client = await Client.connect(url, origin=ORIGIN)
            except Exception:  # refused while that API restarts: try the next one
                self.at += 1
                await asyncio.sleep(0.1)
                continue
            self.connects.append(url)
            self.client = client
            for job_id in sorted(self.pending):
                since = {"lastSeq": self.last_seq[job_id]} if job_id in self.last_seq else {}
                await self._send(client, type="subscribe_to_job", jobId=job_id, **since)
            while (raw := await client.ws.read_message()) is not None:
                self._on_frame(client, json.loads(raw))
            self.client = None
            if self.running:
                self.close_codes.append(client.ws.close_code)
                client.ws.close()
                self.at += 1  # another API, if there is one

    def _on_frame(self, client: Client, frame: dict) -> None:
        kind = frame["type"]
        if kind.startswith("job_") and "seq" in frame:  # a queued job's place in line is no event: no seq
            job_id = frame["jobId"]
            self.seqs[job_id].append(frame["seq"])
            self.last_seq[job_id] = frame["seq"]
            if kind in ENDED and job_id not in self.ended:
                self.ended[job_id] = kind
                self.pending.discard(job_id)
                asyncio.ensure_future(self._send(client, type="unsubscribe_from_job", jobId=job_id))
        elif kind == "error":
            self.errors.append(frame)
            if frame.get("code") == "unavailable":  # the server asks to try again shortly
                asyncio.get_running_loop().call_later(0.5, self.add, frame["jobId"])

    async def close(self) -> None:
        self.running = False
        client = self.client
        if client is not None:
            client.ws.close()
            try:
                while await asyncio.wait_for(client.ws.read_message(), 5) is not None:
                    pass
            except asyncio.TimeoutError:
                pass


class Watchers:
    """WebSocket watchers on an event loop of their own, fed job ids from the test's thread."""

    def __init__(self, urls: list[str], count: int):
        self.watchers = [Watcher(urls, i) for i in range(count)]
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="drill-watchers", daemon=True)
        self.thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _main(self) -> None:
        self._done = asyncio.Event()
        tasks = [asyncio.ensure_future(w.run()) for w in self.watchers]
        self._started.set()
        await self._done.wait()
        await asyncio.gather(*(w.close() for w in self.watchers))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def watch(self, job_id: str) -> None:
        def add():
            for w in self.watchers:
                w.add(job_id)

        self.loop.call_soon_threadsafe(add)

    def _ask(self, fn):
        async def on_loop():
            return fn()

        return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(10)

    def all_ended(self, ids) -> bool:
        return self._ask(lambda: all(job_id in w.ended for w in self.watchers for job_id in ids))

    def saw_a_frame_of_each(self, ids) -> bool:
        return self._ask(lambda: all(job_id in w.last_seq for w in self.watchers for job_id in ids))

    def report(self) -> list[dict]:
        return self._ask(lambda: [{"ended": dict(w.ended), "seqs": {j: list(s) for j, s in w.seqs.items()},
                                   "close_codes": list(w.close_codes), "errors": list(w.errors),
                                   "connects": list(w.connects)} for w in self.watchers])

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._done.set)
            self.thread.join(20)


def assert_watchers_saw_every_job_complete(report: list[dict], ids) -> None:
    for seen in report:
        assert {j: seen["ended"].get(j) for j in ids} == {j: "job_completed" for j in ids}
        for job_id, seqs in seen["seqs"].items():  # across reconnects: nothing missed, nothing twice
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (job_id, seqs)
        assert not seen["errors"], seen["errors"]


# ---- the rolling restart ----------------------------------------------------------------------------
class Submitter(threading.Thread):
    """A steady stream of submits alternating between the APIs, each retried until it is accepted."""

    def __init__(self, urls: list[str], watchers: Watchers, max_jobs: int, interval: float):
        super().__init__(name="drill-submitter", daemon=True)
        self.urls = urls
        self.watchers = watchers
        self.max_jobs = max_jobs
        self.interval = interval
        self.halt = threading.Event()
        self.accepted: dict[str, tuple[str, float]] = {}  # idempotency key -> job id, when
        self.attempts: list[tuple[int, float, object]] = []  # target API, start, status or error name
        self.failure: str | None = None

    def run(self) -> None:
        for n in range(self.max_jobs):
            if self.halt.is_set():
                return
            key, target = f"drill-{n}", n % len(self.urls)
            deadline = time.monotonic() + 30
            while True:
                started = time.monotonic()
                try:
                    code, body = submit_once(self.urls[target], key)
                except OSError as exc:  # refused, or cut: the API is stopping; the key makes a resend safe
                    self.attempts.append((target, started, type(exc).__name__))
                    code, body = None, None
                else:
                    self.attempts.append((target, started, code))
                if code == 202:
                    self.accepted[key] = (body["jobId"], time.monotonic())
                    self.watchers.watch(body["jobId"])
                    break
                if code is not None and code < 500:
                    self.failure = f"submit {key} answered {code}: {body}"
                    return
                if time.monotonic() > deadline:
                    self.failure = f"submit {key} was not accepted within 30 s"
                    return
                target = (target + 1) % len(self.urls)
                time.sleep(0.05)
            self.halt.wait(self.interval)

    def count(self) -> int:
        return len(self.accepted)


class InFlightSubmit:
    """A submit whose body is still on its way: the server has its headers (it said 100 Continue)."""

    def __init__(self, port: int, key: str):
        body = json.dumps({"heroName": "Slow upload", "originalImageBase64": PHOTO}).encode()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall((f"POST /api/jobs/generate-image HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                           f"Idempotency-Key: {key}\r\nExpect: 100-continue\r\n\r\n").encode())
        got = b""
        while not got.endswith(b"\r\n\r\n"):
            chunk = self.sock.recv(1024)
            assert chunk, f"the API closed the connection: {got!r}"
            got += chunk
        assert got.startswith(b"HTTP/1.1 100"), got
        half = len(body) // 2
        self.sock.sendall(body[:half])
        self.rest = body[half:]

    def finish(self) -> tuple[int, dict]:
        self.sock.sendall(self.rest)
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        data = response.read()
        self.sock.close()
        return response.status, json.loads(data)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_a_rolling_restart_of_every_api_and_worker_loses_no_job_and_no_event(stack):
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    apis = [start_api(stack, port) for port in ports]
    worker_env = {"S2S_PROVIDER": "noop", "S2S_NOOP_DELAY_MS": 400}  # 4 slots at 2.5 jobs/s each: they overlap
    workers = [stack.worker(**worker_env) for _ in range(2)]
    watchers = Watchers(urls, count=4)  # two start on each API
    # ~8 a second, bounded; the bound is far past what the steps need (90 on a quiet machine), so on a slow
    # one the stream cannot run dry before the last step (each step waits for the stream to flow)
    submitter = Submitter(urls, watchers, max_jobs=400, interval=0.12)
    stopping: dict[int, list[tuple[float, float]]] = {0: [], 1: []}  # API -> (SIGTERM sent, replacement up)
    exits: list[tuple[str, int]] = []  # (what, exit code)
    in_flight: dict = {}
    accepted_during: list[int] = []
    try:
        submitter.start()

        def flowing(more: int) -> None:
            """Let ``more`` submits through before the next step, so every step happens mid-stream."""
            mark = submitter.count()
            wait_until(lambda: submitter.count() >= mark + more, timeout=30, what="the stream to flow")

        def restart_api(i: int, with_request_in_flight: bool = False) -> None:
            flowing(10)
            upload = InFlightSubmit(ports[i], "drill-in-flight") if with_request_in_flight else None
            mark = submitter.count()
            sent = time.monotonic()
            apis[i].send_signal(signal.SIGTERM)
            if upload is not None:
                wait_until(lambda: refused(ports[i]), timeout=10, what="the API to stop listening")
                in_flight["answer"] = upload.finish()  # the rest of the body arrives while the API drains
            code = apis[i].wait(API_KILLED_AFTER_S)  # the deadline the platform holds it to
            exits.append((f"api {i}", code))
            apis[i] = start_api(stack, ports[i])
            stopping[i].append((sent, time.monotonic()))
            accepted_during.append(submitter.count() - mark)

        def restart_worker(i: int) -> None:
            flowing(10)
            wid = stack.worker_id(workers[i])

            def holds_a_job():
                active = [j.decode() for j in stack.redis.zrange(KEYS.active, 0, -1)]
                return any(stack.job(j).get("worker") == wid for j in active)

            wait_until(holds_a_job, timeout=20, what="the worker to hold a job")  # so the drain has work to finish
            mark = submitter.count()
            workers[i].send_signal(signal.SIGTERM)
            code = workers[i].wait(stack.settings.shutdown_grace_ms / 1000 + 10)
            exits.append((f"worker {i}", code))
            workers[i] = stack.worker(**worker_env)
            accepted_during.append(submitter.count() - mark)

        restart_api(0, with_request_in_flight=True)
        restart_worker(0)
        restart_api(1)
        restart_worker(1)
        flowing(6)
        submitter.halt.set()
        submitter.join(40)
        assert submitter.failure is None, submitter.failure

        status, body = in_flight["answer"]
        assert status == 202, body  # the request in flight at SIGTERM was served, not cut
        watchers.watch(body["jobId"])
        ids = [job_id for job_id, _ in submitter.accepted.values()] + [body["jobId"]]
        assert len(ids) == len(set(ids)) >= 40
        wait_until(lambda: set(job_states(stack.redis, ids).values()) == {"completed"}, timeout=60,
                   what="every accepted job to complete")
        wait_until(lambda: watchers.all_ended(ids), timeout=30, what="every watcher to see every job end")
        report = watchers.report()
    finally:
        submitter.halt.set()
        watchers.stop()

    assert_each_completed_exactly_once(stack.redis, ids)
    assert_watchers_saw_every_job_complete(report, ids)
    # every close the watchers saw said "going away": 2 when API 0 stopped, then all 4 (moved to API 1) again
    codes = [c for seen in report for c in seen["close_codes"]]
    assert len(codes) >= 6 and set(codes) == {1001}, codes
    # processes stopped cleanly, each before the platform would have killed it; the stream went on throughout
    assert exits == [("api 0", 0), ("worker 0", 0), ("api 1", 0), ("worker 1", 0)]
    assert all(n > 0 for n in accepted_during), accepted_during
    # a submit failed only at an API that was stopping, and never with a 5xx elsewhere
    for target, started, outcome in submitter.attempts:
        if outcome != 202:
            assert any(sent - 0.5 <= started <= up for sent, up in stopping[target]), (target, started, outcome)


# ---- the Redis outage -------------------------------------------------------------------------------
def test_a_10_s_redis_outage_loses_no_job_and_everything_reconnects_by_itself(stack, tmp_path):
    # appendfsync always: everything Redis acknowledged is on disk, so a job lost here is s2s's fault
    own = EmbeddedRedis(tmp_path / "redis", port=free_port(), persistent=True, appendfsync="always")
    own.start()
    r = redis_lib.Redis(port=own.port)
    watchers = None
    try:
        url = stack.api(REDIS_URL=own.url)
        api = stack.processes.children[-1]
        # 2 x 2 slots; a lease that outlasts the outage (as the default 15 s outlasts most of 10 s): no reaping
        env = {"REDIS_URL": own.url, "S2S_PROVIDER": "noop", "S2S_NOOP_DELAY_MS": 2000, "S2S_LEASE_MS": 30000}
        workers = [start_worker(stack, r, **env) for _ in range(2)]
        watchers = Watchers([url], count=1)
        before = []
        for n in range(10):
            code, body = submit_once(url, f"before-{n}")
            assert code == 202, body
            before.append(body["jobId"])
            watchers.watch(body["jobId"])

        def running_and_waiting():
            return r.zcard(KEYS.active) == 4 and r.llen(KEYS.waiting) == 6

        wait_until(running_and_waiting, timeout=20, what="4 jobs running and 6 waiting")
        wait_until(lambda: watchers.saw_a_frame_of_each(before), timeout=20, what="the watcher to be subscribed")

        own.kill()  # SIGKILL: a crash, no shutdown, no last save
        down_at = time.monotonic()
        probes = []
        # "at once": each request is given PROBE_TIMEOUT_S, a submit as a health probe; one held until Redis
        # came back (10 s) would time out and fail the drill
        while time.monotonic() - down_at < 10 or len(probes) < 8:
            code, body = health(url, timeout=PROBE_TIMEOUT_S)
            probes.append(("health", code, body.get("status")))
            code, body = submit_once(url, f"during-{len(probes)}", timeout=PROBE_TIMEOUT_S)
            probes.append(("submit", code, body.get("code")))
            time.sleep(0.5)  # pacing the probes through the outage
        own.start()  # the same port and data directory: the AOF brings every job back

        for what, code, said in probes:
            assert code == 503, probes
            assert said == ("unhealthy" if what == "health" else "redis_unavailable"), probes

        # nothing restarted: the API and the workers find Redis again by themselves
        def both_workers_back():
            code, body = health(url)
            return code == 200 and body["workers"]["alive"] == 2

        wait_until(both_workers_back, timeout=30, what="health 200 with both workers alive again")
        wait_until(lambda: set(job_states(r, before).values()) == {"completed"}, timeout=60,
                   what="every job accepted before the outage to complete")
        # the pictures made while Redis was down were kept, not made again: no attempt was used up
        assert [r.hget(KEYS.job(j), "attempts") for j in before] == [b"1"] * len(before)
        wait_until(lambda: watchers.all_ended(before), timeout=30, what="the watcher to see every job end")
        code, body = submit_once(url, "after")
        assert code == 202, body
        watchers.watch(body["jobId"])
        after = [body["jobId"]]
        wait_until(lambda: watchers.all_ended(before + after), timeout=30, what="a new job to complete")
        report = watchers.report()
        assert api.poll() is None and all(w.poll() is None for w in workers), "no process was restarted"
        assert_each_completed_exactly_once(r, before + after)
        assert_watchers_saw_every_job_complete(report, before + after)
        assert set(report[0]["close_codes"]) <= {1013}, report[0]["close_codes"]  # 1013: catch-up failed, resubscribe
    finally:
        if watchers is not None:
            watchers.stop()
        r.close()
        own.stop()


def test_a_quick_redis_restart_fails_no_request_on_a_connection_it_left_behind(stack, tmp_path):
    own = EmbeddedRedis(tmp_path / "redis", port=free_port(), persistent=True, appendfsync="always")
    own.start()
    r = redis_lib.Redis(port=own.port)
    try:
        url = stack.api(REDIS_URL=own.url)
        code, body = submit_once(url, "one")
        assert code == 202, body

        def burst() -> list[int]:
            with ThreadPoolExecutor(16) as pool:
                return list(pool.map(lambda _: http_json("GET", url + body["statusUrl"])[0], range(32)))

        # the API's pool holds several connections (besides ours and its events listener)
        wait_until(lambda: burst() == [200] * 32 and len(r.client_list()) >= 6, timeout=20,
                   what="the API to hold several Redis connections")
        r.close()
        own.stop()  # a restart with nothing asked in between: every pooled connection is now dead
        own.start()
        assert burst() == [200] * 32  # each dead connection is replaced before use, not failed with a 503
    finally:
        r.close()
        own.stop()
