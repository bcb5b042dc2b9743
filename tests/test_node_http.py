"""The status HTTP server (trio + h11) and `qudag-node status` against it.

Requests are written as raw bytes on trio sockets, so the tests control exactly what a slow,
oversized or malformed client sends.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

from qudag.node.cli import main as cli_main
from qudag.node.ops.http import HttpLimits, Response, Routes, route, serve_http
from qudag.node.ops.metrics import NodeMetrics

VERTEX_ID = bytes(range(32))
VERTEX_BYTES = b"\x00\x01raw vertex\xff"
STATUS: dict[str, Any] = {
    "peer_id": "12D3KooWTestPeer",
    "key_id": bytes.fromhex("ab" * 32),
    "vertices": 42,
    "tips": 3,
    "orphans": 1,
    "peers": ["12D3KooWPeerOne", "12D3KooWPeerTwo"],
    "tasks": {
        "xor": {"generation": 17, "best_fitness": 0.987654, "best_template": "cd" * 32},
        "digits": {"generation": 2, "best_fitness": float("-inf"), "best_template": None},
    },
    "rejected": {"bad_signature": 5, "malformed": 2},
}


def make_routes(node_metrics: NodeMetrics | None = None, **overrides: Any) -> Routes:
    node_metrics = node_metrics or NodeMetrics()
    values: dict[str, Any] = {
        "status": lambda: STATUS,
        "metrics": node_metrics.render_prometheus,
        "vertex": lambda vid: VERTEX_BYTES if vid == VERTEX_ID else None,
    }
    values.update(overrides)
    return Routes(**values)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def read_all(stream: trio.SocketStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` and read until the server closes (requests say Connection: close)."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            return parse_response(await read_all(stream))


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n".encode()


def run_with_server(
    test: Callable[[int], Awaitable[None]], routes: Routes, limits: HttpLimits | None = None
) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, "127.0.0.1", 0, routes, limits)
            assert port > 0
            with trio.fail_after(10):
                await test(port)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_status_metrics_vertices_and_errors() -> None:
    metrics = NodeMetrics()
    metrics.vertices_rejected.labels(reason="bad_signature").inc(5)

    async def check(port: int) -> None:
        status, headers, body = await request(port, get("/status"))
        assert status == 200 and headers["content-type"] == "application/json"
        data = json.loads(body)
        assert data["key_id"] == "ab" * 32  # bytes become hex
        assert data["tasks"]["digits"]["best_fitness"] is None  # -inf is not JSON
        assert data["tasks"]["xor"]["best_fitness"] == 0.987654
        assert data["peers"] == STATUS["peers"]

        status, headers, body = await request(port, get("/metrics?x=1"))
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert 'qudag_vertices_rejected_total{reason="bad_signature"} 5\n' in body.decode()

        status, headers, body = await request(port, get("/vertices/" + VERTEX_ID.hex()))
        assert (status, headers["content-type"], body) == (
            200,
            "application/octet-stream",
            VERTEX_BYTES,
        )
        upper = await request(port, get("/vertices/" + VERTEX_ID.hex().upper()))
        assert upper[2] == VERTEX_BYTES
        assert (await request(port, get("/vertices/" + "00" * 32)))[0] == 404
        assert (await request(port, get("/vertices/" + "zz" * 32)))[0] == 400
        assert (await request(port, get("/vertices/abcd")))[0] == 400
        assert (await request(port, get("/vertices/")))[0] == 400
        assert (await request(port, get("/nope")))[0] == 404
        assert (await request(port, get("/status/")))[0] == 404

        post = b"POST /status HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        status, headers, _ = await request(port, post)
        assert status == 405 and headers["allow"] == "GET"
        delete = b"DELETE /vertices/00 HTTP/1.1\r\nHost: t\r\n\r\n"
        assert (await request(port, delete))[0] == 405

    run_with_server(check, make_routes(metrics))


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async def check(port: int) -> None:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                both = b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n" + get("/metrics")
                await stream.send_all(both)  # pipelined
                raw = await read_all(stream)
        assert raw.count(b"HTTP/1.1 200") == 2

    run_with_server(check, make_routes())


def test_oversize_and_malformed_requests_are_refused() -> None:
    limits = HttpLimits(max_header_bytes=2048, max_body_bytes=16)

    async def check(port: int) -> None:
        huge = get("/status", extra=f"X-Big: {'a' * 4096}\r\n")
        assert (await request(port, huge))[0] == 431
        body = b"GET /status HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
        assert (await request(port, body))[0] == 413
        small = b"GET /status HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd"
        small += get("/status")
        assert (await request(port, small))[0] == 200  # a small body is read and ignored
        assert (await request(port, b"NOT HTTP AT ALL\r\n\r\n"))[0] == 400
        # Still serving after all that.
        assert (await request(port, get("/status")))[0] == 200

    run_with_server(check, make_routes(), limits)


def test_slow_client_does_not_block_others_and_times_out() -> None:
    limits = HttpLimits(request_timeout_s=2.0)

    async def check(port: int) -> None:
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET /status HTTP/1.1\r\nHost: t\r\n")  # ... and stalls
        for _ in range(5):
            assert (await request(port, get("/status")))[0] == 200
        # Served while the stalled request is still open (no 408 on its connection yet): not
        # queued behind it. Only "nothing yet" is checked, so a slow machine cannot fail this.
        with trio.move_on_after(0.05):
            early = await slow.receive_some(1)
            raise AssertionError(f"the stalled request was answered first: {early!r}")
        with trio.fail_after(10):
            status, _, _ = parse_response(await read_all(slow))  # started, never finished
            assert status == 408
            assert await read_all(idle) == b""  # sent nothing: closed without a word
        await slow.aclose()
        await idle.aclose()

    run_with_server(check, make_routes(), limits)


def test_client_that_does_not_read_is_dropped_after_write_timeout() -> None:
    # A timeout is tested with time; the margins are wide so a loaded machine does not fail it.
    limits = HttpLimits(write_timeout_s=3.0)
    big = "# " + "x" * (32 * 1024 * 1024) + "\n"  # far more than the socket buffers hold

    async def check(port: int) -> None:
        stuck = await trio.open_tcp_stream("127.0.0.1", port)
        await stuck.send_all(get("/metrics"))  # ... and never reads the answer
        await trio.sleep(0.1)
        start = trio.current_time()
        assert (await request(port, get("/status")))[0] == 200
        assert trio.current_time() - start < 2.5  # served while the stuck write still waits
        await trio.sleep(3.5)  # past the write timeout: the server gave up on it
        with trio.fail_after(5):
            received = 0
            try:
                while chunk := await stuck.receive_some(1 << 20):
                    received += len(chunk)
            except trio.BrokenResourceError:  # a reset instead of a clean close is fine too
                pass
        assert received < len(big)
        await stuck.aclose()

    run_with_server(check, make_routes(metrics=lambda: big), limits)


def test_connection_limit_answers_503() -> None:
    limits = HttpLimits(max_connections=2, request_timeout_s=5)

    async def check(port: int) -> None:
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.sleep(0.1)  # let the server accept both
        assert (await request(port, get("/status")))[0] == 503
        for stream in held:
            await stream.aclose()
        await trio.sleep(0.1)
        assert (await request(port, get("/status")))[0] == 200

    run_with_server(check, make_routes(), limits)


def test_failing_callback_costs_one_500_not_the_server() -> None:
    calls = {"n": 0}

    def flaky() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return {"ok": True}

    async def check(port: int) -> None:
        assert (await request(port, get("/status")))[0] == 500
        status, _, body = await request(port, get("/status"))
        assert status == 200 and json.loads(body) == {"ok": True}

    run_with_server(check, make_routes(status=flaky))


def test_extra_routes_exact_and_prefix() -> None:
    def templates(path: str, query: str) -> Response:
        return Response(200, f"{path}|{query}".encode(), "text/plain")

    routes = make_routes(extra={"/templates": templates, "/templates/": templates})
    assert route(routes, b"GET", b"/templates?task=xor").body == b"/templates|task=xor"
    assert route(routes, b"GET", b"/templates/ab").body == b"/templates/ab|"
    assert route(routes, b"GET", b"/templatesX").status == 404
    assert route(routes, b"GET", b"*").status == 400


def test_bind_failure_is_a_user_error() -> None:
    from qudag.node.errors import UserError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main() -> None:
            await serve_http("127.0.0.1", port, make_routes())

        with pytest.raises(UserError, match=f"cannot listen for HTTP on 127.0.0.1:{port}"):
            trio.run(main)


# --- `qudag-node status` -------------------------------------------------------------------


@contextmanager
def server_in_thread(routes: Routes) -> Iterator[int]:
    started: queue.Queue[tuple[int, trio.lowlevel.TrioToken, trio.CancelScope]] = queue.Queue()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, "127.0.0.1", 0, routes)
            started.put((port, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    port, token, scope = started.get(timeout=10)
    try:
        yield port
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)


def test_status_command_pretty_prints(capsys: pytest.CaptureFixture[str]) -> None:
    with server_in_thread(make_routes()) as port:
        assert cli_main(["status", "--http", f"127.0.0.1:{port}"]) == 0
        out = capsys.readouterr().out
        for text in ("12D3KooWTestPeer", "42", "xor", "0.9877", "digits", "peers (2)",
                     "12D3KooWPeerTwo", "bad_signature", "malformed"):  # fmt: skip
            assert text in out, (text, out)
        assert out.index("bad_signature") < out.index("malformed")  # most frequent first

        assert cli_main(["status", "--http", f"http://127.0.0.1:{port}/", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["vertices"] == 42 and data["tasks"]["xor"]["generation"] == 17


def test_status_command_reports_a_failing_node(capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    with server_in_thread(make_routes(status=broken)) as port:
        assert cli_main(["status", "--http", f"127.0.0.1:{port}"]) == 2
        assert "answered HTTP 500" in capsys.readouterr().err


def test_status_command_times_out_on_a_silent_server(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        code = cli_main(["status", "--http", f"127.0.0.1:{port}", "--timeout", "0.3"])
    assert code == 2
    assert "no answer within 0.3 s" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_status_command_against_nothing_is_a_clean_error() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "qudag.node", "status", "--http", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "connection refused" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "qudag.node", "status", "--http", "no-port-here"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--http: expected host:port" in bad.stderr
