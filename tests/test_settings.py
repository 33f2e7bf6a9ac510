"""Settings: defaults of the original service, one clear line for a bad value, .env files."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from s2s.settings import Settings, SettingsError, documented_variables

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_follow_the_original_service():
    s = Settings.from_env({}, dotenv=None)
    assert (s.port, s.worker_concurrency, s.ws_ping_timeout_ms, s.ws_ping_interval_ms) == (3001, 2, 60000, 25000)
    assert s.redis_url is None and s.effective_provider == "local"


@pytest.mark.parametrize("env, named, rule", [
    ({"PORT": "abc"}, "PORT", "whole number"),
    ({"PORT": "70000"}, "PORT", "at most 65535"),
    ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY", "at least 1"),
    ({"WS_PING_INTERVAL": "-5"}, "WS_PING_INTERVAL", "at least"),
    ({"S2S_PROVIDER": "dalle"}, "S2S_PROVIDER", "one of"),
    ({"S2S_ENV": "staging"}, "S2S_ENV", "one of"),
    ({"CORS_ORIGINS": "example.com"}, "CORS_ORIGINS", "http"),
    ({"S2S_TRUST_PROXY": "maybe"}, "S2S_TRUST_PROXY", "true or false"),
])
def test_a_bad_value_is_refused_naming_the_variable_and_the_rule(env, named, rule):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env, dotenv=None)
    assert str(err.value).startswith(named) and rule in str(err.value)


def test_a_bad_value_stops_start_up_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PORT": "abc"}
    done = subprocess.run([sys.executable, "-m", "s2s", "serve"], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["s2s: bad setting: PORT='abc': must be a whole number"]


@pytest.mark.parametrize("url, reason", [
    ("http://hooks.example.com/s2s", "must be https:// (plain http only to hosts in S2S_WEBHOOK_HOSTS)"),
    ("https://10.0.0.7/s2s", "points at a loopback, private or link-local address"),
    ("https://user:pw@hooks.example.com/s2s", "must not carry a user name or password"),
])
def test_a_webhook_url_that_can_never_be_sent_to_stops_start_up(tmp_path, url, reason):
    env = {"PATH": "/usr/bin:/bin", "S2S_WEBHOOK_URL": url}
    for command in ("serve", "worker"):
        done = subprocess.run([sys.executable, "-m", "s2s", command], env=env, capture_output=True, text=True,
                              cwd=tmp_path, timeout=30)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [f"s2s: bad setting: S2S_WEBHOOK_URL={url!r}: {reason}"]


def test_dotenv_is_read_and_the_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=4000\nWORKER_CONCURRENCY=7\nOPENAI_API_KEY=sk-test\n")
    s = Settings.from_env({"PORT": "5000"}, dotenv=dotenv)
    assert (s.port, s.worker_concurrency, s.effective_provider) == (5000, 7, "openai")
    assert "sk-test" not in repr(s), "secrets stay out of logs"


def test_provider_is_chosen_by_which_key_is_set():
    assert Settings.from_env({"QWEN_3_IMAGE_EDIT_KEY": "q"}, dotenv=None).effective_provider == "qwen"
    both = {"QWEN_3_IMAGE_EDIT_KEY": "q", "OPENAI_API_KEY": "o"}
    assert Settings.from_env(both, dotenv=None).effective_provider == "openai"
    assert Settings.from_env({**both, "S2S_PROVIDER": "local"}, dotenv=None).effective_provider == "local"


def test_settings_survive_the_trip_to_a_child_process():
    s = Settings.from_env({"CORS_ORIGINS": "http://a.test,https://b.test", "PORT": "4100"}, dotenv=None)
    assert Settings.from_env(s.environ(), dotenv=None) == s


def test_env_example_documents_every_variable():
    example = (ROOT / "config" / ".env.example").read_text()
    declared = set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))
    assert declared == {var for var, _, _ in documented_variables()}
    assert Settings.from_env({}, dotenv=ROOT / "config" / ".env.example") == Settings.from_env({}, dotenv=None)
