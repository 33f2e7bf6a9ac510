"""Following one job to its end from outside, as ``s2s submit --wait`` does: live over the API's ``/ws``.

The socket carries every event of the job as it happens (subscribed with ``lastSeq: 0``, so from the
first one). When it cannot open (a proxy refusing upgrades, too many sockets) or drops (an API restart,
a cut network), the job's status is polled instead until it ends; the user is told which.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketError, websocket_connect

POLL_S = 0.25
ENDS = {"job_completed": "completed", "job_failed": "failed", "job_cancelled": "cancelled"}
SOCKET_FAILURES = (OSError, StreamClosedError, WebSocketError, HTTPClientError, ValueError)


class SocketLost(Exception):
    """The live connection could not open or ended before the job did (the sentence says which)."""


class Progress:
    """One line per change on stderr (a bar redrawn in place on a terminal)."""

    def __init__(self, out=sys.stderr):
        self.out = out
        self.tty = out.isatty()
        self.last: str | None = None

    def show(self, percent: int, message: str, width: int = 30) -> None:
        filled = width * percent // 100
        line = f"[{'#' * filled}{'.' * (width - filled)}] {percent:3d}% {message[:60]:<60}"
        if line != self.last:
            print("\r" + line if self.tty else line.rstrip(), end="" if self.tty else "\n", file=self.out, flush=True)
            self.last = line

    def note(self, text: str) -> None:
        print(("\n" if self.tty and self.last else "") + text, file=self.out, flush=True)
        self.last = None


def follow(base: str, job_id: str, timeout: float, progress: Progress) -> dict | None:
    """The job once it ended: ``{"jobId", "status", "result" | "error"}``; None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        return asyncio.run(asyncio.wait_for(_over_socket(base, job_id, progress), timeout))
    except asyncio.TimeoutError:
        return None
    except SocketLost as lost:
        progress.note(f"s2s submit: {lost}; asking for the job's status every {POLL_S} s instead")
    return _by_polling(base, job_id, deadline, progress)


def socket_url(base: str) -> str:
    """``http://host`` -> ``ws://host/ws`` (and https -> wss)."""
    return "ws" + base[len("http"):] + "/ws" if base.startswith("http") else base + "/ws"


async def _over_socket(base: str, job_id: str, progress: Progress) -> dict:
    url = socket_url(base)
    try:
        ws = await websocket_connect(HTTPRequest(url, connect_timeout=10, request_timeout=10),
                                     ping_interval=10, ping_timeout=10)
    except SOCKET_FAILURES as exc:
        raise SocketLost(f"no live updates from {url} ({_reason(exc)})") from exc
    progress.note(f"live progress from {url}")
    try:
        await ws.write_message(json.dumps({"type": "subscribe_to_job", "jobId": job_id, "lastSeq": 0}))
        while True:
            raw = await ws.read_message()
            if raw is None:
                raise SocketLost("the live connection dropped" if ws.close_code is None else
                                 f"the live connection closed ({ws.close_code} {ws.close_reason or ''})".rstrip())
            frame = json.loads(raw)
            if frame.get("jobId") != job_id:
                continue  # connection_confirmed, pong
            if frame["type"] == "job_progress":
                progress.show(frame["progress"], frame.get("message", ""))
            elif frame["type"] in ENDS:
                return {"jobId": job_id, "status": ENDS[frame["type"]],
                        **{k: frame[k] for k in ("result", "error") if k in frame}}
            elif frame["type"] == "error":
                raise SocketLost(f"live updates refused: {frame.get('error')}")
    except SOCKET_FAILURES as exc:
        raise SocketLost(f"the live connection failed ({_reason(exc)})") from exc
    finally:
        ws.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, HTTPClientError):  # 599: no answer at all (connection closed or timed out)
        return f"HTTP {exc.code}" if exc.code != 599 else (exc.message or "no answer").lower()
    return str(exc) or type(exc).__name__


def _by_polling(base: str, job_id: str, deadline: float, progress: Progress) -> dict | None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/jobs/{job_id}/status", timeout=10) as resp:
                job = json.loads(resp.read())
        except urllib.error.HTTPError:
            time.sleep(0.5)
            continue
        except (urllib.error.URLError, OSError):
            time.sleep(1)  # the API restarting: keep watching
            continue
        progress.show(job["progress"], job.get("message", ""))
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(POLL_S)
    return None
