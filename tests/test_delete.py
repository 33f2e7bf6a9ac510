"""Deletion by the parent: DELETE /api/jobs/<id> with the submit's deleteToken removes the job everywhere.

Real API and worker processes on a real Redis, with each blob store (Redis, a directory, a real
S3 API: moto_server). "Everywhere" is listed, not assumed: every Redis key under the prefix is
read back (names and values) and the store is listed without s2s.storage; none may mention the
job afterwards.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest

from s2s import deletion
from s2s.admission import client_key
from s2s.job_requests import IdempotencyKey, NewJob
from s2s.queue import Queue
from tests.helpers import data_url, http_json, photo_bytes, wait_until, wait_until_async
from tests.test_job_blobs import blob_names, storage_env
from tests.test_storage import make_backend
from tests.test_ws import ORIGIN, Client

TOKEN = "delete-test-operator-token"


def submit(url: str, key: str | None = None, seed: int = 0) -> dict:
    body = {"heroName": "Mia", "originalImageBase64": data_url(photo_bytes(seed=seed)), "themeId": "space"}
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    status, answer_headers, raw = http_json("POST", url + "/api/jobs/generate-image", json.dumps(body).encode(),
                                            headers)
    assert status == 202, raw
    assert answer_headers["Cache-Control"] == "no-store"
    return json.loads(raw)


def delete(url: str, job_id: str, token: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    status, answer_headers, raw = http_json("DELETE", f"{url}/api/jobs/{job_id}", headers=headers)
    return status, {"headers": answer_headers, **(json.loads(raw) if raw else {})}


def status_of(url: str, job_id: str) -> tuple[int, dict]:
    status, _, raw = http_json("GET", f"{url}/api/jobs/{job_id}/status")
    return status, json.loads(raw)


def image_status(url: str, job_id: str) -> int:
    return http_json("GET", f"{url}/api/jobs/{job_id}/image")[0]


def mentions(redis_client, prefix: str, job_id: str) -> list[str]:
    """Every key under ``prefix`` whose name or value names the job (hashes, lists, sets, zsets, strings)."""
    found = []
    for raw_key in redis_client.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw_key.decode()
        kind = redis_client.type(raw_key).decode()
        if kind == "string":
            values = [redis_client.get(raw_key) or b""]
        elif kind == "hash":
            values = [b for pair in redis_client.hgetall(raw_key).items() for b in pair]
        elif kind == "list":
            values = redis_client.lrange(raw_key, 0, -1)
        elif kind == "zset":
            values = redis_client.zrange(raw_key, 0, -1)
        elif kind == "set":
            values = list(redis_client.smembers(raw_key))
        else:
            values = []
        if job_id in key or any(job_id.encode() in value for value in values):
            found.append(key)
    return found


@pytest.fixture(params=["redis", "file", "s3"])
def backend(request, settings, tmp_path, redis_client):
    return make_backend(request.param, request, settings, tmp_path, redis_client)


def env(backend, **more) -> dict:
    return {**storage_env(backend), "S2S_PROVIDER": "noop", **more}


def wait_status(url: str, job_id: str, wanted: str, timeout: float = 20) -> dict:
    return wait_until(lambda: (found := status_of(url, job_id))[0] == 200 and found[1]["status"] == wanted
                      and found[1], timeout=timeout, what=f"the job to be {wanted}")


def assert_gone(stack, url: str, job_id: str, idempotency_key: str | None = None, backend=None) -> None:
    code, body = status_of(url, job_id)
    assert code == 404 and body["code"] == "job_not_found", body
    assert image_status(url, job_id) == 404
    assert mentions(stack.redis, stack.settings.key_prefix, job_id) == []
    if backend is not None:
        assert blob_names(backend, job_id) == []
    if idempotency_key:
        assert not stack.redis.exists(stack.keys.idempotency(client_key("127.0.0.1"), idempotency_key))


async def ws_subscribe(url: str, job_id: str) -> dict:
    client = await Client.connect(url, origin=ORIGIN)
    await client.send(type="subscribe_to_job", jobId=job_id)
    frame = await client.recv()
    await client.close()
    return frame


def test_a_completed_job_is_deleted_everywhere_by_its_token(stack, backend):
    url = stack.api(**env(backend))
    stack.worker(**env(backend))
    accepted = submit(url, key="parent-retry-key")
    job_id, token = accepted["jobId"], accepted["deleteToken"]
    assert len(token) >= 22 and token != job_id  # 128 bits at least, its own secret
    assert token not in json.dumps(stack.job(job_id))  # kept as a hash only
    wait_status(url, job_id, "completed")
    assert image_status(url, job_id) in (200, 302)  # the bytes, or a presigned link to them (s3)
    assert mentions(stack.redis, stack.settings.key_prefix, job_id)  # the listing sees the job while it exists
    # as it sees the blobs: the picture (the worker deletes the photo just after completing)
    wait_until(lambda: [name.split("-")[0] for name in blob_names(backend, job_id)] == ["picture"], timeout=10,
               what="the store to hold the picture only")

    code, answer = delete(url, job_id, token)
    assert code == 204, answer
    assert_gone(stack, url, job_id, "parent-retry-key", backend)
    frame = asyncio.run(ws_subscribe(url, job_id))
    assert frame["type"] == "error" and frame["code"] == "job_not_found", frame
    assert delete(url, job_id, token)[0] == 404  # already gone
    # the key's entry went with the job: the same retry now makes a new job
    again = submit(url, key="parent-retry-key")
    assert again["jobId"] != job_id


def test_a_running_job_is_stopped_and_deleted(stack, backend):
    url = stack.api(**env(backend))
    worker = stack.worker(**env(backend, S2S_NOOP_DELAY_MS=60000))  # would run for a minute
    worker_id = stack.worker_id(worker)
    accepted = submit(url, key="running")
    job_id = accepted["jobId"]
    wait_status(url, job_id, "processing")
    assert blob_names(backend, job_id) == ["photo"]
    jobs_in_hand = lambda: json.loads(stack.redis.get(stack.keys.worker(worker_id)) or b"{}").get("jobs")  # noqa: E731
    wait_until(lambda: jobs_in_hand() == 1, timeout=15, what="the worker's heartbeat to show the job in hand")

    async def delete_while_watching() -> tuple[int, dict]:
        client = await Client.connect(url, origin=ORIGIN)
        await client.send(type="subscribe_to_job", jobId=job_id)
        assert (await client.recv())["status"] == "processing"
        code, _ = await asyncio.get_running_loop().run_in_executor(None, delete, url, job_id,
                                                                   accepted["deleteToken"])
        heard = await client.recv()
        while heard["type"] == "job_progress":  # steps the worker reported before the delete reached it
            heard = await client.recv()
        await client.close()
        return code, heard

    code, heard = asyncio.run(delete_while_watching())
    assert code == 204
    assert heard["type"] == "job_cancelled" and heard["jobId"] == job_id, heard  # the watcher stops waiting
    # the worker let go of it long before its minute was up: stopped, not finished
    wait_until(lambda: jobs_in_hand() == 0, timeout=15, what="the worker to drop the deleted job")
    assert_gone(stack, url, job_id, "running", backend)
    assert worker.poll() is None
    log = worker.log_path.read_text()
    assert "job stopped" in log and "job completed" not in log


def test_a_wrong_token_changes_nothing(stack, settings, tmp_path, redis_client, request):
    backend = make_backend("file", request, settings, tmp_path, redis_client)
    url = stack.api(**env(backend, S2S_ADMIN_TOKEN=TOKEN))
    stack.worker(**env(backend))
    first, second = submit(url, seed=1), submit(url, seed=2)
    job_id = first["jobId"]
    wait_status(url, job_id, "completed")
    before, blobs_before = stack.job(job_id), blob_names(backend, job_id)

    code, answer = delete(url, job_id, None)
    assert code == 401 and answer["code"] == "unauthorized"
    assert {k.lower(): v for k, v in answer["headers"].items()}["www-authenticate"] == 'Bearer realm="s2s"'

    for wrong in ("not-the-token", second["deleteToken"], first["deleteToken"][:-1], first["jobId"]):
        code, answer = delete(url, job_id, wrong)
        assert code == 403 and answer["code"] == "forbidden" and answer["error"], (wrong, answer)
    assert status_of(url, job_id)[0] == 200 and image_status(url, job_id) == 200
    assert stack.job(job_id) == before and blob_names(backend, job_id) == blobs_before
    code, answer = delete(url, "no-such-job", first["deleteToken"])
    assert code == 404 and answer["code"] == "job_not_found"

    assert delete(url, job_id, TOKEN)[0] == 204  # the operator's token opens every job
    assert_gone(stack, url, job_id, backend=backend)
    assert status_of(url, second["jobId"])[0] == 200  # and only the one it was sent for


def test_a_retried_submit_shows_the_same_token_again(stack):
    url = stack.api(S2S_PROVIDER="noop")
    first = submit(url, key="lost-answer")
    replay = submit(url, key="lost-answer")
    assert replay["jobId"] == first["jobId"] and replay["deleteToken"] == first["deleteToken"]
    other = submit(url, key="another-key")
    assert other["deleteToken"] != first["deleteToken"]
    assert mentions(stack.redis, stack.settings.key_prefix, first["deleteToken"]) == []  # kept hashed and sealed only
    assert delete(url, first["jobId"], replay["deleteToken"])[0] == 204
    assert_gone(stack, url, first["jobId"], "lost-answer")


def test_a_blob_store_that_is_down_deletes_nothing_and_the_delete_can_be_sent_again(stack, settings, tmp_path,
                                                                                  redis_client, request):
    backend = make_backend("s3", request, settings, tmp_path, redis_client)
    url = stack.api(**env(backend))
    accepted = submit(url)
    job_id = accepted["jobId"]
    bucket = urlsplit(backend.settings.storage_url).netloc
    s3 = request.getfixturevalue("s3_server").client()
    for name in backend.raw():  # the bucket goes away (emptied first, as S3 wants)
        s3.delete_object(Bucket=bucket, Key="deploy/blobs/" + name)
    s3.delete_bucket(Bucket=bucket)

    code, answer = delete(url, job_id, accepted["deleteToken"])
    assert code == 503 and answer["code"] == "storage_unavailable", answer
    assert int(answer["headers"]["Retry-After"]) > 0
    assert status_of(url, job_id)[0] == 200  # the record stays: the parent can try again
    s3.create_bucket(Bucket=bucket)
    assert delete(url, job_id, accepted["deleteToken"])[0] == 204
    assert_gone(stack, url, job_id, backend=backend)


@pytest.mark.parametrize("state", ["queued", "delayed", "failed", "cancelled"])
def test_a_job_in_any_state_leaves_nothing_in_redis(settings, redis_client, state):
    """Through the queue itself (the Redis blob store), for the states the API tests do not reach."""
    photo = photo_bytes("PNG", (64, 64))

    async def main() -> str:
        queue = Queue.connect(settings)
        try:
            key = IdempotencyKey("203.0.113.7", f"key-{state}")
            accepted = await queue.accept(NewJob("Mia", "space", "cartoon", "cover", photo, "image/png"), key)
            job_id = accepted.job_id
            if state in ("delayed", "failed"):
                claim = (await queue.claim("w1", 1)).claims[0]
                outcome = await queue.fail(claim, "no", "upstream_error", retryable=state == "delayed", delay_ms=60000)
                assert outcome == (2 if state == "delayed" else 3)
            elif state == "cancelled":
                assert await queue.cancel(job_id) == "queued"
            assert (await queue.get(job_id)).status.value == ("queued" if state == "delayed" else state)
            assert redis_client.exists(queue.keys.idempotency(key.client, key.key))
            assert redis_client.exists(queue.keys.blob(f"jobs/{job_id}/photo"))
            was = await deletion.delete_job(queue, job_id, queue.keys.idempotency(key.client, key.key))
            assert was == ("queued" if state == "delayed" else state)
            assert await deletion.delete_job(queue, job_id, None) == ""  # unknown now
            stats = await queue.stats()
            assert (stats.waiting, stats.delayed, stats.failed, stats.cancelled) == (0, 0, 0, 0)
            assert stats.totals["deleted"] == 1
            return job_id
        finally:
            await queue.close()

    job_id = asyncio.run(main())
    assert mentions(redis_client, settings.key_prefix, job_id) == []


def test_a_sealed_token_opens_only_with_its_idempotency_key_client_and_job():
    token = deletion.new_token()
    sealed = deletion.seal(token, "203.0.113.7", "key-1", "job-a")
    assert sealed != token and deletion.unseal(sealed, "203.0.113.7", "key-1", "job-a") == token
    for client, key, job_id in (("203.0.113.8", "key-1", "job-a"), ("203.0.113.7", "key-2", "job-a"),
                                ("203.0.113.7", "key-1", "job-b")):
        assert deletion.unseal(sealed, client, key, job_id) != token
    assert deletion.token_matches(token, deletion.token_digest(token))
    assert not deletion.token_matches(token[:-1] + ("A" if token[-1] != "A" else "B"), deletion.token_digest(token))
    assert not deletion.token_matches(token, None)  # a job from before delete tokens: the operator's only


def test_a_picture_put_cancelled_mid_write_is_taken_back(settings, tmp_path, redis_client, request):
    """A worker stopped (its job deleted) while its picture is being written leaves no picture behind:
    the file store's thread goes on writing after the cancel, so the put is waited for and undone."""
    backend = make_backend("file", request, settings, tmp_path, redis_client)
    root = tmp_path / "blobs"
    data = b"\0" * (64 * 1024 * 1024)  # long enough to be caught mid-write

    async def body(store) -> None:
        put = asyncio.ensure_future(store.put_or_undo("jobs/j1/picture-1-ab", data, ttl_s=60))
        await wait_until_async(lambda: any(p.name.startswith(".tmp-") for p in root.rglob("*")), timeout=10,
                               interval=0.001, what="the write to begin")
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert await store.list("jobs/j1") == []

    backend.run(body)
    assert backend.raw() == []
