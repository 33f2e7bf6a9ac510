"""Settings: every knob of s2s, read once from the environment (and ``.env``).

The command line builds one frozen :class:`Settings` and hands it down; nothing
else reads the environment. A bad value stops start-up with one line naming the
variable and the rule (:class:`SettingsError`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
from attrs import field, frozen

ENVIRONMENTS = ("development", "production", "test")
PROVIDERS = ("auto", "local", "noop", "openai", "qwen")


class SettingsError(ValueError):
    """One variable is wrong: the message names it and the rule it broke."""


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: must be a whole number") from None
        if lo is not None and value < lo:
            raise SettingsError(f"{name}={raw!r}: must be at least {lo}")
        if hi is not None and value > hi:
            raise SettingsError(f"{name}={raw!r}: must be at most {hi}")
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise SettingsError(f"{name}={raw!r}: must be one of {', '.join(options)}")
        return value

    return parse


def _auto_int(lo: int, hi: int) -> Callable[[str, str], int | None]:
    """A whole number, or ``auto`` (or empty): None, for the code to choose."""
    number = _int(lo, hi)

    def parse(name: str, raw: str) -> int | None:
        return None if raw.strip().lower() in ("", "auto") else number(name, raw)

    return parse


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _optional(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _origins(name: str, raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingsError(f"{name}: {origin!r} must be '*' or start with http:// or https://")
    return origins


def _url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={raw!r}: must start with http:// or https://")
    return value


def _optional_url(name: str, raw: str) -> str | None:
    return _url(name, raw) if raw.strip() else None


STORAGE_SCHEMES = ("file", "s3", "redis", "rediss")


def _storage_url(name: str, raw: str) -> str | None:
    """``file:///absolute/dir``, ``s3://bucket[/prefix]`` or ``redis://`` (blank: the REDIS_URL Redis)."""
    value = raw.strip()
    if not value:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in STORAGE_SCHEMES:
        raise SettingsError(f"{name}={raw!r}: must be file:///absolute/dir, s3://bucket/prefix or redis://")
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):
            raise SettingsError(f"{name}={raw!r}: a file URL needs an absolute path, e.g. file:///srv/s2s/blobs")
        return "file://" + rest.rstrip("/")
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise SettingsError(f"{name}={raw!r}: an s3 URL names its bucket, e.g. s3://my-bucket/s2s")
        prefix = prefix.strip("/")
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    return value


def _image_size(name: str, raw: str) -> str | None:
    """``auto`` or ``WIDTHxHEIGHT``; blank means "take it from the kind"."""
    value = raw.strip().lower()
    if not value:
        return None
    width, sep, height = value.partition("x")
    if value != "auto" and not (sep and width.isdigit() and height.isdigit()):
        raise SettingsError(f"{name}={raw!r}: must be auto or WIDTHxHEIGHT, e.g. 1024x1536")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r}: must be true or false")


def _webhook_secrets(name: str, raw: str) -> tuple[str, ...]:
    """``whsec_<base64>`` secrets, space or comma separated: each signs every delivery (rotation)."""
    found = tuple(part for part in raw.replace(",", " ").split() if part)
    for secret in found:
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not secret.startswith("whsec_") or len(key) < 16:
            raise SettingsError(f"{name}: each secret is whsec_ and the base64 of at least 16 random bytes")
    return found


def _hosts(name: str, raw: str) -> tuple[str, ...]:
    return tuple(h.strip().lower().strip("[]") for h in raw.replace(",", " ").split() if h.strip())


def _seconds_list(name: str, raw: str) -> tuple[float, ...]:
    try:
        found = tuple(float(part) for part in raw.replace(",", " ").split())
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: must be seconds separated by commas, e.g. 5,300,1800") from None
    if not found or any(v < 0 for v in found):
        raise SettingsError(f"{name}={raw!r}: must be one or more seconds, none negative")
    return found


def _env(var: str, parse: Callable[[str, str], object], default: object, doc: str, *, secret: bool = False):
    """A settings field bound to an environment variable (metadata drives ``from_env``).

    Secrets stay out of ``repr`` so settings can be logged.
    """
    return field(default=default, repr=not secret, metadata={"env": var, "parse": parse, "doc": doc})


@frozen
class Settings:
    # --- the original service's variables ---
    port: int = _env("PORT", _int(1, 65535), 3001, "HTTP port of the API")
    host: str = _env("S2S_HOST", _text, "127.0.0.1", "address the API listens on (0.0.0.0 in a container)")
    redis_url: str | None = _env("REDIS_URL", _optional, None,
                                 "Redis to use; unset: `s2s up` starts an embedded one")
    openai_api_key: str | None = _env("OPENAI_API_KEY", _optional, None, "OpenAI key (provider openai)",
                                      secret=True)
    qwen_api_key: str | None = _env("QWEN_3_IMAGE_EDIT_KEY", _optional, None, "DashScope key (provider qwen)",
                                   secret=True)
    cors_origins: tuple[str, ...] = _env("CORS_ORIGINS", _origins, ("http://localhost:3000",),
                                         "comma-separated browser origins allowed to call the API")
    worker_concurrency: int = _env("WORKER_CONCURRENCY", _int(1, 1000), 2, "jobs one worker process runs at once")
    ws_ping_timeout_ms: int = _env("WS_PING_TIMEOUT", _int(1000), 60000, "ms without a pong before a socket is dropped")
    ws_ping_interval_ms: int = _env("WS_PING_INTERVAL", _int(1000), 25000, "ms between pings to each socket")
    env: str = _env("S2S_ENV", _choice(ENVIRONMENTS), "development", "development, production or test")
    # --- ours ---
    provider: str = _env("S2S_PROVIDER", _choice(PROVIDERS), "auto",
                         "image provider; auto: openai if its key is set, else qwen, else local")
    key_prefix: str = _env("S2S_KEY_PREFIX", _text, "s2s", "prefix of every Redis key")
    max_image_bytes: int = _env("MAX_IMAGE_BYTES", _int(1024), 10 * 1024 * 1024, "largest decoded upload, bytes")
    max_image_pixels: int = _env("S2S_MAX_IMAGE_PIXELS", _int(10_000), 40_000_000,
                                 "largest upload in pixels (decompression bombs)")
    max_attempts: int = _env("S2S_MAX_ATTEMPTS", _int(1, 100), 3, "attempts per job before it fails")
    retry_base_ms: int = _env("S2S_RETRY_BASE_MS", _int(0), 2000, "first retry delay; doubles per attempt, jittered")
    retry_max_ms: int = _env("S2S_RETRY_MAX_MS", _int(0), 60000, "longest retry delay")
    lease_ms: int = _env("S2S_LEASE_MS", _int(500), 15000,
                         "a job whose worker stops renewing its lease this long is suspected; it runs again "
                         "lease/3 + 2 s later")
    retention_seconds: int = _env("S2S_RETENTION_SECONDS", _int(1), 86400,
                                  "how long ended jobs and their images are kept")
    shutdown_grace_ms: int = _env("S2S_SHUTDOWN_GRACE_MS", _int(0), 20000,
                                  "on SIGTERM, time past S2S_UPSTREAM_TIMEOUT_MS to store the pictures of calls begun, "
                                  "before what is left goes back to the queue")
    noop_delay_ms: int = _env("S2S_NOOP_DELAY_MS", _int(0), 0, "how long the noop provider pretends to work")
    noop_fail_attempts: int = _env("S2S_NOOP_FAIL_ATTEMPTS", _int(0), 0,
                                   "the noop provider fails each job's first N attempts (fault drills)")
    public_url: str | None = _env("S2S_PUBLIC_URL", _optional, None,
                                  "external base URL for image links; unset: taken from each request")
    data_dir: str = _env("S2S_DATA_DIR", _text, ".s2s", "where `s2s up` keeps the embedded Redis's AOF")
    config_dir: str | None = _env("S2S_CONFIG_DIR", _optional, None, "themes/styles/kinds; unset: the packaged config/")
    admin_token: str | None = _env("S2S_ADMIN_TOKEN", _optional, None,
                                   "bearer token of the operator endpoints; unset: they are disabled", secret=True)
    trust_proxy: bool = _env("S2S_TRUST_PROXY", _bool, False,
                             "take client address and scheme from X-Forwarded-* (behind Render's proxy)")
    log_level: str = _env("S2S_LOG_LEVEL", _choice(("debug", "info", "warning", "error")), "info", "log level")
    # --- blob storage (s2s/storage/) ---
    storage_url: str | None = _env(
        "S2S_STORAGE_URL", _storage_url, None,
        "where photos and pictures are kept: file:///dir, s3://bucket/prefix or redis://; unset: redis:// (REDIS_URL)")
    aws_endpoint_url: str | None = _env("AWS_ENDPOINT_URL", _optional_url, None,
                                        "S3-compatible endpoint (R2, B2, MinIO); unset: AWS S3 in AWS_REGION")
    aws_region: str = _env("AWS_REGION", _text, "us-east-1", "region of the S3 bucket (Cloudflare R2: auto)")
    aws_access_key_id: str | None = _env("AWS_ACCESS_KEY_ID", _optional, None, "S3 access key id", secret=True)
    aws_secret_access_key: str | None = _env("AWS_SECRET_ACCESS_KEY", _optional, None, "S3 secret access key",
                                             secret=True)
    storage_link_seconds: int = _env("S2S_STORAGE_LINK_SECONDS", _int(1, 7 * 86400), 300,
                                     "how long a presigned picture link (s3 storage) stays valid")
    # --- operating limits ---
    demo: bool = _env("S2S_DEMO", _bool, False, "serve the demo page at / (`s2s up` turns it on unless set)")
    submit_per_minute: int = _env(
        "S2S_SUBMIT_PER_MINUTE", _int(0), 30,
        "image submits one client may make per minute, across every API process (0: no limit)")
    max_waiting: int = _env("S2S_MAX_WAITING", _int(0), 5000,
                            "waiting jobs past which new submits are refused with 503 (0: no cap)")
    max_sockets_per_client: int = _env("S2S_MAX_SOCKETS_PER_CLIENT", _int(0), 50,
                                       "WebSockets one client may hold open on one API process (0: no cap)")
    max_connections_per_client: int = _env(
        "S2S_MAX_CONNECTIONS_PER_CLIENT", _int(0), 64,
        "HTTP connections one client may hold open to one API process; behind S2S_TRUST_PROXY, requests "
        "it may be sending at once (0: no cap)")
    idle_timeout_s: int = _env("S2S_IDLE_TIMEOUT_S", _int(1, 3600), 120,
                               "seconds a connection may take to send its headers, or sit idle between requests")
    body_min_bytes_per_s: int = _env(
        "S2S_BODY_MIN_BYTES_PER_S", _int(0), 1024,
        "slowest a request body may arrive, averaged over each S2S_BODY_RATE_WINDOW_S; slower is cut (0: no floor)")
    body_rate_window_s: int = _env("S2S_BODY_RATE_WINDOW_S", _int(1, 600), 15,
                                   "the window S2S_BODY_MIN_BYTES_PER_S is measured over, seconds")
    ws_frames_per_s: int = _env("S2S_WS_FRAMES_PER_S", _int(0), 10,
                                "frames one /ws socket may send a second; more get error rate_limited (0: no limit)")
    ws_frame_burst: int = _env("S2S_WS_FRAME_BURST", _int(1), 200,
                               "frames one /ws socket may send at once above that rate (resubscribing its jobs)")
    max_decodes: int = _env("S2S_MAX_DECODES", _int(0, 256), 0,
                            "uploads one API process reads and strips at once, in processes (0: one per CPU)")
    upload_body_mb: int = _env("S2S_UPLOAD_BODY_MB", _int(1), 64,
                               "MB of submit bodies one API process holds at once (each counts twice its size)")
    decode_memory_mb: int = _env("S2S_DECODE_MEMORY_MB", _int(1), 128,
                                 "MB of pixels one worker process decodes at once preparing photos (from the header; "
                                 "a bigger photo decodes alone)")
    upload_wait_ms: int = _env("S2S_UPLOAD_WAIT_MS", _int(0), 30000,
                               "longest a submit waits for room to upload before 503 server_busy")
    ws_max_pending_subscribes: int = _env(
        "S2S_WS_MAX_PENDING_SUBSCRIBES", _int(0), 25000,
        "subscribes in progress on one API process past which new ones get `overloaded` (0: no cap)")
    stream_max_s: int = _env(
        "S2S_STREAM_MAX_SECONDS", _int(1, 86400), 600,
        "longest one GET /stream answer lasts; its browser then reconnects with Last-Event-ID (spreads streams "
        "over API processes after a deploy)")
    redis_timeout_ms: int = _env("S2S_REDIS_TIMEOUT_MS", _int(100, 60000), 1000,
                                 "longest wait for Redis to accept a connection or answer a command")
    store_high_water_percent: int = _env(
        "S2S_STORE_HIGH_WATER_PERCENT", _int(0, 100), 90,
        "share of Redis's maxmemory past which submits get 503 storage_full and claims pause (0: only at maxmemory)")
    worker_claim_ahead: int | None = _env(
        "S2S_WORKER_CLAIM_AHEAD", _auto_int(0, 1000), None,
        "jobs a worker claims ahead of its free slots, so a freed slot starts one at once, only while slots free "
        "within a few ms of each other (short jobs); auto: a tenth of WORKER_CONCURRENCY; 0: off")
    worker_absent_ms: int = _env("S2S_WORKER_ABSENT_MS", _int(0), 60000,
                                 "health answers 503 once no worker has been alive this long (0: never)")
    # --- providers ---
    openai_base_url: str | None = _env("OPENAI_BASE_URL", _optional_url, None,
                                       "OpenAI API base, with /v1; unset: https://api.openai.com/v1")
    openai_model: str = _env("S2S_OPENAI_MODEL", _text, "gpt-image-2", "OpenAI image model used for edits")
    openai_size: str | None = _env("S2S_OPENAI_SIZE", _image_size, None,
                                   "OpenAI output size (WxH or auto); unset: the kind's shape, 1024x1536 or 1536x1024")
    openai_quality: str = _env("S2S_OPENAI_QUALITY", _choice(("low", "medium", "high", "auto")), "medium",
                               "OpenAI quality: low, medium, high or auto (higher costs more and takes longer)")
    openai_partial_images: int = _env("S2S_OPENAI_PARTIAL_IMAGES", _int(0, 3), 2,
                                      "drafts OpenAI streams before the final picture, each one a progress step")
    qwen_base_url: str = _env("QWEN_BASE_URL", _url, "https://dashscope-intl.aliyuncs.com",
                              "DashScope base (keys work only in their region; China: https://dashscope.aliyuncs.com)")
    qwen_model: str = _env("S2S_QWEN_MODEL", _text, "qwen-image-edit-plus",
                           "Qwen image edit model (qwen-image-edit-plus, qwen-image-edit-max, qwen-image-edit)")
    upstream_timeout_ms: int = _env("S2S_UPSTREAM_TIMEOUT_MS", _int(1000), 180000,
                                    "longest one upstream image call may take before it is retried")
    openai_rpm: int = _env("S2S_OPENAI_RPM", _int(0), 20,
                           "OpenAI requests per minute, shared by every worker (0: no limit)")
    openai_concurrency: int = _env("S2S_OPENAI_CONCURRENCY", _int(0), 4,
                                   "OpenAI calls in flight at once, across every worker (0: no limit)")
    qwen_rpm: int = _env("S2S_QWEN_RPM", _int(0), 60, "Qwen requests per minute, shared by every worker (0: no limit)")
    qwen_concurrency: int = _env("S2S_QWEN_CONCURRENCY", _int(0), 2,
                                 "Qwen calls in flight at once, across every worker (0: no limit)")
    webhook_url: str | None = _env("S2S_WEBHOOK_URL", _optional_url, None,
                                   "where every job's end is sent as a signed webhook (with S2S_WEBHOOK_SECRET)")
    webhook_secret: tuple[str, ...] = _env("S2S_WEBHOOK_SECRET", _webhook_secrets, (),
                                           "whsec_ secret(s) signing webhooks, space separated to rotate; "
                                           "unset: no webhooks", secret=True)
    webhook_hosts: tuple[str, ...] = _env("S2S_WEBHOOK_HOSTS", _hosts, (),
                                          "webhook hosts allowed on plain http and private or loopback addresses")
    webhook_per_job: bool = _env("S2S_WEBHOOK_PER_JOB", _bool, False,
                                 "accept a per-job webhookUrl in the submit body (instead of S2S_WEBHOOK_URL)")
    webhook_started: bool = _env("S2S_WEBHOOK_STARTED", _bool, False,
                                 "also send job.started when a worker begins a job (each attempt)")
    webhook_timeout_s: int = _env("S2S_WEBHOOK_TIMEOUT_S", _int(1, 60), 15, "longest one webhook attempt may take")
    webhook_concurrency: int = _env("S2S_WEBHOOK_CONCURRENCY", _int(1, 100), 8,
                                    "webhook deliveries one worker process makes at once")
    webhook_retry_s: tuple[float, ...] = _env(
        "S2S_WEBHOOK_RETRY_S", _seconds_list, (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        "seconds before each webhook retry, jittered (Standard Webhooks' schedule), capped by the retention")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, dotenv: str | Path | None = ".env",
                 **overrides) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) over an optional ``.env`` file.

        Real environment variables win over the file; ``overrides`` (command-line
        flags) win over both.
        """
        values: dict[str, str] = {}
        if dotenv and Path(dotenv).is_file():
            from dotenv import dotenv_values

            values.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        kwargs = {}
        for a in attrs.fields(cls):
            var = a.metadata["env"]
            if var in values:
                kwargs[a.name] = a.metadata["parse"](var, values[var])
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def effective_provider(self) -> str:
        if self.provider != "auto":
            return self.provider
        if self.openai_api_key:
            return "openai"
        if self.qwen_api_key:
            return "qwen"
        return "local"

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: the image as base64 plus room for the other fields."""
        return self.max_image_bytes * 4 // 3 + 64 * 1024

    def environ(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        out = {}
        for a in attrs.fields(type(self)):
            value = getattr(self, a.name)
            if value is None:
                continue
            out[a.metadata["env"]] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return out


def documented_variables() -> list[tuple[str, object, str]]:
    """(variable, default, description) for every setting: README and .env.example are checked against it."""
    return [(a.metadata["env"], a.default, a.metadata["doc"]) for a in attrs.fields(Settings)]
