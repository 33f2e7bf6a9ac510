"""Production logs: JSON lines, one per request and per job state change, with no photo, name or key in them."""

from __future__ import annotations

import base64
import json

from tests.api_client import job, submit, wait_ended
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


def test_production_logs_are_json_lines_with_requests_and_every_state_change_and_no_secrets(stack):
    url = stack.api(**PRODUCTION)
    (api,) = stack.processes.children
    # the first attempt fails, the second completes; each takes the provider at least 300 ms
    worker = stack.worker(**PRODUCTION, S2S_NOOP_FAIL_ATTEMPTS=1, S2S_NOOP_DELAY_MS=300)
    photo = photo_bytes(seed=11)
    job_id = submit(url, photo, heroName=HERO, themeId="ocean", styleKey="sketch", kind="page")
    assert wait_ended(url, job_id)["status"] == "completed"
    job(url, job_id)
    assert http_json("GET", f"{url}/api/jobs/{job_id}/status?token=query-secret")[0] == 200
    assert http_json("GET", url + "/metrics")[0] == 200
    assert http_json("GET", url + "/api/jobs/nope/status")[0] == 404

    # a request's line is written once its response is out: wait for the last one
    wait_until(lambda: any(line.get("job") == "nope" for line in lines(api)), what="the API's last request line")
    wait_until(lambda: any(line["msg"] == "job completed" for line in lines(worker)), what="the worker's last line")
    api_lines, worker_lines = lines(api), lines(worker)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in api_lines + worker_lines)

    requests = [line for line in api_lines if line["msg"] == "request"]
    submits = [r for r in requests if r["path"] == "/api/jobs/generate-image"]
    assert len(submits) == 1, submits
    (post,) = submits
    assert (post["method"], post["status"], post["ip"], post["level"]) == ("POST", 202, "127.0.0.1", "info")
    assert post["duration_ms"] > 0
    statuses = [r for r in requests if r["path"] == f"/api/jobs/{job_id}/status"]
    assert statuses and all(r["job"] == job_id and r["status"] == 200 for r in statuses)
    assert [r["status"] for r in requests if r.get("job") == "nope"] == [404]
    assert not [r for r in requests if r["path"] in ("/api/jobs/health", "/metrics")], "probes stay out of INFO"

    (queued,) = [line for line in api_lines if line["msg"] == "job queued"]
    assert {k: queued[k] for k in ("job", "theme", "style", "kind")} == {
        "job": job_id, "theme": "ocean", "style": "sketch", "kind": "page"}
    changes = [(line["msg"], line["attempt"]) for line in worker_lines if line.get("job") == job_id]
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
