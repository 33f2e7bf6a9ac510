"""Bad request bodies as a client meets them: the contract's 4xx with its {error, code}, never a 500 or a
reset connection, and nothing queued. Real ``s2s serve`` processes, real Redis; the 15 MB upload is sent
by the clients that write a whole body before reading an answer: urllib, aiohttp and Chromium's fetch."""

from __future__ import annotations

import asyncio
import io
import json
import socket

import aiohttp
import pytest

from s2s.keys import Keys
from tests.helpers import data_url, http_json, photo_bytes

KEYS = Keys("s2s")
SUBMIT = "/api/jobs/generate-image"
JSON_TYPE = {"Content-Type": "application/json"}
BIG = 15 * 1024 * 1024  # over the default limit (10 MB photo as base64 + 64 KiB), under twice it
CHROMIUM = "/usr/bin/chromium"


def assert_nothing_queued(url: str, redis_client) -> None:
    assert redis_client.llen(KEYS.waiting) == 0
    code, _, raw = http_json("GET", url + "/api/jobs/stats")
    assert code == 200 and json.loads(raw)["waiting"] == 0, raw


def big_body() -> bytes:
    return b'{"heroName":"Mia","originalImageBase64":"' + b"A" * BIG + b'"}'


BAD_BODIES = [
    pytest.param(b"[" * 100_000, JSON_TYPE, 400, "invalid_json", id="arrays nested 100,000 deep"),
    pytest.param(b'{"a":' * 100_000, JSON_TYPE, 400, "invalid_json", id="objects nested 100,000 deep"),
    pytest.param(b'{"heroName":' + b"7" * 50_000 + b"}", JSON_TYPE, 400, "invalid_json", id="a 50,000-digit number"),
    pytest.param(b'{"heroName":"Mia",', JSON_TYPE, 400, "invalid_json", id="cut short"),
    pytest.param(b"\xff\xfe{}", JSON_TYPE, 400, "invalid_json", id="not UTF-8"),
    pytest.param(b'["heroName"]', JSON_TYPE, 400, "invalid_json", id="not an object"),
    pytest.param(b"", JSON_TYPE, 400, "invalid_json", id="empty"),
    pytest.param(b'{"heroName":"Mia"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type",
                 id="not JSON"),
    pytest.param(None, JSON_TYPE, 413, "request_too_large", id="15 MB"),
    pytest.param(None, {"Content-Type": "text/plain"}, 415, "unsupported_media_type", id="15 MB not JSON"),
]


@pytest.fixture
def api(stack):
    return stack.api()


@pytest.mark.parametrize(("body", "headers", "status", "code"), BAD_BODIES)
def test_each_bad_body_gets_its_4xx_and_queues_nothing(api, redis_client, body, headers, status, code):
    code_got, _, raw = http_json("POST", api + SUBMIT, big_body() if body is None else body, headers, timeout=60)
    answer = json.loads(raw)
    assert (code_got, answer["code"]) == (status, code), answer
    assert answer["error"][0].isupper() and answer["error"].endswith(".")
    assert_nothing_queued(api, redis_client)
    assert http_json("GET", api + "/api/jobs/health")[0] == 200  # the process is still there


def test_a_rate_limited_client_writing_its_whole_body_reads_the_429(stack, redis_client):
    url = stack.api(S2S_SUBMIT_PER_MINUTE=1)
    good = json.dumps({"heroName": "Mia", "originalImageBase64": data_url(photo_bytes())}).encode()
    assert http_json("POST", url + SUBMIT, good, JSON_TYPE)[0] == 202
    nearly_too_large = big_body()[:12 * 1024 * 1024] + b'"}'  # under the limit: a body worth reading, if admitted
    code, headers, raw = http_json("POST", url + SUBMIT, nearly_too_large, JSON_TYPE, timeout=60)
    assert (code, json.loads(raw)["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) > 0
    assert redis_client.llen(KEYS.waiting) == 1


def test_aiohttp_reads_the_413_of_a_15_mb_body(api, redis_client):
    async def scenario():
        async with aiohttp.ClientSession() as session, \
                session.post(api + SUBMIT, data=io.BytesIO(big_body()), headers=JSON_TYPE) as response:
            return response.status, await response.json()

    status, answer = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (status, answer["code"]) == (413, "request_too_large")
    assert answer["details"]["maxBytes"] < BIG
    assert_nothing_queued(api, redis_client)


@pytest.mark.parametrize(("length", "expect"), [
    pytest.param(BIG, "Expect: 100-continue\r\n", id="waiting for 100 Continue"),
    pytest.param(BIG * 4, "", id="too large to be worth draining"),
])
def test_a_client_not_sending_its_body_gets_the_413_at_once_and_nothing_else(api, length, expect):
    host, port = api.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {SUBMIT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n{expect}\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):  # to the end: the server closes the connection after the answer
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["code"] == "request_too_large"  # one whole answer, nothing after it


@pytest.mark.browser
def test_chromium_fetch_reads_the_413_of_a_15_mb_body(api, redis_client):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(api + "/api/jobs/health")  # same origin as the API: no CORS in the way
            answer = page.evaluate("""async (size) => {
                const body = '{"heroName":"Mia","originalImageBase64":"' + "A".repeat(size) + '"}';
                const response = await fetch("/api/jobs/generate-image",
                    {method: "POST", headers: {"Content-Type": "application/json"}, body});
                return {status: response.status, body: await response.json()};
            }""", BIG)
        finally:
            browser.close()
    assert (answer["status"], answer["body"]["code"]) == (413, "request_too_large"), answer
    assert_nothing_queued(api, redis_client)
