"""Upload memory as an operator meets it: many worst-case uploads at once (a big single-colour PNG: a
small body that decodes to tens of MB). The API decodes no pixel (s2s.photo_intake), so it takes them all
holding little more than their bodies; the worker decodes them (s2s.photo_prep) within its byte budget,
a few at a time, and stays under a bound that decoding them all at once passes twice over. Real
`s2s serve` and `s2s worker`, real Redis; memory read with psutil while the load runs."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import aiohttp
import psutil
from PIL import Image

from s2s import photo_prep
from s2s.keys import Keys
from tests.api_client import submit, wait_ended
from tests.helpers import wait_until

KEYS = Keys("s2s")
PARALLEL = 12
#: 4000x4000 RGB is 64 MB decoded (Pillow keeps RGB in 4 bytes a pixel), ~130 MB while being shrunk: 12
#: decoded at once need well over 1 GB. The API decodes none: it and its decode processes stay far below.
BOUND_MB = 300


def flat_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 140, 220)).save(out, format="PNG")
    return out.getvalue()


BODY = json.dumps({"heroName": "Mia", "originalImageBase64": "data:image/png;base64,"
                   + base64.b64encode(flat_png((4000, 4000))).decode()}).encode()
#: 6000x6000 RGBA is 137 MB decoded, and shrunk strip by strip a worker holds little else while preparing
#: it (s2s.photo_prep.decode_cost: ~150 MB). Each costs more than a 64 MB decode budget, so a worker running
#: four such jobs decodes one at a time: its idle ~70 MB plus one, under 300 MB; four at once would be 600+.
BIG_RGBA = (6000, 6000)
BIG_BOUND_MB = 300


def footprint(pid: int) -> int:
    """PSS of the API process and its children (the decode processes): shared pages counted once."""
    proc = psutil.Process(pid)
    total = proc.memory_full_info().pss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total


def transparent_png(size: tuple[int, int]) -> bytes:
    """RGBA, a colour under a transparent half: the mode that needs the most converting (onto white)."""
    img = Image.new("RGBA", size, (40, 140, 220, 255))
    img.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def body_of(png: bytes) -> bytes:
    return json.dumps({"heroName": "Mia", "originalImageBase64": "data:image/png;base64,"
                       + base64.b64encode(png).decode()}).encode()


async def load(url: str, pid: int, body: bytes = BODY, parallel: int = PARALLEL
               ) -> tuple[list[tuple[int, dict, dict]], int, list[int]]:
    """PARALLEL submits at once; meanwhile the peak footprint, and health answers that came back while
    submits were still unanswered."""
    peak = 0
    health_during: list[int] = []
    pending = parallel

    async def submit(session) -> tuple[int, dict, dict]:
        nonlocal pending
        try:
            async with session.post(url + "/api/jobs/generate-image", data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                return resp.status, dict(resp.headers), await resp.json()
        finally:
            pending -= 1

    async def watch(session) -> None:
        nonlocal peak
        while pending:
            peak = max(peak, footprint(pid))
            async with session.get(url + "/api/jobs/health") as resp:
                if pending:
                    health_during.append(resp.status)
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        watcher = asyncio.create_task(watch(session))
        answers = await asyncio.gather(*[submit(session) for _ in range(parallel)])
        await watcher
    return answers, peak, health_during


def api_pid(stack) -> int:
    return stack.processes.children[-1].pid


def noisy_png_body(side: int) -> bytes:
    """A PNG that does not compress: its body is about 3 bytes a pixel."""
    return body_of(_png(Image.effect_noise((side, side), 80).convert("RGB")))


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def test_parallel_worst_case_uploads_are_all_taken_within_a_memory_bound(stack, redis_client):
    url = stack.api(S2S_MAX_DECODES=1, S2S_UPLOAD_BODY_MB=8, S2S_UPLOAD_WAIT_MS=120000)

    answers, peak, health = asyncio.run(load(url, api_pid(stack), body_of(transparent_png(BIG_RGBA))))

    assert [(code, body.get("status")) for code, _, body in answers] == [(202, "queued")] * PARALLEL, answers
    assert redis_client.llen(KEYS.waiting) == PARALLEL
    assert peak < BOUND_MB * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert set(health) <= {200}, health  # whatever health answered meanwhile answered fine


def test_a_submit_that_cannot_get_room_in_time_is_a_clean_503_and_queues_nothing(stack, redis_client):
    """Each body reserves twice its size from a 1 MB body budget: one is read at a time, and with no
    waiting allowed the submits that arrive meanwhile are told to come back."""
    url = stack.api(S2S_MAX_DECODES=1, S2S_UPLOAD_BODY_MB=1, S2S_UPLOAD_WAIT_MS=0)

    answers, _, _ = asyncio.run(load(url, api_pid(stack), noisy_png_body(330)))

    busy = [(headers, body) for code, headers, body in answers if code == 503]
    taken = [body for code, _, body in answers if code == 202]
    assert len(busy) + len(taken) == PARALLEL, answers
    assert busy and taken, answers  # the first has room at once; the others would have had to wait
    for headers, body in busy:
        assert body["code"] == "server_busy", body
        assert int(headers["Retry-After"]) >= 1
    assert redis_client.llen(KEYS.waiting) == len(taken)


def test_a_worker_prepares_huge_photos_one_at_a_time_holding_one_decoded_picture(stack):
    """Four 36 MP transparent PNGs for one worker with four slots: each costs more than its whole decode
    budget, so it decodes alone, and the worker grows by about one picture's working set (decode_cost), not
    four."""
    photo = transparent_png(BIG_RGBA)
    url = stack.api()
    worker = stack.worker(S2S_PROVIDER="local", WORKER_CONCURRENCY=4,
                          S2S_DECODE_MEMORY_MB=64)
    idle = footprint(worker.pid)
    ids = [submit(url, photo, "image/png") for _ in range(4)]
    peak = 0

    def ended() -> bool:
        nonlocal peak
        peak = max(peak, footprint(worker.pid))
        return all(stack.job(i)["status"] in ("completed", "failed") for i in ids)

    wait_until(ended, timeout=180, interval=0.01, what="the four big jobs to end")  # often: no peak missed
    assert [wait_ended(url, i)["status"] for i in ids] == ["completed"] * 4
    cost = photo_prep.decode_cost(photo, 40_000_000)
    print(f"worker idle {idle / 2**20:.0f} MB peak {peak / 2**20:.0f} MB, one decode {cost / 2**20:.0f} MB")
    assert peak - idle < 1.5 * cost, f"idle {idle / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB"
