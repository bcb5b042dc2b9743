"""The sync protocol (`/qudag/sync/1.0.0`): request/response over a post-quantum session.

Both sides live here: the server (`_serve_sync`: handshake, then encrypted request and response
frames, each bounded in size and time) and the client (`request`: one reused, serialised stream
per peer). `P2PNode` mixes `SyncProtocol` in; the bytes' meaning is the sans-IO core's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from qudag.crypto.canonical import pack
from qudag.crypto.handshake import (
    HEADER_SIZE,
    HandshakeError,
    Initiator,
    Responder,
    Session,
    encode_handshake_message,
    handshake_message_length,
)
from qudag.crypto.signing import Identity
from qudag.node.net.libp2p_patches import quiet_reset
from qudag.node.net.node_parts import NodeParts

# One logger for the whole network layer, so its configuration does not depend on the split.
log = logging.getLogger("qudag.node.net.transport")

SYNC_PROTOCOL = TProtocol("/qudag/sync/1.0.0")
_STATUS_OK = b"\x00"
_STATUS_ERROR = b"\x01"

SyncHandler = Callable[[str, bytes], Awaitable[bytes]]
"""`async (peer_id, request) -> response` for `/qudag/sync/1.0.0`."""


class SyncError(Exception):
    """A sync request failed. `reason`: timeout, oversize, remote, handshake, closed, no-peer."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


async def _read_exactly(stream: INetStream, n: int) -> bytes | None:
    """Read exactly `n` bytes; None on EOF before the first byte; EOFError on EOF mid-way."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except EOFError:  # libp2p's StreamEOF subclasses EOFError
            chunk = b""
        if not chunk:
            if not buf:
                return None
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def _read_required(stream: INetStream, n: int) -> bytes:
    data = await _read_exactly(stream, n)
    if data is None:
        raise EOFError("stream ended")
    return data


@dataclass
class SyncChannel:
    """A client-side sync stream with its established session, reused for later requests."""

    stream: INetStream
    session: Session
    lock: trio.Lock = field(default_factory=trio.Lock)


class SyncProtocol(NodeParts):
    """The sync protocol's part of `P2PNode`: the node's state it alone uses is declared here."""

    identity: Identity
    _sync_handler: SyncHandler | None
    _sync_channels: dict[ID, SyncChannel]
    _sync_locks: dict[ID, trio.Lock]
    _sync_identities: dict[ID, bytes]
    _sync_streams: Counter[ID]
    _penalise: Callable[[ID, str], None]

    def _binding(self, initiator: ID, responder: ID) -> bytes:
        return pack([b"/qudag/sync/1.0.0", initiator.to_bytes(), responder.to_bytes()])

    async def _serve_sync(self, stream: INetStream) -> None:
        """Server side of `/qudag/sync/1.0.0`: handshake, then request/response frames.

        Guarded like every handler: hostile bytes cost the peer (penalty, disconnect), never the
        node; a failing or slow *handler* is our fault, so the peer gets an error frame instead.
        """
        pid = stream.muxed_conn.peer_id
        if self._refused(pid):
            await quiet_reset(stream)
            return
        cfg = self.config
        if (
            self._sync_streams[pid] >= cfg.max_sync_streams_per_peer
            or sum(self._sync_streams.values()) >= cfg.max_sync_streams
        ):
            self._count("sync-busy")
            await quiet_reset(stream)
            return
        self._sync_streams[pid] += 1
        try:
            await self._serve_sync_stream(stream, pid)
        finally:
            self._sync_streams[pid] -= 1
            if self._sync_streams[pid] <= 0:
                del self._sync_streams[pid]

    async def _serve_sync_stream(self, stream: INetStream, pid: ID) -> None:
        cfg = self.config
        try:
            with trio.fail_after(cfg.handshake_timeout):
                hello = await _read_required(
                    stream, handshake_message_length(await _read_required(stream, HEADER_SIZE))
                )
                responder = Responder(
                    self.identity,
                    self._binding(pid, self.host.get_id()),
                    max_plaintext=cfg.max_sync_message + 1,
                )
                accept, session = responder.accept(hello)
                await stream.write(encode_handshake_message(accept))
            self._sync_identities[pid] = session.peer_public_key
            while True:
                with trio.move_on_after(cfg.sync_idle_timeout) as idle:
                    header = await _read_exactly(stream, HEADER_SIZE)
                if idle.cancelled_caught or header is None:
                    await stream.close()
                    return
                with trio.fail_after(cfg.sync_frame_timeout):
                    body = await _read_required(stream, session.opener.body_length(header))
                request = session.open(header, body)
                self._stats["sync-served"] += 1
                response = await self._answer(pid, request)
                await stream.write(session.seal(response))
        except HandshakeError as exc:
            self._penalise(pid, f"sync-{exc.reason}")
            await quiet_reset(stream)
        except trio.TooSlowError:
            self._count("sync-stalled")
            await quiet_reset(stream)
        except EOFError:
            self._count("sync-truncated")
            await quiet_reset(stream)
        except Exception as exc:  # stream reset by the peer, connection gone, ...
            log.debug("sync stream from %s ended: %r", pid, exc)
            await quiet_reset(stream)

    async def _answer(self, pid: ID, request: bytes) -> bytes:
        if self._sync_handler is None:
            return _STATUS_ERROR + b"no sync handler"
        try:
            with trio.fail_after(self.config.sync_handler_timeout):
                response = await self._sync_handler(pid.to_base58(), request)
        except trio.TooSlowError:
            self._count("sync-handler-timeout")
            return _STATUS_ERROR + b"timeout"
        except Exception:
            log.exception("sync handler failed")
            self._count("sync-handler-error")
            return _STATUS_ERROR + b"internal error"
        if not isinstance(response, bytes | bytearray):
            self._count("sync-handler-error")
            return _STATUS_ERROR + b"internal error"
        if len(response) > self.config.max_sync_message:
            self._count("sync-response-oversize")
            return _STATUS_ERROR + b"response too large"
        return _STATUS_OK + bytes(response)

    async def _open_sync(self, pid: ID) -> SyncChannel:
        stream = await self.host.new_stream(pid, [SYNC_PROTOCOL])
        try:
            initiator = Initiator(
                self.identity,
                self._binding(self.host.get_id(), pid),
                max_plaintext=self.config.max_sync_message + 1,
            )
            await stream.write(encode_handshake_message(initiator.hello()))
            header = await _read_required(stream, HEADER_SIZE)
            accept = await _read_required(stream, handshake_message_length(header))
            session = initiator.finish(accept)
        except BaseException:
            await quiet_reset(stream)
            raise
        self._sync_identities[pid] = session.peer_public_key
        return SyncChannel(stream, session)

    async def _exchange(self, pid: ID, data: bytes) -> bytes:
        """One request/response on the peer's sync channel (opened if needed); on any failure
        the channel is reset and forgotten. Exceptions from a reused channel are marked."""
        channel = self._sync_channels.get(pid)
        reused = channel is not None
        if channel is None:
            channel = await self._open_sync(pid)
            self._sync_channels[pid] = channel
        try:
            await channel.stream.write(channel.session.seal(data))
            header = await _read_required(channel.stream, HEADER_SIZE)
            body = await _read_required(channel.stream, channel.session.opener.body_length(header))
            return channel.session.open(header, body)
        except BaseException as exc:
            if self._sync_channels.get(pid) is channel:
                del self._sync_channels[pid]
            await quiet_reset(channel.stream)
            if reused and isinstance(exc, Exception) and not isinstance(exc, HandshakeError):
                exc._qudag_reused = True  # type: ignore[attr-defined]
            raise

    async def request(self, peer_id: str, data: bytes, timeout: float = 10.0) -> bytes:
        """Send one request over `/qudag/sync/1.0.0` and return the response bytes.

        The encrypted stream to a peer is opened (with its PQ handshake) on first use and
        reused; requests to one peer are serialised on it. Any failure resets that stream.
        Raises `SyncError` (reason: timeout, oversize, remote, handshake, closed, no-peer).
        """
        if len(data) > self.config.max_sync_message:
            self._count("sync-request-oversize")
            raise SyncError("oversize", f"{len(data)} bytes > {self.config.max_sync_message}")
        pid = ID.from_base58(peer_id)
        if self._refused(pid):
            raise SyncError("no-peer", "peer is blacklisted or cooling down after an offence")
        lock = self._sync_locks.setdefault(pid, trio.Lock())
        self._stats["sync-requests"] += 1
        try:
            with trio.fail_after(timeout):
                async with lock:
                    try:
                        reply = await self._exchange(pid, data)
                    except (HandshakeError, trio.TooSlowError):
                        raise
                    except Exception as exc:
                        if not getattr(exc, "_qudag_reused", False):
                            raise
                        # A reused stream may have died with its connection since the last
                        # request (peer restarted, reconnected): one retry on a fresh stream.
                        # Sync requests are fetches, so sending one twice is harmless.
                        self._stats["sync-reopened"] += 1
                        reply = await self._exchange(pid, data)
        except trio.TooSlowError:
            self._count("sync-request-timeout")
            raise SyncError("timeout", f"no response from {peer_id} in {timeout} s") from None
        except HandshakeError as exc:
            self._penalise(pid, f"sync-{exc.reason}")
            raise SyncError("handshake", str(exc)) from None
        except (EOFError, OSError) as exc:
            raise SyncError("closed", repr(exc)) from None
        except Exception as exc:  # libp2p stream/swarm errors: no connection, reset, ...
            raise SyncError("closed", repr(exc)) from None
        self._heard_at[pid] = trio.current_time()
        if reply[:1] == _STATUS_OK:
            return reply[1:]
        raise SyncError("remote", reply[1:].decode("utf-8", "replace"))
