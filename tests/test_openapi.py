"""GET /api/openapi.json describes the API, and the API answers as described.

schemathesis drives real ``s2s serve`` processes (and a worker) through every described
operation with generated valid and invalid input: no answer may be a 5xx, and each must
have a documented status, content type, headers and body. The description it uses is the
one the API serves, made strict: an answer field the description does not list fails.
A route of make_app whose handler has no ``@describe`` cannot be served at all, and one
described with other methods than it serves fails the route test.
"""

from __future__ import annotations

import json
import re

import attrs
import hypothesis.configuration
import jsonschema_rs
import pytest
import schemathesis
import tornado.web
from schemathesis.checks import not_a_server_error
from schemathesis.engine import events, from_schema

from s2s.catalog import Catalog
from s2s.queue import Queue
from s2s.settings import Settings
from s2s.web import describe as d
from s2s.web import handlers as h
from s2s.web.app import make_app
from s2s.web.openapi import build
from tests.helpers import data_url, http_json, photo_bytes, wait_until

TOKEN = "openapi-test-operator-token"
METHODS = ("get", "put", "post", "delete", "patch", "options")
CONFORMANCE = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
               "response_headers_conformance", "response_schema_conformance")
# missing_required_header, ignored_auth (probes each secured operation without and with a wrong token) and
# unsupported_method (a method a path does not serve: 405 with Allow) come along with the data checks
FUZZ_CHECKS = (*CONFORMANCE, "negative_data_rejection", "positive_data_acceptance", "missing_required_header",
               "ignored_auth", "unsupported_method")
MAX_EXAMPLES = 30  # per operation, in the fuzzing phase; the examples and coverage phases add their own cases


@pytest.fixture(autouse=True)
def hypothesis_home(tmp_path):
    """Hypothesis keeps caches (and would keep examples) in ./.hypothesis: not in the repository."""
    hypothesis.configuration.set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    hypothesis.configuration.set_hypothesis_home_dir(None)


# ---- the description and the route table ---------------------------------------------------------
def routes(settings: Settings) -> list[tuple[re.Pattern, type]]:
    """make_app's route table: (path regex, handler class)."""
    ctx = h.AppContext(settings=settings, queue=Queue.connect(settings), catalog=Catalog.load())
    return [(rule.matcher.regex, rule.target) for rule in make_app(ctx).wildcard_router.rules]


def described(settings: Settings) -> dict:
    """The description make_app serves with these settings, built from its handlers as the app builds it."""
    return build(settings, Catalog.load(), [handler for _, handler in routes(settings)])


def implemented(handler: type) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}


def concrete(path: str) -> str:
    """A described path with its ``{parameters}`` filled in, to match against the route regexes."""
    return re.sub(r"\{[^}]+\}", "x1", path)


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize("token", [None, TOKEN])
def test_every_route_is_described_with_the_methods_it_serves(settings, demo, token):
    settings = attrs.evolve(settings, demo=demo, admin_token=token)
    table = routes(settings)
    doc = described(settings)
    methods = {path: {m for m in item if m in METHODS} for path, item in doc["paths"].items()}
    # as Tornado routes: a path is served by the first route that matches it (/api/jobs/stats before /api/jobs/{jobId})
    served_by = {path: next((rule for rule in table if rule[0].match(concrete(path))), None) for path in methods}
    for path, rule in served_by.items():
        assert rule is not None, f"{path} is described but not served"
        assert methods[path] == implemented(rule[1]), f"{path}: described methods are not the served ones"
    for regex, handler in table:
        assert (regex, handler) in served_by.values(), f"route {regex.pattern} ({handler.__name__}) is not described"
    assert ("/" in methods) is demo


def test_a_handler_without_a_description_cannot_be_served(settings):
    class Undescribed(h.ApiHandler):
        def get(self) -> None:
            self.answer({})

    @d.describe("/api/inherited", get=d.operation("getInherited", "meta", "Inherits no description",
                                                    {200: d.answer({"type": "object"}, "Nothing.")}))
    class Described(h.ApiHandler):
        def get(self) -> None:
            self.answer({})

    class Subclass(Described):  # a subclass serves its own route: it does not borrow its parent's description
        pass

    assert "/api/inherited" in build(settings, Catalog.load(), [Described])["paths"]
    for handler in (Undescribed, Subclass):
        with pytest.raises(TypeError, match=f"{handler.__name__} serves a route but has no @describe"):
            build(settings, Catalog.load(), [Described, handler])


def test_the_description_is_valid_openapi_3_1(settings):
    doc = described(settings)
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    for component in doc["components"]["schemas"].values():
        jsonschema_rs.meta.validate(component)  # each a valid JSON Schema 2020-12
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()
                     if isinstance(op, dict)]
    assert len(operation_ids) == len(set(operation_ids))
    # the limits and choices are this process's own
    submission = doc["components"]["schemas"]["Submission"]["properties"]
    assert submission["themeId"]["enum"] == [*Catalog.load().themes, None]
    assert str(settings.max_image_bytes) in submission["originalImageBase64"]["description"]
    broken = json.loads(json.dumps(doc))
    broken["paths"]["/api/catalog"]["get"]["responses"]["200"].pop("description")
    with pytest.raises(jsonschema_rs.ValidationError, match="description"):  # the validation does validate
        schemathesis.openapi.from_dict(broken).validate()


def test_the_api_serves_its_description(stack, settings):
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN)
    status, headers, raw = http_json("GET", url + "/api/openapi.json")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    served = json.loads(raw)
    assert served == json.loads(json.dumps(described(attrs.evolve(settings, admin_token=TOKEN))))
    assert served["openapi"] == "3.1.0" and "/ws" in served["info"]["description"]


# ---- schemathesis against live APIs --------------------------------------------------------------
def strict(node, *, open_schemas=("Submission",)):
    """The description with every answer object closed: a field it does not list is a failure."""
    if isinstance(node, list):
        return [strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if isinstance(node.get("schemas"), dict):  # components: the request body stays open (extra fields are ignored)
        out["schemas"] = {k: v if k in open_schemas else strict(v) for k, v in node["schemas"].items()}
    if node.get("type") == "object" and isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        out["unevaluatedProperties"] = False
    return out


def load(url: str, *, token: str | None, checks=FUZZ_CHECKS, headers: dict | None = None):
    """The API's own description, strict, set up for a bounded and repeatable run."""
    status, _, raw = http_json("GET", url + "/api/openapi.json")
    assert status == 200, raw
    config = {
        "base-url": url,
        "seed": 20261129,
        "request-timeout": 10,
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in checks}},
        "operations": [
            # a schema cannot say "decodes to a whole photo": a well-formed but undecodable one is refused (400)
            # by design, so only the examples (a real photo) prove acceptance; refusals are checked all the same
            {"include-operation-id": "submitJob", "checks": {"positive_data_acceptance": {"enabled": False}}},
            # a DELETE that worked leaves nothing for ignored_auth's probes that follow it: they get 404, rightly;
            # no token (401) and a wrong one (403) are checked below and in tests/test_delete.py
            {"include-operation-id": "deleteJob", "checks": {"ignored_auth": {"enabled": False}}},
        ],
    }
    if token:
        config["auth"] = {"openapi": {"operatorToken": {"bearer": token}}}
    if headers:
        config["headers"] = headers
    return schemathesis.openapi.from_dict(strict(json.loads(raw)), config=schemathesis.Config.from_dict(config))


def run(schema) -> dict:
    """Run schemathesis (examples, coverage and fuzzing phases): the failures, and each operation's statuses."""
    failures, statuses = [], {}
    finished = None
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses.setdefault(recorder.label, set()).add(interaction.response.status_code)
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.append(f"{recorder.label}: {check.name}: {failure.title}\n{failure.message}\n"
                                        f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            failures.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            finished = event
    assert finished is not None and finished.stop_reason == "completed", finished
    assert not failures, "\n\n".join(dict.fromkeys(failures))
    return statuses


def secured(ctx) -> bool:
    return bool(ctx.operation.definition.raw.get("security"))


def operator(ctx) -> bool:
    return "operator" in ctx.operation.definition.raw.get("tags", [])


def only(schema, wanted):
    """The operations ``wanted`` accepts (by exclusion: an include filter is widened by per-operation config)."""
    return schema.exclude(func=lambda ctx: not wanted(ctx))


def operations(schema) -> set[str]:
    """The labels of the described operations ("GET /api/jobs"), as schemathesis names them."""
    return {result.ok().label for result in schema.get_all_operations()}


def test_the_api_answers_as_described_with_the_operator_token(stack):
    # a stream of a job queued while the fuzzed pause holds the queue would last until the request timeout
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN, S2S_PROVIDER="noop", S2S_STREAM_MAX_SECONDS=2)
    stack.worker(S2S_PROVIDER="noop")
    schema = load(url, token=TOKEN)
    statuses = run(schema)
    assert set(statuses) == operations(schema)  # every operation was exercised
    assert 202 in statuses["POST /api/jobs/generate-image"]  # the example photo was accepted
    assert {400, 415} <= statuses["POST /api/jobs/generate-image"]  # and invalid submissions refused
    for operation in ("GET /api/workers", "GET /api/jobs", "POST /api/queue/pause", "GET /metrics"):
        assert 200 in statuses[operation], operation  # the token opened them


def test_without_the_right_token_operator_endpoints_refuse_as_described(stack):
    url = stack.api(S2S_ADMIN_TOKEN=TOKEN)
    unauthorised = run(only(load(url, token=None), secured))
    wrong = run(only(load(url, token=None, headers={"Authorization": "Bearer not-the-token"}), secured))
    disabled_url = stack.api()  # no S2S_ADMIN_TOKEN: the operator endpoints are off (and /metrics open)
    disabled = run(only(load(disabled_url, token=None), operator))
    assert set(unauthorised) == set(wrong) == operations(only(load(url, token=None), secured))
    delete = "DELETE /api/jobs/{jobId}"  # the job's own token opens it, the operator's too (when set)
    assert "GET /metrics" in unauthorised and "GET /metrics" not in disabled
    assert delete in unauthorised and delete not in disabled
    assert len(disabled) == len(unauthorised) - 2 == 10
    for operation, seen in unauthorised.items():
        assert 401 in seen and not {200, 202, 204} & seen, operation
    seen = wrong.pop(delete)  # only unknown ids here: 404 (a known job's wrong token is 403: tests/test_delete.py)
    assert 404 in seen and not {200, 202, 204} & seen
    for operation, seen in [*wrong.items(), *disabled.items()]:
        assert 403 in seen and not {200, 202, 204} & seen, operation
    code, _, raw = http_json("POST", disabled_url + "/api/queue/pause")
    assert code == 403 and json.loads(raw)["code"] == "operator_disabled"


# ---- every state of a job, as described ----------------------------------------------------------
def call(schema, method: str, path: str, expect: int, **case):
    """One request built from the description, checked against it; the answer's body."""
    response = schema[path][method].Case(**case).call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        excluded_checks=[not_a_server_error] if expect >= 500 else None)  # a described 503 is expected here
    assert response.status_code == expect, (method, path, response.status_code, response.text)
    call.headers = response.headers  # what the last call answered, for the few tests that look
    json_answer = response.headers.get("content-type", [""])[0].startswith("application/json")
    return response.json() if json_answer else response.content


def submission(seed: int) -> dict:
    return {"heroName": "Mia", "originalImageBase64": data_url(photo_bytes(seed=seed)), "themeId": "space"}


def test_jobs_in_every_state_are_answered_as_described(stack):
    # API "retries": jobs get two attempts; API "once": one. One worker whose first attempt always fails,
    # with a 1-2 s backoff and 1 s of work per attempt, so every state lasts long enough to be seen.
    retries = load(stack.api(S2S_ADMIN_TOKEN=TOKEN, S2S_MAX_ATTEMPTS=2), token=TOKEN, checks=CONFORMANCE)
    once = load(stack.api(S2S_ADMIN_TOKEN=TOKEN, S2S_MAX_ATTEMPTS=1), token=TOKEN, checks=CONFORMANCE)
    status = "/api/jobs/{jobId}/status"

    assert call(retries, "POST", "/api/queue/pause", 200)["paused"] is True
    submit = "/api/jobs/generate-image"
    completes = call(retries, "POST", submit, 202, body=submission(1), media_type="application/json")["jobId"]
    cancelled = call(retries, "POST", submit, 202, body=submission(2), media_type="application/json")["jobId"]
    fails = call(once, "POST", submit, 202, body=submission(3), media_type="application/json",
                 headers={"Idempotency-Key": "fails-once"})["jobId"]
    again = call(once, "POST", submit, 202, body=submission(3), media_type="application/json",
                 headers={"Idempotency-Key": "fails-once"})["jobId"]
    assert again == fails
    assert call(once, "POST", submit, 409, body=submission(4), media_type="application/json",
                headers={"Idempotency-Key": "fails-once"})["code"] == "idempotency_key_reused"

    def job(schema, job_id: str) -> dict:
        return call(schema, "GET", status, 200, path_parameters={"jobId": job_id})

    assert job(retries, completes)["status"] == "queued"
    assert call(retries, "GET", "/api/jobs/{jobId}/image", 409, path_parameters={"jobId": completes})["code"] \
        == "job_not_finished"
    assert call(retries, "POST", "/api/jobs/{jobId}/retry", 409, path_parameters={"jobId": completes})["code"] \
        == "job_not_retryable"
    assert call(retries, "POST", "/api/jobs/{jobId}/cancel", 200, path_parameters={"jobId": cancelled})["status"] \
        == "cancelled"
    assert call(retries, "POST", "/api/jobs/{jobId}/cancel", 409, path_parameters={"jobId": cancelled})["code"] \
        == "job_already_ended"
    assert call(retries, "GET", "/api/jobs/{jobId}/image", 404, path_parameters={"jobId": cancelled})["code"] \
        == "image_not_found"
    assert job(retries, cancelled)["status"] == "cancelled"
    stream = "/api/jobs/{jobId}/stream"  # an ended job's stream: its last event, then the end
    assert b'"type":"job_cancelled"' in call(retries, "GET", stream, 200, path_parameters={"jobId": cancelled})
    assert call(retries, "GET", stream, 204, path_parameters={"jobId": cancelled},
                headers={"Last-Event-ID": str(job(retries, cancelled)["seq"])}) == b""

    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_FAIL_ATTEMPTS=1, S2S_NOOP_DELAY_MS=1000, S2S_RETRY_BASE_MS=2000,
                 S2S_RETRY_MAX_MS=2000)
    assert call(retries, "POST", "/api/queue/resume", 200)["paused"] is False
    waiting_retry = wait_until(lambda: (found := job(retries, completes)).get("retryAt") and found, timeout=15,
                               what="the first attempt to fail and a retry to be due")
    assert waiting_retry["status"] == "queued" and "lastError" in waiting_retry
    assert call(retries, "GET", "/api/jobs", 200, query={"state": "delayed"})["jobs"][0]["jobId"] == completes
    running = wait_until(lambda: (found := job(retries, completes))["status"] == "processing" and found,
                         timeout=15, what="the second attempt to run")
    assert running["attempts"] == 2 and "startedAt" in running
    assert call(retries, "GET", "/api/jobs", 200, query={"state": "active", "limit": 5})["jobs"][0]["jobId"] \
        == completes
    done = wait_until(lambda: (found := job(retries, completes))["status"] == "completed" and found,
                      timeout=15, what="the job to complete")
    assert done["result"]["imageUrl"].endswith(f"/api/jobs/{completes}/image")
    assert call(retries, "GET", "/api/jobs/{jobId}/image", 200, path_parameters={"jobId": completes})[:4] \
        == b"\x89PNG"
    kinds = [e["type"] for e in call(retries, "GET", "/api/jobs/{jobId}/events", 200,
                                     path_parameters={"jobId": completes})["events"]]
    assert kinds[0] == "job_progress" and kinds[-1] == "job_completed"

    failed = wait_until(lambda: (found := job(once, fails))["status"] == "failed" and found, timeout=15,
                        what="the one-attempt job to fail")
    assert failed["error"] and failed["errorCode"] == "noop_failure"
    assert call(once, "GET", "/api/jobs/{jobId}/image", 404, path_parameters={"jobId": fails})["code"] \
        == "image_not_found"
    retried = call(once, "POST", "/api/jobs/{jobId}/retry", 202, path_parameters={"jobId": fails})
    assert retried["jobId"] == fails and retried["seq"] > failed["seq"]  # queued again (the worker may have it)
    wait_until(lambda: (found := job(once, fails))["status"] == "failed" and (
        found["seq"] > retried["seq"] or retried["status"] == "failed"), timeout=15, what="the job to fail again")
    assert call(once, "POST", "/api/jobs/retry-failed", 202)["retried"] == [fails]

    for state in ("waiting", "active", "delayed", "completed", "failed", "cancelled"):
        call(retries, "GET", "/api/jobs", 200, query={"state": state})
    assert call(retries, "GET", "/api/workers", 200)["alive"] == 1
    stats = call(retries, "GET", "/api/jobs/stats", 200)
    assert stats["completed"] == 1 and stats["cancelled"] == 1 and stats["durationMs"]["sample"] == 1
    assert call(retries, "GET", "/api/jobs/health", 200)["workers"]["alive"] == 1

    assert call(retries, "DELETE", "/api/jobs/{jobId}", 204, path_parameters={"jobId": completes}) == b""
    assert call(retries, "GET", status, 404, path_parameters={"jobId": completes})["code"] == "job_not_found"
    assert call(retries, "DELETE", "/api/jobs/{jobId}", 404, path_parameters={"jobId": completes})["code"] \
        == "job_not_found"


def test_submit_limits_are_answered_as_described(stack):
    limited = load(stack.api(S2S_ADMIN_TOKEN=TOKEN, S2S_SUBMIT_PER_MINUTE=2, S2S_MAX_WAITING=1), token=TOKEN,
                   checks=CONFORMANCE)
    submit = "/api/jobs/generate-image"
    first = call(limited, "POST", submit, 202, body=submission(1), media_type="application/json")["jobId"]
    full = call(limited, "POST", submit, 503, body=submission(2), media_type="application/json")
    assert full["code"] == "queue_full" and full["details"] == {"waiting": 1, "maxWaiting": 1}
    assert int(call.headers["retry-after"][0]) > 0
    call(limited, "POST", "/api/jobs/{jobId}/cancel", 200, path_parameters={"jobId": first})
    second = call(limited, "POST", submit, 202, body=submission(3), media_type="application/json")["jobId"]
    call(limited, "POST", "/api/jobs/{jobId}/cancel", 200, path_parameters={"jobId": second})
    limit = call(limited, "POST", submit, 429, body=submission(4), media_type="application/json")
    assert limit["code"] == "rate_limited" and limit["details"] == {"limitPerMinute": 2}


def test_an_unhealthy_api_is_answered_as_described(stack):
    url = stack.api(S2S_WORKER_ABSENT_MS=1000)  # no worker: unhealthy once a second has passed
    described = load(url, token=None, checks=CONFORMANCE)
    wait_until(lambda: http_json("GET", url + "/api/jobs/health")[0] == 503, timeout=15, what="health to be 503")
    body = call(described, "GET", "/api/jobs/health", 503)
    assert body["status"] == "unhealthy" and "No worker has been alive" in body["reason"]
