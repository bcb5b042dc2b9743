"""The byte walker (fast version-2 template decoder) is exactly as strict as the generic decoder.

`parse_template_bytes` and `synthesize(bytes)` try the walker first and fall back to the generic
decoder (msgpack unpack + re-encode + `parse_template_map`) for anything it does not take, so
the walker may only ever be *narrower*: these tests check it accepts every valid template we can
build, with the same result, and never accepts mutated bytes the generic decoder rejects.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_evolution_template import make_template

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import (
    MAX_TEMPLATE_BYTES,
    ParsedTemplate,
    Template,
    parse_template_bytes,
    parse_template_map,
    walk_template_bytes,
    walk_template_layout,
)


def generic(data: bytes) -> ParsedTemplate:
    return parse_template_map(unpack(data, max_size=MAX_TEMPLATE_BYTES))


def same(a: ParsedTemplate, b: ParsedTemplate) -> bool:
    return a.key() == b.key() and [type(x) for x in a] == [type(y) for y in b]


def variants() -> list[Template]:
    """Valid templates that exercise every variable item and header size of the format."""
    out = [
        make_template(),
        make_template(seed=1, n_inputs=1, hidden=(), n_outputs=1, act="identity"),
        make_template(seed=2, n_inputs=13, hidden=(8, 6), n_outputs=3, act="sin"),
        make_template(seed=3, n_inputs=64, hidden=(32,), n_outputs=10, act="relu"),  # bin16
        make_template(seed=4, n_inputs=100, hidden=(16, 16, 8), n_outputs=2, act="sigmoid"),
        make_template(seed=5, output="values", n_outputs=1),
        make_template(seed=6, parents=()),
        make_template(seed=7, parents=tuple(bytes([i]) * 32 for i in range(8))),
        make_template(seed=8, task="é" * 40 + "タスク", operator="o" * 64),  # str8, utf-8
        make_template(seed=16, operator="o" * 31, task="t" * 31),  # the longest fixstr
        make_template(seed=9, task="t" * 512),  # str16
        make_template(
            seed=10, task_version=2**40, latency_ns=2**20, generation=300, fitness=-1e300
        ),
        make_template(seed=11, fitness=0.0, latency_ns=200, generation=65535, task_version=128),
        make_template(seed=12, feature_names=("a", "b", "c"), target_name="y"),
        make_template(seed=13, class_names=("no", "yes"), target_name="label"),
        make_template(seed=14, feature_names=("x" * 64, "b", "c"), class_names=("p", "q")),
        make_template(seed=15, n_inputs=2, hidden=(256,), n_outputs=2),  # layer width 256
    ]
    return out


@pytest.mark.parametrize("t", variants(), ids=lambda t: f"{t.task[:8]}-{t.genome.layer_sizes}")
def test_walker_accepts_valid_templates_with_the_generic_result(t: Template) -> None:
    data = t.to_bytes()
    walked = walk_template_bytes(data)
    assert walked is not None, "the walker fell back on a valid template"
    assert same(walked, generic(data))
    assert same(parse_template_bytes(data), generic(data))
    # synthesis from bytes (walker path) and from the object give bit-identical nets
    rng = np.random.default_rng(0)
    x = (t.input_mean + rng.standard_normal((7, t.genome.n_inputs)) * t.input_scale).astype(
        np.float32
    )
    from_bytes, from_object = synthesize(data), synthesize(t)
    assert np.array_equal(from_bytes(x), from_object(x))
    assert np.array_equal(from_bytes(x[0]), from_object(x[0]))
    assert from_bytes.n_params == t.n_params and from_bytes.bytes_held > 0


def _mutations(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        kind = rng.integers(5)
        i = int(rng.integers(len(data)))
        if kind == 0:  # flip one byte
            out.append(data[:i] + bytes([int(rng.integers(256))]) + data[i + 1 :])
        elif kind == 1:  # +-1 on one byte (lengths, counts, small ints)
            out.append(
                data[:i] + bytes([(data[i] + int(rng.choice([-1, 1]))) % 256]) + data[i + 1 :]
            )
        elif kind == 2:  # truncate
            out.append(data[:i])
        elif kind == 3:  # insert a byte
            out.append(data[:i] + bytes([int(rng.integers(256))]) + data[i:])
        else:  # delete a byte
            out.append(data[:i] + data[i + 1 :])
    return out


@pytest.mark.parametrize("index", range(len(variants())))
def test_walker_never_accepts_what_the_generic_decoder_rejects(index: int) -> None:
    t = variants()[index]
    data = t.to_bytes()
    rng = np.random.default_rng(index)
    accepted = rejected = 0
    for bad in _mutations(data, rng, 300):
        walked = walk_template_bytes(bad)
        try:
            reference = generic(bad)
        except DecodeError as exc:
            rejected += 1
            assert walked is None, f"walker accepted bytes the generic decoder rejects: {exc}"
            with pytest.raises(DecodeError) as caught:
                parse_template_bytes(bad)
            assert caught.value.reason == exc.reason
            with pytest.raises(DecodeError):
                synthesize(bad)
            continue
        accepted += 1  # e.g. a flipped weight bit: still a valid template
        assert walked is None or same(walked, reference)
        assert same(parse_template_bytes(bad), reference)
    assert rejected > 100  # the mutations did test something


def _reencoded(t: Template, **changes: object) -> bytes:
    d = t.to_dict()
    for k, v in changes.items():
        if "." in k:
            outer, inner = k.split(".")
            d[outer][inner] = v
        else:
            d[k] = v
    return pack(d)


def _floats(t: Template, index: int, value: float) -> bytes:
    """`t`'s bytes with float `index` of its net field (mean, scale, params) set to `value`."""
    net = bytearray(t.to_dict()["net"])  # type: ignore[arg-type]
    h = 4 * ((5 + 3 * len(t.genome.layer_sizes) + 3) // 4)
    net[h + 4 * index : h + 4 * index + 4] = np.array([value], "<f4").tobytes()
    return _reencoded(t, net=bytes(net))


T = make_template()  # 3 inputs, 26 parameters
V1 = make_template(format_version=1)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            T.to_bytes().replace(
                b"\xa4iris\xactask_version\x01", b"\xa4iris\xactask_version\xcc\x01"
            ),
            "non-canonical",
        ),
        (T.to_bytes() + b"\x00", "trailing-bytes"),
        (T.to_bytes()[:-1], "malformed"),
        (_floats(T, 3 + 1, 0.0), "value"),  # a zero scale
        (_floats(T, 3 + 2, -0.0), "value"),
        (_floats(T, 0, np.inf), "value"),  # an infinite mean
        (_floats(T, 3, np.nan), "value"),  # a scale
        (_floats(T, 6, np.nan), "value"),  # the first parameter
        (_floats(T, 6 + 25, -np.inf), "value"),  # the last
        (_reencoded(T, **{"objectives.params": 1}), "value"),
        (_reencoded(T, **{"objectives.fitness": float("nan")}), "value"),
        (_reencoded(T, parents=[bytes(32), bytes(32)]), "value"),
        (_reencoded(T, operator=""), "size"),
        (_reencoded(T, task_version=-1), "value"),
        (_reencoded(T, net=T.to_dict()["net"][:-4]), "size"),
        (_reencoded(T, net="net"), "type"),
        (_reencoded(T, v=3), "version"),
        (_reencoded(T, v=1), "missing-field"),  # a version-2 map that says version 1
        (_reencoded(V1, v=2), "missing-field"),  # and the other way round
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_templates_are_refused_with_the_generic_reason(data: bytes, reason: str) -> None:
    assert walk_template_bytes(data) is None
    with pytest.raises(DecodeError) as caught:
        parse_template_bytes(data)
    assert caught.value.reason == reason
    with pytest.raises(DecodeError):
        synthesize(data)


def test_non_finite_weight_and_huge_values() -> None:
    with pytest.raises(DecodeError, match="non-finite"):
        synthesize(_floats(T, 6, np.nan))
    # a huge but finite weight is a valid template (a dot with itself would overflow: the
    # check is a dot with 2^-100)
    data = _floats(T, 6, 3e38)
    walked = walk_template_bytes(data)
    assert walked is not None and same(walked, generic(data))
    assert walked.layers_ext[0][0, 0] == np.float32(3e38)
    for bad in (np.inf, -np.inf):
        with pytest.raises(DecodeError, match="non-finite"):
            parse_template_bytes(_floats(T, 7, bad))


def test_version_1_bytes_still_synthesize_to_the_same_net() -> None:
    """Old ledgers hold version-1 templates: they take the generic decoder's path."""
    for t in variants():
        old = dataclasses.replace(t, format_version=1)
        data = old.to_bytes()
        assert data[0] in (0x8A, 0x8B) and walk_template_bytes(data) is None
        assert Template.from_bytes(data).to_bytes() == data
        x = np.asarray(t.input_mean, np.float32)
        assert np.array_equal(synthesize(data)(x), synthesize(t.to_bytes())(x))


def test_templates_of_one_task_share_the_checked_standardisation() -> None:
    """The walker checks the bytes up to the parameters once per task and shape: templates that
    share them share the standardisation arrays, and each still gets its own parameters."""
    a, b = make_template(seed=1), make_template(seed=2)
    b = dataclasses.replace(b, input_mean=a.input_mean, input_scale=a.input_scale)
    wa, wb = walk_template_layout(a.to_bytes()), walk_template_layout(b.to_bytes())
    assert wa is not None and wb is not None
    assert wa.mean is wb.mean and wa.scale is wb.scale and not wa.mean.flags.writeable
    x = np.asarray(a.input_mean, np.float32) + 1
    for t in (a, b):
        assert np.array_equal(synthesize(t.to_bytes())(x), synthesize(t)(x))
    other = dataclasses.replace(a, input_scale=a.input_scale * 2)
    wo = walk_template_layout(other.to_bytes())
    assert wo is not None and np.array_equal(wo.scale, a.input_scale * 2)
    assert not np.array_equal(synthesize(other.to_bytes())(x), synthesize(a.to_bytes())(x))
