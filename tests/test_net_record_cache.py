"""Transport Workaround 11: the record caches skip only re-checks of bytes already verified."""

from __future__ import annotations

import trio
from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.pb import rpc_pb2

from qudag.crypto.signing import Identity
from qudag.node.net import record_cache
from qudag.node.net.libp2p_patches import quiet_libp2p_logging
from qudag.node.net.transport import P2PNode

quiet_libp2p_logging()


def _rpc(record: bytes) -> rpc_pb2.RPC:
    rpc = rpc_pb2.RPC()
    rpc.senderRecord = record
    return rpc


def test_cached_record_checks_still_reject_forged_and_misattributed_records() -> None:
    async def main() -> None:
        with trio.fail_after(20):
            a = P2PNode(Identity.generate(), topics={"t": lambda p, d: True})
            b = P2PNode(Identity.generate(), topics={"t": lambda p, d: True})
            async with a, b:
                record = env_to_send_in_RPC(a.host)[0]
                # Sending: the same bytes are reused, and they are libp2p's own record.
                assert record_cache.cached_env_to_send_in_rpc(a.host)[0] == record
                consume = record_cache.cached_consume_signed_record
                a_id, b_id = a.host.get_id(), b.host.get_id()
                assert consume(_rpc(record), b.host, a_id)  # verified, then cached
                assert consume(_rpc(record), b.host, a_id)  # identical bytes: cache hit
                # A's record relayed as if it were C's: bound to the wrong peer id, refused.
                assert not consume(_rpc(record), b.host, b_id)
                # One byte of the signature flipped: not the cached bytes, so checked, refused.
                forged = bytearray(record)
                forged[-1] ^= 1
                assert not consume(_rpc(bytes(forged)), b.host, a_id)
                # ... and the refusal dropped the cache entry: nothing stale is trusted later.
                assert a_id not in record_cache._received[b.host]

    trio.run(main)
