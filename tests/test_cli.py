"""The command line as a newcomer uses it: ``s2s up`` (with a restart mid-job) and ``s2s submit``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
from PIL import Image

from s2s.embedded import free_port
from tests.api_client import job as job_status
from tests.flaky_network import FlakyNetwork
from tests.helpers import child_env, photo_bytes, wait_until


class Up:
    """One ``s2s up`` run, watched from outside like a terminal would."""

    def __init__(self, tmp_path, port: int, settings, **env):
        self.log = tmp_path / f"up-{time.monotonic_ns()}.log"
        environ = child_env(settings, **env)
        environ.pop("REDIS_URL")  # embedded Redis, as on a fresh laptop
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "s2s", "up", "--port", str(port)],  # the default data dir, .s2s, in the cwd
                env=environ, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
                start_new_session=True)
        self.url = f"http://localhost:{port}"
        wait_until(self._ready, timeout=40, interval=0.1, what="s2s up to print its URL")
        me = psutil.Process(self.proc.pid)
        self.family = [me, *me.children(recursive=True)]

    def _ready(self):
        assert self.proc.poll() is None, self.log.read_text()
        return f"s2s is up at {self.url}" in self.log.read_text()

    def interrupt(self) -> int:
        """Ctrl-C, and check that nothing it started is left behind."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(60)
        for p in self.family:
            assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE, f"{p} left behind"
        return code

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in getattr(self, "family", []):
            if p.is_running():
                p.kill()


def post_job(url: str, tmp_path) -> str:
    photo = tmp_path / "kid.jpg"
    photo.write_bytes(photo_bytes())
    done = subprocess.run([sys.executable, "-m", "s2s", "submit", str(photo), "--hero", "Leo", "--url", url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["jobId"]


def test_a_job_accepted_before_a_restart_of_s2s_up_completes_after_it(tmp_path, settings):
    port = free_port()
    env = {"S2S_PROVIDER": "noop", "S2S_NOOP_DELAY_MS": "30000", "S2S_UPSTREAM_TIMEOUT_MS": "1000",
           "S2S_SHUTDOWN_GRACE_MS": "200"}
    first = Up(tmp_path, port, settings, **env)
    try:
        job_id = post_job(first.url, tmp_path)
        wait_until(lambda: job_status(first.url, job_id)["status"] == "processing", what="the job to start")
        blobs = tmp_path / ".s2s" / "blobs" / "jobs" / job_id
        assert (blobs / "photo").is_file(), "s2s up keeps photos on the disk, in its data dir, with no setup"
        assert first.interrupt() == 0
    finally:
        first.kill()
    assert "s2s stopped" in first.log.read_text()
    assert list((tmp_path / ".s2s").rglob("*.aof*")), "the embedded Redis keeps its AOF under ./.s2s"
    second = Up(tmp_path, port, settings, **{**env, "S2S_NOOP_DELAY_MS": "100"})
    try:
        job = wait_until(lambda: (j := job_status(second.url, job_id))["status"] == "completed" and j,
                         timeout=30, what="the job to complete after the restart")
        assert job["attempts"] == 1  # the interrupted attempt was handed back, not used up
        kept = wait_until(lambda: not (blobs / "photo").exists() and sorted(p.name for p in blobs.iterdir()),
                          what="the photo deleted once the job completed")
        assert len(kept) == 1 and kept[0].startswith("picture-"), kept
        assert second.interrupt() == 0
    finally:
        second.kill()


def submit_wait(tmp_path, url: str, *args: str, stderr=None, **kwargs):
    """``s2s submit photo --wait`` as typed in a terminal; a Popen when ``stderr`` is a file, else its result."""
    photo = tmp_path / "kid.png"
    photo.write_bytes(photo_bytes("PNG"))
    command = [sys.executable, "-m", "s2s", "submit", str(photo), "--hero", "Zoë", "--url", url, "--wait", *args]
    if stderr is not None:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, **kwargs)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)


def shown_steps(stderr: str) -> list[tuple[int, str]]:
    """The progress lines ``s2s submit --wait`` printed: (percent, message)."""
    return [(int(p), m.strip()) for p, m in re.findall(r"^\[[#.]+\] +(\d+)% (.*)$", stderr, re.MULTILINE)]


def test_submit_waits_with_every_progress_step_live_over_ws_and_saves_the_picture(tmp_path, stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="local")
    out = tmp_path / "cover.png"
    done = submit_wait(tmp_path, url, "--style", "sketch", "--kind", "page", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"live progress from {url.replace('http://', 'ws://')}/ws" in done.stderr
    assert "polling" not in done.stderr and "instead" not in done.stderr
    job_id = re.search(r"^job (\S+)$", done.stderr, re.MULTILINE).group(1)
    # every step the job went through, in order, once: the renderer's steps take milliseconds, so
    # only the socket (subscribed from seq 0) shows them all; polling every 0.25 s would skip most
    steps = [(e["progress"], e["message"]) for e in stack.events(job_id) if e["type"] == "job_progress"]
    assert len(steps) >= 5, steps
    assert shown_steps(done.stderr) == [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]
    assert done.stdout.strip() == str(out) and f"saved {out}" in done.stderr
    noise = [line for line in done.stderr.splitlines() if not re.match(r"job |live progress from |\[|saved ", line)]
    assert not noise, done.stderr
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > picture.height  # a landscape page


def test_submit_wait_polls_when_a_proxy_refuses_the_websocket(tmp_path, stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="local")
    net = FlakyNetwork(int(url.rsplit(":", 1)[1]))
    net.block_websockets = True
    try:
        out = tmp_path / "cover.png"
        done = submit_wait(tmp_path, net.url, "-o", str(out))
    finally:
        net.close()
    assert done.returncode == 0, done.stderr
    assert net.refused >= 1, "the socket was tried"
    assert re.search(r"^s2s submit: no live updates from ws://127\.0\.0\.1:\d+/ws \(.+\); asking for the job's "
                     r"status every 0\.25 s instead$", done.stderr, re.MULTILINE), done.stderr
    assert shown_steps(done.stderr)[-1][0] == 100
    assert done.stdout.strip() == str(out)
    with Image.open(out) as picture:
        assert picture.format == "PNG"


def test_submit_wait_carries_on_by_polling_when_the_socket_drops(tmp_path, stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=3000)
    net = FlakyNetwork(int(url.rsplit(":", 1)[1]))
    log = tmp_path / "submit.err"
    out = tmp_path / "cover.png"
    try:
        with open(log, "w") as err:
            cli = submit_wait(tmp_path, net.url, "-o", str(out), stderr=err)
        try:
            wait_until(lambda: "live progress from" in log.read_text() and shown_steps(log.read_text()),
                       timeout=30, what="the first progress line over the socket")
            net.cut()  # Wi-Fi gone: the socket drops, new connections are refused
            wait_until(lambda: "the live connection dropped; asking for the job's status" in log.read_text(),
                       timeout=30, what="s2s submit to say it polls instead")
            net.restore()
            stdout, _ = cli.communicate(timeout=60)
        finally:
            cli.kill()
    finally:
        net.close()
    assert cli.returncode == 0, log.read_text()
    assert shown_steps(log.read_text())[-1][0] == 100 and stdout.strip() == str(out)
    assert out.stat().st_size > 0


def test_submit_exits_non_zero_when_the_job_fails(tmp_path, stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_FAIL_ATTEMPTS=5)  # attempts: 3, fixed by the API at submit
    photo = tmp_path / "kid.jpg"
    photo.write_bytes(photo_bytes())
    done = subprocess.run([sys.executable, "-m", "s2s", "submit", str(photo), "--hero", "Leo", "--url", url,
                           "--wait", "-o", str(tmp_path / "never.png")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "job failed: Simulated upstream failure on attempt 3." in done.stderr
    assert not (tmp_path / "never.png").exists()


def test_submit_reports_a_refused_photo(tmp_path, stack):
    url = stack.api()
    bogus = tmp_path / "not-a-photo.jpg"
    bogus.write_bytes(b"this is text, not a JPEG")
    done = subprocess.run([sys.executable, "-m", "s2s", "submit", str(bogus), "--hero", "Leo", "--url", url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "refused (400)" in done.stderr and "not a readable JPEG, PNG or WebP image" in done.stderr


def test_job_digest_takes_an_id_that_starts_with_a_dash(capsys):
    """One job id in 64 starts with '-' (URL-safe base64): argparse took it for an option and exited 2."""
    from s2s import cli, logs
    assert cli.main(["job-digest", "-Ak14M38jzBbf2EaCUBFcLpe", "abc"]) == 0
    assert cli.main(["job-digest", "--", "-Ak14M38jzBbf2EaCUBFcLpe"]) == 0
    assert capsys.readouterr().out.split() == [logs.job_digest("-Ak14M38jzBbf2EaCUBFcLpe"), logs.job_digest("abc"),
                                               logs.job_digest("-Ak14M38jzBbf2EaCUBFcLpe")]
