"""Structured logging: JSON lines in production, readable key=value lines in development.

Callers pass context as ``extra={...}``; only those fields and the message are
written, so image bytes or keys never reach a log by accident. Requests get one
line each from :func:`log_request` (method, path, status, time, client address),
never a query string or a header.

A job id is the key to a child's picture and the hero's name (anyone holding one
may read both), so no log carries one, at any level: callers pass the id as the
``job`` field and the formatters write its :func:`job_digest` instead; a request
path writes ``{jobId}`` where the id was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
JOB_FIELD = "job"


def job_digest(job_id: str) -> str:
    """How logs name a job: the first 8 hex digits of the SHA-256 of its id (``s2s job-digest <id>``).

    The same in API and worker lines, so it correlates them as the id did, and it opens nothing:
    32 bits of a hash say nothing usable about a 144-bit random id. Shell:
    ``printf %s "$JOB_ID" | sha256sum | cut -c1-8``.
    """
    return hashlib.sha256(job_id.encode()).hexdigest()[:8]


def _context(record: logging.LogRecord) -> dict:
    out = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    if out.get(JOB_FIELD) is not None:
        out[JOB_FIELD] = job_digest(str(out[JOB_FIELD]))
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(f"{k}={v}" for k, v in _context(record).items())
        line = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} " \
               f"{record.name}: {record.getMessage()}" + (f"  {ctx}" if ctx else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


#: Probed every few seconds by load balancers and scrapers: their lines are DEBUG, so INFO stays readable.
QUIET_PATHS = frozenset({"/api/jobs/health", "/metrics"})
MAX_PATH_CHARS = 200
# a path segment as long as a job id (no route's own segment is): written as {jobId} even where no route matched
_ID_LIKE = re.compile(r"[A-Za-z0-9_-]{16,64}")

_requests = logging.getLogger("s2s.request")


def log_request(handler) -> None:
    """Tornado's ``log_function``: one line per request, at the end of it.

    ``request.path`` has no query string and ``remote_ip`` honours S2S_TRUST_PROXY
    (the server's ``xheaders``); headers are never logged.
    """
    request = handler.request
    status = handler.get_status()
    if status >= 500:
        level = logging.ERROR
    elif request.path in QUIET_PATHS:
        level = logging.DEBUG
    else:
        level = logging.INFO
    if not _requests.isEnabledFor(level):
        return
    fields = {**request_fields(handler), "status": status,
              "duration_ms": round(request.request_time() * 1000, 1), "ip": request.remote_ip}
    _requests.log(level, "request", extra=fields)


def request_fields(handler) -> dict:
    """Which request a line is about, fit for a log: method, the path with ``{jobId}`` for the id, the job.

    The job is the route's ``job_id``, or else the first id-long segment of a path no route took
    (``/api/jobs/<id>/status/``): whichever it is, the formatter writes it as its digest.
    """
    request = handler.request
    job_id = (handler.path_kwargs or {}).get("job_id")
    segments = []
    for segment in request.path.split("/"):
        if segment and (segment == job_id or _ID_LIKE.fullmatch(segment)):
            job_id = job_id or segment
            segment = "{jobId}"
        segments.append(segment)
    fields = {"method": request.method, "path": "/".join(segments)[:MAX_PATH_CHARS]}
    if job_id:
        fields[JOB_FIELD] = job_id
    return fields


def setup(level: str = "info", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("tornado.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
