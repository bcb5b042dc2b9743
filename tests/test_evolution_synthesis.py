"""Synthesis: a synthesized net equals the genome on standardised inputs, from any source."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_evolution_template import make_template, templates

from qudag.crypto.canonical import DecodeError
from qudag.evolution.genome import ACTIVATIONS, Genome
from qudag.evolution.synthesis import NetworkClosedError, measure_latency_ns, synthesize
from qudag.evolution.template import Template, parse_template_bytes

# The bias as the last row of one matrix product (not a separate add) reorders float32 rounding:
# allow a few ulps of the pre-activation magnitudes (inputs here are up to ~10 standard
# deviations out).
RTOL, ATOL = 1e-4, 1e-4


def reference(t: Template, x: np.ndarray) -> np.ndarray:
    x_std = (np.asarray(x, np.float32) - t.input_mean) / t.input_scale
    return t.genome.forward(x_std)


def raw_inputs(t: Template, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, t.genome.n_inputs)) * 3
    return (t.input_mean + z * t.input_scale).astype(np.float32)


@settings(max_examples=80, deadline=None)
@given(templates(max_exp=0))  # sin of huge pre-activations amplifies any rounding difference
def test_network_equals_genome_forward_on_standardised_inputs(t: Template) -> None:
    x = raw_inputs(t, 16)
    ref = reference(t, x)
    scale = max(1.0, float(np.max(np.abs(ref))))
    for source in (t, t.to_bytes(), parse_template_bytes(t.to_bytes())):
        net = synthesize(source)
        batch = net(x)
        assert batch.shape == ref.shape and batch.dtype == np.float32
        np.testing.assert_allclose(batch, ref, rtol=RTOL, atol=ATOL * scale)
        singles = np.stack([net(row) for row in x])
        np.testing.assert_allclose(singles, batch, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize(
    ("n_in", "hidden", "n_out"), [(2, (), 1), (4, (8,), 3), (64, (32, 16), 10)]
)
def test_every_activation_and_shape(
    act: str, n_in: int, hidden: tuple[int, ...], n_out: int
) -> None:
    t = make_template(seed=3, n_inputs=n_in, hidden=hidden, n_outputs=n_out, act=act)
    x = raw_inputs(t, 32, seed=1)
    net = synthesize(t.to_bytes())
    np.testing.assert_allclose(net(x), reference(t, x), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(net(x[5]), reference(t, x[5:6])[0], rtol=RTOL, atol=ATOL)


def test_sigmoid_layers_are_bit_identical_to_the_genome_without_standardisation() -> None:
    t = make_template(
        seed=4,
        act="sigmoid",
        input_mean=np.zeros(3, np.float32),
        input_scale=np.ones(3, np.float32),
    )
    x = raw_inputs(t, 20)
    assert np.array_equal(synthesize(t)(x), t.genome.forward(x))


def test_single_sample_output_is_fresh_and_inputs_are_not_modified() -> None:
    t = make_template()
    net = synthesize(t)
    x = raw_inputs(t, 2)
    x0 = x[0].copy()
    y0 = net(x[0])
    y0_copy = y0.copy()
    net(x[1])  # a second call must not overwrite the first result
    assert np.array_equal(y0, y0_copy)
    assert np.array_equal(x[0], x0)
    assert np.allclose(net(list(map(float, x[0]))), y0)  # plain lists work too


def test_nets_of_one_shape_alternate_on_the_shared_buffers() -> None:
    """Nets of one shape share one thread's single-sample buffers: calls that alternate between
    them give each net's own outputs, and an earlier output is not overwritten."""
    for act in ("relu", "sigmoid"):
        ts = [make_template(seed=s, n_inputs=5, hidden=(8, 6), act=act) for s in range(3)]
        nets = [synthesize(t.to_bytes()) for t in ts]
        x = raw_inputs(ts[0], 8)
        alone = [np.stack([synthesize(t)(row) for row in x]) for t in ts]  # one net at a time
        outputs: list[list[np.ndarray]] = [[], [], []]
        for i, row in enumerate(x):
            for k in (i % 3, (i + 1) % 3, (i + 2) % 3):  # a different order for every row
                outputs[k].append(nets[k](row))
        for got, want, t in zip(outputs, alone, ts, strict=True):
            np.testing.assert_array_equal(np.stack(got), want)
            np.testing.assert_allclose(want, reference(t, x), rtol=RTOL, atol=ATOL)


def test_nets_called_from_several_threads_give_their_own_outputs() -> None:
    """Four threads run nets of one shape (each its own, and one shared by all) while the
    interpreter switches threads every microsecond, so that calls interleave between layers:
    every output equals the one the same net gives alone."""
    ts = [make_template(seed=s, n_inputs=6, hidden=(16, 16), act="tanh") for s in range(5)]
    nets = [synthesize(t.to_bytes()) for t in ts]
    x = raw_inputs(ts[0], 64)
    want = [np.stack([synthesize(t)(row) for row in x]) for t in ts]
    failures: list[str] = []

    def work(k: int) -> None:
        for _ in range(20):
            for i, row in enumerate(x):
                for j in (k, 4):  # its own net, then the shared one
                    if not np.array_equal(nets[j](row), want[j][i]):
                        failures.append(f"thread {k} net {j} row {i}")
                        return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not any(th.is_alive() for th in threads)
    assert not failures, failures[:5]
    assert nets[4].inference_count <= 4 * 20 * 64  # counted without atomicity: at most all


def test_telemetry_and_close() -> None:
    t = make_template()
    net = synthesize(t.to_bytes())
    assert net.synthesis_ns > 0
    assert net.bytes_held >= 4 * t.n_params
    net(raw_inputs(t, 1)[0])
    net(raw_inputs(t, 5))
    tel = net.telemetry()
    assert tel["inference_count"] == 2 and tel["inference_ns"] > 0
    assert tel["mean_inference_ns"] == tel["inference_ns"] / 2
    net.close()
    net.close()  # idempotent
    assert net.closed and net.bytes_held == 0
    with pytest.raises(NetworkClosedError):
        net(raw_inputs(t, 1)[0])
    with synthesize(t) as net2:
        net2(raw_inputs(t, 1)[0])
    assert net2.closed


def test_wrong_shapes_are_value_errors() -> None:
    net = synthesize(make_template(n_inputs=3))
    for bad in (np.zeros(4), np.zeros((2, 2)), np.zeros((1, 2, 3)), np.float32(1.0)):
        with pytest.raises(ValueError):
            net(bad)
    assert net.inference_count == 0


def test_bad_sources() -> None:
    with pytest.raises(DecodeError):
        synthesize(b"not a template")
    with pytest.raises(TypeError):
        synthesize("a string")  # type: ignore[arg-type]


def test_predict_and_metadata() -> None:
    t = make_template(output="logits")
    net = synthesize(t)
    x = raw_inputs(t, 10)
    assert np.array_equal(net.predict(x), np.argmax(net(x), axis=1))
    assert (net.task, net.task_version, net.n_inputs, net.n_outputs, net.n_params) == (
        "iris",
        1,
        3,
        2,
        t.n_params,
    )
    values = synthesize(make_template(output="values"))
    assert np.array_equal(values.predict(x), values(x))


def test_bytes_source_shares_the_weight_blob_without_copying_it() -> None:
    t = make_template(hidden=(8, 8))
    net = synthesize(t.to_bytes())
    # every layer is a zero-copy, read-only view of one copy of the template's float values
    layers = net._run[0]  # noqa: SLF001 - white-box check of the design claim
    assert len(layers) == 3
    for w in layers:
        assert not w.flags.owndata and not w.flags.writeable and w.flags.aligned
    assert len({id(w.base) for w in layers}) == 1


def test_measure_latency_is_positive() -> None:
    assert 0 < measure_latency_ns(make_template(), repeats=5) < 10_000_000


@given(st.integers(1, 6))
@settings(max_examples=10, deadline=None)
def test_batch_of_one_matches_single(n: int) -> None:
    t = make_template(n_inputs=n)
    net = synthesize(t)
    x = raw_inputs(t, 1)
    assert np.allclose(net(x)[0], net(x[0]), rtol=1e-6, atol=1e-6)


def test_genome_from_flat_shape_helper_is_consistent() -> None:
    g = Genome.random(np.random.default_rng(0), 5, (3,), 2)
    assert Genome.from_flat(5, (3, 2), g.activations, g.flat_params()).to_bytes() == g.to_bytes()
