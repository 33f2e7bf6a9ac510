"""The API described as OpenAPI 3.1, served at GET /api/openapi.json.

The document is built here, from reusable component schemas, with the limits of
the running :class:`Settings` and the choices of its :class:`Catalog`, so what it
states is what this process enforces. ``tests/test_openapi.py`` keeps it true: it
runs schemathesis against a live API (every answer must match what is written
here) and fails when a route of :func:`s2s.web.app.make_app` is not described.

Job and stats shapes follow :mod:`s2s.models`; error codes are listed per answer,
so a new code cannot appear on the wire without being written down here.
"""

from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST

from s2s import __version__
from s2s.catalog import Catalog
from s2s.settings import Settings
from s2s.web.demo import CLIENT_FILES, DEMO_FILES
from s2s.web.handlers import JOB_ID, ApiHandler
from s2s.web.operator import JOB_STATES

SCHEMAS = "#/components/schemas/"
JOB_ID_PATTERN = "^" + JOB_ID.split(">", 1)[1][:-1] + "$"  # the route's own pattern, without its group
JSON = "application/json"

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
`binary_not_supported`, ...); the socket stays open. Every job frame carries a `seq` that
rises by one per event of that job: on subscribe the server first sends what was missed
(every kept event after `lastSeq`, or without it the job's current state), then live events,
with no gap and no duplicate. Close codes: 1001 when the API process shuts down, 1013 when a
catch-up could not be read: reconnect and resubscribe with `lastSeq`.
"""


def build(settings: Settings, catalog: Catalog) -> dict:
    """The whole document, as a JSON-ready dict."""
    doc: dict = {
        "openapi": "3.1.0",
        "info": {
            "title": "s2s: the Snap2Story backend",
            "version": __version__,
            "summary": "Queue illustrated storybook pictures of a child's photo and follow their progress.",
            "description": (
                "Submit a photo with `POST /api/jobs/generate-image` (202 at once), then follow the job with "
                "`GET /api/jobs/{jobId}/status` or live on the WebSocket `/ws`, and fetch the picture from "
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
        "paths": _paths(settings, catalog),
        "components": {
            "schemas": _schemas(settings, catalog),
            "parameters": {
                "JobId": {"name": "jobId", "in": "path", "required": True,
                          "description": "The `jobId` a submission answered with.",
                          "schema": {"type": "string", "pattern": JOB_ID_PATTERN}},
            },
            "headers": {
                "Location": {"required": True, "description": "Where the job's status is read.",
                             "schema": {"type": "string", "format": "uri-reference"}},
                "WWWAuthenticate": {"required": True, "schema": {"type": "string", "const": 'Bearer realm="s2s"'}},
            },
            "responses": {
                "Unauthorized": _error_response(
                    "No operator token: send `Authorization: Bearer <S2S_ADMIN_TOKEN>`.", "unauthorized",
                    headers={"WWW-Authenticate": {"$ref": "#/components/headers/WWWAuthenticate"}}),
                "Forbidden": _error_response("The operator token is wrong.", "forbidden"),
                "OperatorDisabled": _error_response(
                    "Operator actions are off: S2S_ADMIN_TOKEN is not set on this API.", "operator_disabled"),
                "JobNotFound": _error_response(
                    "No such job (it may have expired), or the id is not a job id at all.",
                    "job_not_found", "not_found"),
                "RedisUnavailable": _error_response("The job store (Redis) is not reachable; try again shortly.",
                                                    "redis_unavailable"),
            },
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer",
                                  "description": "The API's S2S_ADMIN_TOKEN. Without it: 401; a wrong one: 403."},
            },
        },
    }
    if settings.public_url:
        doc["servers"] = [{"url": settings.public_url}]
    for path, item in doc["paths"].items():
        if path not in _STATIC_PATHS:  # the API's handlers (ApiHandler) all answer the preflight
            item["options"] = _preflight(path, item)
    return doc


def document_json(settings: Settings, catalog: Catalog) -> str:
    return json.dumps(build(settings, catalog), separators=(",", ":"))


class OpenApiHandler(ApiHandler):
    """GET /api/openapi.json: this description, built once when the app is made."""

    def initialize(self, ctx, document: str) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.document = document

    def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=300")
        self.finish(self.document)


def openapi_route(ctx) -> tuple:
    return (r"/api/openapi.json", OpenApiHandler, {"ctx": ctx, "document": document_json(ctx.settings, ctx.catalog)})


# ---- building blocks ---------------------------------------------------------------------
def _ref(name: str) -> dict:
    return {"$ref": SCHEMAS + name}


def _json(schema: dict, description: str, *, headers: dict | None = None, links: dict | None = None,
          example: object = None) -> dict:
    media: dict = {"schema": schema}
    if example is not None:
        media["example"] = example
    out: dict = {"description": description, "content": {JSON: media}}
    if headers:
        out["headers"] = headers
    if links:
        out["links"] = links
    return out


def _error_response(description: str, *codes: str, headers: dict | None = None) -> dict:
    """An error answer in the contract's shape, naming the exact codes it may carry."""
    schema = {"allOf": [_ref("Error"), {"properties": {"code": {"enum": list(codes)}}}]}
    return _json(schema, description, headers=headers)


def _shared(name: str) -> dict:
    return {"$ref": "#/components/responses/" + name}


_STATIC_PATHS = ("/static/{file}", "/")  # files (s2s.web.demo), not ApiHandler: no preflight
_NO_STORE = {"Cache-Control": {"required": True, "schema": {"type": "string", "const": "no-store"}}}


def _preflight(path: str, item: dict) -> dict:
    """The CORS preflight every API path answers (ApiHandler.options)."""
    methods = ", ".join([m.upper() for m in ("get", "post") if m in item] + ["OPTIONS"])
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
                    "type": "string", "const": "Content-Type, Idempotency-Key, Authorization"}},
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


# ---- paths -------------------------------------------------------------------------------
def _paths(settings: Settings, catalog: Catalog) -> dict:
    job_id = [{"$ref": "#/components/parameters/JobId"}]
    redis_down = {"503": _shared("RedisUnavailable")}
    job_links = {
        "status": {"operationId": "getJobStatus", "parameters": {"jobId": "$response.body#/jobId"}},
        "image": {"operationId": "getJobImage", "parameters": {"jobId": "$response.body#/jobId"}},
        "cancel": {"operationId": "cancelJob", "parameters": {"jobId": "$response.body#/jobId"}},
    }
    max_body, max_image = settings.max_body_bytes, settings.max_image_bytes
    if settings.admin_token:
        operator: dict = {"security": [{"operatorToken": []}], "tags": ["operator"]}
        refusals = {"401": _shared("Unauthorized"), "403": _shared("Forbidden")}
    else:  # no token can open them: every call is refused
        operator = {"tags": ["operator"]}
        refusals = {"403": _shared("OperatorDisabled")}
    static_files = CLIENT_FILES | DEMO_FILES if settings.demo else CLIENT_FILES  # as s2s.web.demo.browser_routes
    paths = {
        "/api/jobs/generate-image": {"post": {
            "operationId": "submitJob",
            "tags": ["jobs"],
            "summary": "Submit a photo to be drawn as a storybook cover or page",
            "description": (
                "Validated entirely before anything is queued: the photo is decoded in full. Answers 202 at "
                f"once; the picture is made by a worker. Requests over {max_body} bytes are refused with 413 "
                "from their `Content-Length`, before the body is read."),
            "parameters": [{
                "name": "Idempotency-Key", "in": "header", "required": False,
                "description": "A retried POST with the same key and body answers the same job (and counts "
                               "once against the rate limit); the same key with another body is a 409.",
                "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
            }],
            "requestBody": {"required": True, "content": {JSON: {
                "schema": _ref("Submission"),
                "example": {"heroName": "Mia", "originalImageBase64": _EXAMPLE_PHOTO, "themeId": "space",
                            "styleKey": "cartoon", "kind": "cover"},
            }}},
            "responses": {
                "202": _json(_ref("Accepted"), "Queued (or, with a reused Idempotency-Key, already queued).",
                             headers={"Location": {"$ref": "#/components/headers/Location"}}, links=job_links),
                "400": _error_response(
                    "A field breaks a rule; `details.field` names it and `details.reason` says why.",
                    "invalid_json", "missing_field", "invalid_field", "invalid_base64", "unsupported_image_type",
                    "invalid_image", "image_type_mismatch", "image_too_many_pixels", "unknown_themeId",
                    "unknown_styleKey", "unknown_kind", "invalid_idempotency_key"),
                "409": _error_response("This Idempotency-Key was used for a different body; `details.jobId` is "
                                       "the job it made.", "idempotency_key_reused"),
                "413": _error_response(
                    f"The request is over {max_body} bytes (`request_too_large`), or the decoded photo over "
                    f"{max_image} bytes (`image_too_large`); `details.maxBytes` says the limit.",
                    "request_too_large", "image_too_large"),
                "415": _error_response("The body is not sent as `Content-Type: application/json`.",
                                       "unsupported_media_type"),
                "429": _error_response(
                    f"This client (IP address, or IPv6 /64) submitted {settings.submit_per_minute or 'its limit of'} "
                    "jobs in the last minute (`S2S_SUBMIT_PER_MINUTE`); `Retry-After` says when the next is taken.",
                    "rate_limited",
                    headers={"Retry-After": _retry_after(required=True)}),
                "503": _error_response(
                    "Too many jobs are waiting (`queue_full`, with `Retry-After`; `S2S_MAX_WAITING`), the job "
                    "store is full (`storage_full`, with `Retry-After`; `S2S_STORE_HIGH_WATER_PERCENT`), or it is "
                    "down (`redis_unavailable`).", "queue_full", "storage_full", "redis_unavailable",
                    headers={"Retry-After": _retry_after(required=False)}),
            },
        }},
        "/api/jobs/{jobId}/status": {"parameters": job_id, "get": {
            "operationId": "getJobStatus",
            "tags": ["jobs"],
            "summary": "A job's status, progress and, once completed, where its picture is",
            "responses": {"200": _json(_ref("Job"), "The job.", headers=_NO_STORE),
                          "404": _shared("JobNotFound"), **redis_down},
        }},
        "/api/jobs/{jobId}/image": {"parameters": job_id, "get": {
            "operationId": "getJobImage",
            "tags": ["jobs"],
            "summary": "The picture of a completed job (what `result.imageUrl` points to)",
            "description": f"Kept for S2S_RETENTION_SECONDS ({settings.retention_seconds} s) after the job ended.",
            "responses": {
                "200": {
                    "description": "The image bytes with their type: PNG from the built-in providers; an "
                                   "upstream provider may answer JPEG or WebP.",
                    "headers": {
                        "Content-Disposition": {"required": True, "schema": {"type": "string",
                                                                             "pattern": "^inline; filename="}},
                        "Cache-Control": {"required": True, "schema": {"type": "string"}},
                    },
                    "content": {t: {} for t in ("image/png", "image/jpeg", "image/webp", "image/*")},
                },
                "404": _error_response("No image: unknown job, a job that did not complete, or expired.",
                                       "image_not_found", "not_found"),
                "409": _error_response("The job has not ended yet.", "job_not_finished"),
                **redis_down,
            },
        }},
        "/api/jobs/stats": {"get": {
            "operationId": "getStats",
            "tags": ["queue"],
            "summary": "How many jobs are in each state, run times, and whether the queue is paused",
            "responses": {"200": _json(_ref("Stats"), "The figures, read at one instant.", headers=_NO_STORE),
                          **redis_down},
        }},
        "/api/jobs/health": {"get": {
            "operationId": "getHealth",
            "tags": ["queue"],
            "summary": "Whether this API can serve: Redis round trip, live workers, queue depth, provider",
            "description": "A provider flagged `misconfigured` (its key refused) still answers 200: that is the "
                           "operator's to fix, not a reason for a load balancer to pull the API.",
            "responses": {
                "200": _json(_ref("Health"), "Healthy.", headers=_NO_STORE),
                "503": _json(_ref("Unhealthy"), "Not able to serve; `reason` says why."),
            },
        }},
        "/api/catalog": {"get": {
            "operationId": "getCatalog",
            "tags": ["jobs"],
            "summary": "The themes, styles and kinds a submission may choose",
            "responses": {"200": _json(_ref("Catalog"), "The choices, with the defaults.",
                                       example=catalog.to_json())},
        }},
        "/api/jobs/{jobId}/cancel": {"parameters": job_id, "post": {
            **operator,
            "operationId": "cancelJob",
            "summary": "Cancel a job: a queued one never runs; a running one is stopped",
            "responses": {
                "200": _json(_ref("Job"), "The job, now cancelled."),
                **refusals, "404": _shared("JobNotFound"),
                "409": _error_response("The job already ended.", "job_already_ended"),
                **redis_down,
            },
        }},
        "/api/jobs/{jobId}/retry": {"parameters": job_id, "post": {
            **operator,
            "operationId": "retryJob",
            "summary": "Queue a failed or cancelled job again",
            "responses": {
                "202": _json(_ref("Job"), "The job, queued again."),
                **refusals, "404": _shared("JobNotFound"),
                "409": _error_response("Only failed or cancelled jobs can be retried (`job_not_retryable`), and "
                                       "only while their photo is kept (`photo_expired`).",
                                       "job_not_retryable", "photo_expired"),
                **redis_down,
            },
        }},
        "/api/jobs/{jobId}/events": {"parameters": job_id, "get": {
            **operator,
            "operationId": "getJobEvents",
            "summary": "A job's kept event history, oldest first (the frames /ws sends)",
            "responses": {"200": _json(_ref("JobEvents"), "The events."), **refusals,
                          "404": _shared("JobNotFound"), **redis_down},
        }},
        "/api/queue/pause": {"post": {
            **operator,
            "operationId": "pauseQueue",
            "summary": "Workers stop taking jobs; submissions are still accepted",
            "responses": {"200": _json(_ref("QueueCounts"), "The queue, now paused."), **refusals,
                          **redis_down},
        }},
        "/api/queue/resume": {"post": {
            **operator,
            "operationId": "resumeQueue",
            "summary": "Workers take jobs again",
            "responses": {"200": _json(_ref("QueueCounts"), "The queue, running."), **refusals,
                          **redis_down},
        }},
        "/api/workers": {"get": {
            **operator,
            "operationId": "listWorkers",
            "summary": "Every worker process seen in the last hour; dead ones have `alive: false`",
            "responses": {"200": _json(_ref("WorkerList"), "The workers."), **refusals, **redis_down},
        }},
        "/api/jobs": {"get": {
            **operator,
            "operationId": "listJobs",
            "summary": "The newest jobs in one state (waiting: in the order they will run)",
            "parameters": [
                {"name": "state", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(JOB_STATES), "default": "active"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
            ],
            "responses": {
                "200": _json(_ref("JobList"), "The jobs."),
                "400": _error_response("`state` or `limit` is not one of the accepted values.",
                                       "invalid_state", "invalid_limit"),
                **refusals, **redis_down,
            },
        }},
        "/api/jobs/retry-failed": {"post": {
            **operator,
            "operationId": "retryFailedJobs",
            "summary": "Queue every kept failed job again (up to 500)",
            "responses": {"202": _json(_ref("RetryFailedResult"), "What was queued again."),
                          **refusals, **redis_down},
        }},
        "/api/openapi.json": {"get": {
            "operationId": "getOpenApi",
            "tags": ["meta"],
            "summary": "This description",
            "responses": {"200": _json({"type": "object", "required": ["openapi", "info", "paths"]},
                                       "OpenAPI 3.1, as JSON.")},
        }},
        "/metrics": {"get": {
            "operationId": "getMetrics",
            "tags": ["meta"],
            "summary": "Prometheus metrics of the whole system",
            "description": "Cluster-wide figures: every worker's and every API process's counters are summed "
                           "through Redis, so one scrape of any API process sees the whole system. When "
                           "S2S_ADMIN_TOKEN is set, the operator token is required.",
            "security": [{"operatorToken": []}] if settings.admin_token else [],
            "responses": {
                "200": {"description": "The Prometheus text exposition format.", "headers": _NO_STORE,
                        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}},
                **(refusals if settings.admin_token else {}),
                **redis_down,
            },
        }},
        "/static/{file}": {"get": {
            "operationId": "getStaticFile",
            "tags": ["meta"],
            "summary": "The browser client module `s2s-client.js` (and, with S2S_DEMO, the demo page's files)",
            "description": "Public code: sent with `Access-Control-Allow-Origin: *` so frontends on other origins "
                           "can import it; revalidated by ETag on every use.",
            "parameters": [{"name": "file", "in": "path", "required": True,
                            "schema": {"enum": sorted(static_files)}}],
            "responses": {
                "200": {"description": "The file.",
                        "headers": {"ETag": {"required": True, "schema": {"type": "string"}}},
                        "content": {"text/javascript": {"schema": {"type": "string"}},
                                    "text/css": {"schema": {"type": "string"}}}},
                "404": _error_response("No such file.", "not_found"),
            },
        }},
    }
    if settings.demo:
        paths["/"] = {"get": {
            "operationId": "getDemoPage",
            "tags": ["meta"],
            "summary": "The demo page (S2S_DEMO; without it, / is a 404 like any unknown path)",
            "responses": {"200": {"description": "The page.",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }}
    return paths


def _retry_after(*, required: bool) -> dict:
    return {"required": required, "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 1}}


# A 1x1 PNG: the example submission is a real one (the API accepts it).
_EXAMPLE_PHOTO = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4dSIAAATSAhOn"
                  "fE5zAAAAAElFTkSuQmCC")


# ---- schemas -----------------------------------------------------------------------------
def _nullable(type_: str, **more) -> dict:
    return {"type": [type_, "null"], **more}


_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601 UTC with a `Z`."}
_COUNT = {"type": "integer", "minimum": 0}
_STATUSES = ["queued", "processing", "completed", "failed", "cancelled"]


def _counts() -> dict:
    """The counts of :class:`s2s.models.Stats`, shared by the stats and the pause/resume answers."""
    return {
        "waiting": {**_COUNT, "description": "Queued and due."},
        "active": {**_COUNT, "description": "Being drawn by a worker now."},
        "completed": {**_COUNT, "description": "Ended and kept (retention time)."},
        "failed": _COUNT,
        "delayed": {**_COUNT, "description": "Waiting for a retry's backoff to pass."},
        "cancelled": _COUNT,
        "paused": {"type": "boolean", "description": "Workers take no jobs while paused."},
        "totals": {"type": "object", "additionalProperties": _COUNT,
                   "description": "Counters since the store began (completed, failed, retried, cancelled, ...)."},
    }


def _schemas(settings: Settings, catalog: Catalog) -> dict:
    def choice(options, default: str) -> dict:
        # null counts as "not given" (the default), so the schema admits it
        return {"enum": [*options, None], "default": default,
                "description": f"Default `{default}`; the choices are listed by GET /api/catalog."}

    counts = _counts()
    probe = {  # what GET /api/jobs/health found
        "redis": {"type": "object", "required": ["ok", "rttMs"], "properties": {
            "ok": {"const": True}, "rttMs": {"type": "number", "minimum": 0}}},
        "workers": {"type": "object", "required": ["alive", "absentMs"], "properties": {
            "alive": {**_COUNT, "description": "Workers heard from within the lease time."},
            "absentMs": {**_COUNT, "description": "How long no worker has been alive (0 while one is)."}}},
        "queue": {"type": "object", "required": ["waiting", "oldestWaitingAgeMs"], "properties": {
            "waiting": _COUNT, "oldestWaitingAgeMs": _nullable("integer", minimum=0)}},
        "provider": _ref("ProviderState"),
        "store": {"type": "object", "required": ["state", "usedBytes", "maxBytes"], "properties": {
            "state": {"enum": ["ok", "full"], "description": "full: submits get 503 storage_full, claims pause."},
            "usedBytes": _COUNT, "maxBytes": _nullable("integer", minimum=1), "reason": {"type": "string"}}},
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
        "Submission": {
            "type": "object",
            "required": ["heroName", "originalImageBase64"],
            "properties": {
                "heroName": {"type": "string", "minLength": 1,
                             "description": "1-64 characters after trimming surrounding whitespace, no control "
                                            "characters; drawn on the cover.", "examples": ["Mia"]},
                "originalImageBase64": {
                    "type": "string", "minLength": 1,
                    "description": (
                        "The photo: a data URL (`data:image/jpeg;base64,...`, also png and webp) or bare "
                        "base64. It must decode to a whole, readable image of the declared type, of at most "
                        f"{settings.max_image_bytes} bytes (MAX_IMAGE_BYTES) and {settings.max_image_pixels} "
                        "pixels (S2S_MAX_IMAGE_PIXELS)."),
                },
                "themeId": choice(catalog.themes, catalog.default_theme),
                "styleKey": choice(catalog.styles, catalog.default_style),
                "kind": choice(catalog.kinds, catalog.default_kind),
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["jobId", "status", "message", "statusUrl", "websocketSubscription"],
            "properties": {
                "jobId": {"type": "string", "pattern": JOB_ID_PATTERN,
                          "description": "Unguessable: at least 128 random bits, URL-safe."},
                "status": {"const": "queued"},
                "message": {"type": "string"},
                "statusUrl": {"type": "string", "format": "uri-reference"},
                "websocketSubscription": {"type": "string", "pattern": "^job:",
                                          "description": "The `jobId` to give `subscribe_to_job` on /ws."},
            },
        },
        "Job": {
            "type": "object",
            "description": "A job as GET /api/jobs/{jobId}/status tells it (`s2s.models.Job.to_json`).",
            "required": ["jobId", "status", "progress", "message", "createdAt", "attempts", "maxAttempts",
                         "heroName", "themeId", "styleKey", "kind", "seq"],
            "properties": {
                "jobId": {"type": "string", "pattern": JOB_ID_PATTERN},
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
                "attempts": {**_COUNT, "description": "Attempts started so far."},
                "maxAttempts": {"type": "integer", "minimum": 1},
                "upstreamCalls": {**_COUNT, "description": "Calls made to the image provider for this job (each "
                                                          "one is paid for)."},
                "heroName": {"type": "string"},
                "themeId": {"type": "string"},
                "styleKey": {"type": "string"},
                "kind": {"type": "string"},
                "seq": {**_COUNT, "description": "The `seq` of the job's latest event."},
                "provider": {"type": "string", "description": "Which provider drew it."},
                "result": {"type": "object", "required": ["imageUrl"], "properties": {
                    "imageUrl": {"type": "string", "format": "uri",
                                 "description": "Answers GET with the image bytes."}}},
                "error": {"type": "string", "description": "Why it failed: a sentence a person can read."},
                "errorCode": {"type": "string"},
                "lastError": {"type": "string", "description": "Why the previous attempt failed (a retry is due)."},
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
            },
        },
        "JobEvents": {
            "type": "object",
            "required": ["jobId", "events"],
            "properties": {"jobId": {"type": "string"}, "events": {"type": "array", "items": _ref("JobEvent")}},
        },
        "JobList": {
            "type": "object",
            "required": ["state", "jobs"],
            "properties": {"state": {"enum": list(JOB_STATES)}, "jobs": {"type": "array", "items": _ref("Job")}},
        },
        "RetryFailedResult": {
            "type": "object",
            "required": ["retried", "expired"],
            "properties": {
                "retried": {"type": "array", "items": {"type": "string"}, "description": "Queued again."},
                "expired": {"type": "array", "items": {"type": "string"},
                            "description": "Their photo expired: they cannot run again."},
            },
        },
        "QueueCounts": {
            "type": "object",
            "required": list(counts),
            "properties": counts,
        },
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
                                   "sample": _COUNT},
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
            "required": ["status", "redis", "workers", "queue", "provider"],
            "properties": {"status": {"const": "ok"}, **probe},
        },
        "Unhealthy": {
            "type": "object",
            "description": "Why the API cannot serve; with what the probe found, where it got that far.",
            "required": ["status", "reason"],
            "properties": {
                "status": {"const": "unhealthy"},
                "reason": {"type": "string", "description": "Redis not answering, or no worker alive for "
                                                            "S2S_WORKER_ABSENT_MS."},
                **probe,
                "redis": {"type": "object", "required": ["ok"], "properties": {
                    "ok": {"type": "boolean"}, "rttMs": {"type": "number", "minimum": 0}}},
            },
        },
        "Catalog": {
            "type": "object",
            "required": ["themes", "styles", "kinds", "defaults"],
            "properties": {
                "themes": {"type": "array", "items": {
                    "type": "object", "required": ["id", "name", "tagline"],
                    "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                                   "tagline": {"type": "string"}}}},
                "styles": {"type": "array", "items": {
                    "type": "object", "required": ["key", "name"],
                    "properties": {"key": {"type": "string"}, "name": {"type": "string"}}}},
                "kinds": {"type": "array", "items": {
                    "type": "object", "required": ["id", "name"],
                    "properties": {"id": {"type": "string"}, "name": {"type": "string"}}}},
                "defaults": {"type": "object", "required": ["themeId", "styleKey", "kind"], "properties": {
                    "themeId": {"type": "string"}, "styleKey": {"type": "string"}, "kind": {"type": "string"}}},
            },
        },
        "Worker": {
            "type": "object",
            "description": "A worker process as its last heartbeat described it.",
            "required": ["id", "alive", "lastSeenMs"],
            "properties": {
                "id": {"type": "string"},
                "alive": {"type": "boolean", "description": "Heard from within the lease time."},
                "lastSeenMs": {**_COUNT, "description": "Age of its last heartbeat."},
                "host": {"type": "string"},
                "pid": {"type": "integer"},
                "concurrency": {"type": "integer", "minimum": 1},
                "jobs": {**_COUNT, "description": "Jobs in hand."},
                "provider": {"type": "string"},
                "state": {"enum": ["running", "draining"]},
                "startedAt": {"type": "integer", "description": "Milliseconds since the epoch."},
            },
        },
        "WorkerList": {
            "type": "object",
            "required": ["workers", "alive"],
            "properties": {"workers": {"type": "array", "items": _ref("Worker")}, "alive": _COUNT},
        },
    }
