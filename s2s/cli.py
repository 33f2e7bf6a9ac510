"""The ``s2s`` command: up, serve, worker, submit, job-digest.

Settings are read here, once, and handed down.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import mimetypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import attrs

from s2s import logs
from s2s.follow import Progress, follow
from s2s.settings import Settings, SettingsError
from s2s.webhooks import destinations


def _settings(**overrides) -> Settings:
    try:
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        print(f"s2s: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    refused = destinations.configured_refusal(settings)
    if refused:
        print(f"s2s: bad setting: {refused}", file=sys.stderr)
        raise SystemExit(2)
    return settings


def _setup_logs(settings: Settings) -> None:
    logs.setup(settings.log_level, json_lines=settings.env == "production")


# ---- serve / worker ----------------------------------------------------------------------
def cmd_serve(args) -> int:
    settings = _settings(port=args.port)
    _setup_logs(settings)
    from s2s.web.app import serve

    asyncio.run(serve(settings))
    return 0


def cmd_worker(args) -> int:
    settings = _settings(worker_concurrency=args.concurrency)
    _setup_logs(settings)
    from s2s.catalog import Catalog
    from s2s.providers import make_provider
    from s2s.queue import Queue
    from s2s.worker import WAIT_FOR_WORK_S, Worker

    queue = Queue.connect(settings, blocking_s=WAIT_FOR_WORK_S)
    try:
        provider = make_provider(settings, redis=queue.redis)  # the redis: limits shared by every worker
    except SettingsError as exc:
        print(f"s2s: bad setting: {exc}", file=sys.stderr)
        return 2
    worker = Worker(settings=settings, queue=queue, provider=provider, catalog=Catalog.load(settings.config_dir))
    worker.run()
    return 0


# ---- up ------------------------------------------------------------------------------------
def cmd_up(args) -> int:
    """Embedded Redis (unless REDIS_URL), the API and one worker; Ctrl-C stops all of it."""
    from s2s.embedded import EmbeddedRedis, die_with_parent

    # the demo page is on locally unless the user chose otherwise (S2S_DEMO in the environment or .env)
    settings = _settings(port=args.port, data_dir=args.data_dir, demo=None if _user_set("S2S_DEMO") else True)
    if not _user_set("S2S_STORAGE_URL"):  # photos and pictures on the disk, next to the embedded Redis
        settings = attrs.evolve(settings, storage_url=f"file://{Path(settings.data_dir).resolve()}/blobs")
    _setup_logs(settings)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(Path(settings.data_dir) / "redis")
        redis_url = embedded.start()
    env = {**os.environ, **settings.environ(), "REDIS_URL": redis_url}
    children: list[subprocess.Popen] = []
    code = 0
    try:
        for role in ("serve", "worker"):
            # their own session: a Ctrl-C reaches only us, and we stop them in order
            children.append(subprocess.Popen([sys.executable, "-m", "s2s", role], env=env,
                                             start_new_session=True, preexec_fn=die_with_parent))
        url = f"http://{'localhost' if settings.host in ('127.0.0.1', '0.0.0.0') else settings.host}:{settings.port}"
        if _wait_healthy(url, children, lambda: stopping):
            print(f"s2s is up at {url}  (Redis: {redis_url}; storage: {settings.storage_url or 'redis://'}; "
                  f"provider: {settings.effective_provider}; "
                  f"Ctrl-C to stop)", flush=True)
            if settings.demo:
                print(f"Open {url}/ in a browser to make a storybook picture from a photo (the demo page).",
                      flush=True)
        while not stopping:
            dead = [c for c in children if c.poll() is not None]
            if dead:
                print(f"s2s: {' '.join(dead[0].args[-1:])} exited with {dead[0].returncode}; stopping",
                      file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    finally:
        grace = (settings.upstream_timeout_ms + settings.shutdown_grace_ms) / 1000 + 10  # a paid call finishes
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if embedded:
            embedded.stop()
        print("s2s stopped", flush=True)
    return code


def _user_set(var: str) -> bool:
    """Whether ``var`` was given a value (environment or ``.env``), as opposed to left at its default."""
    if var in os.environ:
        return True
    if Path(".env").is_file():
        from dotenv import dotenv_values

        return var in dotenv_values(".env")
    return False


def _wait_healthy(url: str, children, stopping, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        if any(c.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url + "/api/jobs/health", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


# ---- submit --------------------------------------------------------------------------------
def _request(url: str, data: dict | None = None, headers: dict | None = None, timeout: float = 30):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def cmd_submit(args) -> int:
    photo = Path(args.photo)
    try:
        data = photo.read_bytes()
    except OSError as exc:
        print(f"s2s submit: cannot read {photo}: {exc.strerror}", file=sys.stderr)
        return 2
    ctype = mimetypes.guess_type(photo.name)[0] or "image/jpeg"
    payload = {"heroName": args.hero, "originalImageBase64": f"data:{ctype};base64,{base64.b64encode(data).decode()}"}
    for field, value in (("themeId", args.theme), ("styleKey", args.style), ("kind", args.kind)):
        if value:
            payload[field] = value
    base = args.url.rstrip("/")
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    try:
        status, _, body = _request(base + "/api/jobs/generate-image", payload, headers)
    except (urllib.error.URLError, OSError) as exc:
        print(f"s2s submit: cannot reach {base}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 3
    answer = json.loads(body or b"{}")
    if status != 202:
        print(f"s2s submit: refused ({status}): {answer.get('error', body[:200])}", file=sys.stderr)
        return 1
    if not args.wait:
        print(json.dumps(answer))
        return 0
    job_id = answer["jobId"]
    print(f"job {job_id}", file=sys.stderr)
    progress = Progress()
    job = follow(base, job_id, args.timeout, progress)
    if progress.tty and progress.last:
        print(file=sys.stderr)
    if job is None:
        print(f"s2s submit: gave up waiting after {args.timeout:.0f} s", file=sys.stderr)
        return 4
    if job["status"] == "completed":
        return _download(job, base, args.output)
    print(f"job {job['status']}: {job.get('error', '')}".rstrip(), file=sys.stderr)
    return 1


def _download(job: dict, base: str, output: str | None) -> int:
    url = job["result"]["imageUrl"]
    if url.startswith("/"):
        url = base + url
    with urllib.request.urlopen(url, timeout=60) as resp:
        data = resp.read()
        ext = mimetypes.guess_extension(resp.headers.get_content_type()) or ".png"
    out = Path(output or f"{job['jobId']}{ext}")
    out.write_bytes(data)
    print(f"saved {out} ({len(data)} bytes)", file=sys.stderr)
    print(str(out))
    return 0


def cmd_job_digest(args) -> int:
    """Logs name a job by its digest, never its id: this prints what to search them for."""
    for job_id in args.job_id:
        print(logs.job_digest(job_id))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2s", description="Snap2Story backend: API, queue workers, tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything locally: embedded Redis, the API and one worker")
    up.add_argument("--port", type=int, help="API port (default PORT or 3001)")
    up.add_argument("--data-dir", help="where the embedded Redis keeps its data (default S2S_DATA_DIR or .s2s)")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run the API alone against REDIS_URL")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run one worker process against REDIS_URL")
    worker.add_argument("--concurrency", type=int, help="jobs at once (default WORKER_CONCURRENCY)")
    worker.set_defaults(func=cmd_worker)

    submit = sub.add_parser("submit", help="submit a photo and (with --wait) save the picture")
    submit.add_argument("photo")
    submit.add_argument("--hero", required=True, help="the hero's name")
    submit.add_argument("--theme")
    submit.add_argument("--style")
    submit.add_argument("--kind")
    submit.add_argument("--url", default=os.environ.get("S2S_URL", "http://localhost:3001"))
    submit.add_argument("--wait", action="store_true",
                        help="show progress (live over /ws, else by polling) and save the image when done")
    submit.add_argument("-o", "--output", help="where to save the image (default <jobId>.<ext>)")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most")
    submit.add_argument("--idempotency-key", help="makes a repeated submit return the same job")
    submit.set_defaults(func=cmd_submit)

    digest = sub.add_parser("job-digest", help="print the digest the logs name a job by (they never carry its id)")
    digest.add_argument("job_id", nargs="+")
    digest.set_defaults(func=cmd_job_digest)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["job-digest"] and len(argv) > 1 and argv[1] not in ("-h", "--help"):
        # job ids are URL-safe base64 and one in 64 starts with '-', which argparse takes for an option
        ids = argv[2:] if argv[1] == "--" else argv[1:]
        return cmd_job_digest(argparse.Namespace(job_id=ids))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
