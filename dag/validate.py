"""Validation of decoded vertices: pure functions, no I/O and no clock (time is passed in).

`dag.vertex.decode_vertex` has already checked everything that the bytes alone decide. What is
left needs outside knowledge, and each rule here takes it as arguments:

- signature: ML-DSA-65 over ``SIGNING_CONTEXT || 0x00 || body`` with the author's public key,
  which is carried in the vertex itself for an identity vertex and otherwise comes from the
  author's stored identity vertex;
- timestamp: ``ts_ms <= now_ms + max_skew_ms`` (only the future is bounded: history synced
  from peers is legitimately old);
- parents (all present; a vertex with a missing parent is *pending*, not invalid):
  the seq chain (a vertex with seq s > 0 lists its author's seq s-1 vertex as a parent, and no
  parent by its own author has seq >= s) and, for an attestation, that the attested parent is a
  template vertex.

These depend only on the vertex and on its parents, never on arrival order, which is why two
stores fed the same vertices in any order accept the same set (tests/test_dag_merge.py).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa as pyca_mldsa

from qudag.crypto.signing import domain_message
from qudag.dag.errors import VertexError
from qudag.dag.payloads import (
    KIND_ATTESTATION,
    KIND_IDENTITY,
    KIND_TEMPLATE,
    NO_DECODERS,
    PayloadDecoders,
)
from qudag.dag.vertex import SIGNING_CONTEXT, Vertex, decode_vertex

PublicKey = pyca_mldsa.MLDSA65PublicKey

DEFAULT_MAX_SKEW_MS = 120_000
_SIGNED_PREFIX = domain_message(SIGNING_CONTEXT, b"")


class ParentInfo(NamedTuple):
    """What validation needs to know about a stored parent vertex.

    `n` is the store's row number for it (store-internal, ignored by validation): carrying it
    here lets the store keep one record per cached vertex on the bulk-ingest path.
    """

    author: bytes
    seq: int
    kind: str
    depth: int
    n: int = 0


def load_public_key(public_key: bytes) -> PublicKey:
    """Parse a raw ML-DSA-65 public key once (parsing it per verify is the gap between the
    bare and the `crypto.signing.verify` loops of `benchmarks/bench_ingest.py`: cache it)."""
    parsed = _parsed_keys
    if parsed is not None:
        key = parsed.get(public_key)
        if key is not None:
            return key
    try:
        key = PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise VertexError("bad-payload", "not an ML-DSA-65 public key") from None
    if parsed is not None:
        if len(parsed) >= _PARSED_KEYS_CAPACITY:
            parsed.clear()
        parsed[public_key] = key
    return key


# Opt-in, process-wide: parsed keys by their exact bytes (a parsed key is an immutable function
# of them). Each store keeps its own author -> key cache, and a thousand simulated stores
# each parsing the same thousand keys held 8 KB per parsed key: 8 GB. Off for a node.
_PARSED_KEYS_CAPACITY = 100_000
_parsed_keys: dict[bytes, PublicKey] | None = None


def enable_parsed_key_cache() -> None:
    global _parsed_keys
    _parsed_keys = {}


def disable_parsed_key_cache() -> None:
    global _parsed_keys
    _parsed_keys = None


class VerifiedIds:
    """Opt-in, process-wide memory of vertex ids whose signature has already verified.

    Why it is sound: a vertex id is BLAKE3(body || signature), and the key that must verify it
    is fixed by the body (the author key id is BLAKE3 of the public key), so an id that verified
    once verifies again. Why opt-in: only a process holding many stores that see the same bytes
    (the simulator) gains; a node verifies each vertex once anyway. Bounded: when full it is
    cleared (a later check just costs one verification again). Only successes are remembered.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ids: set[bytes] = set()
        self.hits = 0
        self.misses = 0

    def add(self, vid: bytes) -> None:
        if len(self.ids) >= self.capacity:
            self.ids.clear()
        self.ids.add(vid)


_verified_ids: VerifiedIds | None = None


def enable_verified_cache(capacity: int = 1_000_000) -> VerifiedIds:
    """Turn on the process-wide verified-id cache (see `VerifiedIds`); returns it."""
    global _verified_ids
    _verified_ids = VerifiedIds(capacity)
    return _verified_ids


def disable_verified_cache() -> None:
    global _verified_ids
    _verified_ids = None


def check_signature(vertex: Vertex, public_key: PublicKey) -> None:
    """Raise `VertexError("bad-signature")` unless the vertex is signed by `public_key`."""
    cache = _verified_ids
    if cache is not None:
        if vertex.id in cache.ids:
            cache.hits += 1
            return
        cache.misses += 1
    if not signature_ok(public_key, vertex.body, vertex.signature):
        raise VertexError("bad-signature")
    if cache is not None:
        cache.add(vertex.id)


def signature_ok(public_key: PublicKey, body: bytes, signature: bytes) -> bool:
    """The ML-DSA-65 check of a vertex signature itself (what `check_signature` runs), for a
    caller that holds the body and signature bytes but not a decoded `Vertex` (the signature
    worker process, node/workers/signature_worker.py)."""
    try:
        public_key.verify(signature, _SIGNED_PREFIX + body)
    except (InvalidSignature, ValueError):
        return False
    return True


def check_timestamp(vertex: Vertex, now_ms: int, max_skew_ms: int) -> None:
    """Refuse vertices stamped further than `max_skew_ms` in the future of `now_ms`."""
    if vertex.ts_ms > now_ms + max_skew_ms:
        raise VertexError("future-timestamp", f"ts_ms {vertex.ts_ms} > now {now_ms} + skew")


def check_parents(vertex: Vertex, parents: Mapping[bytes, ParentInfo]) -> None:
    """The rules between a vertex and its (present) parents: seq chain, attestation target."""
    self_parent = False
    for info in parents.values():
        if info.author == vertex.author:
            if info.seq >= vertex.seq:
                raise VertexError("bad-seq", "a parent by the same author has seq >= this seq")
            if info.seq == vertex.seq - 1:
                self_parent = True
    if vertex.seq > 0 and not self_parent:
        raise VertexError("bad-seq", "the author's previous vertex (seq - 1) is not a parent")
    if vertex.kind == KIND_ATTESTATION:
        target = parents.get(vertex.payload["template"])
        if target is None or target.kind != KIND_TEMPLATE:
            raise VertexError("bad-attestation", "the attested parent is not a template vertex")


def depth_of(parents: Mapping[bytes, ParentInfo]) -> int:
    """0 for a vertex without parents, else 1 + the deepest parent (a topological rank)."""
    depth = -1
    for parent in parents.values():
        if parent.depth > depth:
            depth = parent.depth
    return depth + 1


def validate(
    vertex: Vertex,
    parents: Mapping[bytes, ParentInfo],
    author_key: PublicKey | None,
    now_ms: int | None,
    max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
) -> None:
    """Every rule, for a vertex whose parents are all present (`parents` maps each of them).

    `author_key` is the author's stored key; it may be None for an identity vertex, which
    carries its own. `now_ms=None` skips the clock rule (re-verifying stored history).
    Cheap rules run first so garbage costs no signature check.
    """
    if len(parents) != len(vertex.parents):
        raise ValueError("validate() needs the info of every parent")
    if now_ms is not None:
        check_timestamp(vertex, now_ms, max_skew_ms)
    check_parents(vertex, parents)
    if vertex.kind == KIND_IDENTITY:
        author_key = load_public_key(vertex.payload["public_key"])
    elif author_key is None:
        raise VertexError("unknown-author", "no identity vertex for this author")
    check_signature(vertex, author_key)


class Prechecked(NamedTuple):
    """One vertex of a batch, decoded and signature-checked away from the store's thread.

    `key` is the public key the signature verified with (None: not checked, because the
    author's key was not known to `precheck`, or the check failed). The store honours it only
    if it is the key the store itself holds for the author, so a precheck never changes what
    the store accepts, only who pays for the verify (tests/test_dag_parallel.py).
    """

    raw: bytes
    vertex: Vertex | None  # None: the bytes did not decode
    error: str | None  # the `VertexError.reason` when they did not
    key: PublicKey | None
    refused: PublicKey | None = None  # the key the signature failed to verify with, if any


def same_key(a: PublicKey, b: PublicKey) -> bool:
    return a is b or a.public_bytes_raw() == b.public_bytes_raw()


_POOL_PREFIX = "qudag-verify"
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """One small process-wide pool (ML-DSA verify in pyca `cryptography` releases the GIL, so
    threads use a second core; decoding stays GIL-bound)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = max(1, min(4, (os.cpu_count() or 1) - 1))
            _pool = ThreadPoolExecutor(workers, thread_name_prefix=_POOL_PREFIX)
        return _pool


Decoded = tuple[Vertex | None, str | None]  # a vertex, or None and the `VertexError.reason`


def decode_batch(raws: Sequence[bytes], decoders: PayloadDecoders = NO_DECODERS) -> list[Decoded]:
    """`decode_vertex` of each of `raws` with `decoders` (the store's: `Store.decoders`), errors
    kept as their reason (the first step of `precheck`; pure, any thread)."""
    out: list[Decoded] = []
    for raw in raws:
        try:
            out.append((decode_vertex(raw, decoders=decoders), None))
        except VertexError as exc:
            out.append((None, exc.reason))
    return out


def verify_batch(vertices: Sequence[Vertex | None], keys: Mapping[bytes, PublicKey]) -> list[bool]:
    """For each vertex, whether its signature verifies with `keys[author]` (False for None and
    for an author without a key). Pure, any thread."""
    out: list[bool] = []
    for vertex in vertices:
        key = None if vertex is None else keys.get(vertex.author)
        if vertex is None or key is None:
            out.append(False)
            continue
        try:
            check_signature(vertex, key)
        except VertexError:
            out.append(False)
        else:
            out.append(True)
    return out


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    size = -(-n // parts)
    return [(i, min(n, i + size)) for i in range(0, n, size)] if n else []


def precheck(
    raws: Sequence[bytes],
    keys: Mapping[bytes, PublicKey],
    workers: int = 1,
    decoders: PayloadDecoders = NO_DECODERS,
    stored: Callable[[bytes], bool] | None = None,
) -> list[Prechecked]:
    """Decode `raws` and verify every signature whose author key is known, on `workers` threads
    (the calling thread included). Pure: touches no store, so it can run in a worker thread
    while the store's thread does I/O. `stored(id)` true: that vertex is not verified (its
    store holds it already); it is asked on the calling thread only.

    Keys come from `keys` (author -> key the store holds: `Store.known_keys()`) or from an
    identity vertex in the batch (its author is BLAKE3 of the key it carries: decode checked).
    """
    n = len(raws)
    parts = max(1, min(workers, n))
    if threading.current_thread().name.startswith(_POOL_PREFIX):
        parts = 1  # inside the pool: waiting on it from here could deadlock
    spans = _split(n, parts)
    if parts == 1:
        decoded = decode_batch(raws, decoders)
    else:
        pool = _executor()
        futures = [pool.submit(decode_batch, raws[a:b], decoders) for a, b in spans[1:]]
        decoded = decode_batch(raws[spans[0][0] : spans[0][1]], decoders)
        for future in futures:
            decoded += future.result()
    all_keys = batch_keys(decoded, keys)
    vertices = [
        None if v is None or (stored is not None and stored(v.id)) else v for v, _ in decoded
    ]
    if parts == 1:
        good = verify_batch(vertices, all_keys)
    else:
        checks = [pool.submit(verify_batch, vertices[a:b], all_keys) for a, b in spans[1:]]
        good = verify_batch(vertices[spans[0][0] : spans[0][1]], all_keys)
        for check in checks:
            good += check.result()
    return prechecked(raws, decoded, good, all_keys, vertices)


def batch_keys(
    decoded: Sequence[Decoded], keys: Mapping[bytes, PublicKey]
) -> dict[bytes, PublicKey]:
    """`keys` plus the keys carried by the identity vertices of a decoded batch (an identity's
    author is BLAKE3 of the key it carries: decode checked that)."""
    all_keys = dict(keys)
    for vertex, _ in decoded:
        if vertex is not None and vertex.kind == KIND_IDENTITY and vertex.author not in all_keys:
            try:
                all_keys[vertex.author] = load_public_key(vertex.payload["public_key"])
            except VertexError:
                pass
    return all_keys


def prechecked(
    raws: Sequence[bytes],
    decoded: Sequence[Decoded],
    good: Sequence[bool],
    keys: Mapping[bytes, PublicKey],
    checked: Sequence[Vertex | None] | None = None,
) -> list[Prechecked]:
    """The `Prechecked` items of a batch: `good[i]` says that vertex i's signature verified
    with `keys[author]` (whoever ran the check: a thread, or the signature worker process).
    `checked` (the vertices given to `verify_batch`, None where none was checked) lets a
    failure be kept as `refused`, so the store does not verify that signature again."""
    items = [
        Prechecked(raw, v, err, keys[v.author] if ok and v is not None else None)
        for raw, (v, err), ok in zip(raws, decoded, good, strict=True)
    ]
    if checked is None:
        return items
    return [
        item._replace(refused=keys.get(v.author)) if v is not None and not ok else item
        for item, v, ok in zip(items, checked, good, strict=True)
    ]


def recheck(
    items: Sequence[Prechecked],
    used: Mapping[bytes, PublicKey],
    keys: Mapping[bytes, PublicKey],
) -> list[Prechecked]:
    """Verify, with `keys`, the vertices of `items` (a `precheck` made with the keys `used`)
    whose author key the precheck did not have: in a catch-up, a page is prechecked before the
    page holding its authors' identities is stored, and the store would otherwise verify
    those vertices itself, on its own thread. Pure, like `precheck`: any thread.
    """
    late = late_keyed(items, used, keys)
    good = verify_batch([items[i].vertex for i in late], keys)
    return with_late_keys(items, late, good, keys)


def late_keyed(
    items: Sequence[Prechecked], used: Mapping[bytes, PublicKey], keys: Mapping[bytes, PublicKey]
) -> list[int]:
    """Indices of the `items` (a precheck made with the keys `used`) whose author key the
    precheck lacked and `keys` now has: what `recheck` verifies."""
    return [
        i
        for i, item in enumerate(items)
        if item.vertex is not None
        and item.key is None
        and item.vertex.author not in used
        and item.vertex.author in keys
    ]


def with_late_keys(
    items: Sequence[Prechecked],
    late: Sequence[int],
    good: Sequence[bool],
    keys: Mapping[bytes, PublicKey],
) -> list[Prechecked]:
    """`items` with the key set on `items[late[j]]` for each `good[j]` (a `recheck`'s result,
    whoever ran its verifies)."""
    out = list(items)
    for i, ok in zip(late, good, strict=True):
        vertex = items[i].vertex
        if ok and vertex is not None:
            out[i] = items[i]._replace(key=keys[vertex.author])
    return out


class KeyCache:
    """A bounded cache of parsed public keys by author key id (hostile authors are unbounded)."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[bytes, PublicKey] = OrderedDict()

    def get(self, author: bytes) -> PublicKey | None:
        # No move_to_end on hits: FIFO eviction is enough and keeps the hot path cheap.
        return self._keys.get(author)

    def put(self, author: bytes, key: PublicKey) -> None:
        self._keys[author] = key
        self._keys.move_to_end(author)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def clear(self) -> None:
        self._keys.clear()

    def snapshot(self) -> dict[bytes, PublicKey]:
        return dict(self._keys)
