"""Slow and greedy clients as the API meets them: a body trickled in (slowloris) is cut, silent and idle
connections are closed, one client's connections are capped, a /ws flood gets `rate_limited` frames
while other sockets get their events, and a forged X-Real-Ip buys no fresh budget. Real ``s2s serve``
processes over real sockets, real Redis."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from s2s.web.frames import FrameBudget
from tests.helpers import http_json, wait_until
from tests.test_limits import assert_rate_limited, post
from tests.test_ws import Client, ended, run, submit


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed its end (EOF or reset); False while it is still open."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_a_frame_budget_refills_at_its_rate_up_to_its_burst():
    budget = FrameBudget(rate=2, burst=3, now=0.0)
    assert [budget.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take(0.5) and not budget.take(0.5)  # half a second: one frame back
    assert [budget.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst
    assert all(FrameBudget(rate=0, burst=1, now=0.0).take(0.0) for _ in range(1000))  # 0: no limit


def test_a_body_trickled_in_is_cut_while_other_clients_are_served(stack):
    url = stack.api(S2S_BODY_MIN_BYTES_PER_S=100, S2S_BODY_RATE_WINDOW_S=1)
    length = 100  # at 5 bytes a second: 20 s to send, if the server waited that long
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(f"POST /api/jobs/generate-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode())
        sent, cut = 0, False
        while sent < length and not cut:  # bounded: ends when the body is out, whatever the server does
            try:
                sock.sendall(b" ")
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            assert http_json("GET", url + "/api/jobs/health", timeout=5)[0] == 200  # others meanwhile
            time.sleep(0.2)
            cut = closed_by_server(sock)
            sock.setblocking(True)
    assert cut and sent < length, f"the server took {sent} of {length} bytes and never cut the connection"


def test_a_connection_that_sends_nothing_and_one_left_idle_are_closed(stack):
    url = stack.api(S2S_IDLE_TIMEOUT_S=1)
    with socket.create_connection(address(url), timeout=10) as silent, \
            socket.create_connection(address(url), timeout=10) as idle:
        idle.sendall(b"GET /api/jobs/health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: HTTP/1.1's default
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += idle.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        wait_until(lambda: closed_by_server(silent), timeout=20, what="the silent connection to be closed")
        wait_until(lambda: closed_by_server(idle), timeout=20, what="the idle keep-alive connection to be closed")


def test_a_client_over_its_connection_cap_has_the_next_closed_and_one_freed_is_reused(stack):
    url = stack.api(S2S_MAX_CONNECTIONS_PER_CLIENT=3)
    held = [socket.create_connection(address(url), timeout=10) for _ in range(3)]
    try:
        with socket.create_connection(address(url), timeout=10) as extra:
            wait_until(lambda: closed_by_server(extra), timeout=20, what="the fourth connection to be closed")
        held.pop().close()

        def served() -> bool:
            try:
                return http_json("GET", url + "/api/jobs/health", timeout=5)[0] == 200
            except OSError:
                return False  # the server had not yet seen the freed connection close

        wait_until(served, timeout=20, what="a connection to be taken again once one is freed")
        held[0].sendall(b"GET /api/jobs/health HTTP/1.1\r\nHost: x\r\n\r\n")  # those held are served all along
        held[0].setblocking(True)
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()


def test_behind_a_proxy_a_client_sending_too_many_requests_at_once_gets_429(stack):
    url = stack.api(S2S_MAX_CONNECTIONS_PER_CLIENT=2, S2S_TRUST_PROXY="true")
    greedy, other = {"X-Forwarded-For": "198.51.100.7"}, {"X-Forwarded-For": "198.51.100.8"}
    head = (b"POST /api/jobs/generate-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Forwarded-For: 10.0.0.1, 198.51.100.7\r\nContent-Length: 100000\r\n\r\n{")
    held = [socket.create_connection(address(url), timeout=10) for _ in range(2)]
    try:
        for sock in held:  # two uploads under way, their bodies still coming
            sock.sendall(head)

        def refused() -> tuple[int, dict, bytes] | None:
            answer = http_json("GET", url + "/api/jobs/health", headers=greedy)
            return answer if answer[0] == 429 else None

        code, headers, raw = wait_until(refused, timeout=20, what="the third request to be refused")
        body = json.loads(raw)
        assert body["code"] == "too_many_connections" and body["details"] == {"maxConnections": 2}
        assert int(headers["Retry-After"]) > 0
        assert http_json("GET", url + "/api/jobs/health", headers=other)[0] == 200  # another parent is served
        held.pop().close()
        wait_until(lambda: http_json("GET", url + "/api/jobs/health", headers=greedy)[0] == 200, timeout=20,
                   what="a request to be taken again once one is done")
    finally:
        for sock in held:
            sock.close()


def test_a_flooding_socket_gets_rate_limited_frames_and_another_gets_its_events(stack):
    url = stack.api(S2S_WS_FRAMES_PER_S=5, S2S_WS_FRAME_BURST=10)
    stack.worker(S2S_PROVIDER="noop", S2S_NOOP_DELAY_MS=1500)
    job_id = submit(url)
    flood = 200

    async def scenario():
        flooder = await Client.connect(url)
        follower = await Client.connect(url)
        follow = asyncio.ensure_future(follower.follow(f"job:{job_id}", last_seq=0))
        for i in range(flood):  # as fast as the socket takes them
            frame = "subscribe_to_job" if i % 2 else "unsubscribe_from_job"
            await flooder.send(type=frame, jobId=job_id)
        limited = []
        while len(limited) < flood // 2:  # the burst and what refills meanwhile pass; the rest are refused
            answer = await flooder.recv()
            if answer.get("type") == "error":
                limited.append(answer)
        got = await follow
        deadline = time.monotonic() + 20  # the budget refills at 5 a second: soon a ping is answered again
        while True:
            await flooder.send(type="ping")
            try:
                if (await flooder.recv(0.2)).get("type") == "pong":
                    break
            except asyncio.TimeoutError:
                pass
            assert time.monotonic() < deadline, "the flooding socket never got its budget back"
        await flooder.close()
        await follower.close()
        return limited, got

    limited, got = run(scenario(), 60)
    assert {a["code"] for a in limited} == {"rate_limited"}
    assert limited[0]["error"] == "Too many frames: at most 5 a second; this one was dropped."
    assert ended(got[-1]) and got[-1]["type"] == "job_completed"
    events = [f["seq"] for f in got if "seq" in f]  # not a queued job's place in line: no event, no seq
    assert events == list(range(1, len(events) + 1))  # every event, in order, none twice


def test_a_forged_x_real_ip_buys_no_fresh_budget(stack):
    url = stack.api(S2S_SUBMIT_PER_MINUTE=1, S2S_TRUST_PROXY="true")
    proxy = {"X-Forwarded-For": "198.51.100.7"}
    assert post(url, headers=proxy)[0] == 202
    for forged in ({"X-Real-Ip": "203.0.113.9"}, {"X-Real-Ip": "203.0.113.10", "X-Scheme": "https"}):
        assert_rate_limited(*post(url, headers={**proxy, **forged}), limit=1)
    code, _, body = post(url, headers={"X-Forwarded-For": "198.51.100.8"})  # another parent behind the proxy
    assert code == 202, body
