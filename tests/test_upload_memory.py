"""Upload memory as an operator meets it: many worst-case uploads at once (a big single-colour PNG: a
small body that decodes to tens of MB) are all taken, while the API process with its decode processes
stays under a memory bound that unbounded decoding passes several times over, and health answers
meanwhile. Real `s2s serve`, real Redis; memory read with psutil while the load runs."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import aiohttp
import psutil
from PIL import Image

from s2s.keys import Keys

KEYS = Keys("s2s")
PARALLEL = 12
#: 4000x4000 RGB is 64 MB decoded (Pillow keeps RGB in 4 bytes a pixel), ~130 MB while being shrunk:
#: 12 decoded at once need well over 1 GB; one at a time, the API and its decode processes stay far below
BOUND_MB = 400


def flat_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 140, 220)).save(out, format="PNG")
    return out.getvalue()


BODY = json.dumps({"heroName": "Mia", "originalImageBase64": "data:image/png;base64,"
                   + base64.b64encode(flat_png((4000, 4000))).decode()}).encode()


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


async def load(url: str, pid: int) -> tuple[list[tuple[int, dict, dict]], int, list[int]]:
    """PARALLEL submits at once; meanwhile the peak footprint, and health answers that came back while
    submits were still unanswered."""
    peak = 0
    health_during: list[int] = []
    pending = PARALLEL

    async def submit(session) -> tuple[int, dict, dict]:
        nonlocal pending
        try:
            async with session.post(url + "/api/jobs/generate-image", data=BODY,
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
        answers = await asyncio.gather(*[submit(session) for _ in range(PARALLEL)])
        await watcher
    return answers, peak, health_during


def api_pid(stack) -> int:
    return stack.processes.children[-1].pid


def test_parallel_worst_case_uploads_are_all_taken_within_a_memory_bound(stack, redis_client):
    url = stack.api(S2S_MAX_DECODES=1, S2S_DECODE_MEMORY_MB=64, S2S_UPLOAD_BODY_MB=8, S2S_UPLOAD_WAIT_MS=120000)

    answers, peak, health = asyncio.run(load(url, api_pid(stack)))

    assert [(code, body.get("status")) for code, _, body in answers] == [(202, "queued")] * PARALLEL, answers
    assert redis_client.llen(KEYS.waiting) == PARALLEL
    assert peak < BOUND_MB * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert len(health) >= 5 and set(health) == {200}, health  # the IOLoop answered while uploads were decoding


def test_a_submit_that_cannot_get_room_in_time_is_a_clean_503_and_queues_nothing(stack, redis_client):
    url = stack.api(S2S_MAX_DECODES=1, S2S_DECODE_MEMORY_MB=64, S2S_UPLOAD_BODY_MB=8, S2S_UPLOAD_WAIT_MS=0)

    answers, _, _ = asyncio.run(load(url, api_pid(stack)))

    busy = [(headers, body) for code, headers, body in answers if code == 503]
    taken = [body for code, _, body in answers if code == 202]
    assert len(busy) + len(taken) == PARALLEL, answers
    assert busy and taken, answers  # the first has room at once; the others would have had to wait
    for headers, body in busy:
        assert body["code"] == "server_busy", body
        assert int(headers["Retry-After"]) >= 1
    assert redis_client.llen(KEYS.waiting) == len(taken)
