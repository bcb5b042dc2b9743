"""The shared evolution strategy: its wire format, its determinism, and that pooling works."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import DecodeError, pack, unpack
from qudag.evolution.es import (
    MAX_PAIRS,
    ESConfig,
    ResultSet,
    SharedES,
    centred_ranks,
    noise,
)
from qudag.evolution.tasks import get_task

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
result_sets = st.builds(
    lambda n, gen, params, sigma, center, seeds, rets: ResultSet(
        "mnist1d", 1, gen, params, sigma, center, tuple(seeds[:n]), tuple(rets[:n])
    ),
    st.integers(1, 8),
    st.integers(0, 2**63 - 1),
    st.integers(1, 12_800),
    st.floats(1e-6, 10.0),
    st.binary(min_size=16, max_size=16),
    st.lists(st.integers(0, 2**63 - 1), min_size=8, max_size=8),
    st.lists(st.tuples(finite, finite), min_size=8, max_size=8),
)


@given(result_sets)
def test_a_result_set_survives_its_canonical_bytes(rs: ResultSet) -> None:
    assert ResultSet.from_dict(unpack(pack(rs.to_dict()), 1 << 20)) == rs


def _valid() -> dict[str, Any]:
    return ResultSet("xor", 1, 3, 17, 0.1, b"c" * 16, (1, 2), ((0.5, 0.25), (1.0, 0.0))).to_dict()


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(extra=1),
        lambda d: d.pop("sigma"),
        lambda d: d.update(sigma=float("nan")),
        lambda d: d.update(sigma=0.0),
        lambda d: d.update(center=b"short"),
        lambda d: d.update(seeds=[1]),  # one seed, two returns
        lambda d: d.update(seeds=[1, -2]),
        lambda d: d.update(seeds=[1, True]),
        lambda d: d.update(returns=[[0.5, float("inf")], [1.0, 0.0]]),
        lambda d: d.update(returns=[[0.5, 1], [1.0, 0.0]]),  # an int where a float goes
        lambda d: d.update(n_params=0),
        lambda d: d.update(
            seeds=list(range(MAX_PAIRS + 1)), returns=[[0.0, 0.0]] * (MAX_PAIRS + 1)
        ),
    ],
)
def test_the_decoder_refuses_what_is_not_exactly_a_result_set(change: Any) -> None:
    value = _valid()
    change(value)
    with pytest.raises(DecodeError):
        ResultSet.from_dict(value)


def test_keys_out_of_order_are_refused() -> None:
    value = _valid()
    reordered = {"returns": value.pop("returns"), **value}
    with pytest.raises(DecodeError):
        ResultSet.from_dict(reordered)


@settings(max_examples=50)
@given(st.lists(finite, min_size=2, max_size=40), st.randoms())
def test_centred_ranks_ignore_order_and_span_minus_half_to_half(
    values: list[float], rnd: Any
) -> None:
    arr = np.array(values)
    perm = list(range(len(values)))
    rnd.shuffle(perm)
    ranks = centred_ranks(arr)
    assert np.allclose(centred_ranks(arr[perm]), ranks[perm])
    assert ranks.min() >= -0.5 and ranks.max() <= 0.5
    assert abs(ranks.sum()) < 1e-9  # centred
    equal = arr[:, None] == arr[None, :]
    assert np.all((ranks[:, None] == ranks[None, :])[equal])  # ties share a rank


def test_a_seed_fixes_its_perturbation() -> None:
    assert np.array_equal(noise(7, 100), noise(7, 100))
    assert not np.array_equal(noise(7, 100), noise(8, 100))
    assert noise(7, 100).dtype == np.float32


def _peers(n: int, **cfg: Any) -> list[SharedES]:
    task = get_task("mnist1d")
    config = ESConfig(hidden=(8,), sigma=0.05, step=0.01, start_seed=3, **cfg)
    return [SharedES(task, config, seed=100 + i) for i in range(n)]


def test_every_peer_starts_from_the_shared_centre() -> None:
    a, b = _peers(2)
    assert np.array_equal(a.theta, b.theta)


def test_synchronous_pooling_keeps_peers_on_one_centre_bit_for_bit() -> None:
    peers = _peers(3, delay=1)
    sent: list[list[ResultSet]] = [[] for _ in peers]
    for _ in range(4):
        out = []
        for i, p in enumerate(peers):
            _, own = p.step(sent[i])
            out.append(own)
        # everyone receives the others' sets (in different orders)
        sent = [[o for j, o in enumerate(reversed(out)) if j != len(out) - 1 - i] for i in range(3)]
    assert all(np.array_equal(peers[0].theta, p.theta) for p in peers[1:])
    row = peers[0].logbook[-1]
    assert row["sets"] == 3 and row["in_step"] == 2


def test_a_pooled_set_moves_the_centre_and_a_foreign_task_or_shape_does_not() -> None:
    alone, pooled, other = _peers(3)
    _, theirs = other.step([])
    wrong_task = replace(theirs, task="digits")
    wrong_shape = replace(theirs, n_params=theirs.n_params + 1)
    alone.step([wrong_task, wrong_shape])
    pooled.step([theirs])
    twin = _peers(2)[1]  # pooled's twin (same seed), fed nothing
    twin.step([])
    assert alone.logbook[-1]["sets"] == 1
    assert pooled.logbook[-1]["sets"] == 2
    assert not np.array_equal(pooled.theta, twin.theta)


def test_pooling_the_results_of_more_peers_learns_faster() -> None:
    """The point of the network: four peers that pool their results reach a better net in the
    same number of generations than one peer alone (mnist1d, 25 generations, lockstep)."""
    task = get_task("mnist1d")

    def run(n: int) -> float:
        config = ESConfig(hidden=(16,), sigma=0.05, step=0.01, start_seed=1)
        peers = [SharedES(task, config, seed=10 + i) for i in range(n)]
        last: list[ResultSet] = []
        for _ in range(25):
            last = [
                p.step([r for j, r in enumerate(last) if j != i])[1] for i, p in enumerate(peers)
            ]
        return max(p.best.task_fitness for p in peers)

    assert run(4) > run(1) + 0.01


def test_an_additive_centre_depends_on_which_sets_were_pooled_not_on_their_order() -> None:
    """Peers that pooled the same result sets, at different times and in other orders, hold
    the same centre: the property that lets the es search live with network delays. (A
    peer's own sets differ with its centre; here every set comes from elsewhere.)"""
    task = get_task("mnist1d")
    config = ESConfig(hidden=(8,), sigma=0.05, optimizer="additive", lr=0.01, start_seed=3)
    makers = [SharedES(task, config, seed=200 + i) for i in range(3)]
    sets = [m.step([])[1] for m in makers] + [m.step([])[1] for m in makers]
    early, late, normalized = (
        SharedES(task, config, seed=9),
        SharedES(task, config, seed=9),
        SharedES(task, replace(config, optimizer="normalized", step=0.01), seed=9),
    )
    early._update(sets[:4])
    early._update(sets[4:])
    late._update(list(reversed(sets[3:])))
    late._update(sets[:3])
    assert np.allclose(early.theta, late.theta, rtol=0, atol=1e-6)
    assert not np.allclose(early.theta, makers[0].theta)
    # The normalized step has no such property: the order of arrival moves its centre.
    again = SharedES(task, normalized.config, seed=9)
    normalized._update(sets[:4])
    normalized._update(sets[4:])
    again._update(list(reversed(sets[3:])))
    again._update(sets[:3])
    assert not np.allclose(normalized.theta, again.theta, rtol=0, atol=1e-6)


def test_max_lag_leaves_out_sets_from_generations_far_from_ours() -> None:
    task = get_task("mnist1d")
    config = ESConfig(hidden=(8,), sigma=0.05, optimizer="additive", lr=0.01, max_lag=2)
    peer = SharedES(task, config, seed=1)
    _, near = SharedES(task, config, seed=2).step([])
    far = replace(near, generation=near.generation + 3, seeds=(9,) * len(near.seeds))
    assert peer.usable([near, far]) == [near]
    assert SharedES(task, replace(config, max_lag=0), seed=1).usable([near, far]) == [far, near]


def test_a_migrant_becomes_our_centre_only_when_it_is_clearly_better_than_our_best(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer in step with the network keeps its centre (a slightly better best of another peer
    is noise around the same centre); a peer that fell behind adopts a far better migrant."""
    (es,) = _peers(1, optimizer="additive", adopt_margin=0.02)
    es.step([])
    best = es.best.task_fitness
    centre = es.theta.copy()
    fitness = iter([best * 1.01, best * 1.5])  # within the margin, then far beyond it

    def evaluate(individuals: Any) -> None:
        for ind in individuals:
            ind.fitness.values = (next(fitness), 1.0, 1.0)

    monkeypatch.setattr(es, "_evaluate", evaluate)
    rng = np.random.default_rng(5)
    near, far = (es._genome(centre + rng.normal(0, 0.1, centre.size)) for _ in range(2))
    assert es.inject([near]) == 1
    assert es.best.task_fitness == best * 1.01  # our best now ...
    assert np.array_equal(es.theta, centre)  # ... but not our centre
    assert es.inject([far]) == 1
    assert np.array_equal(es.theta, far.flat_params())
    monkeypatch.undo()  # real evaluations again
    pooled_from = es.theta.copy()
    es.step([])  # the additive centre continues from the adopted one
    assert not np.array_equal(es.theta, pooled_from)
