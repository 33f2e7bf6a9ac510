"""The console (s2s-tui) driven by Textual's pilot.

Snapshot and key tests hand the App a fake data source with fixed data and a frozen clock,
so every screenshot is the same on every run; the others run it against a real ``s2s serve``,
real workers and the test Redis (the ``stack`` fixture), through the real REST client.
Each test is a plain function that runs its scenario with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from urllib.parse import urlparse

import pytest
from rich.console import Console
from syrupy.extensions.image import SVGImageSnapshotExtension
from textual import events
from textual.pilot import Pilot
from textual.widget import Widget

from s2s.backoff import Backoff
from s2s.models import StatsSnapshot
from tests.helpers import child_env, data_url, http_json, photo_bytes
from tui.app import ConsoleApp, parse_args
from tui.client import ApiClient, ApiError, ConnectionState, Unauthorised, Unreachable
from tui.model import JobDetail, JobEvent, JobInfo, Throughput, WorkerInfo, merge_job_lists
from tui.screens import ConfirmScreen, HelpScreen, JobDetailScreen
from tui.widgets import ActionLine, ConnectionBar, JobsTable, QueuePanel, WorkersTable

TOKEN = "console-test-token"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the frozen clock of the snapshot tests
SIZE = (110, 34)
COUNTS = ("waiting", "active", "delayed", "completed", "failed", "cancelled")
FAST = {"refresh_interval": 0.25, "backoff": Backoff(initial=0.2, factor=2, maximum=1.0)}


# ---- a fake API with fixed data ----------------------------------------------------------------
def iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


STATS = {"waiting": 1, "active": 1, "delayed": 0, "completed": 156, "failed": 1, "cancelled": 0, "paused": False,
         "totals": {"completed": 900, "failed": 12}, "oldestWaitingAgeMs": 12400,
         "durationMs": {"p50": 1200, "p95": 4500, "sample": 156}}
WORKERS = [
    {"id": "web-1:4242:ab12", "host": "web-1", "pid": 4242, "concurrency": 4, "jobs": 1, "provider": "openai",
     "state": "running", "lastSeenMs": 300, "alive": True},
    {"id": "web-2:977:cd34", "host": "web-2", "pid": 977, "concurrency": 4, "jobs": 0, "provider": "openai",
     "state": "running", "lastSeenMs": 95_000, "alive": False},
]
JOBS = {
    "active": [{"jobId": "RunningJob0001", "status": "processing", "progress": 60, "heroName": "Mia",
                "message": "Generating image with AI...", "createdAt": iso(NOW - 14), "startedAt": iso(NOW - 9),
                "attempts": 1, "maxAttempts": 3, "provider": "openai", "upstreamCalls": 1}],
    "waiting": [{"jobId": "WaitingJob0002", "status": "queued", "progress": 0, "heroName": "Leo",
                 "message": "Waiting in the queue", "createdAt": iso(NOW - 12), "attempts": 0, "maxAttempts": 3}],
    "failed": [{"jobId": "FailedJob00003", "status": "failed", "progress": 10, "heroName": "Ada", "message": "Starting",
                "createdAt": iso(NOW - 600), "failedAt": iso(NOW - 590), "attempts": 3, "maxAttempts": 3,
                "error": "The image service refused the request.", "provider": "openai"}],
    "completed": [{"jobId": "DoneJob0000004", "status": "completed", "progress": 100, "heroName": "Sam",
                   "message": "Done", "createdAt": iso(NOW - 3700), "completedAt": iso(NOW - 3690), "attempts": 1,
                   "maxAttempts": 3, "provider": "openai"}],
}
EVENTS = [{"seq": 1, "type": "job_progress", "status": "queued", "progress": 0, "message": "Waiting in the queue"},
          {"seq": 2, "type": "job_progress", "status": "processing", "progress": 0, "message": "Starting"},
          {"seq": 3, "type": "job_progress", "status": "processing", "progress": 60,
           "message": "Generating image with AI..."}]


class FakeSource:
    """Answers like the API with the data above; records the operator's calls; fails on request."""

    url = "https://s2s.example.com"

    def __init__(self, *, down: bool = False, operator_error: ApiError | None = None,
                 action_error: ApiError | None = None):
        self.down = down
        self.operator_error = operator_error
        self.action_error = action_error
        self.calls: list[tuple] = []
        self.gates: dict[str, asyncio.Event] = {}  # a call named here waits for its event (a slow API)
        self.asked: collections.Counter[str] = collections.Counter()

    async def _answer(self, call: str) -> None:
        self.asked[call] += 1
        if call in self.gates:
            await self.gates[call].wait()

    async def stats(self) -> StatsSnapshot:
        await self._answer("stats")
        if self.down:
            raise Unreachable("Cannot reach https://s2s.example.com: Connection refused")
        return StatsSnapshot.from_json(STATS)

    async def workers(self, now: float) -> tuple[WorkerInfo, ...]:
        if self.operator_error:
            raise self.operator_error
        return tuple(WorkerInfo.from_json(w, now) for w in WORKERS)

    async def jobs(self, limit: int) -> tuple[JobInfo, ...]:
        if self.operator_error:
            raise self.operator_error
        return merge_job_lists({state: [JobInfo.from_json(j, state) for j in jobs] for state, jobs in JOBS.items()})

    async def job_detail(self, job_id: str) -> JobDetail:
        await self._answer("job_detail")
        job = next(j for j in await self.jobs(25) if j.job_id == job_id)
        return JobDetail(job, tuple(JobEvent.from_json(e) for e in EVENTS))

    async def _act(self, *call) -> None:
        self.calls.append(call)
        if self.action_error:
            raise self.action_error

    async def pause(self) -> None:
        await self._act("pause")

    async def resume(self) -> None:
        await self._act("resume")

    async def cancel(self, job_id: str) -> JobInfo:
        await self._act("cancel", job_id)
        return JobInfo.from_json({**JOBS["active"][0], "jobId": job_id, "status": "cancelled"})

    async def retry(self, job_id: str) -> JobInfo:
        await self._act("retry", job_id)
        return JobInfo.from_json({**JOBS["failed"][0], "jobId": job_id, "status": "queued"})

    async def retry_failed(self) -> tuple[list[str], list[str]]:
        await self._act("retry_failed")
        return ["FailedJob00003"], []


def seeded_throughput() -> Throughput:
    """Two minutes of made-up counters ending just below STATS' totals, so the sparklines have a shape."""
    series = Throughput()
    per_second = [((second % 9) // 2 + 1, 1 if second % 17 == 0 else 0) for second in range(120)]
    completed = STATS["totals"]["completed"] - sum(c for c, _ in per_second)
    failed = STATS["totals"]["failed"] - sum(f for _, f in per_second)
    for second, (done, lost) in enumerate(per_second):
        series.add(NOW - 120 + second, {"completed": completed, "failed": failed})
        completed, failed = completed + done, failed + lost
    return series


def fake_app(source: FakeSource | None = None) -> ConsoleApp:
    """The App on fixed data, a frozen clock and one refresh (the timer never fires in a test)."""
    return ConsoleApp(source or FakeSource(), clock=lambda: NOW, refresh_interval=3600, throughput=seeded_throughput())


# ---- driving the pilot ---------------------------------------------------------------------------
async def until(pilot: Pilot, check: Callable[[], object], what: str, timeout: float = 15.0):
    """Let the app run until ``check()`` is truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.05)
    return value


async def confirm(pilot: Pilot, key: str, answer: str = "y") -> None:
    """Press an action's key, check it asks first, and answer."""
    await pilot.press(key)
    await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), f"the confirmation of {key!r}")
    await pilot.press(answer)
    await until(pilot, lambda: not isinstance(pilot.app.screen, ConfirmScreen), "the confirmation to close")


def text_of(widget: Widget) -> str:
    """What a widget of ours draws, as plain text."""
    console = Console(width=max(widget.size.width, 100), file=io.StringIO(), record=True, color_system=None)
    console.print(widget.render())
    return console.export_text()


def shown_counts(app: ConsoleApp) -> dict[str, int]:
    """The queue numbers as the panel draws them (none before the first stats)."""
    text = text_of(app.main.query_one(QueuePanel))
    found = {name: re.search(rf"\b{name}\s+(\d+)", text) for name in COUNTS}
    return {name: int(match.group(1)) for name, match in found.items() if match}


def counts_are(app: ConsoleApp, **expected: int) -> bool:
    shown = shown_counts(app)
    return all(shown.get(name) == value for name, value in expected.items())


def row_of(app: ConsoleApp, job_id: str) -> dict[str, str] | None:
    table = app.main.query_one(JobsTable)
    if job_id not in table.rows:
        return None
    labels = [str(column.label) for column in table.columns.values()]
    return dict(zip(labels, (str(cell) for cell in table.get_row(job_id)), strict=True))


def bar_text(app: ConsoleApp) -> str:
    return text_of(app.screen.query_one(ConnectionBar))


# ---- snapshots -----------------------------------------------------------------------------------
@pytest.fixture
def svg_snapshot(snapshot):
    return snapshot.use_extension(SVGImageSnapshotExtension)


def screenshot(app: ConsoleApp, *keys: str, ready: Callable[[ConsoleApp], bool] = lambda app: True) -> str:
    async def scenario() -> str:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.refreshes >= 1, "the first refresh")
            for key in keys:
                await pilot.press(key)
                await pilot.pause()
            await until(pilot, lambda: ready(app), "the screen to be ready")
            await pilot.wait_for_scheduled_animations()
            await pilot.pause()
            # rich names the SVG's CSS classes by a hash of the content; the snapshot need not carry it
            return re.sub(r"\bterminal-\d+-", "terminal-", app.export_screenshot())

    return asyncio.run(scenario())


def test_snapshot_main_screen(svg_snapshot):
    assert screenshot(fake_app()) == svg_snapshot


def test_snapshot_job_detail(svg_snapshot):
    def detail_loaded(app: ConsoleApp) -> bool:
        return isinstance(app.screen, JobDetailScreen) and app.screen.job is not None

    assert screenshot(fake_app(), "enter", ready=detail_loaded) == svg_snapshot


def test_snapshot_confirm_pause(svg_snapshot):
    assert screenshot(fake_app(), "p", ready=lambda app: isinstance(app.screen, ConfirmScreen)) == svg_snapshot


def test_snapshot_help(svg_snapshot):
    assert screenshot(fake_app(), "question_mark", ready=lambda app: isinstance(app.screen, HelpScreen)) == svg_snapshot


def test_snapshot_reconnecting(svg_snapshot):
    assert screenshot(fake_app(FakeSource(down=True))) == svg_snapshot


def test_snapshot_unauthorised(svg_snapshot):
    wrong = Unauthorised("The operator token is wrong.", 403, "forbidden")
    assert screenshot(fake_app(FakeSource(operator_error=wrong))) == svg_snapshot


# ---- keys and confirmations, on the fake -------------------------------------------------------
def test_every_action_asks_first_and_only_a_yes_acts():
    source = FakeSource()
    app = fake_app(source)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.refreshes >= 1, "the first refresh")
            await confirm(pilot, "p", answer="n")
            await confirm(pilot, "u", answer="escape")
            assert source.calls == []
            await confirm(pilot, "p")
            await until(pilot, lambda: source.calls == [("pause",)], "the pause call")
            outcome = app.main.query_one(ActionLine)
            await until(pilot, lambda: "Queue paused" in text_of(outcome), "the outcome line")
            await confirm(pilot, "u")
            await until(pilot, lambda: ("resume",) in source.calls, "the resume call")

            table = app.main.query_one(JobsTable)
            assert table.selected.job_id == "RunningJob0001"  # the running job is listed first
            await confirm(pilot, "c")
            await until(pilot, lambda: ("cancel", "RunningJob0001") in source.calls, "the cancel call")
            await pilot.press("r")  # a running job cannot be retried: said at once, no question asked
            assert not isinstance(app.screen, ConfirmScreen)
            assert "only failed or cancelled jobs can be retried" in text_of(outcome)
            await pilot.press("down", "down")
            assert table.selected.job_id == "FailedJob00003"
            await confirm(pilot, "r")
            await until(pilot, lambda: ("retry", "FailedJob00003") in source.calls, "the retry call")
            await confirm(pilot, "R")
            await until(pilot, lambda: "Queued 1 failed job again" in text_of(outcome), "retry all's outcome")
            assert source.calls[-1] == ("retry_failed",)

    asyncio.run(scenario())


def test_a_refused_action_shows_the_apis_sentence():
    refusal = ApiError("Job 'RunningJob0001' already ended as completed.", 409, "job_already_ended")
    app = fake_app(FakeSource(action_error=refusal))

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.refreshes >= 1, "the first refresh")
            await confirm(pilot, "c")
            outcome = app.main.query_one(ActionLine)
            await until(pilot, lambda: "already ended as completed" in text_of(outcome), "the API's sentence")
            assert outcome.has_class("-error")

    asyncio.run(scenario())


def test_details_open_on_enter_and_actions_apply_to_that_job():
    source = FakeSource()
    app = fake_app(source)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.refreshes >= 1, "the first refresh")
            await pilot.press("down", "down", "enter")
            detail = await until(pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen, "details")
            await until(pilot, lambda: detail.job is not None, "the job to load")
            assert detail.job_id == "FailedJob00003"
            await confirm(pilot, "r")
            await until(pilot, lambda: ("retry", "FailedJob00003") in source.calls, "the retry call")
            await pilot.press("escape")
            assert app.screen is app.main
            await pilot.press("f", "f")  # all -> active -> waiting
            assert app.main.query_one(JobsTable).border_title == "jobs: waiting (1)"

    asyncio.run(scenario())


def test_an_answer_arriving_as_its_screen_closes_breaks_nothing():
    """The API answers as the widgets are being removed (details closed, console quit): it is dropped, no crash.

    The slow API answers the moment the first widget unmounts, the worst moment for the loader.
    """
    source = FakeSource()
    app = fake_app(source)
    answer_on_unmount: set[str] = set()

    def hook(message) -> None:
        if isinstance(message, events.Unmount):
            for call in answer_on_unmount:
                source.gates[call].set()
            answer_on_unmount.clear()

    async def open_details(pilot: Pilot) -> JobDetailScreen:
        asked = source.asked["job_detail"]
        await pilot.press("enter")
        detail = await until(pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen, "details")
        await until(pilot, lambda: source.asked["job_detail"] > asked, "the details asked for")
        return detail

    async def scenario():
        async with app.run_test(size=SIZE, message_hook=hook) as pilot:
            await until(pilot, lambda: app.refreshes >= 1, "the first refresh")
            source.gates["job_detail"] = asyncio.Event()
            await open_details(pilot)
            answer_on_unmount.add("job_detail")
            await pilot.press("escape")
            await until(pilot, lambda: source.gates["job_detail"].is_set(), "the answer during the close")
            assert app.screen is app.main
            del source.gates["job_detail"]
            detail = await open_details(pilot)
            await until(pilot, lambda: detail.job is not None, "the reopened details to load")
            await pilot.press("escape")
            # and now the console quits with the details loading and a refresh out
            source.gates.update(job_detail=asyncio.Event(), stats=asyncio.Event())
            await open_details(pilot)
            asked = source.asked["stats"]
            app.action_refresh_now()
            await until(pilot, lambda: source.asked["stats"] > asked, "the refresh asked for")
            answer_on_unmount.update(source.gates)
        assert all(gate.is_set() for gate in source.gates.values())

    asyncio.run(scenario())


def test_command_line_reads_the_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("S2S_ADMIN_TOKEN", "from-env")
    args = parse_args(["--url", "https://s2s.onrender.com/"])
    assert (args.url, args.token, args.interval) == ("https://s2s.onrender.com/", "from-env", 1.0)
    assert parse_args(["--token", "flag"]).token == "flag"
    with pytest.raises(SystemExit):
        parse_args(["--interval", "0"])


# ---- against a real API, real workers and Redis ------------------------------------------------------
def submit(url: str) -> str:
    body = json.dumps({"heroName": "Mia", "originalImageBase64": data_url(photo_bytes())}).encode()
    status, _, raw = http_json("POST", url + "/api/jobs/generate-image", body, {"Content-Type": "application/json"})
    assert status == 202, raw
    return json.loads(raw)["jobId"]


def api_get(url: str, path: str) -> dict:
    status, _, raw = http_json("GET", url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, raw
    return json.loads(raw)


def matches_api(app: ConsoleApp, url: str) -> bool:
    """The queue numbers on screen are the API's, field for field."""
    stats = api_get(url, "/api/jobs/stats")
    return shown_counts(app) == {name: stats[name] for name in COUNTS}


def worker_row(app: ConsoleApp, pid: int) -> dict[str, str] | None:
    table = app.main.query_one(WorkersTable)
    for key in table.rows:
        cells = [str(cell) for cell in table.get_row(key)]
        if cells[2] == str(pid):
            return dict(zip(("id", "host", "pid", "conc", "jobs", "provider", "heartbeat", "state"), cells,
                            strict=True))
    return None


def test_console_matches_the_api_as_jobs_fail_and_are_retried_from_the_keyboard(stack):
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN, S2S_MAX_ATTEMPTS="1")
    failing = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_FAIL_ATTEMPTS="5")

    async def scenario():
        async with ApiClient(url, TOKEN) as client:
            app = ConsoleApp(client, **FAST)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.connection.state is ConnectionState.CONNECTED, "connected")
                first, second = await asyncio.to_thread(submit, url), await asyncio.to_thread(submit, url)
                await until(pilot, lambda: counts_are(app, failed=2), "two failed jobs on screen")
                await until(pilot, lambda: matches_api(app, url), "the numbers to match GET /api/jobs/stats")
                await until(pilot, lambda: (row_of(app, first) or {}).get("status") == "failed", "the failed row")
                assert "Simulated upstream failure on attempt 1." in row_of(app, first)["error / message"]
                assert max(app.throughput.view().failed) > 0

                os.killpg(failing.pid, signal.SIGKILL)
                failing.wait(10)
                await until(pilot, lambda: (worker_row(app, failing.pid) or {}).get("state") == "DEAD",
                            "the killed worker marked dead")
                good = await asyncio.to_thread(stack.worker, S2S_PROVIDER="noop")
                await until(pilot, lambda: (worker_row(app, good.pid) or {}).get("state") == "running",
                            "the new worker listed")

                assert app.main.query_one(JobsTable).select_job(first)
                await confirm(pilot, "r")
                await until(pilot, lambda: (row_of(app, first) or {}).get("status") == "completed", "retried job done")
                await confirm(pilot, "R")
                await until(pilot, lambda: (row_of(app, second) or {}).get("status") == "completed", "retry all")
                await until(pilot, lambda: counts_are(app, completed=2, failed=0), "two completed, none failed")
                await until(pilot, lambda: matches_api(app, url), "the numbers to match GET /api/jobs/stats")
                stats = api_get(url, "/api/jobs/stats")
                assert stats["totals"]["completed"] == 2 and stats["totals"]["failed"] == 2
                assert max(app.throughput.view().completed) > 0
                panel = text_of(app.main.query_one(QueuePanel))
                assert re.search(r"p50\s+\d", panel), panel  # run times of the completed jobs

    asyncio.run(scenario())


def test_pause_holds_jobs_back_resume_releases_them_and_cancel_stops_a_running_one(stack):
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN)
    worker = stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS="20000")

    async def scenario():
        async with ApiClient(url, TOKEN) as client:
            app = ConsoleApp(client, **FAST)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: worker_row(app, worker.pid), "the worker listed")
                await confirm(pilot, "p")
                await until(pilot, lambda: "PAUSED" in text_of(app.main.query_one(QueuePanel)), "PAUSED on screen")
                assert api_get(url, "/api/jobs/stats")["paused"] is True

                job_id = await asyncio.to_thread(submit, url)
                await until(pilot, lambda: (row_of(app, job_id) or {}).get("status") == "queued", "the job listed")
                seen = app.refreshes
                await until(pilot, lambda: app.refreshes >= seen + 4, "four more refreshes while paused")
                assert api_get(url, f"/api/jobs/{job_id}/status")["status"] == "queued"
                assert counts_are(app, waiting=1, active=0)
                panel = text_of(app.main.query_one(QueuePanel))
                assert re.search(r"oldest wait\s+\d", panel), panel  # how long the held-back job has waited

                await confirm(pilot, "u")
                await until(pilot, lambda: (row_of(app, job_id) or {}).get("status") == "processing", "job taken")
                await until(pilot, lambda: (worker_row(app, worker.pid) or {}).get("jobs") == "1", "job in hand")
                assert app.main.query_one(JobsTable).select_job(job_id)
                await confirm(pilot, "c")
                await until(pilot, lambda: (row_of(app, job_id) or {}).get("status") == "cancelled", "job cancelled")
                assert api_get(url, f"/api/jobs/{job_id}/status")["status"] == "cancelled"

    asyncio.run(scenario())


def test_api_going_away_shows_reconnecting_and_the_console_recovers(stack):
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN)
    api = stack.processes.children[-1]
    port = urlparse(url).port

    async def scenario():
        async with ApiClient(url, TOKEN) as client:
            app = ConsoleApp(client, **FAST)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.connection.state is ConnectionState.CONNECTED, "connected")
                os.killpg(api.pid, signal.SIGKILL)
                api.wait(10)
                await until(pilot, lambda: app.connection.failures >= 3, "three failed refreshes")
                assert app.connection.state is ConnectionState.RECONNECTING
                shown = bar_text(app)
                assert "reconnecting" in shown and "STALE" in shown and "Cannot reach" in shown, shown
                assert re.search(r"try \d+ in \d", shown), shown

                await asyncio.to_thread(stack.processes.start, ["serve"], child_env(
                    stack.settings, PORT=port, S2S_ADMIN_TOKEN=TOKEN), "api-again")
                await until(pilot, lambda: app.connection.state is ConnectionState.CONNECTED, "connected again",
                            timeout=30)
                await until(pilot, lambda: "STALE" not in bar_text(app), "fresh data")
                assert "connected" in bar_text(app)

    asyncio.run(scenario())


def test_a_wrong_or_missing_token_shows_unauthorised(stack):
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN)

    async def run_with(token: str | None, sentence: str):
        async with ApiClient(url, token) as client:
            app = ConsoleApp(client, **FAST)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.connection.state is ConnectionState.UNAUTHORISED, "unauthorised")
                shown = bar_text(app)
                assert "unauthorised" in shown and sentence in shown, shown
                await until(pilot, lambda: app.main.stats is not None, "the public stats")  # still live
                await confirm(pilot, "p")
                outcome = app.main.query_one(ActionLine)
                await until(pilot, lambda: sentence in text_of(outcome), "the refusal")
        assert api_get(url, "/api/jobs/stats")["paused"] is False

    asyncio.run(run_with("wrong", "The operator token is wrong."))
    asyncio.run(run_with(None, "This action needs an operator token"))
