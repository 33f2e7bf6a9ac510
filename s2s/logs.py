"""Structured logging: JSON lines in production, readable key=value lines in development.

Callers pass context as ``extra={...}``; only those fields and the message are
written, so image bytes or keys never reach a log by accident. Requests get one
line each from :func:`log_request` (method, path, status, time, client address),
never a query string or a header.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _context(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


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
    fields = {"method": request.method, "path": request.path[:MAX_PATH_CHARS], "status": status,
              "duration_ms": round(request.request_time() * 1000, 1), "ip": request.remote_ip}
    job_id = (handler.path_kwargs or {}).get("job_id")
    if job_id:
        fields["job"] = job_id
    _requests.log(level, "request", extra=fields)


def setup(level: str = "info", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("tornado.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
