"""Fuzz targets: every decoder of bytes that come from outside the process, with an oracle.

Each `Target` has genuine seed inputs (made at import time with real keys and real code) and a
`check(data)` that feeds one input to the decoder and judges the outcome:

- the decoder may *reject* with its typed error (listed in `Target.allowed`); any other
  exception escapes `check` and is a crash;
- if the decoder *accepts*, the oracle decides whether the input was really valid. Every format
  here is canonical (one encoding per value) and signed or checksummed where it matters, so the
  oracles are exact: an accepted vertex must re-encode to the same bytes and, if it passes the
  full ledger rules (signature, parents, seq chain), must be one of the genuine vertices; an
  accepted sync message must re-encode to the same bytes; an accepted handshake message must be
  the genuine one (the signature covers every field); an accepted key file must hold a matching
  key pair; an accepted template or task spec must re-encode to the same bytes; an accepted config
  must be a checked `NodeConfig`. A violation raises `InvalidAccepted`.

Used by tests/test_fuzz_decoders.py (short hypothesis runs in CI) and fuzz/run.py (atheris or
random mutation, millions of inputs, outside CI).
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.crypto.handshake import (
    HandshakeError,
    Initiator,
    Responder,
    handshake_message_length,
)
from qudag.crypto.keystore import Argon2Params, KeystoreError, dump_identity, parse_identity
from qudag.crypto.signing import Identity, verify
from qudag.dag.errors import VertexError
from qudag.dag.payloads import attestation_payload
from qudag.dag.validate import ParentInfo, depth_of, load_public_key, validate
from qudag.dag.vertex import (
    KIND_ATTESTATION,
    KIND_TEMPLATE,
    decode_vertex,
    iter_vertex_stream,
    make_identity_vertex,
    make_vertex,
)
from qudag.evolution.es import ResultSet
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import Template, from_genome
from qudag.node.ops.config import ConfigError, load_config
from qudag.node.protocol import messages
from qudag.node.protocol.core import NODE_DECODERS

NOW_MS = 1_800_000_000_000


class InvalidAccepted(AssertionError):
    """A decoder accepted an input that its oracle proves invalid."""


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    check: Callable[[bytes], bool]
    """Feed one input; True if accepted, False if rejected with an allowed error."""
    allowed: tuple[type[BaseException], ...]
    stats: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0})

    def run(self, data: bytes) -> bool:
        try:
            accepted = self.check(data)
        except self.allowed:
            self.stats["rejected"] += 1
            return False
        self.stats["accepted" if accepted else "rejected"] += 1
        return accepted


# --------------------------------------------------------------------------------------------
# Genuine material: two authors, identity + template + attestation vertices, a handshake.


class _World:
    def __init__(self) -> None:
        self.alice = Identity.generate()
        self.bob = Identity.generate()
        rng = np.random.default_rng(7)
        task = get_task("xor")
        genome = Genome.random(rng, 2, (3,), 1)
        self.template = from_genome(genome, task, 0.75, latency_repeats=3)
        ids: list[bytes] = []
        raws: list[bytes] = []
        a0 = make_identity_vertex(self.alice, NOW_MS - 10_000)
        b0 = make_identity_vertex(self.bob, NOW_MS - 9_000)
        raws += [a0, b0]
        ids += [decode_vertex(a0).id, decode_vertex(b0).id]
        a1 = make_vertex(self.alice, 1, NOW_MS - 8_000, ids, KIND_TEMPLATE, self.template.to_dict())
        t_id = decode_vertex(a1).id
        b1 = make_vertex(
            self.bob,
            1,
            NOW_MS - 7_000,
            [ids[1], t_id],
            KIND_ATTESTATION,
            attestation_payload(t_id, 0.75, "valid"),
        )
        raws += [a1, b1]
        self.vertices = raws
        self.genuine = set(raws)
        self.info: dict[bytes, ParentInfo] = {}
        self.keys = {}
        for raw in raws:
            v = decode_vertex(raw)
            parents = {p: self.info[p] for p in v.parents}
            self.info[v.id] = ParentInfo(v.author, v.seq, v.kind, depth_of(parents))
            if v.kind == "identity":
                self.keys[v.author] = load_public_key(v.payload["public_key"])
        # Handshake: one initiator whose hello the responder answers (binding = both sides).
        self.binding = pack([b"/qudag/sync/1.0.0", b"initiator", b"responder"])
        self.initiator = Initiator(self.alice, self.binding)
        self.hello = self.initiator.hello()
        responder = Responder(self.bob, self.binding)
        self.accept, self.r_session = responder.accept(self.hello)
        self.i_session = copy.copy(self.initiator).finish(self.accept)
        self.frame = self.i_session.seal(b"sync request body")
        self.key_plain = dump_identity(self.alice)
        self.key_enc = dump_identity(
            self.alice, "pw", Argon2Params(iterations=1, lanes=1, memory_kib=8)
        )


_world: _World | None = None


def world() -> _World:
    global _world
    if _world is None:
        _world = _World()
    return _world


# --------------------------------------------------------------------------------------------
# Checks.


def _check_vertex(data: bytes) -> bool:
    w = world()
    v = decode_vertex(data, decoders=NODE_DECODERS)
    if pack([v.body, v.signature]) != data:
        raise InvalidAccepted("vertex decoded from non-canonical bytes")
    if any(p not in w.info for p in v.parents):
        return True  # structurally valid but pending: the store would buffer it, not accept it
    validate(v, {p: w.info[p] for p in v.parents}, w.keys.get(v.author), NOW_MS)
    if data not in w.genuine:
        raise InvalidAccepted("a forged or altered vertex passed every ledger rule")
    return True


def _check_vertex_stream(data: bytes) -> bool:
    records = 0
    for _offset, raw in iter_vertex_stream(io.BytesIO(data)):
        records += 1
        try:
            _check_vertex(raw)
        except VertexError:
            pass  # a well-framed but invalid record: import would refuse it
    return records > 0


def _check_message(data: bytes) -> bool:
    msg = messages.decode(data)
    if messages.encode(msg) != data:
        raise InvalidAccepted("sync message accepted from non-canonical bytes")
    if isinstance(msg, messages.Heads) and len(msg.tips) > messages.MAX_HEADS:
        raise InvalidAccepted("heads over the limit")
    if isinstance(msg, messages.EsResults) and not 1 <= len(msg.sets) <= messages.MAX_ES_SETS:
        raise InvalidAccepted("es batch over the limit")
    return True


def _check_hello(data: bytes) -> bool:
    w = world()
    Responder(w.bob, w.binding).accept(data)
    if data != w.hello:
        raise InvalidAccepted("an altered handshake hello was accepted")
    return True


def _check_accept(data: bytes) -> bool:
    w = world()
    copy.copy(w.initiator).finish(data)  # a fresh one-shot state over the same ephemeral key
    if data != w.accept:
        raise InvalidAccepted("an altered handshake accept was accepted")
    return True


def _check_handshake_header(data: bytes) -> bool:
    n = handshake_message_length(data[:4])
    if not 0 <= n <= 16 * 1024:
        raise InvalidAccepted(f"handshake length {n} out of range")
    return True


def _check_frame(data: bytes) -> bool:
    w = world()
    opener = copy.copy(w.r_session.opener)  # expects counter 0, like a fresh session
    n = opener.body_length(data[:4])
    plain = opener.open(data[:4], data[4 : 4 + n])
    if data[: 4 + n] != w.frame or plain != b"sync request body":
        raise InvalidAccepted("an altered sync frame opened")
    return True


def _check_key_file(data: bytes) -> bool:
    identity = parse_identity(data, "pw")
    message = b"fuzz"
    if not verify(identity.public_key, message, identity.sign(message, b"ctx"), b"ctx"):
        raise InvalidAccepted("key file accepted with a non-matching key pair")
    return True


def _fix_key_checksum(data: bytes) -> bytes:
    """Recompute a mutated key file's checksum so the fuzzer reaches the checks behind it.

    Only unencrypted files are fixed: an encrypted file's KDF cost is whatever the mutated
    header asks for (bounded by the format, but up to seconds per input)."""
    import blake3

    from qudag.crypto.keystore import MAGIC

    try:
        outer = unpack(data[len(MAGIC) :], 16 * 1024)
        header = outer["header"]
        if header.get("kdf") is not None:
            return data
        aad = MAGIC + pack(header)
        outer["checksum"] = blake3.blake3(aad + outer["secret"]).digest()
        return MAGIC + pack(outer)
    except Exception:
        return data


def _check_template(data: bytes) -> bool:
    t = Template.from_bytes(data)
    if t.to_bytes() != data:
        raise InvalidAccepted("template accepted from non-canonical bytes")
    return True


def _check_template_walk(data: bytes) -> bool:
    """The byte walker (synthesis's fast decoder) may only accept what the generic decoder
    accepts, with the same result; `synthesize(bytes)` must reach the same verdict."""
    from qudag.crypto.canonical import unpack
    from qudag.evolution.synthesis import synthesize
    from qudag.evolution.template import (
        MAX_TEMPLATE_BYTES,
        parse_template_map,
        walk_template_bytes,
    )

    walked = walk_template_bytes(data)
    try:
        reference = parse_template_map(unpack(data, max_size=MAX_TEMPLATE_BYTES))
    except DecodeError:
        if walked is not None:
            raise InvalidAccepted("walker accepted bytes the generic decoder rejects") from None
        synthesize(data)  # must raise DecodeError too
        raise InvalidAccepted("synthesize accepted bytes the generic decoder rejects") from None
    if walked is not None and walked.key() != reference.key():
        raise InvalidAccepted("walker and generic decoder disagree")
    synthesize(data).close()
    return True


_TOML_DIR: Path | None = None


def _check_config(data: bytes) -> bool:
    global _TOML_DIR
    if _TOML_DIR is None:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        _TOML_DIR = Path(tempfile.mkdtemp(prefix="qudag-fuzz-", dir=base))
    path = _TOML_DIR / "node.toml"
    path.write_bytes(data)
    config = load_config(argparse.Namespace(config=str(path)), {})
    if config.migrants > config.population or not config.tasks:
        raise InvalidAccepted("config accepted with inconsistent settings")
    return True


_CONFIG_SEED = b"""# a node of the compose testnet
data_dir = "/var/lib/qudag"
listen = "/ip4/10.77.0.10/tcp/4001"
http = "0.0.0.0:8700"
tasks = ["xor", "parity3"]
bootstrap = ["/ip4/10.77.0.10/tcp/4001/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"]
publish_every = 2
population = 32
migrants = 4
seed = 7
reeval_budget_ms = 300
ban_below = -4.0
heads_interval_s = 1.0
log_level = "info"
generations = 100
"""


def _check_key_file_variants(data: bytes) -> bool:
    """The input as is (the checksum usually rejects it), then with its checksum recomputed."""
    accepted = False
    for variant in dict.fromkeys((data, _fix_key_checksum(data))):
        try:
            accepted = _check_key_file(variant) or accepted
        except KeystoreError:
            pass
    return accepted


def build_targets() -> list[Target]:
    w = world()
    # both template formats: version 2 (written now) and version 1 (still on old ledgers)
    templates = [w.template.to_bytes(), replace(w.template, format_version=1).to_bytes()]
    heads = messages.encode(messages.Heads((b"\x01" * 32, b"\x02" * 32), 5))
    get = messages.encode(messages.GetVertices((b"\x03" * 32,)))
    since = messages.encode(messages.Since(((b"\x04" * 32, 3),), 128))
    page = messages.encode(messages.Vertices(tuple(w.vertices), True))
    since2 = messages.encode(messages.SinceAfter(((b"\x04" * 32, 3),), 128, (2, b"\x05" * 32)))
    page2 = messages.encode(messages.Page(tuple(w.vertices), (9, b"\x06" * 32)))
    es_set = ResultSet(
        "mnist1d", 1, 7, 1642, 0.05, b"\x07" * 16, (1, 2**40), ((0.5, 0.25), (0.1, 0.9))
    )
    es = messages.encode(messages.EsResults(b"\x08" * 32, (es_set, replace(es_set, generation=8))))
    chunk_get = messages.encode(messages.GetChunk(b"\x09" * 32, 3))
    chunk = messages.encode(messages.Chunk(b"\x09" * 32, 3, True, b"a,b\n1,2\n"))
    return [
        Target("vertex", list(w.vertices), _check_vertex, (VertexError,)),
        Target("vertex-stream", [b"".join(w.vertices)], _check_vertex_stream, (VertexError,)),
        Target(
            "sync-message",
            [heads, get, since, page, since2, page2, es, chunk_get, chunk],
            _check_message,
            (DecodeError,),
        ),
        Target("handshake-hello", [w.hello], _check_hello, (HandshakeError,)),
        Target("handshake-accept", [w.accept], _check_accept, (HandshakeError,)),
        Target(
            "handshake-header",
            [len(w.hello).to_bytes(4, "big")],
            _check_handshake_header,
            (HandshakeError,),
        ),
        Target("sync-frame", [w.frame], _check_frame, (HandshakeError,)),
        Target(
            "key-file",
            [w.key_plain, w.key_enc],
            _check_key_file_variants,
            (KeystoreError,),
        ),
        Target("template", templates, _check_template, (DecodeError,)),
        Target("template-walk", templates, _check_template_walk, (DecodeError,)),
        Target("config-toml", [_CONFIG_SEED], _check_config, (ConfigError,)),
        Target("task-spec", [_task_spec_seed()], _check_task_spec, (DecodeError,)),
    ]


def _task_spec_seed() -> bytes:
    from qudag.evolution.published import make_spec

    rows = ["a,b,y", *(f"{i % 7},{i % 3},{i % 2}" for i in range(30))]
    return make_spec(("\n".join(rows) + "\n").encode(), target="y", name="seed").to_bytes()


def _check_task_spec(data: bytes) -> bool:
    """A `task` vertex payload: accepted only if canonical (it re-encodes to the same bytes)."""
    from qudag.evolution.taskspec import TaskSpec

    spec = TaskSpec.from_bytes(data)
    if spec.to_bytes() != data:
        raise InvalidAccepted("task spec accepted from non-canonical bytes")
    return True


# --------------------------------------------------------------------------------------------
# A small deterministic mutator for the random engine and the hypothesis tests.


def mutate(rng: np.random.Generator, seeds: Sequence[bytes], max_len: int = 1 << 17) -> bytes:
    """One mutated input: 1-8 stacked edits of a seed (flip, set, insert, delete, splice,
    duplicate, truncate, interesting integers), or plain random bytes 1 time in 32."""
    if rng.integers(32) == 0:
        return rng.bytes(int(rng.integers(0, 64)))
    data = bytearray(seeds[int(rng.integers(len(seeds)))])
    for _ in range(int(rng.integers(1, 9))):
        op = int(rng.integers(9))
        n = len(data)
        pos = int(rng.integers(n + 1))
        if op == 0 and n:
            data[min(pos, n - 1)] ^= 1 << int(rng.integers(8))
        elif op == 1 and n:
            data[min(pos, n - 1)] = int(rng.integers(256))
        elif op == 2:
            data[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
        elif op == 3 and n:
            del data[pos : pos + int(rng.integers(1, 33))]
        elif op == 4:
            other = seeds[int(rng.integers(len(seeds)))]
            a = int(rng.integers(len(other) + 1))
            data[pos:pos] = other[a : a + int(rng.integers(1, 257))]
        elif op == 5 and n:
            a = int(rng.integers(n))
            chunk = data[a : a + int(rng.integers(1, 65))]
            data[pos:pos] = chunk * int(rng.integers(1, 4))
        elif op == 6:
            del data[pos:]
        elif op == 7 and n:
            special = (0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC3, 0xCC, 0xCF, 0xD3, 0xDC, 0xDD)
            data[min(pos, n - 1)] = special[int(rng.integers(len(special)))]
        elif op == 8 and n >= 4:
            value = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)[int(rng.integers(8))]
            p = min(pos, n - 4)
            data[p : p + 4] = value.to_bytes(4, "big")
    return bytes(data[:max_len])


def cleanup() -> None:
    """Remove the scratch directory of the config target."""
    if _TOML_DIR is not None and _TOML_DIR.exists():
        for child in _TOML_DIR.iterdir():
            child.unlink()
        os.rmdir(_TOML_DIR)
