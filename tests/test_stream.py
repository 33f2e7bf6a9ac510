"""GET /api/jobs/<id>/stream as an EventSource sees it: real HTTP against real API processes, a real worker
and real Redis.

Streams are read with a plain HTTP client (chunked answers, socket timeouts bound every read); events are
published by the worker or, where a test needs a quiet or a flooded job, by hand as the Lua scripts do.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from s2s import events
from s2s.actors.registry import JobRegistry, Publish, WatchMany
from s2s.web.stream import InvalidLastEventId, last_seq_of
from tests.helpers import http_json, wait_until
from tests.test_metrics import scrape
from tests.test_ws import ORIGIN, FakeLoop, FakeSocket, emit, event, seed_job, submit, unwire

END = object()  # what SseStream.next answers once the server ended the stream


class SseStream:
    """One GET /stream, read event by event with a deadline on every read.

    Every stream a test opens is closed after it (``close_streams``), so a failed assertion leaves no
    socket for the garbage collector to warn about in whichever test runs next.
    """

    opened: list[SseStream] = []

    def __init__(self, url: str, job_id: str, *, last_event_id: int | None = None, query: str = "",
                 headers: dict | None = None, timeout: float = 10.0):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        SseStream.opened.append(self)
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if last_event_id is not None:
            sent["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", f"/api/jobs/{job_id}/stream{query}", headers=sent)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.headers)
        self.comments: list[str] = []
        self.retry: int | None = None

    def body(self) -> dict:
        return json.loads(self.response.read())

    def next(self) -> dict | object:
        """The next event's fields (``id``, ``data`` parsed), or END once the server closed the stream."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline()
            if not line:
                return END
            line = line.decode().rstrip("\n")
            if line == "":
                if "data" in fields:
                    # a place in line has no id (it is no event): None
                    return {"id": int(fields["id"]) if "id" in fields else None, "data": json.loads(fields["data"])}
                continue  # a comment or retry block ended
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
            elif name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name] = value

    def until(self, done) -> list[dict]:
        """Events up to and including the first for which ``done`` holds (or the end)."""
        got = []
        while (event := self.next()) is not END:
            got.append(event)
            if done(event):
                break
        return got

    def rest(self) -> list[dict]:
        """Every event up to the server's end of the stream."""
        return self.until(lambda event: False)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(autouse=True)
def close_streams():
    yield
    while SseStream.opened:
        SseStream.opened.pop().close()


def terminal(event: dict) -> bool:
    return event["data"]["type"] in events.TERMINAL_TYPES


def as_ws_sends(stack, url: str, job_id: str) -> list[dict]:
    """The job's frames as /ws sends them to a client of ``url`` (the image link made absolute)."""
    return [{**e, "result": {"imageUrl": f"{url}/api/jobs/{job_id}/image"}} if "result" in e else e
            for e in stack.events(job_id)]


def api_pid(stack) -> int:
    return stack.processes.children[-1].pid


def threads_of(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


# ---- alone ---------------------------------------------------------------------------------------
def test_last_event_id_is_a_seq_from_the_header_or_else_the_query():
    assert last_seq_of(None, None) is None
    assert last_seq_of("7", "3") == 7 and last_seq_of(None, "3") == 3
    for bad in ("", "-1", "x", "1.5", "१", "9" * 16):
        with pytest.raises(InvalidLastEventId):
            last_seq_of(bad, None)
        with pytest.raises(InvalidLastEventId):
            last_seq_of("7", bad)


def test_an_event_is_framed_with_its_seq_and_one_data_line_per_line():
    event = events.parse_event('{"type":"job_completed","jobId":"j","seq":9,"result":{"imageUrl":"/x"}}')
    frame = events.stream_frame(event, events.event_text(event, "http://api"))
    assert frame.ends and frame.data == (b'id: 9\ndata: {"type":"job_completed","jobId":"j","seq":9,'
                                         b'"result":{"imageUrl":"http://api/x"}}\n\n')
    assert events.sse('{\n"a": 1}', 3, False) == events.StreamFrame(b'id: 3\ndata: {\ndata: "a": 1}\n\n', False)


class FakeStream(FakeSocket):
    framing = staticmethod(events.stream_frame)


def test_the_registry_frames_an_event_once_per_kind_of_watcher_and_base_url():
    loop = FakeLoop()
    registry = JobRegistry.start(loop)
    socket_a, socket_b, stream_a, stream_b = FakeSocket("a"), FakeSocket("b"), FakeStream("c"), FakeStream("d")
    try:
        registry.tell(WatchMany([(w, "j1") for w in (socket_a, stream_a, socket_b, stream_b)]))
        registry.tell(Publish([event("j1", 1), event("j1", 2, "job_completed")]))
        assert registry.proxy().counts().get(timeout=5)["subscriptions"] == 4
        loop.run()
        assert socket_a.got[1][2] is socket_b.got[1][2] and stream_a.got[1][2] is stream_b.got[1][2]
        assert json.loads(unwire(socket_a.got[1][2])[1])["result"]["imageUrl"] == "http://api/api/jobs/j1/image"
        first, last = stream_a.got[0][2], stream_a.got[1][2]
        assert not first.ends and last.ends and last.data.startswith(b"id: 2\ndata: ")
        assert json.loads(last.data.split(b"data: ", 1)[1]) == json.loads(unwire(socket_a.got[1][2])[1])
    finally:
        registry.stop()


# ---- end to end ----------------------------------------------------------------------------------
def test_a_stream_resumed_with_last_event_id_gets_every_seq_once_to_the_end(stack):
    first_api, second_api = stack.api(), stack.api()
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=4000)
    job_id = submit(first_api)

    stream = SseStream(first_api, job_id, last_event_id=0)  # from its first event on, as the submitter
    assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["Cache-Control"] == "no-store"
    before = stream.until(lambda e: e["id"] >= 3)
    assert stream.retry is not None and stream.retry >= 2000
    stream.close()  # the tab lost its connection mid-job
    wait_until(lambda: len(stack.events(job_id)) >= before[-1]["id"] + 2, timeout=20, what="events while away")

    # a browser's reconnect: the header, on another API process
    middle_stream = SseStream(second_api, job_id, last_event_id=before[-1]["id"])
    middle = middle_stream.until(lambda e: e["id"] >= before[-1]["id"] + 2)
    middle_stream.close()
    wait_until(lambda: len(stack.events(job_id)) >= middle[-1]["id"] + 2, timeout=20, what="events while away")

    # a polyfill's reconnect: the query parameter
    last_stream = SseStream(first_api, job_id, query=f"?lastEventId={middle[-1]['id']}")
    after = last_stream.rest()  # to the server's end of the stream
    assert last_stream.next() is END
    last_stream.close()

    got = before + middle + after
    assert [e["id"] for e in got] == [e["seq"] for e in stack.events(job_id)], "every seq once, in order"
    assert all(e["id"] == e["data"]["seq"] for e in got)
    assert [e["data"] for e in before + after] == [f for f in as_ws_sends(stack, first_api, job_id)
                                                  if f["seq"] not in {e["id"] for e in middle}]
    assert after[-1]["data"]["type"] == "job_completed"
    assert after[-1]["data"]["result"]["imageUrl"] == f"{first_api}/api/jobs/{job_id}/image"


def test_a_job_that_already_ended_gives_its_last_event_and_closes(stack):
    url = stack.api()
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=0)
    job_id = submit(url)
    wait_until(lambda: stack.job(job_id).get("status") == "completed", timeout=20, what="the job to complete")
    last = as_ws_sends(stack, url, job_id)[-1]

    stream = SseStream(url, job_id)
    assert stream.status == 200
    assert stream.rest() == [{"id": last["seq"], "data": last}]
    stream.close()
    behind = SseStream(url, job_id, last_event_id=last["seq"] - 2)  # a reconnect that missed the end
    assert [e["id"] for e in behind.rest()] == [last["seq"] - 1, last["seq"]]
    behind.close()
    # an EventSource reconnects after the end too: 204 is what tells it to stop
    seen = SseStream(url, job_id, last_event_id=last["seq"])
    assert seen.status == 204 and seen.response.read() == b""
    seen.close()


def test_unknown_jobs_bad_ids_and_cors_are_answered_as_the_rest_api(stack):
    url = stack.api()
    stream = SseStream(url, "nosuchjob123", headers={"Origin": ORIGIN})
    assert stream.status == 404 and stream.headers["Content-Type"] == "application/json; charset=utf-8"
    assert stream.body() == {"error": "No job 'nosuchjob123' (it may have expired).", "code": "job_not_found"}
    assert stream.headers["Access-Control-Allow-Origin"] == ORIGIN
    stream.close()
    bad = SseStream(url, "nosuchjob123", last_event_id=None, headers={"Last-Event-ID": "seven"})
    assert bad.status == 400 and bad.body()["code"] == "invalid_last_event_id"
    bad.close()
    code, headers, _ = http_json("OPTIONS", url + "/api/jobs/nosuchjob123/stream",
                                 headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                                          "Access-Control-Request-Headers": "last-event-id"})
    assert code == 204 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Last-Event-ID" in headers["Access-Control-Allow-Headers"]
    assert "GET" in headers["Access-Control-Allow-Methods"]
    foreign = SseStream(url, "nosuchjob123", headers={"Origin": "http://evil.example"})
    assert foreign.status == 404 and "Access-Control-Allow-Origin" not in foreign.headers
    foreign.close()

    job_id = submit(url)  # queued: no worker
    live = SseStream(url, job_id, headers={"Origin": ORIGIN})
    assert live.status == 200 and live.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert live.next()["data"]["status"] == "queued"
    live.close()


def test_an_idle_stream_gets_keep_alives_and_outlives_the_idle_timeout(stack, redis_client):
    url = stack.api(WS_PING_INTERVAL=1000, S2S_IDLE_TIMEOUT_S=1)
    seed_job(redis_client, "quiet", seq=1)  # running, and saying nothing for a while
    stream = SseStream(url, "quiet", timeout=5)
    assert stream.next()["id"] == 1
    opened = time.monotonic()
    while len(stream.comments) < 4:  # each read waits at most 5 s: a stream without keep-alives fails here
        line = stream.response.readline()
        assert line, "the server closed a live stream"
        if line.startswith(b":"):
            stream.comments.append(line[1:].decode().strip())
    assert set(stream.comments) == {"keep-alive"}
    assert time.monotonic() - opened > 2, "the stream lived past S2S_IDLE_TIMEOUT_S"
    emit(redis_client, "quiet", 2)
    assert stream.next()["id"] == 2  # the same connection, still live
    emit(redis_client, "quiet", 3, last=True)
    assert stream.next()["data"]["type"] == "job_cancelled"
    assert stream.next() is END
    stream.close()


def test_many_streams_of_one_job_start_no_thread_and_each_gets_every_event_once(stack, redis_client):
    count = 100
    url = stack.api(S2S_MAX_SOCKETS_PER_CLIENT=count + 10, S2S_MAX_CONNECTIONS_PER_CLIENT=count + 10)
    pid = api_pid(stack)
    seed_job(redis_client, "crowd", seq=1)
    warm = SseStream(url, "crowd")  # whatever a first stream starts lazily is started now
    assert warm.next()["id"] == 1
    warm.close()
    before = threads_of(pid)
    streams = [SseStream(url, "crowd", last_event_id=1) for _ in range(count)]
    assert {s.status for s in streams} == {200}
    emit(redis_client, "crowd", 2)
    assert [s.next()["id"] for s in streams] == [2] * count
    assert threads_of(pid) == before, "a stream is no thread"
    emit(redis_client, "crowd", 3)
    emit(redis_client, "crowd", 4, last=True)
    for stream in streams:
        assert [e["id"] for e in stream.rest()] == [3, 4]
        stream.close()
    assert threads_of(pid) == before


def test_streams_count_toward_the_clients_live_connections(stack, redis_client):
    url = stack.api(S2S_MAX_SOCKETS_PER_CLIENT=2)
    seed_job(redis_client, "capped", seq=1)
    held = [SseStream(url, "capped"), SseStream(url, "capped")]
    assert [s.next()["id"] for s in held] == [1, 1]
    refused = SseStream(url, "capped")
    assert refused.status == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.body() == {"error": "Too many live connections from your address (at most 2); close some and "
                                       "try again.", "code": "too_many_sockets", "details": {"maxSockets": 2}}
    refused.close()
    held.pop().close()

    def admitted():
        again = SseStream(url, "capped")
        if again.status == 429:
            again.close()
            return None
        return again

    again = wait_until(admitted, timeout=10, what="a closed stream to free its place")
    assert again.next()["id"] == 1
    for stream in (*held, again):
        stream.close()


def test_a_stream_that_stops_reading_is_cut_and_others_are_not_held_back(stack, redis_client):
    url = stack.api()
    port = int(url.rsplit(":", 1)[1])
    seed_job(redis_client, "flood")
    big = "x" * 50_000
    count = 600  # 30 MB: more than the kernel buffers of a connection that never reads, plus the 1 MiB bound

    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stalled.sendall(b"GET /api/jobs/flood/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 0\r\n\r\n")
    reader = SseStream(url, "flood", last_event_id=0)
    assert reader.status == 200
    got = []
    for seq in range(1, count + 1):
        emit(redis_client, "flood", seq, message=big)
        if seq % 20 == 0:  # read as it comes, about as fast as it is published
            got += [reader.next() for _ in range(20)]
    emit(redis_client, "flood", count + 1, last=True)
    got += reader.rest()
    reader.close()
    assert [e["id"] for e in got] == list(range(1, count + 2))
    stalled.settimeout(10)
    drained = 0
    try:
        while chunk := stalled.recv(1 << 20):  # what was already on its way, then the end of the connection
            drained += len(chunk)
    finally:
        stalled.close()
    assert drained < count * len(big), "the stalled stream was cut off, not sent everything"


def test_a_stream_ends_after_s2s_stream_max_seconds_and_resumes_where_it_was(stack, redis_client):
    url = stack.api(S2S_STREAM_MAX_SECONDS=2)
    seed_job(redis_client, "long", seq=1)
    opened = time.monotonic()  # before the request: the server's two seconds start when it arrives
    stream = SseStream(url, "long")
    assert [e["id"] for e in stream.rest()] == [1]  # then the server ended it, the job still running
    assert time.monotonic() - opened >= 2
    stream.close()
    emit(redis_client, "long", 2)
    again = SseStream(url, "long", last_event_id=1)
    assert again.next()["id"] == 2
    again.close()


def test_an_api_shutting_down_ends_its_streams_cleanly_and_they_resume_on_another(stack, redis_client):
    leaving, staying = stack.api(), stack.api()
    leaving_proc = stack.processes.children[-2]
    seed_job(redis_client, "moving", seq=1)
    port = int(leaving.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)  # raw: to see how the answer ends
    raw.sendall(b"GET /api/jobs/moving/stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    received = b""
    while b"id: 1\n" not in received:
        received += raw.recv(65536)
    leaving_proc.send_signal(signal.SIGTERM)  # a deploy
    try:
        while chunk := raw.recv(65536):
            received += chunk
    finally:
        raw.close()
    assert received.endswith(b"\r\n0\r\n\r\n"), "the answer ended whole, not cut when the drain ran out"
    emit(redis_client, "moving", 2)
    again = SseStream(staying, "moving", last_event_id=1)
    assert again.next()["id"] == 2
    again.close()
    assert leaving_proc.wait(10) == 0


def test_open_streams_show_in_every_apis_metrics(stack, redis_client):
    url_a, url_b = stack.api(), stack.api()
    seed_job(redis_client, "counted", seq=1)
    assert scrape(url_b)("s2s_event_streams_active") == 0
    streams = [SseStream(url_a, "counted") for _ in range(3)]
    assert [s.next()["id"] for s in streams] == [1, 1, 1]
    wait_until(lambda: scrape(url_b)("s2s_event_streams_active") == 3, timeout=15, what="the streams to be counted")
    assert scrape(url_b)("s2s_websockets_active") == 0  # streams are not sockets
    emit(redis_client, "counted", 2, last=True)
    for stream in streams:
        assert [e["id"] for e in stream.rest()] == [2]
        stream.close()
    wait_until(lambda: scrape(url_b)("s2s_event_streams_active") == 0, timeout=15, what="the ended streams to go")


def test_a_stream_of_a_queued_job_hears_its_place_move_without_ids(stack):
    """Places in line reach a stream too, as events without an ``id:`` (so Last-Event-ID stays the last seq)."""
    url = stack.api()
    ids = [submit(url) for _ in range(4)]
    stream = SseStream(url, ids[3], timeout=60)
    first = stream.next()
    assert (first["data"]["status"], first["data"]["queuePosition"]) == ("queued", 4), first
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=1500, WORKER_CONCURRENCY=1)
    got = stream.until(lambda e: e["data"]["status"] != "queued")
    stream.close()
    told = [e["data"]["queuePosition"] for e in got if e["id"] is None]
    assert told and told == sorted(told, reverse=True) and told[-1] == 1, got
    assert got[-1]["data"]["status"] == "processing" and got[-1]["id"] == first["id"] + 1, got
