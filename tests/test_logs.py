"""Production logs: JSON lines, one per request and per job state change, with no photo, name, key or job id
in them (a job id is the key to a child's picture: logs name a job by a digest of it)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys

from tests.api_client import image, job, submit, wait_ended
from tests.helpers import http_json, photo_bytes, wait_until

SECRET_KEY = "sk-test-secret-0123456789abcdef"
HERO = "Zebulon Quillfeather"
PRODUCTION = {"S2S_ENV": "production", "S2S_PROVIDER": "noop", "OPENAI_API_KEY": SECRET_KEY}


def lines(proc) -> list[dict]:
    text = proc.log_path.read_text()
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line in {proc.log_path.name}: {line!r}") from None
    return out


def digest(job_id: str) -> str:
    """The README's formula, worked out here: ``printf %s "$JOB_ID" | sha256sum | cut -c1-8``."""
    return hashlib.sha256(job_id.encode()).hexdigest()[:8]


def assert_no_job_id(text: str, job_id: str) -> None:
    assert job_id not in text, "no job id: it is the key to the picture"
    assert job_id[:12] not in text and job_id[-12:] not in text, "not half of one either"


def test_production_logs_are_json_lines_with_requests_and_every_state_change_and_no_secrets(stack):
    url = stack.api(**PRODUCTION)
    (api,) = stack.processes.children
    # the first attempt fails, the second completes; each takes the provider at least 300 ms
    worker = stack.worker(**PRODUCTION, S2S_NOOP_FAIL_ATTEMPTS=1, S2S_NOOP_DELAY_MS=300)
    photo = photo_bytes(seed=11)
    job_id = submit(url, photo, heroName=HERO, themeId="ocean", styleKey="sketch", kind="page")
    done_job = wait_ended(url, job_id)
    assert done_job["status"] == "completed"
    assert image(url, done_job)[1]
    job(url, job_id)
    assert http_json("GET", f"{url}/api/jobs/{job_id}/status?token=query-secret")[0] == 200
    assert http_json("GET", f"{url}/api/jobs/{job_id}/status/")[0] == 404  # no route takes it: still no id
    assert http_json("GET", url + "/metrics")[0] == 200
    assert http_json("GET", url + "/api/jobs/nope/status")[0] == 404

    # a request's line is written once its response is out: wait for the last one
    wait_until(lambda: any(line.get("job") == digest("nope") for line in lines(api)),
               what="the API's last request line")
    wait_until(lambda: any(line["msg"] == "job completed" for line in lines(worker)), what="the worker's last line")
    api_lines, worker_lines = lines(api), lines(worker)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in api_lines + worker_lines)

    requests = [line for line in api_lines if line["msg"] == "request"]
    submits = [r for r in requests if r["path"] == "/api/jobs/generate-image"]
    assert len(submits) == 1, submits
    (post,) = submits
    assert (post["method"], post["status"], post["ip"], post["level"]) == ("POST", 202, "127.0.0.1", "info")
    assert post["duration_ms"] > 0
    statuses = [r for r in requests if r["path"] == "/api/jobs/{jobId}/status"]
    mine = [r for r in statuses if r["job"] == digest(job_id)]
    assert len(mine) >= 3 and all(r["status"] == 200 for r in mine), "polls, a look, the one with a query string"
    assert [r["status"] for r in statuses if r["job"] == digest("nope")] == [404]
    assert len(mine) + 1 == len(statuses), "every status line names one of the two jobs"
    images = [r for r in requests if r["path"] == "/api/jobs/{jobId}/image"]
    assert [(r["job"], r["status"]) for r in images] == [(digest(job_id), 200)]
    unrouted = [r for r in requests if r["path"] == "/api/jobs/{jobId}/status/"]
    assert [(r["job"], r["status"]) for r in unrouted] == [(digest(job_id), 404)]
    assert not [r for r in requests if r["path"] in ("/api/jobs/health", "/metrics")], "probes stay out of INFO"

    (queued,) = [line for line in api_lines if line["msg"] == "job queued"]
    assert {k: queued[k] for k in ("job", "theme", "style", "kind")} == {
        "job": digest(job_id), "theme": "ocean", "style": "sketch", "kind": "page"}
    changes = [(line["msg"], line["attempt"]) for line in worker_lines if line.get("job") == digest(job_id)]
    assert changes == [("job started", 1), ("job will be retried", 1), ("job started", 2), ("job completed", 2)]
    retry, done = (next(line for line in worker_lines if line["msg"] == m) for m in ("job will be retried",
                                                                                       "job completed"))
    assert retry["delay_ms"] > 0 and retry["code"] == "noop_failure" and retry["worker"] == done["worker"]
    assert done["duration_ms"] >= 300, "the attempt's run time, in milliseconds, includes the provider's 300 ms"

    everything = api.log_path.read_text() + worker.log_path.read_text()
    b64 = base64.b64encode(photo).decode()
    assert b64[100:160] not in everything, "no photo bytes"
    assert SECRET_KEY not in everything and SECRET_KEY[:12] not in everything, "no API key"
    assert HERO not in everything, "no child's name"
    assert "query-secret" not in everything, "no query string"
    assert_no_job_id(everything, job_id)

    # an operator holding the id finds its lines with the digest `s2s job-digest` prints
    found = subprocess.run([sys.executable, "-m", "s2s", "job-digest", job_id], capture_output=True, text=True,
                           check=True, timeout=30)
    assert found.stdout.split() == [digest(job_id)]


def test_debug_logs_carry_no_job_id_either(stack):
    url = stack.api(**PRODUCTION, S2S_LOG_LEVEL="debug")
    (api,) = stack.processes.children
    worker = stack.worker(**PRODUCTION, S2S_LOG_LEVEL="debug")
    job_id = submit(url, heroName=HERO)
    assert image(url, wait_ended(url, job_id))[1]

    wait_until(lambda: any(line.get("path") == "/api/jobs/{jobId}/image" for line in lines(api)),
               what="the API's image request line")
    wait_until(lambda: any(line["msg"] == "job completed" for line in lines(worker)), what="the worker's last line")
    debug = [line for line in lines(api) + lines(worker) if line["level"] == "debug"]
    assert debug, "the processes logged at DEBUG"
    everything = api.log_path.read_text() + worker.log_path.read_text()
    assert_no_job_id(everything, job_id)
    assert HERO not in everything


def test_a_server_error_is_logged_without_the_job_id_or_the_query_string(stack, redis_client):
    url = stack.api(**PRODUCTION)
    (api,) = stack.processes.children
    job_id = "Corrupt0Record0Of0A0Job0"  # a record the API cannot read: its status is no status
    redis_client.hset(stack.keys.job(job_id), mapping={"id": job_id, "status": "bogus", "createdAt": "1"})
    code, _, raw = http_json("GET", f"{url}/api/jobs/{job_id}/status?token=query-secret")
    assert code == 500 and json.loads(raw)["code"] == "internal_error"

    error = wait_until(lambda: next((line for line in lines(api) if line["msg"] == "uncaught exception"), None),
                       what="the API's error line")
    assert (error["level"], error["path"], error["job"]) == ("error", "/api/jobs/{jobId}/status", digest(job_id))
    assert "is not a valid JobStatus" in error["exc"], "the traceback is kept"
    text = api.log_path.read_text()
    assert_no_job_id(text, job_id)
    assert "query-secret" not in text
