"""The `net` field of a version-2 template: the runnable part of a template in a fixed layout.

Why a binary layout inside the msgpack map: synthesis (template bytes -> runnable net) is timed
in microseconds, and with the genome and the input standardisation as nested msgpack maps most
of that time went into walking them. Here everything synthesis needs (shape, activations, output
kind, weights, standardisation) is one `bin` field: a small header whose exact bytes identify a
validated shape (`parse_header`, cached), then the float32 values, which numpy reads as
zero-copy views through one structured dtype per shape (`NetShape.dtype`). The standardisation
comes first: every template of one task shares it, so the bytes up to the end of the scale are
the same for all templates of a task and shape, and a decoder can validate them once.

Layout (little-endian; byte-exact specification in docs/vertex-format.md):

    0        u8       layout version, 1
    1        u8       L, the number of layers (1..8)
    2        u16      n_inputs (1..1024)
    4        L x u16  layer widths (1..256; the last is the output width)
    4+2L     L x u8   activation codes: index in `ACTIVATIONS` (identity, tanh, relu, sigmoid, sin)
    4+3L     u8       output kind: 0 logits, 1 values
    5+3L     zeros    up to H = 4 * ceil((5 + 3L) / 4), so the floats are 4-byte aligned
    H        f32 x n  input mean
    H+4n     f32 x n  input scale
    H+8n     f32 x P  parameters, layer by layer: W row-major (fan_in x width), then b

and nothing after it: the length is exactly H + 4 (2n + P). The shape must be within
`DEFAULT_LIMITS`; every float must be finite and no scale zero (the rules of version 1).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qudag.crypto.canonical import DecodeError
from qudag.evolution.genome import ACTIVATIONS, DEFAULT_LIMITS, GenomeError

NET_LAYOUT_VERSION = 1
OUTPUT_KINDS = ("logits", "values")
ACTIVATION_NAMES = tuple(ACTIVATIONS)  # code -> name; ACTIVATIONS only ever appends
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATION_NAMES)}  # name -> code
_MAX_SHAPES = 4096
_F32 = np.dtype("<f4")


def header_size(n_layers: int) -> int:
    """H: the header's length for `n_layers` layers, padded to a multiple of 4."""
    return (5 + 3 * n_layers + 3) & ~3


@dataclass(frozen=True, eq=False)
class NetShape:
    """A validated net header and everything derived from it once.

    `dtype` is a structured dtype over the float region: field `all` is every float, `mean` and
    `scale` the standardisation, `params` every parameter, `l0`..`l{L-1}` the layers as
    (fan_in + 1, width) matrices whose last row is the bias (the parameter layout already is
    that stacking); the fields overlap, so reading them copies nothing.
    """

    header: bytes
    n_inputs: int
    layer_sizes: tuple[int, ...]
    activations: tuple[str, ...]
    codes: tuple[int, ...]  # the activations' codes (`ACTIVATION_CODES`), one per layer
    output: str
    n_params: int
    n_floats: int
    size: int  # bytes of the whole field: header + floats
    float_bytes: int  # 4 * n_floats
    dtype: np.dtype
    layer_fields: tuple[str, ...]
    tiny: np.ndarray  # read-only 2^-100 x n_params, for `params_finite`


_SHAPES: dict[bytes, NetShape] = {}


def encode_header(
    n_inputs: int, layer_sizes: Sequence[int], activations: Sequence[str], output: str
) -> bytes:
    """The header bytes of a net of this shape (the caller has checked the shape)."""
    n = len(layer_sizes)
    head = struct.pack(
        f"<BBH{n}H{n}BB",
        NET_LAYOUT_VERSION,
        n,
        n_inputs,
        *layer_sizes,
        *(ACTIVATION_CODES[a] for a in activations),
        OUTPUT_KINDS.index(output),
    )
    return head + bytes(header_size(n) - len(head))


def float_region(flat_params: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> bytes:
    """The float values of a net in layout order, as little-endian float32 bytes."""
    return np.concatenate((mean, scale, flat_params)).astype(_F32, copy=False).tobytes()


def encode_net(
    n_inputs: int,
    layer_sizes: Sequence[int],
    activations: Sequence[str],
    output: str,
    floats: bytes,
) -> bytes:
    """The `net` field: the header, then `floats` (from `float_region`)."""
    return encode_header(n_inputs, layer_sizes, activations, output) + floats


def parse_header(header: bytes) -> NetShape:
    """Strictly validate a header (exactly H bytes); raises `DecodeError`. Cached by its bytes."""
    shape = _SHAPES.get(header)
    if shape is not None:
        return shape
    if len(header) < 4 or header[0] != NET_LAYOUT_VERSION:
        raise DecodeError("version", "net layout version")
    n = header[1]
    if not 1 <= n <= DEFAULT_LIMITS.max_layers:
        raise DecodeError("limit", f"{n} layers outside 1..{DEFAULT_LIMITS.max_layers}")
    if len(header) != header_size(n):
        raise DecodeError("size", "net header length")
    fields = struct.unpack_from(f"<BBH{n}H{n}BB", header)
    n_inputs = fields[2]
    sizes = fields[3 : 3 + n]
    codes = fields[3 + n : 3 + 2 * n]
    out_code = fields[3 + 2 * n]
    if any(c >= len(ACTIVATION_NAMES) for c in codes):
        raise DecodeError("value", "unknown activation code")
    if out_code >= len(OUTPUT_KINDS):
        raise DecodeError("value", "unknown output kind code")
    if any(header[5 + 3 * n :]):
        raise DecodeError("non-canonical", "net header padding must be zero")
    try:
        n_params = DEFAULT_LIMITS.check(n_inputs, sizes)
    except GenomeError as exc:
        raise DecodeError("limit", str(exc)) from None
    names = ["all", "mean", "scale", "params"]
    formats: list[tuple[np.dtype, tuple[int, ...]]] = [
        (_F32, (n_params + 2 * n_inputs,)),
        (_F32, (n_inputs,)),
        (_F32, (n_inputs,)),
        (_F32, (n_params,)),
    ]
    offsets = [0, 0, 4 * n_inputs, 8 * n_inputs]
    layer_fields = []
    offset = 2 * n_inputs
    fan_in = n_inputs
    for i, width in enumerate(sizes):
        name = f"l{i}"
        layer_fields.append(name)
        names.append(name)
        formats.append((_F32, (fan_in + 1, width)))
        offsets.append(4 * offset)
        offset += (fan_in + 1) * width
        fan_in = width
    n_floats = n_params + 2 * n_inputs
    dtype = np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": 4 * n_floats}
    )
    tiny = np.full(n_params, 2.0**-100, dtype=np.float32)
    tiny.flags.writeable = False
    shape = NetShape(
        header=bytes(header),
        n_inputs=n_inputs,
        layer_sizes=tuple(sizes),
        activations=tuple(ACTIVATION_NAMES[c] for c in codes),
        codes=tuple(codes),
        output=OUTPUT_KINDS[out_code],
        n_params=n_params,
        n_floats=n_floats,
        size=len(header) + 4 * n_floats,
        float_bytes=4 * n_floats,
        dtype=dtype,
        layer_fields=tuple(layer_fields),
        tiny=tiny,
    )
    if len(_SHAPES) >= _MAX_SHAPES:
        _SHAPES.clear()
    _SHAPES[shape.header] = shape
    return shape


def shape_of(
    n_inputs: int, layer_sizes: Sequence[int], activations: Sequence[str], output: str
) -> NetShape:
    """The `NetShape` of an already validated genome shape and output kind."""
    return parse_header(encode_header(n_inputs, layer_sizes, activations, output))


def params_finite(shape: NetShape, params: np.ndarray) -> bool:
    """Whether every parameter (`params`, the field of that name) is finite, in one BLAS call.

    The dot with 2^-100 keeps NaN and infinities and cannot overflow (|x| 2^-100 <= 2.7e8, and
    a net has < 16k values), so it is finite exactly when every value is; `isfinite(v).all()`
    costs three times as much here.
    """
    try:
        total = float(params.dot(shape.tiny))
    except (FloatingPointError, RuntimeWarning):  # +inf and -inf together, warnings as errors
        return False
    return total - total == 0.0  # NaN or infinity give NaN (cheaper than math.isfinite)


def standardisation_ok(mean: np.ndarray, scale: np.ndarray) -> bool:
    """Whether the mean and scale are finite and no scale is zero."""
    return bool(np.isfinite(mean).all() and np.isfinite(scale).all()) and np.count_nonzero(
        scale
    ) == len(scale)


def check_floats(shape: NetShape, rec: np.ndarray) -> None:
    """The rules of a whole float region `rec` (a 0-d array of `shape.dtype`), for the
    decoders that check every value at once: every value finite and no input scale zero.
    Raises `DecodeError`."""
    if not np.isfinite(rec["all"]).all():
        raise DecodeError("value", "non-finite parameter or standardisation constant")
    if np.count_nonzero(rec["scale"]) != shape.n_inputs:
        raise DecodeError("value", "zero input scale")


def parse_net(blob: bytes) -> tuple[NetShape, np.ndarray]:
    """Strictly decode a whole `net` field: its shape and its float region as a read-only,
    aligned 0-d structured array (fields as in `NetShape.dtype`). Raises `DecodeError`."""
    if type(blob) is not bytes or len(blob) < 2:
        raise DecodeError("size", "net field too short")
    n = blob[1]
    h = header_size(n)
    if len(blob) < h:
        raise DecodeError("size", "net field too short")
    shape = parse_header(blob[:h])
    if len(blob) != shape.size:
        raise DecodeError("size", "net field length does not match its header")
    floats = blob[h:]  # a fresh bytes object: aligned for numpy
    rec = np.ndarray((), shape.dtype, floats)
    check_floats(shape, rec)
    return shape, rec
