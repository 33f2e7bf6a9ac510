"""The console's Textual-free layer: API bodies to models, throughput from counters, the
connection's state and backoff, and the REST client's errors, all without a terminal."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from s2s.backoff import Backoff
from s2s.embedded import free_port
from s2s.models import StatsSnapshot
from tui.client import (
    RECONNECT_BACKOFF,
    ApiClient,
    ApiError,
    ConnectionState,
    ConnectionStatus,
    Unauthorised,
    Unreachable,
)
from tui.model import (
    JobEvent,
    JobInfo,
    Throughput,
    ThroughputView,
    WorkerInfo,
    format_age,
    format_ms,
    merge_job_lists,
    parse_iso,
    progress_text,
    retried_sentence,
    short_id,
)


# ---- formatting ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seconds", "shown"), [
    (None, "-"), (-1, "0.0s"), (0.42, "0.4s"), (9.96, "10.0s"), (12.7, "12s"), (185, "3m05s"), (7620, "2h07m"),
    (3 * 86400 + 4 * 3600, "3d04h"),
])
def test_ages_are_short_and_readable(seconds, shown):
    assert format_age(seconds) == shown


def test_durations_progress_and_ids():
    assert (format_ms(None), format_ms(850), format_ms(1200)) == ("-", "850ms", "1.2s")
    assert progress_text(60) == "██████░░░░  60%"
    assert progress_text(-5) == "░░░░░░░░░░   0%" and progress_text(250).endswith("100%")
    assert short_id("abcdefghijklmnop") == "abcdefghij…" and short_id("short") == "short"
    assert retried_sentence(["a", "b"], []) == "Queued 2 failed jobs again."
    assert retried_sentence(["a"], ["b"]) == "Queued 1 failed job again; 1 could not be retried (photo expired)."


def test_api_times_parse_with_their_z():
    assert parse_iso("2026-01-01T00:00:01.500Z") == 1_767_225_601.5
    assert parse_iso(None) is None and parse_iso("yesterday") is None


# ---- API bodies ------------------------------------------------------------------------------------
def test_stats_body_with_an_empty_queue():
    stats = StatsSnapshot.from_json({"waiting": 0, "active": 0, "completed": 0, "failed": 0, "delayed": 0,
                                  "cancelled": 0, "paused": True, "totals": {}, "oldestWaitingAgeMs": None,
                                  "durationMs": {"p50": None, "p95": None, "sample": 0}})
    assert stats.paused and stats.p50_ms is None and stats.oldest_waiting_age_ms is None and stats.totals == {}


def test_a_workers_heartbeat_age_becomes_a_time_the_console_can_age():
    worker = WorkerInfo.from_json({"id": "w", "host": "h", "pid": 7, "concurrency": 2, "jobs": 1, "provider": "noop",
                                   "state": "running", "lastSeenMs": 1500, "alive": True}, fetched_at=100.0)
    assert worker.seen_at == 98.5


def test_job_bodies_say_what_an_operator_needs():
    failed = JobInfo.from_json({"jobId": "j1", "status": "failed", "progress": 10, "message": "Starting",
                                "createdAt": "2026-01-01T00:00:00Z", "failedAt": "2026-01-01T00:00:09Z",
                                "attempts": 3, "maxAttempts": 3, "error": "Upstream refused."})
    assert (failed.state, failed.note(), failed.retryable, failed.cancellable) == ("failed", "Upstream refused.",
                                                                                  True, False)
    assert failed.ended_at - failed.created_at == 9
    retrying = JobInfo.from_json({"jobId": "j2", "status": "queued", "progress": 0, "message": "Retrying soon",
                                  "createdAt": "2026-01-01T00:00:00Z", "attempts": 1, "maxAttempts": 3,
                                  "lastError": "Timed out."}, "delayed")
    assert (retrying.state, retrying.note(), retrying.cancellable) == ("delayed", "Timed out.", True)
    waiting = JobInfo.from_json({"jobId": "j3", "status": "queued", "message": "Waiting in the queue",
                                 "queuePosition": 3, "createdAt": None}, "waiting")
    assert (waiting.queue_position, waiting.note()) == (3, "#3 in line · Waiting in the queue")


def test_event_frames_of_every_kind():
    failed = JobEvent.from_json({"type": "job_failed", "jobId": "j", "error": "No.", "seq": 4})
    done = JobEvent.from_json({"type": "job_completed", "jobId": "j", "seq": 5, "result": {"imageUrl": "/i"}})
    cancelled = JobEvent.from_json({"type": "job_cancelled", "jobId": "j", "seq": 6})
    assert (failed.status, failed.text, failed.progress) == ("failed", "No.", None)
    assert (done.status, done.text) == ("completed", "/i")
    assert (cancelled.status, cancelled.seq) == ("cancelled", 6)


def test_a_job_found_in_two_lists_is_shown_once_in_its_earlier_state():
    def job(job_id, status):
        return JobInfo.from_json({"jobId": job_id, "status": status, "createdAt": None})

    rows = merge_job_lists({"completed": [job("a", "completed"), job("b", "completed")],
                            "active": [job("a", "processing")], "waiting": [job("c", "queued")]})
    assert [(r.job_id, r.status) for r in rows] == [("a", "processing"), ("c", "queued"), ("b", "completed")]


# ---- throughput ------------------------------------------------------------------------------------
def test_throughput_is_the_counters_change_over_time():
    series = Throughput(window_seconds=10)
    assert series.add(0.0, {"completed": 100, "failed": 5}) is None  # one reading is no rate yet
    point = series.add(2.0, {"completed": 104, "failed": 6})
    assert (point.completed, point.failed) == (2.0, 0.5)
    assert series.add(2.0, {"completed": 110, "failed": 6}) is None  # no time passed
    assert series.add(3.0, {"completed": 3, "failed": 0}) is None  # the store was reset: no negative rate
    assert series.add(4.0, {"completed": 5, "failed": 0}).completed == 2.0
    series.add(20.0, {"completed": 5, "failed": 0})
    view = series.view()
    assert view.completed == (0.0,) and view.failed == (0.0,)  # older points left the window


def test_throughput_averages_over_the_last_minute_of_readings():
    series = Throughput(average_seconds=60)
    assert series.averages() == (None, None)
    for second in range(0, 121, 10):  # 1 completed per second for a minute, then 3 per second
        series.add(float(second), {"completed": second if second <= 60 else 60 + 3 * (second - 60), "failed": 0})
    completed_avg, failed_avg = series.averages()
    assert (completed_avg, failed_avg) == (3.0, 0.0)
    view = series.view()
    assert (view.completed_now, view.failed_now, view.completed_avg) == (3.0, 0.0, 3.0)
    assert ThroughputView().completed_now is None


# ---- connection state --------------------------------------------------------------------------------
def test_backoff_doubles_up_to_its_ceiling():
    assert [RECONNECT_BACKOFF.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_connection_reconnects_with_backoff_and_recovers():
    backoff = Backoff(initial=1, factor=2, maximum=4)
    status = ConnectionStatus().succeeded(10.0)
    assert status.state is ConnectionState.CONNECTED and not status.is_stale(11.0, max_age=3)
    assert status.is_stale(14.0, max_age=3)  # no refresh came back for too long
    away = status.failed(12.0, Unreachable("Cannot reach it."), backoff).failed(13.0, Unreachable("Still not."),
                                                                                 backoff)
    assert (away.state, away.failures, away.error, away.retry_at) == (ConnectionState.RECONNECTING, 2,
                                                                       "Still not.", 15.0)
    assert not away.due(14.9) and away.due(15.0)
    assert away.last_success_at == 10.0 and away.is_stale(13.0, max_age=3)
    back = away.succeeded(16.0)
    assert (back.state, back.failures, back.retry_at, back.error) == (ConnectionState.CONNECTED, 0, None, "")


def test_unauthorised_keeps_polling_at_the_normal_pace():
    status = ConnectionStatus().failed(5.0, Unauthorised("The operator token is wrong.", 403), RECONNECT_BACKOFF)
    assert status.state is ConnectionState.UNAUTHORISED and status.due(5.0)


# ---- the REST client ---------------------------------------------------------------------------------
async def canned_api(routes: dict[str, tuple[int, str, str]]) -> TestServer:
    """An HTTP server answering each path with (status, content type, body), and seeing the auth header."""

    async def answer(request: web.Request) -> web.Response:
        status, content_type, body = routes[request.path]
        body = body.replace("$AUTH", request.headers.get("Authorization", ""))
        return web.Response(status=status, text=body, content_type=content_type)

    app = web.Application()
    for path in routes:
        app.router.add_route("*", path, answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def test_client_errors_carry_the_apis_sentence():
    routes = {
        "/api/queue/pause": (401, "application/json", '{"error": "This action needs an operator token.", '
                                                      '"code": "unauthorized"}'),
        "/api/queue/resume": (403, "application/json", '{"error": "The operator token is wrong.", '
                                                       '"code": "forbidden"}'),
        "/api/jobs/j/cancel": (409, "application/json", '{"error": "Job \'j\' already ended as completed.", '
                                                        '"code": "job_already_ended"}'),
        "/api/jobs/stats": (502, "text/html", "<html>Bad gateway</html>"),
        "/api/workers": (200, "text/plain", "not json"),
        "/api/jobs/j/retry": (202, "application/json", '{"jobId": "j"}'),
        "/api/jobs/retry-failed": (202, "application/json", json.dumps({"retried": ["$AUTH"], "expired": []})),
    }

    async def scenario():
        server = await canned_api(routes)
        try:
            async with ApiClient(str(server.make_url("")), "secret") as client:
                with pytest.raises(Unauthorised, match="needs an operator token"):
                    await client.pause()
                with pytest.raises(Unauthorised, match="token is wrong") as wrong:
                    await client.resume()
                assert (wrong.value.status, wrong.value.code) == (403, "forbidden")
                with pytest.raises(ApiError, match="already ended as completed") as refused:
                    await client.cancel("j")
                assert type(refused.value) is ApiError and refused.value.status == 409
                with pytest.raises(Unreachable, match=r"unavailable \(HTTP 502\)"):
                    await client.stats()
                with pytest.raises(ApiError, match="not a JSON object"):
                    await client.workers(0.0)
                with pytest.raises(ApiError, match="does not understand"):
                    await client.retry("j")  # a body without its status: an error, never a crash
                assert await client.retry_failed() == (["Bearer secret"], [])
        finally:
            await server.close()

    asyncio.run(scenario())


def test_client_says_when_nothing_answers():
    async def scenario():
        async with ApiClient(f"http://127.0.0.1:{free_port()}/", None, timeout=2) as client:
            assert client.url.endswith(str(client.url.rsplit(":", 1)[1]))  # the trailing slash is gone
            with pytest.raises(Unreachable, match="Cannot reach http://127.0.0.1"):
                await client.stats()

    asyncio.run(scenario())


# ---- what imports what ---------------------------------------------------------------------------------
def _run_without_textual(code: str) -> subprocess.CompletedProcess:
    blocker = "import sys; sys.modules['textual'] = None\n"  # any `import textual...` now fails
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=60)


def test_the_consoles_data_layer_imports_without_textual():
    done = _run_without_textual("import tui, tui.model, tui.client\nprint('ok')")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_s2s_never_imports_textual():
    code = """
import importlib, pkgutil, s2s
for module in pkgutil.walk_packages(s2s.__path__, "s2s."):
    if module.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(module.name)
    except ImportError as exc:
        if "textual" in str(exc):
            raise SystemExit(f"{module.name} imports textual: {exc}")
print("ok")
"""
    done = _run_without_textual(code)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
