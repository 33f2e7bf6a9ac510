"""The console's only way to s2s: its REST API over aiohttp, never Redis, so it works against
any deployment. Also the connection's state and the backoff between failed refreshes.

Every failure leaves as an :class:`ApiError` carrying the sentence to show (the API's own
``error`` when it sent one), so the console has one thing to catch and never crashes on a
dropped connection, a proxy's HTML page or a timeout.
"""

from __future__ import annotations

import asyncio
import enum
import json
from typing import Protocol

import aiohttp
from attrs import evolve, frozen

from s2s.backoff import Backoff
from s2s.models import StatsSnapshot
from tui.model import JOB_STATES, JobDetail, JobEvent, JobInfo, WebhookAttempt, WorkerInfo, merge_job_lists


class ApiError(Exception):
    """The API said no, or could not be asked; ``sentence`` is what the operator reads."""

    def __init__(self, sentence: str, status: int = 0, code: str = ""):
        super().__init__(sentence)
        self.sentence = sentence
        self.status = status
        self.code = code


class Unauthorised(ApiError):
    """401 (no token) or 403 (a wrong one, or operator actions disabled)."""


class Unreachable(ApiError):
    """No answer, or a gateway's 502/503/504: the API is away and the console should try again."""


class ConsoleSource(Protocol):
    """What the App needs from its data source; tests hand in a fake with fixed data."""

    url: str

    async def stats(self) -> StatsSnapshot: ...
    async def workers(self, now: float) -> tuple[WorkerInfo, ...]: ...
    async def jobs(self, limit: int) -> tuple[JobInfo, ...]: ...
    async def job_detail(self, job_id: str) -> JobDetail: ...
    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def cancel(self, job_id: str) -> JobInfo: ...
    async def retry(self, job_id: str) -> JobInfo: ...
    async def retry_failed(self) -> tuple[list[str], list[str]]: ...
    async def redeliver(self, job_id: str) -> int: ...


class ApiClient:
    """An s2s API at ``url``; operator calls carry ``Authorization: Bearer <token>``.

    Use as ``async with ApiClient(url, token) as client``: the aiohttp session lives on the
    loop that runs the console and is closed with it.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 5.0):
        self.url = url.rstrip("/")
        self.token = token or None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str) -> dict:
        """One call; the JSON body of a 2xx answer, else an :class:`ApiError` with the API's sentence."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with self._session.request(method, self.url + path, headers=headers) as resp:
                status, text = resp.status, await resp.text()
        except asyncio.TimeoutError:
            raise Unreachable(f"{self.url} did not answer in time.") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"Cannot reach {self.url}: {_describe(exc)}") from None
        body = _json_or_none(text)
        if status >= 400:
            raise _error_for(status, body)
        if not isinstance(body, dict):
            raise ApiError(f"The API answered {method} {path} with something that is not a JSON object.", status)
        return body

    # ---- reading ---------------------------------------------------------------------------
    async def stats(self) -> StatsSnapshot:
        return _parse(StatsSnapshot.from_json, await self.request("GET", "/api/jobs/stats"))

    async def workers(self, now: float) -> tuple[WorkerInfo, ...]:
        body = await self.request("GET", "/api/workers")
        return tuple(_parse(WorkerInfo.from_json, w, now) for w in body.get("workers", ()))

    async def job_list(self, state: str, limit: int) -> tuple[JobInfo, ...]:
        body = await self.request("GET", f"/api/jobs?state={state}&limit={limit}")
        return tuple(_parse(JobInfo.from_json, j, state) for j in body.get("jobs", ()))

    async def jobs(self, limit: int) -> tuple[JobInfo, ...]:
        """The newest ``limit`` jobs of every state, one row per job, running ones first."""
        lists = await asyncio.gather(*(self.job_list(state, limit) for state in JOB_STATES))
        return merge_job_lists(dict(zip(JOB_STATES, lists, strict=True)))

    async def job_detail(self, job_id: str) -> JobDetail:
        status, events, webhooks = await asyncio.gather(self.request("GET", f"/api/jobs/{job_id}/status"),
                                                        self.request("GET", f"/api/jobs/{job_id}/events"),
                                                        self._webhooks(job_id))
        return JobDetail(job=_parse(JobInfo.from_json, status),
                         events=tuple(_parse(JobEvent.from_json, e) for e in events.get("events", ())),
                         webhooks=_parse(WebhookAttempt.rows, webhooks))

    async def _webhooks(self, job_id: str) -> dict:
        try:
            return await self.request("GET", f"/api/jobs/{job_id}/webhooks")
        except ApiError as exc:
            if exc.status == 404:  # an API from before webhooks: the detail shows without them
                return {}
            raise

    # ---- operator actions ------------------------------------------------------------------
    async def pause(self) -> None:
        await self.request("POST", "/api/queue/pause")

    async def resume(self) -> None:
        await self.request("POST", "/api/queue/resume")

    async def cancel(self, job_id: str) -> JobInfo:
        return _parse(JobInfo.from_json, await self.request("POST", f"/api/jobs/{job_id}/cancel"))

    async def retry(self, job_id: str) -> JobInfo:
        return _parse(JobInfo.from_json, await self.request("POST", f"/api/jobs/{job_id}/retry"))

    async def redeliver(self, job_id: str) -> int:
        """The job's ended webhook deliveries sent again: how many."""
        body = await self.request("POST", f"/api/jobs/{job_id}/webhook/redeliver")
        return int(body.get("redelivered", 0))

    async def retry_failed(self) -> tuple[list[str], list[str]]:
        """Every kept failed job queued again: (retried ids, ids whose photo had expired)."""
        body = await self.request("POST", "/api/jobs/retry-failed")
        return list(body.get("retried", ())), list(body.get("expired", ()))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError) and exc.os_error is not None:
        return exc.os_error.strerror or str(exc.os_error)
    return str(exc) or type(exc).__name__


def _json_or_none(text: str):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _error_for(status: int, body) -> ApiError:
    sentence = body.get("error") if isinstance(body, dict) else None
    code = str(body.get("code", "")) if isinstance(body, dict) else ""
    if status in (401, 403):
        return Unauthorised(sentence or f"The API refused the operator token (HTTP {status}).", status, code)
    if status in (502, 503, 504):
        return Unreachable(sentence or f"The API is unavailable (HTTP {status}).", status, code)
    return ApiError(sentence or f"The API answered HTTP {status}.", status, code)


def _parse(build, body, *args):
    """Build a model from a body, turning a malformed one into an ApiError rather than a crash."""
    try:
        return build(body, *args)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ApiError(f"The API sent a body the console does not understand ({type(exc).__name__}: {exc}).") from None


# ---- connection state ----------------------------------------------------------------------
class ConnectionState(str, enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    UNAUTHORISED = "unauthorised"


#: How long to wait before the next try after failed refreshes in a row (no jitter: one console,
#: and the connection bar shows the wait).
RECONNECT_BACKOFF = Backoff(initial=0.5, maximum=8.0)


@frozen
class ConnectionStatus:
    """The console's view of the API, moved on by each refresh's outcome.

    An unauthorised console keeps polling at the normal pace: the API answers, and the
    public stats stay live while the operator fixes the token.
    """

    state: ConnectionState = ConnectionState.CONNECTING
    failures: int = 0
    error: str = ""
    retry_at: float | None = None
    last_success_at: float | None = None

    def succeeded(self, now: float) -> ConnectionStatus:
        return ConnectionStatus(ConnectionState.CONNECTED, last_success_at=now)

    def failed(self, now: float, error: ApiError, backoff: Backoff) -> ConnectionStatus:
        failures = self.failures + 1
        if isinstance(error, Unauthorised):
            return evolve(self, state=ConnectionState.UNAUTHORISED, failures=failures, error=error.sentence,
                          retry_at=None)
        return evolve(self, state=ConnectionState.RECONNECTING, failures=failures, error=error.sentence,
                      retry_at=now + backoff.delay(failures))

    def due(self, now: float) -> bool:
        """Whether a refresh may start now (not while backing off)."""
        return self.retry_at is None or now >= self.retry_at

    def data_age(self, now: float) -> float | None:
        return None if self.last_success_at is None else max(0.0, now - self.last_success_at)

    def is_stale(self, now: float, max_age: float) -> bool:
        age = self.data_age(now)
        return self.state is not ConnectionState.CONNECTED or age is None or age > max_age

