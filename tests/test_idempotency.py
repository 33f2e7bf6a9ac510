"""Idempotency-Key as clients meet it: scoped to the client that sent it, so a key (guessed, or the same
counter in two apps) reaches no one else's job, and a 409 that names no job. A real API process behind a
trusted proxy (S2S_TRUST_PROXY), so each X-Forwarded-For address is a client of its own; real Redis."""

from __future__ import annotations

import json

from tests.helpers import data_url, http_json, photo_bytes

PHOTO = data_url(photo_bytes(seed=3))


def post(url: str, client: str, key: str, hero: str = "Mia") -> tuple[int, dict, bytes]:
    """Submit as ``client`` (the address the proxy saw) with ``key``; the same hero and photo unless told."""
    body = json.dumps({"heroName": hero, "originalImageBase64": PHOTO}).encode()
    code, headers, raw = http_json("POST", url + "/api/jobs/generate-image", body,
                                   {"Content-Type": "application/json", "Idempotency-Key": key,
                                    "X-Forwarded-For": client})
    return code, headers, raw


def job_id(answer: tuple[int, dict, bytes]) -> str:
    code, _, raw = answer
    assert code == 202, raw
    return json.loads(raw)["jobId"]


def test_the_same_key_and_body_from_two_clients_make_two_jobs(stack, redis_client):
    url = stack.api(S2S_TRUST_PROXY="true")
    mine = job_id(post(url, "198.51.100.1", "order-1"))
    theirs = job_id(post(url, "198.51.100.2", "order-1"))  # another parent: same key, even the same photo
    assert theirs != mine, "another client's key is not a way to someone else's job"

    # each client's retry answers its own job, and makes none
    assert job_id(post(url, "198.51.100.1", "order-1")) == mine
    assert job_id(post(url, "198.51.100.2", "order-1")) == theirs
    assert redis_client.llen(stack.keys.waiting) == 2


def test_an_ipv6_client_is_its_slash_64(stack, redis_client):
    url = stack.api(S2S_TRUST_PROXY="true")
    phone = job_id(post(url, "2001:db8:0:1::17", "order-1"))
    # a phone's privacy addresses change within its /64: still the same client, still its job
    assert job_id(post(url, "2001:db8:0:1:a:b:c:d", "order-1")) == phone
    assert job_id(post(url, "2001:db8:0:2::17", "order-1")) != phone  # another /64: another client
    assert redis_client.llen(stack.keys.waiting) == 2


def test_a_key_reused_for_another_body_is_a_409_that_names_no_job(stack, redis_client):
    url = stack.api(S2S_TRUST_PROXY="true")
    first = job_id(post(url, "203.0.113.7", "order-9", hero="Mia"))
    neighbour = job_id(post(url, "203.0.113.8", "order-9", hero="Leo"))  # other client: its own job, no 409

    code, headers, raw = post(url, "203.0.113.7", "order-9", hero="Leo")
    assert code == 409, raw
    body = json.loads(raw)
    assert body["code"] == "idempotency_key_reused"
    assert "details" not in body, body
    answer = raw.decode() + json.dumps(dict(headers))
    assert first not in answer and neighbour not in answer, "a 409 names no job"
    assert redis_client.llen(stack.keys.waiting) == 2
