"""Abuse limits as a client meets them: per-client submit rate (shared by every API process),
the waiting-jobs cap, and the cap on sockets per client. Real API processes, real Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

from s2s.admission import client_key
from s2s.keys import Keys
from tests.helpers import data_url, http_json, photo_bytes
from tests.test_ws import Client

KEYS = Keys("s2s")


def post(url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    body = body if body is not None else {"heroName": "Mia", "originalImageBase64": data_url(photo_bytes())}
    code, got_headers, raw = http_json("POST", url + "/api/jobs/generate-image", json.dumps(body).encode(),
                                       {"Content-Type": "application/json", **(headers or {})})
    return code, got_headers, json.loads(raw)


def assert_rate_limited(code: int, headers: dict, body: dict, limit: int) -> None:
    assert code == 429, body
    assert body["code"] == "rate_limited"
    assert f"at most {limit} a minute" in body["error"]
    assert body["details"] == {"limitPerMinute": limit}
    assert 50 <= int(headers["Retry-After"]) <= 60  # the oldest submit leaves the one-minute window then


def test_the_submit_rate_is_shared_by_every_api_process(stack, redis_client):
    first = stack.api(S2S_SUBMIT_PER_MINUTE=3)
    second = stack.api(S2S_SUBMIT_PER_MINUTE=3)

    assert [post(url)[0] for url in (first, second, first)] == [202, 202, 202]
    for url in (second, first):  # the fourth, on either process, is one too many
        assert_rate_limited(*post(url), limit=3)

    assert redis_client.llen(KEYS.waiting) == 3  # a refused submit queued nothing


def test_bad_input_and_idempotent_replays_do_not_use_up_the_budget(stack):
    url = stack.api(S2S_SUBMIT_PER_MINUTE=2)

    for _ in range(3):
        code, _, body = post(url, {"heroName": "Mia", "originalImageBase64": "bm90IGFuIGltYWdl"})
        assert code == 400, body  # the parent sees what is wrong with the photo, not a rate limit
    replay = {"Idempotency-Key": "checkout-42"}
    answers = [post(url, headers=replay) for _ in range(3)]
    assert [code for code, _, _ in answers] == [202, 202, 202]
    assert len({body["jobId"] for _, _, body in answers}) == 1

    assert post(url)[0] == 202  # the second real job: still within 2 a minute
    assert_rate_limited(*post(url), limit=2)


def test_forwarded_for_is_ignored_unless_behind_a_trusted_proxy(stack):
    direct = stack.api(S2S_SUBMIT_PER_MINUTE=1)
    assert post(direct, headers={"X-Forwarded-For": "203.0.113.1"})[0] == 202
    # a client cannot pick a fresh address for itself
    assert_rate_limited(*post(direct, headers={"X-Forwarded-For": "203.0.113.2"}), limit=1)

    proxied = stack.api(S2S_SUBMIT_PER_MINUTE=1, S2S_TRUST_PROXY="true")
    assert post(proxied, headers={"X-Forwarded-For": "198.51.100.1"})[0] == 202
    assert post(proxied, headers={"X-Forwarded-For": "198.51.100.2"})[0] == 202  # another parent
    assert_rate_limited(*post(proxied, headers={"X-Forwarded-For": "198.51.100.1"}), limit=1)
    # the proxy appends the address it saw: the last entry is the client, whatever it put before
    assert_rate_limited(*post(proxied, headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.1"}), limit=1)


def test_a_full_queue_refuses_new_submits_with_503(stack, redis_client):
    url = stack.api(S2S_MAX_WAITING=2)
    assert [post(url)[0] for _ in range(2)] == [202, 202]

    code, headers, body = post(url)

    assert code == 503, body
    assert body["code"] == "queue_full"
    assert body["details"] == {"waiting": 2, "maxWaiting": 2}
    assert int(headers["Retry-After"]) > 0
    assert redis_client.llen(KEYS.waiting) == 2

    redis_client.lpop(KEYS.waiting)  # a worker takes one: there is room again
    assert post(url)[0] == 202


@pytest.mark.parametrize("address, key", [
    ("203.0.113.7", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # one household's prefix, however many addresses
])
def test_clients_are_counted_by_address_and_ipv6_prefix(address, key):
    assert client_key(address) == key


def test_sockets_per_client_are_capped(stack):
    url = stack.api(S2S_MAX_SOCKETS_PER_CLIENT=2)

    async def scenario():
        first, second = await Client.connect(url), await Client.connect(url)
        with pytest.raises(HTTPClientError) as refused:
            await Client.connect(url)
        assert refused.value.code == 429
        body = json.loads(refused.value.response.body)
        assert body["code"] == "too_many_sockets" and body["details"] == {"maxSockets": 2}

        await first.assert_alive()
        await second.assert_alive()  # the refusal touched nobody else
        await first.close()
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # the server sees the close a moment later; then there is room again
            try:
                third = await Client.connect(url)
                break
            except HTTPClientError:
                assert asyncio.get_running_loop().time() < deadline, "no room after a socket closed"
                await asyncio.sleep(0.05)
        await third.assert_alive()
        await second.close()
        await third.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_limits_set_to_0_are_off(stack):
    url = stack.api(S2S_SUBMIT_PER_MINUTE=0, S2S_MAX_WAITING=0)
    assert [post(url)[0] for _ in range(35)] == [202] * 35  # more than the default 30 a minute
