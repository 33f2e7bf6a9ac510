"""The REST API as a client sees it: status codes, JSON bodies and headers.

Each test talks HTTP to the real Tornado application (pytest-tornado) backed by the
real redis-server the conftest starts. No worker runs here, so submitted jobs stay
queued unless a test moves them on through the queue API itself.
"""

from __future__ import annotations

import base64
import json
import random
import re
import socket
import struct
import sys
import zlib
from io import BytesIO
from pathlib import Path

import attrs
import pytest
from PIL import Image
from tornado.httpclient import HTTPResponse

from s2s.catalog import Catalog
from s2s.keys import Keys
from s2s.queue import Queue
from s2s.replies import now_ms
from s2s.storage import job_blob
from s2s.web.app import make_app
from s2s.web.handlers import AppContext
from tests.helpers import data_url, photo_bytes, redis_clock_past, wait_until_async

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KEYS = Keys("s2s")
TOKEN = "operator-secret-for-tests"
ORIGIN = "http://localhost:3000"  # the conftest settings allow this browser origin
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"

JPEG = photo_bytes("JPEG")
PNG = photo_bytes("PNG", (64, 64))
WEBP = photo_bytes("WEBP")
GIF = photo_bytes("GIF", (32, 32))
MISSING = object()  # a field left out of the request body
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{22,}$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


# ---- building requests ---------------------------------------------------------------------

def blank_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any size, compressed row by row: no pixel buffer is ever allocated.

    At 20000x20000 it is a few tens of kilobytes that would decode to 400 million pixels.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def noise_png(side: int, seed: int = 1) -> bytes:
    """A PNG that does not compress: its size is about 3 * side**2 bytes."""
    img = Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3))
    buf = BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def job_body(**fields) -> dict:
    """A valid submission, with ``fields`` changed (``MISSING`` leaves a field out)."""
    body = {"heroName": "Mia", "originalImageBase64": data_url(JPEG)}
    body.update(fields)
    return {k: v for k, v in body.items() if v is not MISSING}


async def call(http_client, base_url: str, path: str, method: str = "GET", body: bytes | None = None,
               headers: dict | None = None) -> HTTPResponse:
    url = path if path.startswith("http") else base_url + path
    if body is None and method in ("POST", "PUT"):
        body = b""
    return await http_client.fetch(url, method=method, body=body, headers=headers, raise_error=False,
                                   follow_redirects=False)


async def submit(http_client, base_url: str, payload: dict | bytes | None = None, headers: dict | None = None,
                 content_type: str = "application/json") -> HTTPResponse:
    """POST /api/jobs/generate-image with a JSON object (or raw bytes)."""
    payload = job_body() if payload is None else payload
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return await call(http_client, base_url, "/api/jobs/generate-image", "POST", body,
                      {"Content-Type": content_type, **(headers or {})})


def operator(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ---- reading answers -----------------------------------------------------------------------

def json_of(resp: HTTPResponse) -> dict:
    assert resp.headers["Content-Type"].split(";")[0] == "application/json", resp.headers["Content-Type"]
    return json.loads(resp.body)


def assert_error(resp: HTTPResponse, status: int, code: str, field: str | None = None) -> dict:
    """The contract's error shape: JSON with a sentence and a machine code, never HTML or a trace."""
    assert resp.code == status, (resp.code, resp.body)
    body = json_of(resp)
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and len(body["error"]) > 5, body
    assert "Traceback" not in body["error"] and "<html" not in resp.body.decode().lower()
    if field is not None:
        assert body["details"]["field"] == field, body
    return body


def assert_nothing_queued(redis_client) -> None:
    assert redis_client.llen(KEYS.waiting) == 0
    assert redis_client.keys(KEYS.job("*")) == []


async def queued_job(http_client, base_url: str, **fields) -> str:
    resp = await submit(http_client, base_url, job_body(**fields))
    assert resp.code == 202, resp.body
    return json_of(resp)["jobId"]


async def status_of(http_client, base_url: str, job_id: str) -> dict:
    resp = await call(http_client, base_url, f"/api/jobs/{job_id}/status")
    assert resp.code == 200, resp.body
    return json_of(resp)


async def stats_of(http_client, base_url: str) -> dict:
    resp = await call(http_client, base_url, "/api/jobs/stats")
    assert resp.code == 200, resp.body
    return json_of(resp)


# ---- the application under test ------------------------------------------------------------

@pytest.fixture
def overrides() -> dict:
    """Settings changed for a group of tests (classes below override this fixture)."""
    return {}


@pytest.fixture
def app_settings(settings, overrides):
    return attrs.evolve(settings, **overrides)


@pytest.fixture
def queue(app_settings, io_loop):
    q = Queue.connect(app_settings)
    yield q
    io_loop.run_sync(q.close)


@pytest.fixture
def app(app_settings, queue):
    return make_app(AppContext(settings=app_settings, queue=queue, catalog=Catalog.load()))


# ---- submitting a job ----------------------------------------------------------------------

@pytest.mark.gen_test(timeout=20)
async def test_submit_answers_202_with_where_to_look(http_client, base_url, redis_client):
    resp = await submit(http_client, base_url)

    assert resp.code == 202
    body = json_of(resp)
    job_id = body["jobId"]
    assert JOB_ID.match(job_id), job_id
    token = body["deleteToken"]  # the parent's key to DELETE it (tests/test_delete.py)
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", token) and token != job_id
    assert body == {"jobId": job_id, "status": "queued", "message": "Job queued successfully",
                    "statusUrl": f"/api/jobs/{job_id}/status", "websocketSubscription": f"job:{job_id}",
                    "deleteToken": token}
    assert resp.headers["Location"] == body["statusUrl"]
    assert redis_client.llen(KEYS.waiting) == 1


@pytest.mark.gen_test(timeout=20)
async def test_a_queued_job_shows_in_status_and_stats(http_client, base_url):
    job_id = await queued_job(http_client, base_url)

    status = await status_of(http_client, base_url, job_id)
    assert status["jobId"] == job_id
    assert status["status"] == "queued"
    assert status["progress"] == 0
    assert status["attempts"] == 0
    assert ISO_Z.match(status["createdAt"]), status["createdAt"]
    assert "result" not in status and "error" not in status
    assert (await stats_of(http_client, base_url))["waiting"] == 1


@pytest.mark.gen_test(timeout=20)
async def test_job_ids_differ_between_submissions(http_client, base_url):
    ids = {await queued_job(http_client, base_url) for _ in range(3)}
    assert len(ids) == 3


@pytest.mark.parametrize("image, stored", [
    (data_url(JPEG, "image/jpeg"), JPEG),
    (data_url(PNG, "image/png"), PNG),
    (data_url(WEBP, "image/webp"), WEBP),
    (data_url(JPEG, "image/jpg"), JPEG),
    (base64.b64encode(JPEG).decode(), JPEG),
    (base64.b64encode(PNG).decode(), PNG),
    (data_url(PNG, "image/png")[:60] + "\n" + data_url(PNG, "image/png")[60:], PNG),
], ids=["jpeg", "png", "webp", "jpg-alias", "bare-base64-jpeg", "bare-base64-png", "line-broken"])
@pytest.mark.gen_test(timeout=20)
async def test_accepted_image_encodings(http_client, base_url, redis_client, image, stored):
    job_id = await queued_job(http_client, base_url, originalImageBase64=image)

    assert (await status_of(http_client, base_url, job_id))["status"] == "queued"
    kept = Image.open(BytesIO(redis_client.get(KEYS.blob(job_blob(job_id, "photo")))))  # stripped, of its own type
    sent = Image.open(BytesIO(stored))
    assert (kept.format, kept.size) == (sent.format, sent.size)


@pytest.mark.gen_test(timeout=20)
async def test_defaults_apply_to_optional_fields(http_client, base_url):
    job_id = await queued_job(http_client, base_url, heroName="  Mia  ")

    status = await status_of(http_client, base_url, job_id)
    assert (status["heroName"], status["themeId"], status["styleKey"], status["kind"]) == (
        "Mia", "adventure", "watercolor", "cover")


@pytest.mark.gen_test(timeout=20)
async def test_chosen_theme_style_and_kind_are_kept(http_client, base_url):
    job_id = await queued_job(http_client, base_url, themeId="space", styleKey="cartoon", kind="page")

    status = await status_of(http_client, base_url, job_id)
    assert (status["themeId"], status["styleKey"], status["kind"]) == ("space", "cartoon", "page")


@pytest.mark.gen_test(timeout=20)
async def test_a_64_character_hero_name_is_accepted(http_client, base_url):
    job_id = await queued_job(http_client, base_url, heroName="x" * 64)
    assert (await status_of(http_client, base_url, job_id))["heroName"] == "x" * 64


@pytest.mark.gen_test(timeout=20)
async def test_content_type_with_charset_is_accepted(http_client, base_url):
    resp = await submit(http_client, base_url, content_type="application/json; charset=utf-8")
    assert resp.code == 202, resp.body


# ---- refusing bad submissions --------------------------------------------------------------

INVALID = [
    # (id, body: dict of fields or raw bytes, status, code, field)
    ("not-json", b"{heroName: Mia", 400, "invalid_json", None),
    ("not-utf8", b"\xff\xfe{}", 400, "invalid_json", None),
    ("json-array", b'[{"heroName": "Mia"}]', 400, "invalid_json", None),
    ("json-string", b'"hello"', 400, "invalid_json", None),
    ("empty-body", b"", 400, "invalid_json", None),
    ("hero-missing", job_body(heroName=MISSING), 400, "missing_field", "heroName"),
    ("hero-null", job_body(heroName=None), 400, "missing_field", "heroName"),
    ("hero-empty", job_body(heroName=""), 400, "missing_field", "heroName"),
    ("hero-whitespace", job_body(heroName="  \t "), 400, "missing_field", "heroName"),
    ("hero-number", job_body(heroName=42), 400, "invalid_field", "heroName"),
    ("hero-list", job_body(heroName=["Mia"]), 400, "invalid_field", "heroName"),
    ("hero-65-chars", job_body(heroName="x" * 65), 400, "invalid_field", "heroName"),
    ("hero-control-char", job_body(heroName="Mia\x00"), 400, "invalid_field", "heroName"),
    ("image-missing", job_body(originalImageBase64=MISSING), 400, "missing_field", "originalImageBase64"),
    ("image-null", job_body(originalImageBase64=None), 400, "missing_field", "originalImageBase64"),
    ("image-empty", job_body(originalImageBase64=""), 400, "missing_field", "originalImageBase64"),
    ("image-number", job_body(originalImageBase64=123), 400, "invalid_field", "originalImageBase64"),
    ("theme-unknown", job_body(themeId="jungle"), 400, "unknown_themeId", "themeId"),
    ("style-unknown", job_body(styleKey="oil"), 400, "unknown_styleKey", "styleKey"),
    ("kind-unknown", job_body(kind="poster"), 400, "unknown_kind", "kind"),
    ("theme-number", job_body(themeId=7), 400, "invalid_field", "themeId"),
    ("style-object", job_body(styleKey={"id": "cartoon"}), 400, "invalid_field", "styleKey"),
    ("base64-garbage", job_body(originalImageBase64="data:image/png;base64,@@@"), 400, "invalid_base64",
     "originalImageBase64"),
    ("data-url-not-base64", job_body(originalImageBase64="data:image/png,abcd"), 400, "invalid_base64",
     "originalImageBase64"),
    ("not-an-image", job_body(originalImageBase64=base64.b64encode(b"hello world").decode()), 400,
     "invalid_image", "originalImageBase64"),
    ("png-declared-jpeg-sent", job_body(originalImageBase64=data_url(JPEG, "image/png")), 400,
     "image_type_mismatch", "originalImageBase64"),
    ("gif", job_body(originalImageBase64=data_url(GIF, "image/gif")), 400, "unsupported_image_type",
     "originalImageBase64"),
    ("gif-as-bare-base64", job_body(originalImageBase64=base64.b64encode(GIF).decode()), 400, "invalid_image",
     "originalImageBase64"),
    ("truncated-jpeg", job_body(originalImageBase64=data_url(JPEG[:len(JPEG) // 2])), 400, "invalid_image",
     "originalImageBase64"),
    ("too-many-pixels", job_body(originalImageBase64=data_url(blank_png(8000, 8000), "image/png")), 400,
     "image_too_many_pixels", "originalImageBase64"),
    ("decompression-bomb", job_body(originalImageBase64=data_url(blank_png(20000, 20000), "image/png")), 400,
     "image_too_many_pixels", "originalImageBase64"),
]


@pytest.mark.parametrize("payload, status, code, field", [case[1:] for case in INVALID],
                         ids=[case[0] for case in INVALID])
@pytest.mark.gen_test(timeout=20)
async def test_invalid_submission_is_refused_and_nothing_queued(http_client, base_url, redis_client, payload,
                                                                 status, code, field):
    resp = await submit(http_client, base_url, payload)

    assert_error(resp, status, code, field)
    assert_nothing_queued(redis_client)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
@pytest.mark.gen_test(timeout=20)
async def test_wrong_content_type_is_415(http_client, base_url, redis_client, content_type):
    resp = await submit(http_client, base_url, content_type=content_type)

    assert_error(resp, 415, "unsupported_media_type")
    assert_nothing_queued(redis_client)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.gen_test(timeout=20)
async def test_other_methods_on_generate_image_are_405(http_client, base_url, method):
    body = b"{}" if method == "PUT" else None
    resp = await call(http_client, base_url, "/api/jobs/generate-image", method, body)
    assert_error(resp, 405, "method_not_allowed")


# ---- Idempotency-Key -----------------------------------------------------------------------

@pytest.mark.gen_test(timeout=20)
async def test_same_idempotency_key_and_body_return_the_same_job(http_client, base_url, redis_client):
    headers = {"Idempotency-Key": "order-1234"}
    first = await submit(http_client, base_url, headers=headers)
    again = await submit(http_client, base_url, headers=headers)

    assert first.code == again.code == 202
    assert json_of(first) == json_of(again)
    assert again.headers["Location"] == first.headers["Location"]
    assert redis_client.llen(KEYS.waiting) == 1
    assert (await stats_of(http_client, base_url))["waiting"] == 1


@pytest.mark.gen_test(timeout=20)
async def test_different_idempotency_keys_make_different_jobs(http_client, base_url):
    a = await submit(http_client, base_url, headers={"Idempotency-Key": "a"})
    b = await submit(http_client, base_url, headers={"Idempotency-Key": "b"})
    assert json_of(a)["jobId"] != json_of(b)["jobId"]
    assert (await stats_of(http_client, base_url))["waiting"] == 2


@pytest.mark.parametrize("changed", [{"heroName": "Leo"}, {"themeId": "space"},
                                     {"originalImageBase64": data_url(PNG, "image/png")}],
                         ids=["hero", "theme", "photo"])
@pytest.mark.gen_test(timeout=20)
async def test_idempotency_key_reused_for_another_request_is_409(http_client, base_url, changed):
    headers = {"Idempotency-Key": "order-1234"}
    first = await submit(http_client, base_url, headers=headers)
    resp = await submit(http_client, base_url, job_body(**changed), headers=headers)

    body = assert_error(resp, 409, "idempotency_key_reused")
    assert "details" not in body and json_of(first)["jobId"] not in resp.body.decode(), "a 409 names no job"
    assert (await stats_of(http_client, base_url))["waiting"] == 1


@pytest.mark.parametrize("key", ["k" * 256, "has space", "tab\tinside"], ids=["256-chars", "space", "tab"])
@pytest.mark.gen_test(timeout=20)
async def test_invalid_idempotency_key_is_400(http_client, base_url, redis_client, key):
    resp = await submit(http_client, base_url, headers={"Idempotency-Key": key})

    assert_error(resp, 400, "invalid_idempotency_key")
    assert_nothing_queued(redis_client)


@pytest.mark.gen_test(timeout=20)
async def test_a_255_character_idempotency_key_is_accepted(http_client, base_url):
    resp = await submit(http_client, base_url, headers={"Idempotency-Key": "k" * 255})
    assert resp.code == 202, resp.body


# ---- size limits ---------------------------------------------------------------------------

class TestSizeLimits:
    """MAX_IMAGE_BYTES lowered to 50 000, so the request body limit is about 130 kB."""

    @pytest.fixture
    def overrides(self):
        return {"max_image_bytes": 50_000}

    @pytest.mark.gen_test(timeout=20)
    async def test_an_image_under_the_limit_is_accepted(self, http_client, base_url):
        assert len(JPEG) < 50_000
        resp = await submit(http_client, base_url)
        assert resp.code == 202, resp.body

    @pytest.mark.gen_test(timeout=20)
    async def test_an_image_over_the_limit_is_413(self, http_client, base_url, redis_client, app_settings):
        photo = noise_png(150)
        body = json.dumps(job_body(originalImageBase64=data_url(photo, "image/png"))).encode()
        assert len(photo) > 50_000 and len(body) < app_settings.max_body_bytes

        resp = await submit(http_client, base_url, body)

        answer = assert_error(resp, 413, "image_too_large", "originalImageBase64")
        assert answer["details"]["maxBytes"] == 50_000
        assert_nothing_queued(redis_client)

    @pytest.mark.gen_test(timeout=20)
    async def test_a_body_over_the_limit_is_413_without_being_read(self, http_client, base_url, redis_client,
                                                                  app_settings):
        body = json.dumps(job_body(originalImageBase64="A" * 5_000_000)).encode()
        assert len(body) > 2 * app_settings.max_body_bytes  # more than the server would ever read

        resp = await submit(http_client, base_url, body)

        answer = assert_error(resp, 413, "request_too_large")
        assert answer["details"] == {"maxBytes": app_settings.max_body_bytes, "maxImageBytes": 50_000}
        assert_nothing_queued(redis_client)

    @pytest.mark.gen_test(timeout=20)
    async def test_a_chunked_body_over_the_limit_is_413(self, http_client, base_url, redis_client, app_settings):
        """No Content-Length to refuse up front: the server counts what arrives."""
        body = json.dumps(job_body(originalImageBase64="A" * (app_settings.max_body_bytes * 3 // 2))).encode()

        async def produce(write):
            for i in range(0, len(body), 16_384):
                await write(body[i:i + 16_384])

        resp = await http_client.fetch(base_url + "/api/jobs/generate-image", method="POST", body_producer=produce,
                                       headers={"Content-Type": "application/json"}, raise_error=False)

        assert_error(resp, 413, "request_too_large")
        assert_nothing_queued(redis_client)


# ---- status, image, stats, health, catalog -------------------------------------------------

@pytest.mark.gen_test(timeout=20)
async def test_status_of_an_unknown_job_is_404(http_client, base_url):
    resp = await call(http_client, base_url, "/api/jobs/no-such-job/status")
    assert_error(resp, 404, "job_not_found")


@pytest.mark.gen_test(timeout=20)
async def test_image_of_a_queued_job_is_409(http_client, base_url):
    job_id = await queued_job(http_client, base_url)
    resp = await call(http_client, base_url, f"/api/jobs/{job_id}/image")
    assert_error(resp, 409, "job_not_finished")


@pytest.mark.gen_test(timeout=20)
async def test_image_of_an_unknown_job_is_404(http_client, base_url):
    resp = await call(http_client, base_url, "/api/jobs/no-such-job/image")
    assert_error(resp, 404, "image_not_found")


@pytest.mark.gen_test(timeout=20)
async def test_a_completed_job_links_to_its_image(http_client, base_url, queue):
    job_id = await queued_job(http_client, base_url)
    batch = await queue.claim("test-worker", 1)
    [claim] = batch.claims
    assert claim.job_id == job_id
    assert (await status_of(http_client, base_url, job_id))["status"] == "processing"
    result = photo_bytes("PNG", (48, 72), seed=7)
    assert await queue.complete(claim, result, "image/png", "test")

    status = await status_of(http_client, base_url, job_id)
    assert status["status"] == "completed"
    assert status["progress"] == 100
    assert ISO_Z.match(status["completedAt"])
    image_url = status["result"]["imageUrl"]
    assert image_url == f"{base_url}/api/jobs/{job_id}/image"

    resp = await call(http_client, base_url, image_url)
    assert resp.code == 200
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.body == result
    # a saved picture is shared (a chat, a print shop): its file name must not be the key to it
    assert re.fullmatch(r'inline; filename="snap2story-[0-9a-f]{8}\.png"', resp.headers["Content-Disposition"])
    assert job_id not in resp.headers["Content-Disposition"]
    stats = await stats_of(http_client, base_url)
    assert (stats["waiting"], stats["active"], stats["completed"]) == (0, 0, 1)


@pytest.mark.gen_test(timeout=20)
async def test_stats_fields(http_client, base_url):
    await queued_job(http_client, base_url)
    stats = await stats_of(http_client, base_url)

    for name in ("waiting", "active", "completed", "failed", "delayed", "cancelled"):
        assert type(stats[name]) is int, (name, stats)
    assert stats["waiting"] == 1 and stats["active"] == 0
    assert stats["paused"] is False


@pytest.mark.gen_test(timeout=20)
async def test_health_is_ok_when_redis_answers(http_client, base_url):
    resp = await call(http_client, base_url, "/api/jobs/health")
    assert resp.code == 200
    body = json_of(resp)
    assert body["status"] == "ok"
    assert body["redis"]["ok"] is True


@pytest.mark.gen_test(timeout=20)
async def test_catalog_lists_the_configured_choices(http_client, base_url):
    resp = await call(http_client, base_url, "/api/catalog")
    assert resp.code == 200
    body = json_of(resp)

    def configured(name):
        return tomllib.loads((CONFIG_DIR / f"{name}.toml").read_text())

    assert [(t["id"], t["name"]) for t in body["themes"]] == [(k, v["name"]) for k, v in configured("themes").items()]
    assert [(s["key"], s["name"]) for s in body["styles"]] == [(k, v["name"]) for k, v in configured("styles").items()]
    assert [k["id"] for k in body["kinds"]] == list(configured("kinds"))
    assert body["defaults"] == {"themeId": "adventure", "styleKey": "watercolor", "kind": "cover"}


# ---- unknown routes ------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/"),
    ("GET", "/api/nothing-here"),
    ("POST", "/api/job/generate-image"),  # (/api/jobs/generate is a job's path now, DELETE only: 405)
    ("GET", "/api/jobs/bad!id/status"),
    ("GET", "/api/jobs/abc/status/extra"),
    ("GET", "/api/jobs/" + "a" * 65 + "/status"),
])
@pytest.mark.gen_test(timeout=20)
async def test_unknown_route_is_404_json(http_client, base_url, method, path):
    resp = await call(http_client, base_url, path, method)
    assert_error(resp, 404, "not_found")


# ---- Redis down ----------------------------------------------------------------------------

class TestRedisDown:
    """The queue points at a port where nothing listens (bound, never listening: refused at once)."""

    @pytest.fixture
    def closed_port(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            yield sock.getsockname()[1]

    @pytest.fixture
    def overrides(self, closed_port):
        return {"redis_url": f"redis://127.0.0.1:{closed_port}/0"}

    @pytest.mark.gen_test(timeout=20)
    async def test_health_is_503_unhealthy_with_a_reason(self, http_client, base_url):
        resp = await call(http_client, base_url, "/api/jobs/health")
        assert resp.code == 503
        body = json_of(resp)
        assert body["status"] == "unhealthy"
        assert isinstance(body["reason"], str) and body["reason"]

    @pytest.mark.gen_test(timeout=20)
    async def test_submit_is_503_redis_unavailable(self, http_client, base_url):
        resp = await submit(http_client, base_url, headers={"Origin": ORIGIN})
        assert_error(resp, 503, "redis_unavailable")
        assert resp.headers.get("Access-Control-Allow-Origin") == ORIGIN  # the browser may read the error

    @pytest.mark.parametrize("path", ["/api/jobs/stats", "/api/jobs/some-job/status", "/api/jobs/some-job/image"])
    @pytest.mark.gen_test(timeout=20)
    async def test_reads_are_503_redis_unavailable(self, http_client, base_url, path):
        resp = await call(http_client, base_url, path)
        assert_error(resp, 503, "redis_unavailable")

    @pytest.mark.gen_test(timeout=20)
    async def test_invalid_input_is_still_400(self, http_client, base_url):
        resp = await submit(http_client, base_url, job_body(heroName=MISSING))
        assert_error(resp, 400, "missing_field", "heroName")


class TestRedisHangs:
    """The queue points at a server that accepts connections and never answers, as a stuck Redis does."""

    @pytest.fixture
    def silent_port(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)  # the kernel completes the handshake; nobody ever reads or writes
            yield sock.getsockname()[1]

    @pytest.fixture
    def overrides(self, silent_port):
        return {"redis_url": f"redis://127.0.0.1:{silent_port}/0"}

    @pytest.mark.gen_test(timeout=20)
    async def test_health_still_answers_503_within_a_second(self, http_client, base_url):
        # Render fails a health probe that has no answer after 5 s (render.com/docs/health-checks): the probe
        # must get the 503 and its reason by then, though Redis never answers (the handler gives Redis 1 s)
        resp = await http_client.fetch(base_url + "/api/jobs/health", raise_error=False, request_timeout=5)
        assert resp.code == 503  # no answer in time raises HTTPTimeoutError
        assert json_of(resp)["status"] == "unhealthy"
        assert "within 1 s" in json_of(resp)["reason"]


# ---- CORS ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [("POST", "/api/jobs/generate-image"), ("GET", "/api/jobs/stats"),
                                          ("GET", "/api/jobs/no-such-job/status")])
@pytest.mark.gen_test(timeout=20)
async def test_allowed_origin_gets_cors_headers(http_client, base_url, method, path):
    body = json.dumps(job_body()).encode() if method == "POST" else None
    resp = await call(http_client, base_url, path, method, body,
                      {"Origin": ORIGIN, "Content-Type": "application/json"})

    assert resp.code in (200, 202, 404)
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in resp.headers["Vary"]
    assert "Location" in resp.headers["Access-Control-Expose-Headers"]


@pytest.mark.gen_test(timeout=20)
async def test_allowed_origin_can_read_a_method_error(http_client, base_url):
    resp = await call(http_client, base_url, "/api/jobs/generate-image", headers={"Origin": ORIGIN})
    assert_error(resp, 405, "method_not_allowed")
    assert resp.headers.get("Access-Control-Allow-Origin") == ORIGIN


@pytest.mark.gen_test(timeout=20)
async def test_foreign_origin_gets_no_cors_headers(http_client, base_url):
    resp = await call(http_client, base_url, "/api/jobs/stats", headers={"Origin": "https://evil.example"})
    assert resp.code == 200
    assert "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.gen_test(timeout=20)
async def test_preflight_for_generate_image(http_client, base_url, redis_client):
    resp = await call(http_client, base_url, "/api/jobs/generate-image", "OPTIONS", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, idempotency-key"})

    assert resp.code == 204
    assert resp.body == b""
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in resp.headers["Access-Control-Allow-Methods"].split(", ")
    allowed_headers = resp.headers["Access-Control-Allow-Headers"].lower().split(", ")
    assert {"content-type", "idempotency-key"} <= set(allowed_headers)
    assert_nothing_queued(redis_client)


@pytest.mark.gen_test(timeout=20)
async def test_preflight_for_an_operator_action_allows_authorization(http_client, base_url):
    resp = await call(http_client, base_url, "/api/jobs/some-job/cancel", "OPTIONS", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})

    assert resp.code == 204
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]


# ---- operator actions ----------------------------------------------------------------------

OPERATOR_ACTIONS = ["/api/jobs/some-job/cancel", "/api/jobs/some-job/retry", "/api/queue/pause",
                    "/api/queue/resume"]


@pytest.mark.parametrize("path", OPERATOR_ACTIONS)
@pytest.mark.gen_test(timeout=20)
async def test_operator_actions_are_off_without_a_token(http_client, base_url, path):
    resp = await call(http_client, base_url, path, "POST", headers=operator("anything"))
    assert_error(resp, 403, "operator_disabled")


class TestOperator:
    """S2S_ADMIN_TOKEN set: the console's actions, guarded by a bearer token."""

    @pytest.fixture
    def overrides(self):
        return {"admin_token": TOKEN}

    @pytest.mark.parametrize("path", OPERATOR_ACTIONS)
    @pytest.mark.parametrize("headers", [{}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}],
                             ids=["none", "basic", "no-scheme"])
    @pytest.mark.gen_test(timeout=20)
    async def test_without_a_bearer_token_is_401(self, http_client, base_url, path, headers):
        resp = await call(http_client, base_url, path, "POST", headers=headers)
        assert_error(resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")

    @pytest.mark.parametrize("path", OPERATOR_ACTIONS)
    @pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], "é"], ids=["wrong", "longer", "shorter",
                                                                                  "non-ascii"])
    @pytest.mark.gen_test(timeout=20)
    async def test_a_wrong_token_is_403(self, http_client, base_url, redis_client, path, token):
        resp = await call(http_client, base_url, path, "POST", headers=operator(token))
        assert_error(resp, 403, "forbidden")
        assert redis_client.get(KEYS.paused) is None

    @pytest.mark.gen_test(timeout=20)
    async def test_cancel_a_queued_job(self, http_client, base_url):
        job_id = await queued_job(http_client, base_url)

        resp = await call(http_client, base_url, f"/api/jobs/{job_id}/cancel", "POST", headers=operator())

        assert resp.code == 200
        assert json_of(resp)["status"] == "cancelled"
        status = await status_of(http_client, base_url, job_id)
        assert status["status"] == "cancelled"
        assert ISO_Z.match(status["cancelledAt"])
        stats = await stats_of(http_client, base_url)
        assert (stats["waiting"], stats["cancelled"]) == (0, 1)

    @pytest.mark.gen_test(timeout=20)
    async def test_cancel_twice_is_409(self, http_client, base_url):
        job_id = await queued_job(http_client, base_url)
        await call(http_client, base_url, f"/api/jobs/{job_id}/cancel", "POST", headers=operator())

        resp = await call(http_client, base_url, f"/api/jobs/{job_id}/cancel", "POST", headers=operator())
        assert_error(resp, 409, "job_already_ended")

    @pytest.mark.gen_test(timeout=20)
    async def test_retry_a_cancelled_job_queues_it_again(self, http_client, base_url):
        job_id = await queued_job(http_client, base_url)
        await call(http_client, base_url, f"/api/jobs/{job_id}/cancel", "POST", headers=operator())

        resp = await call(http_client, base_url, f"/api/jobs/{job_id}/retry", "POST", headers=operator())

        assert resp.code == 202
        assert json_of(resp)["status"] == "queued"
        assert (await status_of(http_client, base_url, job_id))["status"] == "queued"
        stats = await stats_of(http_client, base_url)
        assert (stats["waiting"], stats["cancelled"]) == (1, 0)

    @pytest.mark.gen_test(timeout=20)
    async def test_retry_a_queued_job_is_409(self, http_client, base_url):
        job_id = await queued_job(http_client, base_url)
        resp = await call(http_client, base_url, f"/api/jobs/{job_id}/retry", "POST", headers=operator())
        assert_error(resp, 409, "job_not_retryable")
        assert (await stats_of(http_client, base_url))["waiting"] == 1

    @pytest.mark.parametrize("action", ["cancel", "retry"])
    @pytest.mark.gen_test(timeout=20)
    async def test_acting_on_an_unknown_job_is_404(self, http_client, base_url, action):
        resp = await call(http_client, base_url, f"/api/jobs/no-such-job/{action}", "POST", headers=operator())
        assert_error(resp, 404, "job_not_found")

    @pytest.mark.gen_test(timeout=20)
    async def test_pause_and_resume(self, http_client, base_url):
        resp = await call(http_client, base_url, "/api/queue/pause", "POST", headers=operator())
        assert resp.code == 200 and json_of(resp)["paused"] is True
        assert (await stats_of(http_client, base_url))["paused"] is True

        await queued_job(http_client, base_url)  # jobs can still be submitted while paused
        assert (await stats_of(http_client, base_url))["waiting"] == 1

        resp = await call(http_client, base_url, "/api/queue/resume", "POST", headers=operator())
        assert resp.code == 200 and json_of(resp)["paused"] is False
        assert (await stats_of(http_client, base_url))["paused"] is False


class TestOperatorViews:
    """The console's read-only views: workers, job lists, a job's history, retry-all."""

    @pytest.fixture
    def overrides(self):
        return {"admin_token": TOKEN}

    @pytest.mark.parametrize("path", ["/api/workers", "/api/jobs?state=failed", "/api/jobs/abc/events"])
    @pytest.mark.gen_test(timeout=20)
    async def test_views_need_the_token(self, http_client, base_url, path):
        assert_error(await call(http_client, base_url, path), 401, "unauthorized")

    @pytest.mark.gen_test(timeout=20)
    async def test_job_lists_by_state_newest_first_and_waiting_in_line_order(self, http_client, base_url, queue):
        first = await queued_job(http_client, base_url, heroName="First")
        second = await queued_job(http_client, base_url, heroName="Second")
        third = await queued_job(http_client, base_url, heroName="Third")
        (claim,) = (await queue.claim("test-worker", 1)).claims
        await queue.fail(claim, "It broke.", "x", retryable=False, delay_ms=0)

        waiting = json_of(await call(http_client, base_url, "/api/jobs?state=waiting", headers=operator()))
        failed = json_of(await call(http_client, base_url, "/api/jobs?state=failed", headers=operator()))

        assert [j["jobId"] for j in waiting["jobs"]] == [second, third]
        assert [(j["jobId"], j["error"]) for j in failed["jobs"]] == [(first, "It broke.")]
        resp = await call(http_client, base_url, "/api/jobs?state=bogus", headers=operator())
        assert_error(resp, 400, "invalid_state", "state")
        for bad in ("0", "501", "%C2%B2", "-1"):  # "²" passes str.isdigit() but is no number
            resp = await call(http_client, base_url, f"/api/jobs?state=failed&limit={bad}", headers=operator())
            assert_error(resp, 400, "invalid_limit", "limit")

    @pytest.mark.gen_test(timeout=20)
    async def test_a_jobs_event_history(self, http_client, base_url, queue):
        job_id = await queued_job(http_client, base_url)
        (claim,) = (await queue.claim("test-worker", 1)).claims
        await queue.progress(claim, 40, "Painting")

        body = json_of(await call(http_client, base_url, f"/api/jobs/{job_id}/events", headers=operator()))

        assert [(e["seq"], e["status"], e["progress"]) for e in body["events"]] == [
            (1, "queued", 0), (2, "processing", 0), (3, "processing", 40)]
        unknown = await call(http_client, base_url, "/api/jobs/nope/events", headers=operator())
        assert_error(unknown, 404, "job_not_found")

    @pytest.mark.gen_test(timeout=20)
    async def test_workers_alive_and_dead(self, http_client, base_url, queue, redis_client):
        await queue.heartbeat("host:1:alive", {"host": "host", "pid": 1, "concurrency": 2, "jobs": 0}, [])
        await queue.heartbeat("host:2:dead", {"host": "host", "pid": 2, "concurrency": 2, "jobs": 1}, [])
        seconds, _ = redis_client.time()
        redis_client.zadd(KEYS.workers, {"host:2:dead": (seconds - 60) * 1000}, xx=True)  # silent for a minute

        body = json_of(await call(http_client, base_url, "/api/workers", headers=operator()))

        by_id = {w["id"]: w for w in body["workers"]}
        assert by_id["host:1:alive"]["alive"] and by_id["host:1:alive"]["pid"] == 1
        assert not by_id["host:2:dead"]["alive"]
        assert body["alive"] == 1

    @pytest.mark.gen_test(timeout=20)
    async def test_retry_every_failed_job(self, http_client, base_url, queue):
        ids = [await queued_job(http_client, base_url, heroName=f"Kid {i}") for i in range(3)]
        for claim in (await queue.claim("test-worker", 3)).claims:
            await queue.fail(claim, "It broke.", "x", retryable=False, delay_ms=0)

        resp = await call(http_client, base_url, "/api/jobs/retry-failed", "POST", headers=operator())

        assert resp.code == 202 and sorted(json_of(resp)["retried"]) == sorted(ids)
        stats = await stats_of(http_client, base_url)
        assert (stats["waiting"], stats["failed"]) == (3, 0)

    @pytest.mark.gen_test(timeout=20)
    async def test_stats_tell_the_oldest_wait_and_recent_run_times(self, http_client, base_url, queue):
        """Bracketed by Redis's clock, the one the queue stamps jobs with."""
        await queued_job(http_client, base_url)
        before_second = await now_ms(queue.redis)
        await queued_job(http_client, base_url)  # still waiting when stats are read
        after_second = await now_ms(queue.redis)
        before_claim = await now_ms(queue.redis)
        (claim,) = (await queue.claim("test-worker", 1)).claims
        after_claim = await now_ms(queue.redis)
        await wait_until_async(lambda: redis_clock_past(queue, after_claim + 200), what="the job to run 200 ms")
        await queue.complete(claim, b"img", "image/png", "test")
        after_complete = await now_ms(queue.redis)

        stats = await stats_of(http_client, base_url)
        after_stats = await now_ms(queue.redis)

        # the job still in line was queued between before_second and after_second, and has waited since
        assert after_complete - after_second <= stats["oldestWaitingAgeMs"] <= after_stats - before_second, stats
        assert stats["durationMs"]["sample"] == 1
        assert 200 <= stats["durationMs"]["p50"] == stats["durationMs"]["p95"] <= after_complete - before_claim
