"""The `net` field of version-2 templates: its byte layout, and strictness under mutation.

Every decoder path (`parse_net`, the generic template decoder, the byte walker, synthesis)
must refuse malformed bytes, and where the walker accepts bytes it must give exactly what the
generic decoder gives.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_evolution_template import make_template, templates
from test_evolution_template_walk import generic

from qudag.crypto.canonical import DecodeError, pack
from qudag.evolution.genome import ACTIVATIONS
from qudag.evolution.netformat import (
    encode_net,
    float_region,
    header_size,
    parse_header,
    parse_net,
)
from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import Template, parse_template_bytes, walk_template_bytes


def check_paths_agree(data: bytes) -> bool:
    """Every path gives the generic decoder's verdict; True if the bytes are a template."""
    walked = walk_template_bytes(data)
    try:
        reference = generic(data)
    except DecodeError as exc:
        assert walked is None, f"walker accepted bytes the generic decoder rejects: {exc}"
        with pytest.raises(DecodeError):
            parse_template_bytes(data)
        with pytest.raises(DecodeError):
            synthesize(data)
        with pytest.raises(DecodeError):
            Template.from_bytes(data)
        return False
    assert walked is None or walked.key() == reference.key()
    assert parse_template_bytes(data).key() == reference.key()
    assert Template.from_bytes(data).to_bytes() == data
    return True


def test_layout_is_byte_exact() -> None:
    """The layout of docs/vertex-format.md, written out by hand for one net."""
    t = make_template(n_inputs=3, hidden=(4,), n_outputs=2, act="relu", output="values")
    blob = t.to_dict()["net"]
    g = t.genome
    header = bytes([1, 2]) + struct.pack("<H", 3) + struct.pack("<HH", 4, 2)
    header += bytes([2, 0]) + bytes([1]) + bytes(1)  # relu, identity; values; pad to 12
    floats = b"".join(
        [
            t.input_mean.astype("<f4").tobytes(),
            t.input_scale.astype("<f4").tobytes(),
            g.weights[0].astype("<f4").tobytes(),
            g.biases[0].astype("<f4").tobytes(),
            g.weights[1].astype("<f4").tobytes(),
            g.biases[1].astype("<f4").tobytes(),
        ]
    )
    assert blob == header + floats
    assert header_size(2) == 12 and header_size(1) == 8 and header_size(8) == 32
    assert list(ACTIVATIONS) == ["identity", "tanh", "relu", "sigmoid", "sin"]  # the codes


def _header(n_inputs: int, sizes: list[int], codes: list[int], out: int, version: int = 1) -> bytes:
    n = len(sizes)
    h = struct.pack(f"<BBH{n}H{n}BB", version, n, n_inputs, *sizes, *codes, out)
    return h + bytes(header_size(n) - len(h))


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (_header(3, [2], [0], 0, version=2), "version"),
        (_header(3, [2], [0], 0, version=0), "version"),
        (bytes([1, 0, 3, 0]) + bytes(4), "limit"),  # no layers
        (_header(3, [2] * 9, [0] * 9, 0), "limit"),  # 9 layers
        (_header(0, [2], [0], 0), "limit"),
        (_header(1025, [2], [0], 0), "limit"),
        (_header(3, [0], [0], 0), "limit"),
        (_header(3, [257], [0], 0), "limit"),
        (_header(1024, [64, 10], [0, 0], 0), "limit"),  # > 12,800 parameters
        (_header(3, [2], [5], 0), "value"),  # unknown activation
        (_header(3, [2], [0], 2), "value"),  # unknown output kind
        (_header(3, [2, 2], [0, 0], 0)[:-1] + b"\x01", "non-canonical"),  # padding
        (_header(3, [2], [0], 0) + bytes(4), "size"),
        (_header(3, [2], [0], 0)[:-1], "size"),
    ],
)
def test_bad_headers_are_refused(header: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_header(header)
    assert info.value.reason == reason


def test_float_rules() -> None:
    t = make_template()
    blob = t.to_dict()["net"]
    shape, rec = parse_net(blob)
    assert not rec.flags.writeable and rec["l0"].shape == (4, 4)
    h = header_size(2)
    for value, index in ((np.nan, 0), (np.inf, 5), (-np.inf, shape.n_floats - 1)):
        floats = np.frombuffer(blob[h:], "<f4").copy()
        floats[index] = value
        with pytest.raises(DecodeError, match="non-finite"):
            parse_net(blob[:h] + floats.tobytes())
    floats = np.frombuffer(blob[h:], "<f4").copy()
    floats[shape.n_inputs + 1] = -0.0  # a scale of zero
    with pytest.raises(DecodeError, match="zero input scale"):
        parse_net(blob[:h] + floats.tobytes())
    for bad in (blob[:-4], blob + bytes(4), blob[:-1], b"", blob[:1]):
        with pytest.raises(DecodeError):
            parse_net(bad)


def _with_net(t: Template, net: bytes) -> bytes:
    d = t.to_dict()
    d["net"] = net
    return pack(d)


@pytest.mark.parametrize("index", range(4))
def test_every_bit_flip_truncation_and_extension_of_the_header(index: int) -> None:
    """Exhaustively over the net header: each single-bit flip, each truncation and each
    inserted byte is refused by every path or (a flip that is still a valid header, such as
    another activation) decodes alike on every path."""
    t = [
        make_template(),
        make_template(seed=1, n_inputs=1, hidden=(), n_outputs=1, act="identity"),
        make_template(seed=2, n_inputs=64, hidden=(32, 8), n_outputs=10, act="sigmoid"),
        make_template(seed=3, feature_names=("a", "b", "c"), class_names=("p", "q")),
    ][index]
    blob = t.to_dict()["net"]
    h = header_size(len(t.genome.layer_sizes))
    accepted = 0
    for i in range(h):
        for bit in range(8):
            flipped = blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1 :]
            accepted += check_paths_agree(_with_net(t, flipped))
        assert not check_paths_agree(_with_net(t, blob[:i] + blob[i + 1 :]))
        assert not check_paths_agree(_with_net(t, blob[:i] + b"\x00" + blob[i:]))
        assert not check_paths_agree(_with_net(t, blob[:i]))
    assert accepted < 8 * h // 2
    # and the template bytes themselves, around the net field
    data = t.to_bytes()
    start = data.index(blob)
    for i in range(max(0, start - 8), start + h):
        for bit in range(8):
            check_paths_agree(data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :])
        assert not check_paths_agree(data[:i] + data[i + 1 :])
        assert not check_paths_agree(data[:i])


@settings(max_examples=100, deadline=None)
@given(templates(), st.data())
def test_random_mutations_of_valid_templates(t: Template, data: st.DataObject) -> None:
    raw = t.to_bytes()
    assert check_paths_agree(raw)
    assert walk_template_bytes(raw) is not None or not t.operator.isascii()
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "extend"]))
        i = data.draw(st.integers(0, len(mutated) - 1))
        if kind == "flip":
            mutated[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            mutated.insert(i, data.draw(st.integers(0, 255)))
        elif kind == "delete" and len(mutated) > 1:
            del mutated[i]
        elif kind == "truncate":
            mutated = mutated[:i]
        else:
            mutated += data.draw(st.binary(min_size=1, max_size=8))
        if not mutated:
            break
    check_paths_agree(bytes(mutated))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_arbitrary_net_fields_are_refused_or_agree(net: bytes) -> None:
    t = make_template()
    check_paths_agree(_with_net(t, net))
    check_paths_agree(_with_net(t, t.to_dict()["net"][:12] + net))


def test_a_non_ascii_operator_takes_the_generic_path() -> None:
    t = make_template(operator="mutación")
    data = t.to_bytes()
    assert walk_template_bytes(data) is None  # the walker leaves it to the generic decoder
    assert check_paths_agree(data)
    assert synthesize(data).n_params == t.n_params


def _expected_net(t: Template) -> bytes:
    """The `net` field of docs/vertex-format.md, written out from the genome's own arrays with
    `struct` and `tobytes`, without the encoder."""
    g = t.genome
    n = len(g.layer_sizes)
    codes = [list(ACTIVATIONS).index(a) for a in g.activations]
    head = struct.pack("<BBH", 1, n, g.n_inputs)
    head += b"".join(struct.pack("<H", s) for s in g.layer_sizes)
    head += bytes(codes) + bytes([["logits", "values"].index(t.output)])
    head += bytes(-len(head) % 4)
    parts = [t.input_mean, t.input_scale]
    for w, b in zip(g.weights, g.biases, strict=True):
        parts += [w, b]  # row-major (fan_in x width), then the bias
    return head + b"".join(np.asarray(p, dtype="<f4").tobytes() for p in parts)


@settings(max_examples=60, deadline=None)
@given(templates())
def test_encode_net_matches_the_written_out_layout(t: Template) -> None:
    g = t.genome
    expected = _expected_net(t)
    floats = float_region(g.flat_params(), t.input_mean, t.input_scale)
    assert encode_net(g.n_inputs, g.layer_sizes, g.activations, t.output, floats) == expected
    assert t.to_dict()["net"] == expected
    shape, rec = parse_net(expected)
    assert shape.layer_sizes == g.layer_sizes and shape.activations == g.activations
    assert shape.output == t.output
    for i, (w, b) in enumerate(zip(g.weights, g.biases, strict=True)):
        assert np.array_equal(rec[f"l{i}"][:-1], w) and np.array_equal(rec[f"l{i}"][-1], b)
