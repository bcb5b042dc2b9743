"""Templates: canonical round trip, strict decoding of hostile bytes, template files."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.evolution.genome import ACTIVATIONS, Genome
from qudag.evolution.tasks import get_task
from qudag.evolution.template import (
    MAX_TEMPLATE_BYTES,
    TEMPLATE_FORMAT_VERSION,
    Template,
    TemplateError,
    from_genome,
    load_template,
    parse_template_bytes,
    save_template,
)

ACT_NAMES = sorted(ACTIVATIONS)


def make_template(
    seed: int = 0,
    n_inputs: int = 3,
    hidden: tuple[int, ...] = (4,),
    n_outputs: int = 2,
    act: str = "tanh",
    **overrides: Any,
) -> Template:
    rng = np.random.default_rng(seed)
    g = Genome.random(rng, n_inputs, hidden, n_outputs, activation=act)
    g = g.with_params(
        g.weights, [rng.standard_normal(b.shape).astype(np.float32) for b in g.biases]
    )
    fields: dict[str, Any] = dict(
        task="iris",
        task_version=1,
        genome=g,
        input_mean=rng.uniform(-5, 5, n_inputs).astype(np.float32),
        input_scale=rng.uniform(0.5, 3, n_inputs).astype(np.float32),
        output="logits",
        fitness=0.875,
        n_params=g.n_params,
        n_bytes=g.n_bytes,
        latency_ns=1500,
        parents=(bytes(range(32)),),
        operator="crossover",
        generation=7,
    )
    fields.update(overrides)
    return Template(**fields)


@st.composite
def templates(draw: st.DrawFn, max_exp: int = 3) -> Template:
    """Random valid templates; weights scaled by 10**k, k in [-3, max_exp]."""
    n_inputs = draw(st.integers(1, 8))
    hidden = tuple(draw(st.lists(st.integers(1, 8), max_size=3)))
    n_outputs = draw(st.integers(1, 4))
    acts = tuple(draw(st.sampled_from(ACT_NAMES)) for _ in range(len(hidden) + 1))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sizes = (*hidden, n_outputs)
    flat_n = 0
    fan_in = n_inputs
    for s in sizes:
        flat_n += (fan_in + 1) * s
        fan_in = s
    flat = (rng.standard_normal(flat_n) * 10.0 ** rng.integers(-3, max_exp + 1)).astype(np.float32)
    g = Genome.from_flat(n_inputs, sizes, acts, flat)
    finite = st.floats(allow_nan=False, allow_infinity=False)
    return Template(
        task=draw(st.text(min_size=1, max_size=30)),
        task_version=draw(st.integers(0, 2**40)),
        genome=g,
        input_mean=rng.standard_normal(n_inputs).astype(np.float32),
        input_scale=rng.uniform(0.01, 100, n_inputs).astype(np.float32),
        output=draw(st.sampled_from(["logits", "values"])),
        fitness=draw(finite),
        n_params=g.n_params,
        n_bytes=g.n_bytes,
        latency_ns=draw(st.integers(0, 2**50)),
        parents=tuple(draw(st.lists(st.binary(min_size=32, max_size=32), max_size=8, unique=True))),
        operator=draw(st.text(min_size=1, max_size=20)),
        generation=draw(st.integers(0, 2**31)),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(templates(), st.sampled_from([1, 2]))
def test_round_trip_is_exact(t: Template, version: int) -> None:
    t = dataclasses.replace(t, format_version=version)
    data = t.to_bytes()
    back = Template.from_bytes(data)
    assert back == t and back.format_version == version
    assert back.to_bytes() == data
    keys = ["v", "task", "task_version"]
    keys += ["genome", "pre", "output"] if version == 1 else ["net"]
    assert list(back.to_dict()) == [*keys, "objectives", "parents", "operator", "generation"]
    for w1, w2 in zip(back.genome.weights, t.genome.weights, strict=True):
        assert np.array_equal(w1, w2)
    assert np.array_equal(back.input_mean, t.input_mean)
    assert back.fitness == t.fitness and back.parents == t.parents
    if version == 1:  # the genome part is exactly the genome's own canonical form
        assert Genome.from_dict(back.to_dict()["genome"]).to_bytes() == t.genome.to_bytes()
    # the other version's bytes decode to the same template, in that version
    other = dataclasses.replace(t, format_version=3 - version)
    assert Template.from_bytes(other.to_bytes()).summary() == other.summary()
    assert dataclasses.replace(Template.from_bytes(other.to_bytes()), format_version=version) == t


def test_new_templates_are_written_in_version_2() -> None:
    t = make_template()
    assert t.format_version == TEMPLATE_FORMAT_VERSION == 2
    assert t.to_dict()["v"] == 2 and t.summary()["format"] == 2


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_bytes_never_crash_the_decoder(data: st.DataObject) -> None:
    raw = bytearray(make_template(seed=data.draw(st.integers(0, 3))).to_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        t = Template.from_bytes(bytes(raw))
    except DecodeError:
        return
    assert t.to_bytes() == bytes(raw)  # anything accepted is canonical


def reencode(t: Template, edit: Any) -> bytes:
    d = copy.deepcopy(t.to_dict())
    edit(d)
    return pack(d)


def rejects(data: bytes, reason: str | None = None) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        Template.from_bytes(data)
    if reason is not None:
        assert info.value.reason == reason, info.value
    with pytest.raises(DecodeError):
        parse_template_bytes(data)
    return info.value


def _set(path: tuple[str, ...], value: Any) -> Any:
    def edit(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.__setitem__("extra", 1), "unknown-field"),
        (lambda d: d["objectives"].__setitem__("accuracy", 1.0), "unknown-field"),
        (lambda d: d["pre"].__setitem__("min", b""), "unknown-field"),
        (lambda d: d.pop("operator"), "missing-field"),
        (lambda d: d["genome"].pop("acts"), "missing-field"),
        (_set(("task",), 5), "type"),
        (_set(("task_version",), True), "type"),
        (_set(("task_version",), "1"), "type"),
        (_set(("objectives", "fitness"), 1), "type"),
        (_set(("objectives", "params"), 26.0), "type"),
        (_set(("parents",), b"x" * 32), "type"),
        (_set(("parents",), [b"x" * 31]), "type"),
        (_set(("parents",), ["x" * 32]), "type"),
        (_set(("genome", "layers"), [4, True]), "type"),
        (_set(("v",), 3), "version"),
        (_set(("v",), 0), "version"),
        (_set(("genome", "v"), 2), "version"),
        (_set(("output",), "probabilities"), "value"),
        (_set(("task",), ""), "size"),
        (_set(("task",), "t" * 513), "size"),
        (_set(("operator",), "o" * 65), "size"),
        (_set(("genome", "acts"), ["tanh", "swish"]), "value"),
        (_set(("genome", "acts"), ["tanh"]), "value"),
        (_set(("genome", "layers"), [5, 2]), "size"),
        (_set(("genome", "layers"), [300, 2]), "limit"),
        (_set(("genome", "n_inputs"), 0), "limit"),
        (_set(("genome", "params"), b"\x00" * 7), "size"),
        (_set(("pre", "mean"), b"\x00" * 8), "size"),
        (_set(("pre", "scale"), np.zeros(3, "<f4").tobytes()), "value"),
        (_set(("pre", "mean"), np.array([0, np.nan, 0], "<f4").tobytes()), "value"),
        (_set(("objectives", "fitness"), float("nan")), "value"),
        (_set(("objectives", "fitness"), float("inf")), "value"),
        (_set(("objectives", "params"), 25), "value"),
        (_set(("objectives", "bytes"), 1), "value"),
        (_set(("objectives", "latency_ns"), -1), "value"),
        (_set(("generation",), -1), "value"),
        (_set(("task_version",), -3), "value"),
        (_set(("parents",), [bytes(32)] * 2), "value"),
        (_set(("parents",), [bytes([i]) * 32 for i in range(9)]), "limit"),
    ],
)
def test_strict_decoding_rejects(edit: Any, reason: str) -> None:
    """Version 1 (nested maps) still decodes as strictly as before."""
    rejects(reencode(make_template(format_version=1), edit), reason)


def test_non_finite_weight_rejected() -> None:
    t = make_template(format_version=1)

    def edit(d: dict[str, Any]) -> None:
        flat = np.frombuffer(d["genome"]["params"], "<f4").copy()
        flat[5] = np.inf
        d["genome"]["params"] = flat.tobytes()

    rejects(reencode(t, edit), "value")


def test_trailing_bytes_reordered_fields_and_float32_rejected() -> None:
    t = make_template()
    data = t.to_bytes()
    rejects(data + b"\x00", "trailing-bytes")
    d = t.to_dict()
    reordered = {
        "task": d["task"],
        "v": d["v"],
        **{k: v for k, v in d.items() if k not in ("v", "task")},
    }
    rejects(pack(reordered), "non-canonical")
    single = msgpack.packb(d, use_bin_type=True, use_single_float=True)
    rejects(single, "non-canonical")
    rejects(b"", "malformed")
    rejects(b"\xc1", "malformed")


def test_oversize_rejected_before_parsing() -> None:
    rejects(b"\x00" * (MAX_TEMPLATE_BYTES + 1), "oversize")


def test_largest_legal_template_fits_the_size_limit() -> None:
    rng = np.random.default_rng(1)
    g = Genome.random(rng, 1024, (12,), 4)  # 12,352 params, widest input
    t = make_template(
        genome=g,
        n_params=g.n_params,
        n_bytes=g.n_bytes,
        input_mean=np.zeros(1024, np.float32),
        input_scale=np.ones(1024, np.float32),
        task="t" * 512,
        operator="o" * 64,
        parents=tuple(bytes([i]) * 32 for i in range(8)),
    )
    assert len(t.to_bytes()) <= MAX_TEMPLATE_BYTES
    assert Template.from_bytes(t.to_bytes()) == t


def test_dag_decoder_contract_from_dict() -> None:
    t = make_template()
    value = unpack(t.to_bytes(), max_size=MAX_TEMPLATE_BYTES)
    assert Template.from_dict(value) == t
    with pytest.raises(DecodeError):
        Template.from_dict("not a map")
    with pytest.raises(DecodeError):
        Template.from_dict({**value, "v": 9})


@pytest.mark.parametrize(
    "overrides",
    [
        {"output": "probs"},
        {"fitness": float("nan")},
        {"fitness": True},
        {"n_params": 1},
        {"n_bytes": 1},
        {"latency_ns": -1},
        {"generation": -1},
        {"task": ""},
        {"operator": ""},
        {"parents": (b"short",)},
        {"parents": (bytes(32), bytes(32))},
        {"parents": tuple(bytes([i]) * 32 for i in range(9))},
        {"input_mean": np.zeros(2, np.float32)},
        {"input_scale": np.array([1, 0, 1], np.float32)},
        {"input_scale": np.array([1, np.inf, 1], np.float32)},
    ],
)
def test_constructor_refuses_invalid_fields(overrides: dict[str, Any]) -> None:
    with pytest.raises(TemplateError):
        make_template(**overrides)


def test_constructor_copies_and_freezes_standardisation() -> None:
    mean = np.array([1, 2, 3], np.float32)
    t = make_template(input_mean=mean)
    mean[0] = 99  # the caller's array stays writable and the template is unaffected
    assert t.input_mean[0] == 1
    with pytest.raises(ValueError):
        t.input_mean[0] = 5


def test_from_genome_uses_the_task_and_measures_latency() -> None:
    task = get_task("xor")
    g = Genome.random(np.random.default_rng(0), task.n_inputs, (4,), task.n_outputs)
    parent = b"p" * 32
    t = from_genome(g, task, 3.5, parents=(parent, parent), operator="mutate", generation=3)
    assert t.task == task.name and t.task_version == task.version
    assert t.output == task.output
    assert np.array_equal(t.input_mean, task.input_mean)
    assert t.parents == (parent,)  # a self-cross lists its parent once
    assert 0 < t.latency_ns < 10_000_000
    assert t.n_params == g.n_params and t.fitness == 3.5
    assert Template.from_bytes(t.to_bytes()) == t


# --- files ---------------------------------------------------------------------------------
def test_save_and_load(tmp_path: Path) -> None:
    t = make_template()
    path = save_template(t, tmp_path / "best.qtpl")
    assert path.read_bytes() == t.to_bytes()
    assert load_template(path) == t
    assert [p.name for p in tmp_path.iterdir()] == ["best.qtpl"]  # no temp file left


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read"),
        (b"", "empty"),
        (b"FANN_FLO_2.1\nnum_layers=3\n", "not a valid QuDAG template"),
        (b"\x00" * (MAX_TEMPLATE_BYTES + 1), "larger than any valid template"),
    ],
)
def test_bad_files_get_one_clear_error(tmp_path: Path, content: bytes | None, needle: str) -> None:
    path = tmp_path / "t.qtpl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TemplateError) as info:
        load_template(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_truncated_and_corrupted_files(tmp_path: Path) -> None:
    data = make_template().to_bytes()
    path = tmp_path / "t.qtpl"
    for bad in (
        data[:-1],
        data[: len(data) // 2],
        data + b"junk",
        data.replace(b"iris", b"irix")[:-3],
    ):
        path.write_bytes(bad)
        with pytest.raises(TemplateError, match="not a valid QuDAG template"):
            load_template(path)
    with pytest.raises(TemplateError, match="directory"):
        load_template(tmp_path)


def test_save_to_missing_directory_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="cannot write"):
        save_template(make_template(), tmp_path / "no" / "such" / "dir" / "t.qtpl")
