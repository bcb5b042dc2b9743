"""Operators: shapes stay valid, limits hold, growth preserves function, crossover mixes shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag.evolution import operators as ops
from qudag.evolution.genome import Genome, GenomeLimits
from qudag.evolution.tasks import get_task

LIMITS = GenomeLimits(max_layers=5, max_width=24, max_params=600)
NAMES = ("add_neuron", "remove_neuron", "add_layer", "remove_layer", "change_activation")


def _apply(name: str, g: Genome, rng: np.random.Generator) -> Genome:
    if name == "change_activation":
        return ops.change_activation(g, rng)
    return getattr(ops, name)(g, rng, LIMITS)


def _valid(g: Genome, n_in: int, n_out: int) -> None:
    LIMITS.check(g.n_inputs, g.layer_sizes)
    assert g.n_inputs == n_in and g.n_outputs == n_out
    # The constructor re-checks every shape and dtype; a round trip through bytes too.
    again = Genome.from_bytes(g.to_bytes(), LIMITS)
    assert again.to_bytes() == g.to_bytes()
    assert g.forward(np.zeros((3, n_in), np.float32)).shape == (3, n_out)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    hidden=st.lists(st.integers(1, 8), min_size=0, max_size=3),
    script=st.lists(st.sampled_from(NAMES + ("mutate", "crossover")), min_size=1, max_size=25),
)
def test_any_operator_sequence_keeps_shapes_valid(
    seed: int, hidden: list[int], script: list[str]
) -> None:
    rng = np.random.default_rng(seed)
    g = Genome.random(rng, 3, hidden, 2)
    other = Genome.random(rng, 3, [int(rng.integers(1, 9))] * int(rng.integers(0, 4)), 2)
    for name in script:
        if name == "mutate":
            g = ops.perturb_weights(g, rng, ops.adapt_sigma(0.1, rng))
        elif name == "crossover":
            g = ops.crossover(g, other, rng)
            other = ops.crossover(other, g, rng)
        else:
            g = _apply(name, g, rng)
        _valid(g, 3, 2)
    _valid(other, 3, 2)


def test_operators_respect_limits_at_the_edge() -> None:
    rng = np.random.default_rng(0)
    tight = GenomeLimits(max_layers=2, max_width=4, max_params=30)
    g = Genome.random(rng, 2, (4,), 2)  # 2*4+4 + 4*2+2 = 22 params
    assert ops.add_neuron(g, rng, tight) is g  # width 5 > 4
    assert ops.add_layer(g, rng, tight) is g  # 3 layers > 2
    single = Genome.random(rng, 2, (), 2)
    assert ops.remove_neuron(single, rng) is single
    assert ops.remove_layer(single, rng) is single
    assert ops.change_activation(single, rng) is single


def test_add_neuron_and_add_layer_preserve_the_function() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    for act in ("tanh", "relu", "sin", "sigmoid"):
        g = Genome.random(rng, 3, (5, 4), 2, activation=act)
        for _ in range(5):
            g2 = ops.add_neuron(g, rng, LIMITS)
            assert g2.n_params > g.n_params
            np.testing.assert_allclose(g2.forward(x), g.forward(x), rtol=1e-6, atol=1e-6)
            g3 = ops.add_layer(g, rng, LIMITS)
            assert len(g3.layer_sizes) == len(g.layer_sizes) + 1
            np.testing.assert_allclose(g3.forward(x), g.forward(x), rtol=1e-6, atol=1e-6)


def test_remove_layer_is_exact_for_a_linear_layer() -> None:
    rng = np.random.default_rng(2)
    g = Genome.random(rng, 3, (6,), 2, activation="identity")
    x = rng.normal(size=(20, 3)).astype(np.float32)
    folded = ops.remove_layer(g, rng)
    assert folded.layer_sizes == (2,)
    np.testing.assert_allclose(folded.forward(x), g.forward(x), rtol=1e-5, atol=1e-5)


def test_crossover_of_mismatched_shapes() -> None:
    rng = np.random.default_rng(3)
    a = Genome.random(rng, 4, (6, 3), 3)
    b = Genome.random(rng, 4, (2,), 3, activation="relu")  # a migrant of another shape
    child = ops.crossover(a, b, rng, rate=1.0)
    assert child.shape_key() == a.shape_key()
    # Aligned neurons come from b: hidden layer 0 columns 0..1, over b's whole fan-in.
    assert np.array_equal(child.weights[0][:, :2], b.weights[0])
    assert np.array_equal(child.weights[0][:, 2:], a.weights[0][:, 2:])
    # Output heads aligned: rows beyond b's fan-in (2) keep a's weights.
    assert np.array_equal(child.weights[2][:2], b.weights[1])
    assert np.array_equal(child.weights[2][2:], a.weights[2][2:])
    # Layer 1 of `a` has no counterpart in `b`: unchanged.
    assert np.array_equal(child.weights[1], a.weights[1])
    # Different task widths: no crossover.
    c = Genome.random(rng, 5, (2,), 3)
    assert ops.crossover(a, c, rng) is a


def test_adam_steps_learn_xor() -> None:
    t = get_task("xor")
    x, y = t.split("train")
    rng = np.random.default_rng(4)
    g = Genome.random(rng, 2, (4,), 2)
    before = t.fitness([g], "train")[0]
    trained = ops.adam_steps(g, x, y, "classification", rng, steps=300, lr=0.05)
    assert trained.shape_key() == g.shape_key()
    assert t.fitness([trained], "train")[0] > before
    assert t.score(trained, "train") == 1.0


def test_adam_steps_regression_reduces_error() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 2)).astype(np.float32)
    y = (x[:, 0] - 2 * x[:, 1]).astype(np.float32)
    g = Genome.random(rng, 2, (), 1)
    trained = ops.adam_steps(g, x, y, "regression", rng, steps=300, lr=0.05, batch_size=16)
    err = lambda h: float(np.mean((h.forward(x)[:, 0] - y) ** 2))  # noqa: E731
    assert err(trained) < 0.05 * err(g)


def test_batched_adam_equals_single_adam_for_full_batches() -> None:
    t = get_task("xor")
    x, y = t.split("train")
    rng = np.random.default_rng(6)
    gs = [Genome.random(rng, 2, (4,), 2) for _ in range(5)]
    batch = ops.adam_steps_batch(gs, x, y, "classification", rng, steps=30, lr=0.05)
    for g, b in zip(gs, batch, strict=True):
        single = ops.adam_steps(g, x, y, "classification", rng, steps=30, lr=0.05)
        assert b.shape_key() == g.shape_key()
        np.testing.assert_allclose(b.flat_params(), single.flat_params(), rtol=1e-5, atol=1e-6)
