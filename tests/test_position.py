"""A queued job's place in line and ETA: GET /status, the /ws catch-up and the coalesced position frames."""

from __future__ import annotations

import asyncio
import json
import time

from tornado.ioloop import IOLoop

from s2s.actors import LiveActors
from s2s.catalog import Catalog
from s2s.embedded import free_port
from s2s.keys import Keys
from s2s.line import Capacity, estimate
from s2s.queue import Queue
from s2s.web.app import make_app
from s2s.web.handlers import AppContext
from s2s.web.ws import WsContext
from tests.api_client import job as status_of
from tests.api_client import submit, wait_ended
from tests.helpers import http_json, wait_until
from tests.test_ws import ORIGIN, Client, run

TOKEN = "position-operator-token"


def places(frames: list[dict]) -> list[tuple]:
    """The places told by frames that are no event (no seq)."""
    return [(f["queuePosition"], f["etaSeconds"]) for f in frames if "seq" not in f]


# ---- the estimate ---------------------------------------------------------------------------------
def test_the_estimate_counts_rounds_of_the_free_slots_and_says_nothing_it_cannot_know():
    two = Capacity(slots=2, run_s=10.0)
    # one slot idle, one 4 s into a 10 s job: free at 0 and at 6, then every 10 s
    assert [estimate(p, None, two, [4.0], paused=False) for p in (1, 2, 3, 4, 5)] == [10, 16, 20, 26, 30]
    assert estimate(3, None, Capacity(slots=2, run_s=10.0), [], paused=False) == 20  # ceil(3 / 2) rounds
    assert estimate(None, 30.0, two, [4.0], paused=False) == 40  # a retry due in 30 s goes to the front then
    assert estimate(None, 2.0, two, [4.0, 1.0], paused=False) == 16  # due before a slot frees: it waits for one
    assert estimate(1, None, two, [25.0], paused=False) == 10  # a job past the mean is taken as ending now
    assert estimate(1, None, two, [], paused=True) is None
    assert estimate(1, None, Capacity(slots=0, run_s=10.0), [], paused=False) is None  # no live worker
    assert estimate(1, None, Capacity(slots=2, run_s=None), [], paused=False) is None  # no run time yet
    assert estimate(None, None, two, [], paused=False) is None  # neither in line nor delayed


# ---- GET /status with real processes --------------------------------------------------------------
def test_the_fifth_waiting_job_is_fifth_in_line_and_counts_down_as_jobs_start(stack):
    url = stack.api()
    ids = [submit(url) for _ in range(7)]
    answers = [status_of(url, job_id) for job_id in ids]
    assert [a["queuePosition"] for a in answers] == [1, 2, 3, 4, 5, 6, 7]
    assert {a["etaSeconds"] for a in answers} == {None}, "no live worker: no estimate"
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=1500, WORKER_CONCURRENCY=1)

    fifth, seen, etas = ids[4], [], []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = status_of(url, fifth)
        if now["status"] != "queued":
            break
        if not seen or seen[-1] != now["queuePosition"]:
            seen.append(now["queuePosition"])
        if now["etaSeconds"] is not None:
            etas.append((now["queuePosition"], now["etaSeconds"]))
        time.sleep(0.05)
    assert now["status"] in ("processing", "completed"), now
    assert "queuePosition" not in now and "etaSeconds" not in now, "only while queued"
    assert seen == sorted(set(seen), reverse=True) and seen[-1] == 1 and len(seen) >= 3, seen
    assert etas, "once run times were recorded, a live worker's queue has an estimate"
    assert all(isinstance(eta, int) and eta >= 1 for _, eta in etas), etas
    for job_id in ids:
        assert wait_ended(url, job_id, timeout=60)["status"] == "completed"


def test_a_paused_queue_has_no_estimate_and_a_resumed_one_has(stack):
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN)
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=3000, WORKER_CONCURRENCY=1)
    assert wait_ended(url, submit(url))["status"] == "completed"  # a run time is recorded
    operator = {"Authorization": f"Bearer {TOKEN}"}
    assert http_json("POST", url + "/api/queue/pause", b"", operator)[0] == 200
    first, second = submit(url), submit(url)
    paused = status_of(url, second)
    assert (paused["queuePosition"], paused["etaSeconds"]) == (2, None)
    listed = json.loads(http_json("GET", url + "/api/jobs?state=waiting", headers=operator)[2])["jobs"]
    assert [(j["jobId"], j["queuePosition"]) for j in listed] == [(first, 1), (second, 2)]  # the console's rows
    assert http_json("POST", url + "/api/queue/resume", b"", operator)[0] == 200
    resumed = wait_until(lambda: (lambda s: s if s["status"] != "queued" or s["etaSeconds"] else None)(
        status_of(url, second)), timeout=30, what="the estimate once resumed")
    assert resumed["status"] == "queued" and resumed["etaSeconds"] >= 1, resumed
    for job_id in (first, second):
        assert wait_ended(url, job_id)["status"] == "completed"


# ---- /ws with real processes ------------------------------------------------------------------------
def test_a_subscriber_of_a_queued_job_hears_its_place_move_without_new_seqs(stack):
    url = stack.api()
    ids = [submit(url) for _ in range(6)]
    watched = ids[4]

    async def scenario():
        client = await Client.connect(url, origin=ORIGIN)
        await client.send(type="subscribe_to_job", jobId=watched)
        first = await client.recv()
        assert (first["type"], first["status"], first["queuePosition"], first["etaSeconds"]) == (
            "job_progress", "queued", 5, None), first
        await asyncio.get_running_loop().run_in_executor(None, lambda: stack.worker(
            S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=2000, WORKER_CONCURRENCY=1))
        got = await client.until(lambda f: f.get("status") != "queued", timeout=60)
        await client.close()
        return first, got

    first, got = run(scenario(), 90)
    told = places(got)
    positions = [p for p, _ in told]
    assert positions and positions == sorted(positions, reverse=True) and positions[-1] == 1, told
    moves = zip([(5, None), *told], told, strict=False)
    assert all(a != b for a, b in moves), f"a frame only when the place moved: {told}"
    assert all(f["type"] == "job_progress" and f["status"] == "queued" for f in got if "seq" not in f)
    started = got[-1]
    assert started["status"] == "processing" and started["seq"] == first["seq"] + 1, started
    kept = stack.events(watched)
    assert [e["seq"] for e in kept] == list(range(1, len(kept) + 1)), kept
    assert not any("queuePosition" in e for e in kept), "places are not events: never in the job's log"


# ---- coalescing, in process (real Redis, real claims) --------------------------------------------------
def test_claims_through_a_deep_queue_cost_each_subscriber_at_most_one_frame_a_tick(settings, redis_client):
    keys = Keys(settings.key_prefix)
    depth, watched_n = 600, 40
    now = int(time.time() * 1000)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(depth):  # as enqueue.lua leaves them, oldest (next) at the list's tail
        pipe.hset(keys.job(f"deep{i}"), mapping={"id": f"deep{i}", "status": "queued", "progress": 0,
                                                 "message": "Waiting in the queue", "createdAt": now, "seq": 1,
                                                 "attempts": 0, "fence": 0, "maxAttempts": 3})
        pipe.lpush(keys.waiting, f"deep{i}")
    pipe.execute()
    watched = [f"deep{i}" for i in range(depth - watched_n, depth)]  # the last 40 in line

    async def scenario():
        queue = Queue.connect(settings)
        actors = LiveActors.start(settings, IOLoop.current())
        live = WsContext(settings=settings, queue=queue, actors=actors)
        app = make_app(AppContext(settings=settings, queue=queue, catalog=Catalog.load(settings.config_dir)), live)
        port = free_port()
        server = app.listen(port, "127.0.0.1")
        try:
            clients = [await Client.connect(f"http://127.0.0.1:{port}") for _ in watched]
            firsts = []
            for client, job_id in zip(clients, watched, strict=True):
                await client.send(type="subscribe_to_job", jobId=job_id)
                firsts.append(await client.recv())
            assert [f["queuePosition"] for f in firsts] == list(range(depth - watched_n + 1, depth + 1))
            ticks_before = live.positions.ticks
            claimed = 0
            while claimed < depth - watched_n:  # every job ahead of the watched ones starts
                claimed += len((await queue.claim("storm-worker", 10)).claims)
                await asyncio.sleep(0.005)
            await asyncio.sleep(2.5)  # two more ticks tell the last places (then the frames are counted)
            ticks = live.positions.ticks - ticks_before
            heard = []
            for client in clients:
                frames = []
                while True:
                    try:
                        frames.append(await client.recv(timeout=0.2))
                    except asyncio.TimeoutError:
                        break
                heard.append(frames)
            for client in clients:
                await client.close()
            return firsts, heard, ticks, live.positions.frames_sent
        finally:
            server.stop()
            await asyncio.get_running_loop().run_in_executor(None, actors.stop)
            await queue.close()

    _, heard, ticks, sent = run(scenario(), 120)
    for i, frames in enumerate(heard):
        told = places(frames)
        assert len(told) == len(frames), "only place frames: no event of another job"
        assert 1 <= len(told) <= ticks + 1, (len(told), ticks)  # +1: the tick running as the counting began
        assert [p for p, _ in told] == sorted({p for p, _ in told}, reverse=True), told
        assert told[-1][0] == i + 1, f"the {i + 1}th in line is told so: {told}"
    assert sent == sum(len(f) for f in heard)  # one claim each would have been 560 frames a socket
