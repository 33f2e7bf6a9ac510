"""Subscribe storms against one real API process: many sockets subscribing to one job at once, or all
reconnecting at once after the API restarts. Every socket gets every event of its job exactly once, and
none is told ``unavailable``; the sockets of one job share the Redis reads of its event log.

Clients are aiohttp sockets in this process (as many as CI holds); events are emitted the way the Lua
scripts do (tests.test_ws.emit). Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter

import aiohttp
import pytest

from tests.test_ws import emit, seed_job

STORM = int(os.environ.get("S2S_TEST_STORM_SOCKETS", "1500"))
JOB_FRAMES = {"job_progress", "job_completed", "job_failed", "job_cancelled"}


class Tab:
    """One browser tab following one job over /ws: the seqs it was sent and every error frame."""

    def __init__(self, session: aiohttp.ClientSession, url: str, job_id: str):
        self.session = session
        self.url = url.replace("http://", "ws://") + "/ws"
        self.job_id = job_id
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.seqs: list[int] = []
        self.errors: list[dict] = []

    async def open(self, until: float) -> None:
        """Connect (trying again while nothing listens on the port: an API restarting), then read the hello."""
        while True:
            try:
                self.ws = await self.session.ws_connect(self.url, autoping=True)
                break
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > until:
                    raise
                await asyncio.sleep(0.05)
        hello = json.loads(await self.ws.receive_str(timeout=max(1.0, until - time.monotonic())))
        assert hello["type"] == "connection_confirmed", hello

    async def subscribe(self) -> None:
        """With the last seq seen: every event after it comes first (0 before the first event)."""
        await self.ws.send_str(json.dumps({"type": "subscribe_to_job", "jobId": self.job_id,
                                           "lastSeq": self.seqs[-1] if self.seqs else 0}))

    async def read(self, until: float, stop_after: int | None = None) -> str:
        """Frames until the job ends ('ended'), seq ``stop_after`` is reached, an error frame ('error': what a
        browser would resubscribe on), or the server closes ('closed')."""
        while True:
            msg = await self.ws.receive(timeout=max(0.1, until - time.monotonic()))
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return "closed"
            frame = json.loads(msg.data)
            if frame["type"] == "error":
                self.errors.append(frame)
                return "error"
            if frame["type"] in JOB_FRAMES:
                self.seqs.append(frame["seq"])
                if frame["type"] != "job_progress":
                    return "ended"
                if stop_after is not None and frame["seq"] >= stop_after:
                    return "reached"


async def open_all(tabs: list[Tab], until: float, batch: int = 100) -> None:
    for start in range(0, len(tabs), batch):
        await asyncio.gather(*[tab.open(until) for tab in tabs[start:start + batch]])


def lrange_calls(redis_client) -> int:
    return int(redis_client.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0))


def stream(redis_client, job_id: str, seqs: range, last: int | None = None, pause_s: float = 0.01) -> None:
    """Emit a job's events at about 100/s, as a worker does; ``last`` ends the job."""
    for seq in seqs:
        emit(redis_client, job_id, seq, last=seq == last)
        time.sleep(pause_s)



def api_said(stack, text: str, most: int = 3) -> list[str]:
    """The first lines of the API's log with ``text`` (why it told a socket ``unavailable``)."""
    api = next(proc for proc in stack.processes.children if proc.log_path.name.startswith("api-"))
    return [line for line in api.log_path.read_text().splitlines() if text in line][:most]


def assert_every_event_once(tabs, total: int) -> None:
    """What each tab shows: no error, and every event of its job from the first, once, in order."""
    assert [tab.errors for tab in tabs if tab.errors] == [], "some sockets got an error frame"
    expected = list(range(1, total + 1))
    wrong = [tab.seqs for tab in tabs if tab.seqs != expected]
    assert not wrong, f"{len(wrong)} of {STORM} sockets missed or repeated events, e.g. {wrong[0]}"

def test_a_storm_of_subscribers_to_one_job_each_gets_every_event_once(stack, redis_client):
    url = stack.api()
    seed_job(redis_client, "storm", seq=0)
    before, total = 20, 60
    stream(redis_client, "storm", range(1, before + 1), pause_s=0)  # events exist before the storm

    async def scenario() -> list[Tab]:
        until = time.monotonic() + 120
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tabs = [Tab(session, url, "storm") for _ in range(STORM)]
            await open_all(tabs, until)
            redis_client.config_resetstat()
            await asyncio.gather(*[tab.subscribe() for tab in tabs])  # all at once, lastSeq 0
            live = threading.Thread(target=stream, args=(redis_client, "storm", range(before + 1, total + 1), total))
            live.start()  # events go on while the storm is caught up
            try:
                ends = await asyncio.gather(*[tab.read(until) for tab in tabs])
            finally:
                live.join(30)
            assert Counter(ends) == {"ended": STORM}, ([tab.errors[0] for tab in tabs if tab.errors][:3],
                                                       api_said(stack, "subscribe failed"))
            await asyncio.gather(*[tab.ws.close() for tab in tabs])
            return tabs

    tabs = asyncio.run(scenario())
    assert_every_event_once(tabs, total)
    reads = lrange_calls(redis_client)
    assert 0 < reads <= STORM // 10, f"{reads} reads of the event log for {STORM} sockets: not shared"


@pytest.mark.drill
def test_every_socket_reconnecting_at_once_after_an_api_restart_gets_every_event_once(stack, redis_client):
    """The API is stopped (TERM: it closes every socket 1001) and started again on the same port; events
    go on meanwhile; every client reconnects at once with its lastSeq."""
    port = int(stack.api().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}"
    jobs = [f"restart-{j}" for j in range(10)]
    for job_id in jobs:
        seed_job(redis_client, job_id, seq=0)
    first, down, total = 10, 20, 40

    def each_job(seqs: range, last: int | None = None) -> None:
        for seq in seqs:
            for job_id in jobs:
                emit(redis_client, job_id, seq, last=seq == last)
            time.sleep(0.01)

    async def scenario() -> list[Tab]:
        until = time.monotonic() + 150
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tabs = [Tab(session, url, jobs[i % len(jobs)]) for i in range(STORM)]
            await open_all(tabs, until)
            await asyncio.gather(*[tab.subscribe() for tab in tabs])
            await asyncio.to_thread(each_job, range(1, first + 1))
            assert await asyncio.gather(*[tab.read(until, stop_after=first) for tab in tabs]) == ["reached"] * STORM

            api = stack.processes.children[-1]
            api.send_signal(signal.SIGTERM)
            assert await asyncio.gather(*[tab.read(until) for tab in tabs]) == ["closed"] * STORM
            await asyncio.to_thread(api.wait, 60)
            await asyncio.to_thread(each_job, range(first + 1, down + 1))  # published to no one: only in the log
            restarted = asyncio.get_running_loop().run_in_executor(None, lambda: stack.api(port=port))

            async def come_back(tab: Tab) -> str:
                await tab.open(until)
                await tab.subscribe()
                return await tab.read(until)

            back = asyncio.gather(*[come_back(tab) for tab in tabs])  # every client at once, as the API comes up
            await restarted
            await asyncio.to_thread(each_job, range(down + 1, total + 1), total)
            ends = await back
            assert Counter(ends) == {"ended": STORM}, [tab.errors[0] for tab in tabs if tab.errors][:3]
            await asyncio.gather(*[tab.ws.close() for tab in tabs])
            return tabs

    tabs = asyncio.run(scenario())
    assert_every_event_once(tabs, total)


def test_past_its_cap_of_subscribes_in_progress_the_api_says_overloaded_and_serves_everyone_who_waits(
        stack, redis_client):
    """``overloaded`` carries a jittered retryAfterMs; a client that waits it out then gets every event once."""
    url = stack.api(S2S_WS_MAX_PENDING_SUBSCRIBES=5)
    seed_job(redis_client, "capped", seq=0)
    total = 10
    stream(redis_client, "capped", range(1, total + 1), last=total, pause_s=0)
    count = 300

    async def until_served(tab: Tab, until: float) -> str:
        while True:
            await tab.subscribe()
            end = await tab.read(until)
            if end != "error":
                return end
            await asyncio.sleep(tab.errors[-1]["retryAfterMs"] / 1000)

    async def scenario() -> list[Tab]:
        until = time.monotonic() + 120
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tabs = [Tab(session, url, "capped") for _ in range(count)]
            await open_all(tabs, until)
            ends = await asyncio.gather(*[until_served(tab, until) for tab in tabs])  # all at once
            assert Counter(ends) == {"ended": count}
            await asyncio.gather(*[tab.ws.close() for tab in tabs])
            return tabs

    tabs = asyncio.run(scenario())
    told = [e for tab in tabs for e in tab.errors]
    assert told, "no subscribe was refused: the cap was not reached"
    assert {e["code"] for e in told} == {"overloaded"}
    assert all(e["jobId"] == "capped" and e["retryAfterMs"] >= 1000 for e in told), told[:3]
    assert len({e["retryAfterMs"] for e in told}) > 1, "every client told the same wait: no jitter"
    assert all(tab.seqs == list(range(1, total + 1)) for tab in tabs)
