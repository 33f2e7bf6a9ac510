"""The demo page in a real browser (Debian's headless Chromium, driven by Playwright) against a real ``s2s up``.

Each test starts ``s2s up`` as a newcomer does (no S2S_DEMO, embedded Redis), opens the URL it
prints and uses the page as a person would. Between the browser and the server there may be a
TCP hop that behaves like a bad network: it drops every connection, or refuses WebSocket
upgrades as some proxies do. Screenshots of every step are saved under tests/artifacts/browser/.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import expect, sync_playwright

from s2s.embedded import free_port
from tests.flaky_network import FlakyNetwork
from tests.helpers import child_env, data_url, http_json, photo_bytes, wait_until

CHROMIUM = "/usr/bin/chromium"  # Debian's package; Playwright never downloads a browser here
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).parent / "artifacts" / "browser"
ADMIN = "browser-test-token"
# run by tox's browser env only (tox.ini), which is skipped, saying so, where /usr/bin/chromium is missing
pytestmark = pytest.mark.browser
# what the page showed, step by step: (progress bar value, status line), recorded as it changes
RECORD_STATUS = """
window.__shown = [];
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress"), status = document.getElementById("status");
  new MutationObserver(() => window.__shown.push([bar.value, status.textContent]))
    .observe(status, {childList: true, characterData: true, subtree: true});
});
"""


class DemoUp:
    """``s2s up`` as a newcomer runs it: no S2S_DEMO, an embedded Redis; stopped with Ctrl-C."""

    def __init__(self, tmp_path: Path, settings, **env):
        environ = child_env(settings, S2S_ADMIN_TOKEN=ADMIN, **env)
        for var in ("REDIS_URL", "S2S_DEMO"):
            environ.pop(var, None)
        self.log = tmp_path / "up.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "s2s", "up", "--port", str(free_port()), "--data-dir", str(tmp_path / "data")],
                env=environ, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
                start_new_session=True)
        self.demo_url = wait_until(self._printed_url, timeout=40, interval=0.1, what="s2s up to print the page's URL")
        self.api = self.demo_url.rstrip("/")
        me = psutil.Process(self.proc.pid)
        self.family = [me, *me.children(recursive=True)]

    def _printed_url(self) -> str | None:
        assert self.proc.poll() is None, self.log.read_text()
        found = re.search(r"Open (http://\S+/) in a browser", self.log.read_text())
        return found and found.group(1)

    def operator(self, method: str, path: str) -> dict:
        status, _, body = http_json(method, self.api + path, headers={"Authorization": f"Bearer {ADMIN}"})
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        for p in self.family:
            if p.is_running():
                p.kill()


class Tab:
    """One page in a fresh Chromium profile: its console, its sockets' frames, numbered screenshots."""

    def __init__(self, context, shots: Path):
        self.page = context.pages[0] if context.pages else context.new_page()
        self.shots = shots
        self.count = 0
        self.problems: list[str] = []  # uncaught errors and Content-Security-Policy refusals
        self.sockets: list[dict] = []  # every WebSocket the page opened: frames sent and received
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", lambda msg: "Content Security Policy" in msg.text and self.problems.append(msg.text))
        self.page.on("websocket", self._on_socket)
        self.page.add_init_script(RECORD_STATUS)

    def _on_socket(self, ws) -> None:
        record = {"url": ws.url, "sent": [], "received": []}
        self.sockets.append(record)
        ws.on("framesent", lambda payload: record["sent"].append(json.loads(payload)))
        ws.on("framereceived", lambda payload: record["received"].append(json.loads(payload)))

    def shot(self, step: str) -> None:
        self.count += 1
        self.page.screenshot(path=self.shots / f"{self.count:02d}-{step}.png", full_page=True)

    def fill_form(self, photo: Path, hero: str, theme: str, style: str, kind: str = "Cover") -> None:
        page = self.page
        page.get_by_label("Photo of the hero").set_input_files(photo)
        page.get_by_label("Hero's name").fill(hero)
        page.get_by_label("Theme").select_option(theme)
        page.get_by_label("Style").select_option(style)
        page.get_by_label(kind, exact=True).check()

    def shown(self) -> list[tuple[int, str]]:
        """What the progress bar and the status line showed, each change once."""
        steps = [(int(value), text) for value, text in self.page.evaluate("window.__shown")]
        return [step for i, step in enumerate(steps) if i == 0 or step != steps[i - 1]]

    def assert_no_problems(self) -> None:
        assert not self.problems, self.problems


@pytest.fixture(scope="module")
def playwright():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is not installed: these tests drive Debian's chromium (apt-get install -y chromium; "
                    "Playwright downloads no browser here)", pytrace=False)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def tab(playwright, tmp_path, request, capsys):
    shots = ARTIFACTS / request.node.name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    context = playwright.chromium.launch_persistent_context(
        tmp_path / "chromium-profile", executable_path=CHROMIUM, args=FLAGS, headless=True, viewport=PHONE)
    try:
        yield Tab(context, shots)
    finally:
        context.close()
        with capsys.disabled():
            print(f"\n  screenshots: {shots}")


@pytest.fixture
def s2s_up(tmp_path, settings):
    started: list[DemoUp] = []

    def start(**env) -> DemoUp:
        started.append(DemoUp(tmp_path, settings, **env))
        return started[-1]

    yield start
    for up in started:
        up.stop()


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "mia.jpg"
    path.write_bytes(photo_bytes())
    return path


def test_a_newcomer_opens_the_printed_url_and_gets_a_storybook_picture(s2s_up, tab, photo):
    up = s2s_up(S2S_PROVIDER="local")
    page = tab.page
    page.goto(up.demo_url)
    catalog = json.loads(http_json("GET", up.api + "/api/catalog")[2])
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    themes = page.get_by_label("Theme").locator("option")
    assert [o.get_attribute("value") for o in themes.all()] == [t["id"] for t in catalog["themes"]]
    assert themes.all_inner_texts()[1] == f"{catalog['themes'][1]['name']}: {catalog['themes'][1]['tagline']}"
    assert page.get_by_label("Style").locator("option").all_inner_texts() == [s["name"] for s in catalog["styles"]]
    tab.shot("opened")

    tab.fill_form(photo, "Mia", theme="space", style="cartoon")
    expect(page.get_by_alt_text("The chosen photo")).to_be_visible()
    page.get_by_label("Style").focus()
    page.keyboard.press("Tab")  # the checked kind
    page.keyboard.press("Tab")  # the button
    button = page.locator("button#generate")
    expect(button).to_have_text("Generate")
    expect(button).to_be_focused()
    assert button.evaluate("b => getComputedStyle(b).outlineStyle") != "none"  # focus is visible
    tab.shot("filled-in-and-focused")

    up.operator("POST", "/api/queue/pause")  # a busy queue: the job waits, the page says so
    page.keyboard.press("Enter")
    status = page.get_by_role("status")
    expect(status).to_have_text("0% · Waiting in the queue")  # the server's words
    expect(page.get_by_text("Live updates: connected.")).to_be_visible()
    expect(button).to_be_disabled()
    expect(button).to_have_text("Generating… 0%")
    expect(page.locator("#place")).to_have_text("Next in line")  # paused: a place, but no estimate
    tab.shot("queued")
    said = page.evaluate("""async () => {
        const { describePlace } = await import("/static/s2s-client.js");
        return [[3, 41], [2, null], [11, 200], [22, 88]].map(([queuePosition, etaSeconds]) =>
          describePlace({ status: "queued", queuePosition, etaSeconds }));
    }""")
    assert said == ["3rd in line, about 40 s", "2nd in line", "11th in line, about 3 min", "22nd in line, about 90 s"]

    up.operator("POST", "/api/queue/resume")
    picture = page.get_by_alt_text("Storybook cover of Mia")
    expect(picture).to_be_visible(timeout=30_000)
    expect(status).to_have_text("100% · Done!")
    expect(page.get_by_role("progressbar")).to_have_attribute("value", "100")
    expect(page.get_by_role("heading", name="Your storybook picture")).to_be_focused()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture.element_handle())
    width, height = picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert height > width > 300  # a portrait cover, drawn by the server
    job_id = re.search(r"/api/jobs/([\w-]+)/image$", picture.get_attribute("src")).group(1)
    assert up.operator("GET", f"/api/jobs/{job_id}/events")["events"][-1]["type"] == "job_completed"
    assert page.get_by_role("link", name="Download the picture").get_attribute("href") == picture.get_attribute("src")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits a phone's width
    expect(button).to_be_enabled()
    tab.shot("done")
    tab.assert_no_problems()


def test_the_parent_deletes_the_photo_and_picture_from_the_page(s2s_up, tab, photo):
    up = s2s_up(S2S_PROVIDER="local")
    page = tab.page
    page.goto(up.demo_url)
    tab.fill_form(photo, "Noa", theme="forest", style="watercolor")
    page.get_by_role("button", name="Generate").click()
    picture = page.get_by_alt_text("Storybook cover of Noa")
    expect(picture).to_be_visible(timeout=30_000)
    job_id = re.search(r"/api/jobs/([\w-]+)/image$", picture.get_attribute("src")).group(1)
    tab.shot("done")

    delete = page.get_by_role("button", name="Delete my photo and picture")
    delete.click()  # a confirm step first, in the page
    yes = page.get_by_role("button", name="Yes, delete them")
    expect(page.get_by_role("group", name=re.compile("for good"))).to_be_visible()
    expect(yes).to_be_focused()
    tab.shot("asked-to-confirm")
    page.get_by_role("button", name="No, keep them").click()
    expect(delete).to_be_focused()
    assert http_json("GET", f"{up.api}/api/jobs/{job_id}/status")[0] == 200  # kept: nothing was sent

    delete.click()
    yes.click()
    said = page.locator("#delete-result")
    expect(said).to_have_text("Deleted: your photo and picture are no longer on the server.")
    expect(said).to_have_attribute("aria-live", "polite")
    expect(said).to_be_focused()
    expect(picture).to_be_hidden()
    expect(delete).to_be_hidden()
    tab.shot("deleted")
    assert http_json("GET", f"{up.api}/api/jobs/{job_id}/status")[0] == 404
    assert http_json("GET", f"{up.api}/api/jobs/{job_id}/image")[0] == 404
    tab.assert_no_problems()


def test_the_page_reconnects_after_the_connection_drops_mid_job_and_shows_completion(s2s_up, tab, photo):
    up = s2s_up(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS="5000")  # a progress event every 250 ms
    net = FlakyNetwork(int(up.api.rsplit(":", 1)[1]))
    try:
        page = tab.page
        page.goto(net.url)
        tab.fill_form(photo, "Leo", theme="ocean", style="sketch")
        page.get_by_role("button", name="Generate").click()
        status = page.get_by_role("status")
        expect(status).to_have_text(re.compile(r"· Drawing \(noop provider\), step \d+ of 20$"), timeout=20_000)
        tab.shot("drawing")

        net.cut()
        expect(page.get_by_text("Connection lost: reconnecting…")).to_be_visible()
        wait_until(lambda: net.refused >= 1, what="the page to try to reconnect while the network is down")
        tab.shot("connection-lost")
        seen_before = max(f["seq"] for f in tab.sockets[0]["received"] if "seq" in f)

        net.restore()
        expect(page.get_by_alt_text("Storybook cover of Leo")).to_be_visible(timeout=30_000)
        expect(status).to_have_text("100% · Done!")
        tab.shot("done-after-reconnecting")
    finally:
        net.close()

    first, *_, last = tab.sockets
    assert first["sent"][0] == {"type": "subscribe_to_job", "jobId": first["sent"][0]["jobId"]}
    assert last["sent"][0] == {"type": "subscribe_to_job", "jobId": first["sent"][0]["jobId"], "lastSeq": seen_before}
    seqs = [f["seq"] for s in tab.sockets for f in s["received"] if "seq" in f]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # across the drop: nothing missed, nothing twice
    events = up.operator("GET", f"/api/jobs/{first['sent'][0]['jobId']}/events")["events"]
    server_said = [e["message"] for e in events if e["type"] == "job_progress" and e["seq"] >= seqs[0]]
    page_said = [text.split(" · ", 1)[1] for _, text in tab.shown()]
    # the POST's answer, then every message of the server from the first it sent, in order, once
    assert page_said == ["Job queued successfully", *server_said, "Done!"]
    bar = [value for value, _ in tab.shown()]
    assert bar == sorted(bar) and bar[-1] == 100
    tab.assert_no_problems()


def test_a_file_that_is_not_a_picture_shows_the_servers_error(s2s_up, tab, tmp_path):
    up = s2s_up(S2S_PROVIDER="local")
    fake = tmp_path / "holiday.png"
    fake.write_bytes(b"These are my holiday notes, not a photo.\n")
    status, _, body = http_json("POST", up.api + "/api/jobs/generate-image", json.dumps(
        {"heroName": "Leo", "originalImageBase64": data_url(fake.read_bytes(), "image/png")}).encode(),
        {"Content-Type": "application/json"})
    assert status == 400
    server_said = json.loads(body)["error"]

    page = tab.page
    page.goto(up.demo_url)
    tab.fill_form(fake, "Leo", theme="forest", style="watercolor")
    tab.shot("filled-in-with-a-text-file")
    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("alert")).to_have_text(server_said)
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    expect(page.get_by_role("status")).to_be_hidden()  # no job was made
    tab.shot("server-error-shown")
    tab.assert_no_problems()


def test_behind_a_proxy_that_refuses_websockets_and_event_streams_the_page_follows_the_job_by_polling(
        s2s_up, tab, photo):
    up = s2s_up(S2S_PROVIDER="local")
    net = FlakyNetwork(int(up.api.rsplit(":", 1)[1]))
    net.block_websockets = net.block_event_streams = True
    streams: list[str] = []  # every GET /stream the page made
    tab.page.on("request", lambda r: "/stream" in r.url and streams.append(r.url))
    try:
        page = tab.page
        page.goto(net.url)
        tab.fill_form(photo, "Ada", theme="fairytale", style="storybook", kind="Page")
        up.operator("POST", "/api/queue/pause")  # the job waits until the page has given up on sockets
        page.get_by_role("button", name="Generate").click()
        expect(page.get_by_text("Live updates are unavailable here")).to_be_visible(timeout=20_000)
        expect(page.get_by_role("status")).to_have_text("0% · Waiting in the queue")
        tab.shot("polling")
        up.operator("POST", "/api/queue/resume")
        expect(page.get_by_alt_text("Storybook page of Ada")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("status")).to_have_text("100% · Done!")
        width, height = page.get_by_alt_text("Storybook page of Ada").evaluate(
            "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
        assert width > height  # a landscape page
        tab.shot("done-by-polling")
    finally:
        net.close()
    # three sockets, three event streams (the browser may retry a closed connection once), then polling only
    assert len(tab.sockets) == 3 and len(streams) == 3 and net.refused >= 6
    assert all(not s["received"] for s in tab.sockets)
    tab.assert_no_problems()


def test_behind_a_proxy_that_refuses_websockets_the_page_follows_the_job_over_server_sent_events(
        s2s_up, tab, photo):
    """Sockets refused: the client takes the job's event stream; a drop mid-job is resumed with Last-Event-ID."""
    up = s2s_up(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS="5000")  # a progress event every 250 ms
    net = FlakyNetwork(int(up.api.rsplit(":", 1)[1]))
    net.block_websockets = True
    streams: list[dict] = []  # every GET /stream the page made: its URL and headers
    tab.page.on("request", lambda r: "/stream" in r.url and streams.append({"url": r.url, "headers": r.all_headers()}))
    try:
        page = tab.page
        page.goto(net.url)
        tab.fill_form(photo, "Noa", theme="ocean", style="sketch")
        page.get_by_role("button", name="Generate").click()
        status = page.get_by_role("status")
        expect(status).to_have_text(re.compile(r"· Drawing \(noop provider\), step \d+ of 20$"), timeout=30_000)
        expect(page.get_by_text("Live updates: connected.")).to_be_visible()
        tab.shot("drawing-over-event-stream")

        net.cut()
        expect(page.get_by_text("Connection lost: reconnecting…")).to_be_visible(timeout=10_000)
        refused = net.refused
        wait_until(lambda: net.refused > refused, timeout=15,
                   what="the page to try the stream again while the network is down")
        net.restore()
        expect(page.get_by_alt_text("Storybook cover of Noa")).to_be_visible(timeout=30_000)
        expect(status).to_have_text("100% · Done!")
        tab.shot("done-over-event-stream")
    finally:
        net.close()

    assert net.refused >= 3 and all(not s["received"] for s in tab.sockets)  # no socket ever carried an event
    job_id = streams[0]["url"].split("/api/jobs/", 1)[1].split("/", 1)[0]
    resumed = [s for s in streams[1:] if "last-event-id" in s["headers"] or "lastEventId=" in s["url"]]
    assert resumed, f"no reconnect said where it was: {streams}"
    events = up.operator("GET", f"/api/jobs/{job_id}/events")["events"]
    page_said = [text.split(" · ", 1)[1] for _, text in tab.shown()]
    server_said = [e["message"] for e in events if e["type"] == "job_progress"]
    # the POST's answer, then the server's messages from the first the stream carried, in order, once, across the drop
    assert page_said[0] == "Job queued successfully" and page_said[-1] == "Done!"
    middle = page_said[1:-1]
    assert middle == server_said[server_said.index(middle[0]):], (middle, server_said)
    bar = [value for value, _ in tab.shown()]
    assert bar == sorted(bar) and bar[-1] == 100
    tab.assert_no_problems()


def test_without_s2s_demo_the_api_serves_the_client_module_but_no_page(stack):
    url = stack.api()  # `s2s serve` as in production: S2S_DEMO off, its default
    status, headers, body = http_json("GET", url + "/")
    assert status == 404 and json.loads(body)["code"] == "not_found"
    status, headers, body = http_json("GET", url + "/static/s2s-client.js", headers={"Origin": "https://app.example"})
    assert status == 200 and headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["Access-Control-Allow-Origin"] == "*" and headers["Cache-Control"] == "no-cache"
    assert b"export class ImageGeneration" in body
    etag = headers["Etag"]
    assert http_json("GET", url + "/static/s2s-client.js", headers={"If-None-Match": etag})[0] == 304
    assert http_json("GET", url + "/static/demo.js")[0] == 404  # the demo page's own files: only with S2S_DEMO


def test_with_s2s_demo_the_page_comes_with_a_content_security_policy(stack):
    url = stack.api(S2S_DEMO="true")
    status, headers, body = http_json("GET", url + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert b"<script>" not in body and b"<style" not in body and b' style="' not in body  # nothing inline
    status, headers, _ = http_json("GET", url + "/static/demo.css")
    assert status == 200 and headers["Content-Type"] == "text/css; charset=utf-8"
    status, _, body = http_json("POST", url + "/static/demo.js", b"{}")
    assert status == 405 and json.loads(body)["code"] == "method_not_allowed"


def test_the_client_backs_off_with_jitter_when_the_server_says_it_is_busy(stack, tab):
    """A busy server's `overloaded` (retryAfterMs) and close 1013 are waited out, jittered: no tight reconnect loop.

    The demo page runs the module the API serves; its /ws is answered by Playwright: three subscribes get
    ``overloaded`` with retryAfterMs, the fourth a close 1013 (Try Again Later), the fifth the job's end.
    """
    url = stack.api(S2S_DEMO="true")
    retry_after_ms, try_again_later_ms = 700, 600
    subscribes: list[float] = []  # when each socket's subscribe arrived, seconds

    def answer(ws) -> None:
        def on_message(message: str) -> None:
            frame = json.loads(message)
            if frame.get("type") != "subscribe_to_job":
                return
            subscribes.append(time.monotonic())
            if len(subscribes) <= 3:
                ws.send(json.dumps({"type": "error", "code": "overloaded", "error": "The server is busy.",
                                    "jobId": frame["jobId"], "retryAfterMs": retry_after_ms}))
            elif len(subscribes) == 4:
                ws.close(code=1013, reason="Try again later.")
            else:
                ws.send(json.dumps({"type": "job_cancelled", "jobId": frame["jobId"], "status": "cancelled",
                                    "seq": 1}))
        ws.on_message(on_message)

    tab.page.route_web_socket(re.compile(r"/ws$"), answer)
    tab.page.goto(url + "/")
    job = tab.page.evaluate("""async ([url, tryAgainLaterMs]) => {
        const { createImageGeneration } = await import(url + "/static/s2s-client.js");
        const gen = createImageGeneration({ baseUrl: url, reconnectBaseMs: 100, tryAgainLaterMs });
        return await gen.watchJob("busy-job");
    }""", [url, try_again_later_ms])
    assert job["status"] == "cancelled"
    assert len(subscribes) == 5
    gaps = [b - a for a, b in itertools.pairwise(subscribes)]
    assert all(gap >= retry_after_ms / 1000 for gap in gaps[:3]), gaps  # each waited at least what it was told
    assert gaps[3] >= try_again_later_ms / 1000, gaps
    assert len({round(gap, 3) for gap in gaps[:3]}) > 1, f"the same wait each time: no jitter ({gaps})"
    tab.assert_no_problems()
