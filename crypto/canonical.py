"""Canonical msgpack: the one encoding for everything that is signed, hashed or sent.

Why strict: two honest encoders must produce the same bytes for the same value (ids are
hashes of bytes), and a decoder of bytes from the network must refuse anything it would not
itself produce. `unpack` therefore re-encodes what it decoded and rejects the input unless the
bytes are identical; this single check rules out non-minimal integers, float32/float64
substitutions, maps with re-ordered keys, str/bin confusion and trailing bytes. Callers then
check field names and types with `fields`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack


class DecodeError(ValueError):
    """Bytes that are not the canonical encoding of a well-formed value. `reason` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError("malformed", "msgpack ext types are not used")


def pack(value: Any) -> bytes:
    """Encode `value` canonically: maps keep insertion order, bytes as bin, str as str."""
    packed: bytes = msgpack.packb(value, use_bin_type=True, strict_types=True)
    return packed


def unpack(data: bytes, max_size: int) -> Any:
    """Decode canonical msgpack of at most `max_size` bytes, or raise `DecodeError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("type", "expected bytes")
    if len(data) > max_size:
        raise DecodeError("oversize", f"{len(data)} bytes > limit {max_size}")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size,
            max_ext_len=0,
            ext_hook=_no_ext,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing-bytes") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError("malformed", type(exc).__name__) from None
    try:
        again = pack(value)
    except (TypeError, ValueError):
        raise DecodeError("malformed", "value cannot be re-encoded") from None
    if again != bytes(data):
        raise DecodeError("non-canonical")
    return value


def fields(value: Any, schema: Mapping[str, type | tuple[type, ...]], what: str) -> dict[str, Any]:
    """Check that `value` is a map with exactly the keys of `schema`, in that order, typed.

    `bool` is not accepted where `int` is asked for (msgpack keeps them apart; so do we).
    """
    if not isinstance(value, dict):
        raise DecodeError("type", f"{what} must be a map")
    keys = list(value)
    expected = list(schema)
    if keys != expected:
        missing = [k for k in expected if k not in value]
        unknown = [k for k in keys if k not in schema]
        if missing:
            raise DecodeError("missing-field", f"{what}: {', '.join(missing)}")
        if unknown:
            raise DecodeError("unknown-field", f"{what}: {', '.join(map(str, unknown))}")
        raise DecodeError("non-canonical", f"{what}: fields out of order")
    for key, kind in schema.items():
        item = value[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(item, bool) and bool not in kinds:
            raise DecodeError("type", f"{what}.{key}")
        if not isinstance(item, kinds):
            raise DecodeError("type", f"{what}.{key}")
    return value
