"""The API as a parent's app and an operator use it, for the provider tests."""

from __future__ import annotations

import json

from tests.helpers import data_url, http_json, photo_bytes, wait_until

ENDED = ("completed", "failed", "cancelled")


def submit(url: str, photo: bytes | None = None, mime: str = "image/jpeg", **fields) -> str:
    body = {"heroName": "Mia", "originalImageBase64": data_url(photo or photo_bytes(), mime), **fields}
    status, _, raw = http_json("POST", url + "/api/jobs/generate-image", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    assert status == 202, raw
    return json.loads(raw)["jobId"]


def job(url: str, job_id: str) -> dict:
    code, _, raw = http_json("GET", f"{url}/api/jobs/{job_id}/status")
    assert code == 200, raw
    return json.loads(raw)


def wait_ended(url: str, job_id: str, timeout: float = 30.0) -> dict:
    def ended():
        found = job(url, job_id)
        return found if found["status"] in ENDED else None

    return wait_until(ended, timeout=timeout, what=f"job {job_id} to end")


def image(url: str, found: dict) -> tuple[str, bytes]:
    code, headers, data = http_json("GET", found["result"]["imageUrl"])
    assert code == 200, data
    return headers["Content-Type"], data


def health(url: str, timeout: float = 10) -> tuple[int, dict]:
    code, _, raw = http_json("GET", url + "/api/jobs/health", timeout=timeout)
    return code, json.loads(raw)


def cancel(url: str, job_id: str, token: str) -> dict:
    code, _, raw = http_json("POST", f"{url}/api/jobs/{job_id}/cancel", b"",
                             {"Authorization": f"Bearer {token}"})
    assert code == 200, raw
    return json.loads(raw)
