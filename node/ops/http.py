"""The node's HTTP/1.1 status server: `/status`, `/metrics`, `/vertices/{id}`, on trio + h11.

Why h11 and not an HTTP framework: the daemon already runs on trio, h11 is already installed
(a dependency of trio-websocket, which libp2p pulls in) and it is the same sans-IO style as the
peer core: h11 parses and frames, this module only moves bytes and picks responses. Three GET
routes do not justify a web framework and its event loop.

What protects the node from its HTTP clients (the port is often reachable from a LAN, and the
process also runs the libp2p node):

- every connection is its own trio task, so a slow or broken client only stalls itself;
- the request head is bounded (`max_header_bytes`, h11 answers 431 beyond it) and so is any
  request body (`max_body_bytes`, 413); non-GET methods get 405 and the connection is closed
  without reading their body;
- each request must arrive completely within `request_timeout_s` (408 if it started and did not
  finish, silent close if nothing came: an idle keep-alive connection), and each response must
  be taken by the client within `write_timeout_s`;
- at most `max_connections` connections at once; beyond that a client gets 503 and is closed;
- an exception from a route callback costs a 500 for that request, never the server;
- the server binds only the address it is told (the config default is 127.0.0.1).

The route callbacks are synchronous and run on the trio thread: they read the node's state,
which lives on that thread, so they need no locks (they must be quick).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import h11
import trio

if TYPE_CHECKING:  # mypy reads trio through the trio-stubs package, which names it here
    from trio_typing import TaskStatus

from qudag.node.errors import UserError
from qudag.node.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

log = logging.getLogger(__name__)

VERTEX_ID_BYTES = 32
"""A vertex id is BLAKE3(body || signature): 32 bytes, 64 hex characters in the URL."""
JSON_CONTENT_TYPE = "application/json"
SERVER_NAME = "qudag-node"
_RECEIVE_CHUNK = 8192


@dataclass(frozen=True)
class Response:
    """A complete response; bodies are small (status JSON, metrics text, one vertex)."""

    status: int
    body: bytes
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()


ExtraHandler = Callable[[str, str], Response]
"""`(path, query string) -> Response` for routes beyond the three built in."""


@dataclass(frozen=True)
class Routes:
    """What the server answers with; the daemon supplies these from its live state.

    `status` returns a JSON-able mapping; bytes values become hex strings and non-finite floats
    become null (JSON has no NaN/Infinity, and a fitness of -inf before the first evaluation
    must not break clients). `vertex` returns a vertex's raw bytes or None if unknown.
    `extra` maps more paths to handlers (e.g. the templates queries): a key ending in "/" is a
    prefix, any other key an exact path.
    """

    status: Callable[[], Mapping[str, Any]]
    metrics: Callable[[], str]
    vertex: Callable[[bytes], bytes | None]
    extra: Mapping[str, ExtraHandler] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 8192
    max_body_bytes: int = 0
    request_timeout_s: float = 10.0
    write_timeout_s: float = 10.0
    max_connections: int = 64


def json_response(status: int, value: Any) -> Response:
    body = json.dumps(_json_safe(value), allow_nan=False, separators=(",", ":")).encode()
    return Response(status, body + b"\n", JSON_CONTENT_TYPE)


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    return value


def route(routes: Routes, method: bytes, target: bytes) -> Response:
    """Pick the response for one request (pure apart from the callbacks; tested directly)."""
    if method != b"GET":
        return Response(405, b'{"error":"only GET is supported"}\n', headers=(("Allow", "GET"),))
    if not target.startswith(b"/"):
        return error_response(400, "request target must be a path")
    path, _, query = target.decode("ascii", "replace").partition("?")
    if path == "/status":
        return json_response(200, routes.status())
    if path == "/metrics":
        return Response(200, routes.metrics().encode("utf-8"), METRICS_CONTENT_TYPE)
    if path.startswith("/vertices/"):
        text = path[len("/vertices/") :]
        try:
            vertex_id = bytes.fromhex(text)
        except ValueError:
            vertex_id = b""
        if len(vertex_id) != VERTEX_ID_BYTES or len(text) != 2 * VERTEX_ID_BYTES:
            return error_response(400, f"a vertex id is {2 * VERTEX_ID_BYTES} hex characters")
        raw = routes.vertex(vertex_id)
        if raw is None:
            return error_response(404, "no such vertex")
        return Response(200, bytes(raw), "application/octet-stream")
    handler = routes.extra.get(path)
    if handler is None:
        for key, candidate in routes.extra.items():
            if key.endswith("/") and path.startswith(key):
                handler = candidate
                break
    if handler is not None:
        return handler(path, query)
    return error_response(404, "not found")


class _Timeout(Exception):
    pass


class _Connection:
    """One client connection: read a request, answer it, repeat while keep-alive allows."""

    def __init__(self, stream: trio.abc.Stream, routes: Routes, limits: HttpLimits) -> None:
        self.stream = stream
        self.routes = routes
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.received_any = False

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(_RECEIVE_CHUNK)
            if data:
                self.received_any = True
            self.conn.receive_data(data)  # b"" tells h11 the peer closed

    async def _read_request(self) -> tuple[h11.Request | None, Response | None]:
        """The next request, or (None, None) on a clean close, or an early error response."""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None, None
        assert isinstance(event, h11.Request), event
        # h11 bounds only an *incomplete* head; one that arrived in a single read is parsed
        # whatever its size, so measure the parsed head too (same limit either way).
        head_size = len(event.method) + len(event.target) + 12
        head_size += sum(len(name) + len(value) + 4 for name, value in event.headers)
        if head_size > self.limits.max_header_bytes:
            return None, error_response(431, "request head too large")
        if event.method != b"GET":
            return event, route(self.routes, event.method, event.target)
        size = 0
        while True:
            event_or_body = await self._next_event()
            if isinstance(event_or_body, h11.Data):
                size += len(event_or_body.data)
                if size > self.limits.max_body_bytes:
                    return None, error_response(413, "request body too large")
            elif isinstance(event_or_body, h11.EndOfMessage):
                return event, None
            else:  # ConnectionClosed mid-body: h11 raises for truncation, but be safe
                return None, None

    async def _send(self, response: Response, close: bool) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Server", SERVER_NAME),
            ("Cache-Control", "no-store"),
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        data = self.conn.send(h11.Response(status_code=response.status, headers=headers))
        assert data is not None
        if response.body:
            data += self.conn.send(h11.Data(data=response.body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        with trio.move_on_after(self.limits.write_timeout_s) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            raise _Timeout("client did not read the response in time")

    async def _send_error(self, status: int, message: str) -> None:
        """Best effort error answer when the request could not be read (h11's pattern)."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            await self._send(error_response(status, message), close=True)
        except Exception as exc:  # the client is broken anyway; nothing more to do
            log.debug("could not send %d to HTTP client: %r", status, exc)

    async def serve(self) -> None:
        while True:
            self.received_any = bool(self.conn.trailing_data[0])  # pipelined bytes count
            request: h11.Request | None = None
            early: Response | None = None
            with trio.move_on_after(self.limits.request_timeout_s) as scope:
                try:
                    request, early = await self._read_request()
                except h11.RemoteProtocolError as exc:
                    await self._send_error(exc.error_status_hint, "malformed request")
                    return
            if scope.cancelled_caught:
                if self.received_any:
                    await self._send_error(408, "request not received in time")
                return
            if request is None and early is None:
                return
            if early is not None:  # 405 / 413: the body is not read, so the connection ends
                await self._send(early, close=True)
                return
            assert request is not None
            try:
                response = route(self.routes, request.method, request.target)
            except Exception:
                log.exception("HTTP route %r failed", request.target)
                response = error_response(500, "internal error")
            await self._send(response, close=False)
            if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is not h11.DONE:
                return
            self.conn.start_next_cycle()


async def _lingering_close(stream: trio.SocketStream) -> None:
    """Close so that our last response is not lost to a TCP reset.

    Closing a socket that still has unread request bytes (a 405/413 body we refused to read, a
    request refused with 503) makes the kernel send RST, and the client may then lose the
    response it had not read yet. So: end our side, drain what the client still sends for a
    short, bounded while (it closes when it sees our EOF), then close.
    """
    with trio.move_on_after(0.5):
        try:
            await stream.send_eof()
            drained = 0
            while drained < 65536 and (chunk := await stream.receive_some(_RECEIVE_CHUNK)):
                drained += len(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    with trio.move_on_after(1.0):
        await stream.aclose()


def exposure_warning(host: str) -> str | None:
    """The warning for an HTTP address reachable from other machines, else None.

    The status API has no authentication: on a non-loopback address anyone who can reach the
    port reads the node's status, metrics and vertices. Allowed (a testnet may want it), but
    said out loud.
    """
    import ipaddress

    name = host.strip("[]")
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass  # a host name other than localhost: may resolve anywhere
    return (
        f"--http {host}: the HTTP API has no authentication and this address is not loopback; "
        "anyone who can reach it can read the node's status, metrics and ledger"
    )


async def serve_http(
    host: str,
    port: int,
    routes: Routes,
    limits: HttpLimits | None = None,
    *,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `task_status.started(port)` reports the bound port (for port 0).

    Start it with `port = await nursery.start(serve_http, host, port, routes[, limits])`
    (`limits` is positional because `nursery.start` passes no keyword arguments). A bind failure
    (address in use, not local) raises UserError naming the address: it is a setting's fault.
    """
    if not host:
        raise UserError("the HTTP server needs an explicit host to bind (e.g. 127.0.0.1)")
    limits = limits or HttpLimits()
    warning = exposure_warning(host)
    if warning is not None:
        log.warning(warning)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise UserError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from exc
    if port == 0 and len(listeners) > 1:
        # A name resolving to several addresses gets a different random port on each; keep one
        # so that the port we report is the port that answers everywhere we listen.
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound = listeners[0].socket.getsockname()[1]
    active = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            if active >= limits.max_connections:
                with trio.move_on_after(1.0):
                    await stream.send_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                return
            active += 1
            try:
                await _Connection(stream, routes, limits).serve()
            finally:
                active -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Timeout) as exc:
            log.debug("HTTP client went away: %r", exc)
        except Exception:  # one client's bad luck must never stop the server
            log.exception("HTTP connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await _lingering_close(stream)

    log.info("HTTP status server on %s:%d", host, bound)
    task_status.started(bound)
    await trio.serve_listeners(handle, listeners)


__all__ = [
    "HttpLimits",
    "Response",
    "Routes",
    "VERTEX_ID_BYTES",
    "error_response",
    "json_response",
    "route",
    "serve_http",
]
