"""The API described as OpenAPI 3.1, served at GET /api/openapi.json: the assembler.

Each handler class describes its own route with :func:`s2s.web.describe.describe`; this module
collects those descriptions from make_app's route table and adds the document's skeleton and the
component schemas several routes share. Limits and choices come from the running
:class:`Settings` and :class:`Catalog`, so what the document states is what this process
enforces. ``tests/test_openapi.py`` keeps it true: it runs schemathesis against a live API
(every answer must match what is written) and fails when a route of make_app is not described.

Job and stats shapes follow :mod:`s2s.models`; error codes are listed per answer,
so a new code cannot appear on the wire without being written down.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable

import tornado.websocket

from s2s import __version__
from s2s.catalog import Catalog
from s2s.models import JOB_ID_PATTERN, JobStatus
from s2s.settings import Settings
from s2s.web.describe import COUNT, answer, describe, error, operation, ref
from s2s.web.handlers import PREFLIGHT_HEADERS, ApiHandler
from s2s.web.webhooks import openapi_webhooks

JOB_ID_ANCHORED = f"^{JOB_ID_PATTERN}$"  # the pattern the routes and /ws frames enforce, whole

WEBSOCKET = """\
## Live progress: the WebSocket `/ws`

OpenAPI cannot describe WebSocket frames, so they are written here (and in the README,
section "WebSocket: /ws"). Text frames, each one JSON object with a `type`. The upgrade's
`Origin` must be one of `CORS_ORIGINS`; a client already holding S2S_MAX_SOCKETS_PER_CLIENT
sockets on one API process is refused before the upgrade: 429 `too_many_sockets`, `Retry-After`.

Client to server:
- `{"type": "subscribe_to_job", "jobId": "...", "lastSeq": 7}`: `jobId` may also be the
  `job:<id>` form of `websocketSubscription`; `lastSeq` (optional) is the last `seq` seen
  before a reconnect.
- `{"type": "unsubscribe_from_job", "jobId": "..."}`
- `{"type": "ping"}`, answered with `{"type": "pong"}`
- `{"type": "subscribe_to_stats", "token": "..."}`: operator token (or the upgrade's
  `Authorization: Bearer`); `queue_stats` frames with the body of `GET /api/jobs/stats`,
  about once a second.

Server to client: `connection_confirmed` (`clientId`), `job_progress` (`jobId`, `status`,
`progress`, `message`), `job_completed` (`jobId`, `result.imageUrl`), `job_failed` (`jobId`,
`error`, `code`), `job_cancelled` (`jobId`), `pong`, `queue_stats`, and
`{"type": "error", "error": "...", "code": "..."}` for a frame the server cannot act on
(`invalid_json`, `invalid_frame`, `missing_type`, `unknown_type`, `missing_job_id`,
`invalid_job_id`, `invalid_last_seq`, `job_not_found`, `frame_too_large` over 64 KiB,
`binary_not_supported`, `rate_limited` past S2S_WS_FRAMES_PER_S frames a second, the frame
dropped, ...); the socket stays open. Every job frame carries a `seq` that
rises by one per event of that job: on subscribe the server first sends what was missed
(every kept event after `lastSeq`, or without it the job's current state), then live events,
with no gap and no duplicate. Close codes: 1001 when the API process shuts down, 1013 when a
catch-up could not be read: reconnect and resubscribe with `lastSeq`.
"""


def build(settings: Settings, catalog: Catalog, handlers: Iterable[type]) -> dict:
    """The whole document, as a JSON-ready dict, for the routes served by ``handlers`` (and this one's own)."""
    paths: dict = {}
    schemas = _schemas(settings, catalog)
    for handler in dict.fromkeys([*handlers, OpenApiHandler]):
        if issubclass(handler, tornado.websocket.WebSocketHandler):
            continue  # /ws: OpenAPI cannot describe frames; they are written in info.description
        if "openapi" not in vars(handler):
            raise TypeError(f"{handler.__name__} serves a route but has no @describe(...) (s2s.web.describe)")
        path, operations, own_schemas = handler.openapi
        paths[path] = _path_item(handler, path, operations, settings, catalog)
        schemas.update(own_schemas(settings, catalog) if callable(own_schemas) else own_schemas)
    doc: dict = {
        "openapi": "3.1.0",
        "info": {
            "title": "s2s: the Snap2Story backend",
            "version": __version__,
            "summary": "Queue illustrated storybook pictures of a child's photo and follow their progress.",
            "description": (
                "Submit a photo with `POST /api/jobs/generate-image` (202 at once), then follow the job with "
                "`GET /api/jobs/{jobId}/status` or live on the WebSocket `/ws` (or as Server-Sent Events from "
                "`GET /api/jobs/{jobId}/stream`), and fetch the picture from "
                "`result.imageUrl`.\n\nEvery error is JSON `{\"error\": \"<sentence>\", \"code\": "
                "\"<machine_code>\", \"details\"?: {...}}`, never an HTML page; the codes each answer can carry "
                "are listed with it. Answers may gain fields over time: clients ignore the ones they do not "
                "know. A request whose body Tornado cannot parse as what its `Content-Type` says (a form without its "
                "boundary, ...) is answered 400 `bad_request` before any handler sees it. A method a path does "
                "not serve is answered 405 `method_not_allowed` with an `Allow` header. Browsers are served CORS "
                "for the origins of `CORS_ORIGINS`; every API path answers the `OPTIONS` preflight.\n\n"
                + WEBSOCKET),
        },
        "tags": [
            {"name": "jobs", "description": "Submitting pictures and following them"},
            {"name": "queue", "description": "Queue figures and health"},
            {"name": "operator", "description": "For the on-call console and scripts: `Authorization: Bearer "
                                                "<S2S_ADMIN_TOKEN>`; refused with 403 while the token is unset"},
            {"name": "meta", "description": "This description, metrics and the demo page"},
        ],
        "paths": paths,
        "webhooks": openapi_webhooks(settings),  # s2s/web/webhooks.py
        "components": {
            "schemas": schemas,
            "parameters": {
                "JobId": {"name": "jobId", "in": "path", "required": True,
                          "description": "The `jobId` a submission answered with.",
                          "schema": {"type": "string", "pattern": JOB_ID_ANCHORED}},
            },
            "headers": {
                "Location": {"required": True, "description": "Where the job's status is read.",
                             "schema": {"type": "string", "format": "uri-reference"}},
                "WWWAuthenticate": {"required": True, "schema": {"type": "string", "const": 'Bearer realm="s2s"'}},
            },
            "responses": {
                "Unauthorized": error(
                    "No operator token: send `Authorization: Bearer <S2S_ADMIN_TOKEN>`.", "unauthorized",
                    headers={"WWW-Authenticate": {"$ref": "#/components/headers/WWWAuthenticate"}}),
                "Forbidden": error("The operator token is wrong.", "forbidden"),
                "OperatorDisabled": error(
                    "Operator actions are off: S2S_ADMIN_TOKEN is not set on this API.", "operator_disabled"),
                "JobNotFound": error("No such job (it may have expired), or the id is not a job id at all.",
                                     "job_not_found", "not_found"),
                "RedisUnavailable": error("The job store (Redis) is not reachable; try again shortly.",
                                          "redis_unavailable"),
            },
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer",
                                  "description": "The API's S2S_ADMIN_TOKEN. Without it: 401; a wrong one: 403."},
                "deleteToken": {"type": "http", "scheme": "bearer",
                                "description": "One job's `deleteToken`, from its submission's 202."},
            },
        },
    }
    if settings.public_url:
        doc["servers"] = [{"url": settings.public_url}]
    return doc


@describe("/api/openapi.json", get=operation(
    "getOpenApi", "meta", "This description",
    {200: answer({"type": "object", "required": ["openapi", "info", "paths"]}, "OpenAPI 3.1, as JSON.")}))
class OpenApiHandler(ApiHandler):
    """GET /api/openapi.json: this description, built once when the app is made."""

    def initialize(self, ctx, document: str) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.document = document

    def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(self.document)


def openapi_route(ctx, routes: list[tuple]) -> tuple:
    """The route of this description, for the app serving ``routes``."""
    document = json.dumps(build(ctx.settings, ctx.catalog, [route[1] for route in routes]), separators=(",", ":"))
    return (r"/api/openapi.json", OpenApiHandler, {"ctx": ctx, "document": document})


def _path_item(handler: type, path: str, operations: dict, settings: Settings, catalog: Catalog) -> dict:
    item: dict = {"parameters": [{"$ref": "#/components/parameters/JobId"}]} if "{jobId}" in path else {}
    for method, described in operations.items():
        op = described(settings, catalog) if callable(described) else copy.deepcopy(described)
        if op["tags"] == ["operator"]:  # behind the token, as ApiHandler.require_operator decides
            if settings.admin_token:
                op["security"] = [{"operatorToken": []}]
                op["responses"].update({"401": {"$ref": "#/components/responses/Unauthorized"},
                                        "403": {"$ref": "#/components/responses/Forbidden"}})
            else:  # no token can open them: every call is refused
                op["responses"]["403"] = {"$ref": "#/components/responses/OperatorDisabled"}
        item[method] = op
    if issubclass(handler, ApiHandler):  # ApiHandler.options answers the CORS preflight
        item["options"] = _preflight(path, item)
    return item


def _preflight(path: str, item: dict) -> dict:
    """The CORS preflight every API path answers (ApiHandler.options)."""
    methods = ", ".join([m.upper() for m in ("get", "post", "delete") if m in item] + ["OPTIONS"])
    op_id = next(op["operationId"] for op in item.values() if isinstance(op, dict) and "operationId" in op)
    preflight = {
        "operationId": "preflight" + op_id[0].upper() + op_id[1:],
        "summary": f"CORS preflight of {path}",
        "tags": ["meta"],
        "responses": {"204": {
            "description": "Which methods and request headers a browser may use here (and, for an allowed "
                           "`Origin`, `Access-Control-Allow-Origin`).",
            "headers": {
                "Access-Control-Allow-Methods": {"required": True, "schema": {"type": "string", "const": methods}},
                "Access-Control-Allow-Headers": {"required": True, "schema": {
                    "type": "string", "const": PREFLIGHT_HEADERS}},
                "Access-Control-Max-Age": {"required": True, "schema": {"type": "integer", "const": 600}},
            },
        }},
    }
    if "{jobId}" in path:
        # a malformed id matches no route: the preflight is answered all the same, allowing only OPTIONS,
        # so the browser refuses the request instead of sending it
        preflight["parameters"] = [{"name": "jobId", "in": "path", "required": True, "schema": {"type": "string"}}]
        preflight["responses"]["204"]["headers"]["Access-Control-Allow-Methods"]["schema"] = {
            "enum": [methods, "OPTIONS"], "description": "Just `OPTIONS` when `jobId` is not a job id."}
    return preflight


# ---- the schemas several routes share ---------------------------------------------------------
def _nullable(type_: str, **more) -> dict:
    return {"type": [type_, "null"], **more}


def _required_strings(*names: str) -> dict:
    return {"type": "object", "required": list(names), "properties": {name: {"type": "string"} for name in names}}


_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601 UTC with a `Z`."}
_STATUSES = [status.value for status in JobStatus]


def _counts() -> dict:
    """The counts of :class:`s2s.models.Stats`, shared by the stats and the pause/resume answers."""
    return {
        "waiting": {**COUNT, "description": "Queued and due."},
        "active": {**COUNT, "description": "Being drawn by a worker now."},
        "completed": {**COUNT, "description": "Ended and kept (retention time)."},
        "failed": COUNT,
        "delayed": {**COUNT, "description": "Waiting for a retry's backoff to pass."},
        "cancelled": COUNT,
        "paused": {"type": "boolean", "description": "Workers take no jobs while paused."},
        "totals": {"type": "object", "additionalProperties": COUNT,
                   "description": "Counters since the store began (completed, failed, retried, cancelled, ...)."},
    }


def _schemas(settings: Settings, catalog: Catalog) -> dict:
    counts = _counts()
    probe = {  # what GET /api/jobs/health found
        "redis": {"type": "object", "required": ["ok", "rttMs"], "properties": {
            "ok": {"const": True}, "rttMs": {"type": "number", "minimum": 0}}},
        "workers": {"type": "object", "required": ["alive", "absentMs"], "properties": {
            "alive": {**COUNT, "description": "Workers heard from within the lease time."},
            "absentMs": {**COUNT, "description": "How long no worker has been alive (0 while one is)."}}},
        "queue": {"type": "object", "required": ["waiting", "oldestWaitingAgeMs"], "properties": {
            "waiting": COUNT, "oldestWaitingAgeMs": _nullable("integer", minimum=0)}},
        "provider": ref("ProviderState"),
        "storage": {"type": "object", "required": ["ok", "scheme", "rttMs"], "description": (
            "The blob store photos and pictures are kept in (S2S_STORAGE_URL): its kind and a round trip "
            "(a listing for S3, a write check for a directory, PING for Redis)."), "properties": {
            "ok": {"const": True}, "scheme": {"enum": ["file", "s3", "redis"]},
            "rttMs": {"type": "number", "minimum": 0}}},
        "store": {"type": "object", "required": ["state", "usedBytes", "maxBytes"], "properties": {
            "state": {"enum": ["ok", "full"], "description": "full: submits get 503 storage_full, claims pause."},
            "usedBytes": COUNT, "maxBytes": _nullable("integer", minimum=1), "reason": {"type": "string"}}},
    }
    job_frame_types = ["job_progress", "job_completed", "job_failed", "job_cancelled"]
    return {
        "Error": {
            "type": "object",
            "required": ["error", "code"],
            "properties": {
                "error": {"type": "string", "description": "A sentence a person can read."},
                "code": {"type": "string", "description": "For machines; the codes of each answer are listed."},
                "details": {"type": "object", "description": "Where it helps: `field` and `reason` for a bad "
                                                             "field, the limit that was hit, ..."},
            },
        },
        "Job": {
            "type": "object",
            "description": "A job as GET /api/jobs/{jobId}/status tells it (`s2s.models.Job.to_json`).",
            "required": ["jobId", "status", "progress", "message", "createdAt", "attempts", "maxAttempts",
                         "heroName", "themeId", "styleKey", "kind", "seq"],
            "properties": {
                "jobId": {"type": "string", "pattern": JOB_ID_ANCHORED},
                "status": {"enum": _STATUSES},
                "progress": {"type": "integer", "minimum": 0, "maximum": 100,
                             "description": "Never goes down within an attempt."},
                "message": {"type": "string"},
                "createdAt": _TIME,
                "startedAt": {**_TIME, "description": "When the latest attempt started."},
                "completedAt": _TIME,
                "failedAt": _TIME,
                "cancelledAt": _TIME,
                "retryAt": {**_TIME, "description": "A queued retry waits for its backoff until then."},
                "attempts": {**COUNT, "description": "Attempts started so far."},
                "maxAttempts": {"type": "integer", "minimum": 1},
                "upstreamCalls": {**COUNT, "description": "Calls made to the image provider for this job (each "
                                                          "one is paid for)."},
                "heroName": {"type": "string"},
                "themeId": {"type": "string"},
                "styleKey": {"type": "string"},
                "kind": {"type": "string"},
                "seq": {**COUNT, "description": "The `seq` of the job's latest event."},
                "provider": {"type": "string", "description": "Which provider drew it."},
                "result": {"type": "object", "required": ["imageUrl"], "properties": {
                    "imageUrl": {"type": "string", "format": "uri",
                                 "description": "Answers GET with the image bytes."}}},
                "error": {"type": "string", "description": "Why it failed: a sentence a person can read."},
                "errorCode": {"type": "string"},
                "lastError": {"type": "string", "description": "Why the previous attempt failed (a retry is due)."},
                "queuePosition": _nullable("integer", minimum=1, description=(
                    "While queued: the place in line, 1 = starts next; null when not in line (a retry waiting "
                    "out its backoff, see `retryAt`).")),
                "etaSeconds": _nullable("integer", minimum=1, description=(
                    "While queued: about how many seconds until the picture is ready, from the live workers' "
                    "slots and recent run times; null when it cannot be estimated honestly (no live worker, no "
                    "run time recorded yet, the queue paused).")),
            },
            "allOf": [
                {"if": {"properties": {"status": {"const": "completed"}}},
                 "then": {"required": ["completedAt", "result"]}},
                {"if": {"properties": {"status": {"const": "failed"}}}, "then": {"required": ["failedAt", "error"]}},
                {"if": {"properties": {"status": {"const": "cancelled"}}}, "then": {"required": ["cancelledAt"]}},
            ],
        },
        "JobEvent": {
            "type": "object",
            "description": "One event of a job, as /ws sends it (here `result.imageUrl` is a path).",
            "required": ["type", "jobId", "seq", "status"],
            "properties": {
                "type": {"enum": job_frame_types},
                "jobId": {"type": "string"},
                "seq": {"type": "integer", "minimum": 1},
                "status": {"enum": _STATUSES},
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "message": {"type": "string"},
                "result": {"type": "object", "required": ["imageUrl"], "properties": {
                    "imageUrl": {"type": "string", "format": "uri-reference"}}},
                "error": {"type": "string"},
                "code": {"type": "string"},
                "queuePosition": _nullable("integer", minimum=1, description="While queued, as in the status."),
                "etaSeconds": _nullable("integer", minimum=1, description="While queued, as in the status."),
            },
        },
        "QueueCounts": {"type": "object", "required": list(counts), "properties": counts},
        "Stats": {
            "type": "object",
            "required": [*counts, "oldestWaitingAgeMs", "durationMs"],
            "properties": {
                **counts,
                "oldestWaitingAgeMs": _nullable("integer", minimum=0,
                                                description="How long the next job in line has waited."),
                "durationMs": {
                    "type": "object", "required": ["p50", "p95", "sample"],
                    "description": "Run times (start to completion) of the most recently completed jobs.",
                    "properties": {"p50": _nullable("integer", minimum=0), "p95": _nullable("integer", minimum=0),
                                   "sample": COUNT},
                },
            },
        },
        "ProviderState": {
            "type": "object",
            "required": ["name", "state", "reason"],
            "properties": {
                "name": {"type": "string"},
                "state": {"enum": ["ok", "misconfigured"]},
                "reason": _nullable("string", description="Why it is misconfigured."),
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "redis", "storage", "workers", "queue", "provider"],
            "properties": {"status": {"const": "ok"}, **probe},
        },
        "Unhealthy": {
            "type": "object",
            "description": "Why the API cannot serve; with what the probe found, where it got that far.",
            "required": ["status", "reason"],
            "properties": {
                "status": {"const": "unhealthy"},
                "reason": {"type": "string", "description": "Redis or the blob store not answering, or no worker "
                                                            "alive for S2S_WORKER_ABSENT_MS."},
                **probe,
                "redis": {"type": "object", "required": ["ok"], "properties": {
                    "ok": {"type": "boolean"}, "rttMs": {"type": "number", "minimum": 0}}},
                "storage": {"type": "object", "required": ["ok", "scheme"], "properties": {
                    "ok": {"type": "boolean"}, "scheme": {"enum": ["file", "s3", "redis"]},
                    "rttMs": {"type": "number", "minimum": 0}, "reason": {"type": "string"}}},
            },
        },
        "Catalog": {
            "type": "object",
            "required": ["themes", "styles", "kinds", "defaults"],
            "properties": {"themes": {"type": "array", "items": _required_strings("id", "name", "tagline")},
                           "styles": {"type": "array", "items": _required_strings("key", "name")},
                           "kinds": {"type": "array", "items": _required_strings("id", "name")},
                           "defaults": _required_strings("themeId", "styleKey", "kind")},
        },
    }
