"""mnist1d: generated locally (no network, no pickle), fixed shapes and splits, host RNGs kept."""

from __future__ import annotations

import random
import socket
from typing import Any

import numpy as np
import pytest

from qudag.evolution import datasets
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import get_task


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("mnist1d must not touch the network")


def test_mnist1d_is_generated_without_network_and_leaves_global_rngs_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pickle

    import requests

    monkeypatch.setattr(requests, "get", _no_network)
    monkeypatch.setattr(requests.Session, "request", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(pickle, "load", _no_network)
    random.seed(7)
    np.random.seed(7)
    before = (random.random(), np.random.random())
    random.seed(7)
    np.random.seed(7)
    monkeypatch.setattr(datasets, "_MNIST1D", [])  # generate here, under the network block
    monkeypatch.setenv("QUDAG_CACHE_DIR", "off")
    x, y, x_test, y_test = datasets.mnist1d_arrays()
    assert (random.random(), np.random.random()) == before
    assert x.shape == (4000, 40) and x_test.shape == (1000, 40)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10)) and set(np.unique(y_test)) == set(range(10))
    assert datasets.mnist1d_arrays()[0] is x and not x.flags.writeable  # kept in memory
    # The published recipe (seed 42) is deterministic: a second run gives the same bits.
    again = datasets.generate_mnist1d()
    assert again[0].tobytes() == x.tobytes() and again[3].tobytes() == y_test.tobytes()
    t = get_task("mnist1d")
    assert t.x_test is not None and t.x_test.tobytes() == x_test.tobytes()
    assert t.y_test is not None and t.y_test.tobytes() == y_test.tobytes()


def test_mnist1d_task_splits() -> None:
    t = get_task("mnist1d")
    assert (t.kind, t.n_inputs, t.n_outputs, t.version) == ("classification", 40, 10, 1)
    assert t.x_train is not None and t.x_val is not None and t.x_test is not None
    assert (len(t.x_train), len(t.x_val), len(t.x_test)) == (3000, 1000, 1000)
    assert t.y_val is not None and np.bincount(t.y_val).min() >= 90  # stratified
    # Train and val are disjoint rows of the package's train set.
    train_rows = {r.tobytes() for r in t.x_train}
    assert not any(r.tobytes() in train_rows for r in t.x_val)
    x, _ = t.split("train")
    assert np.allclose(x.mean(axis=0), 0.0, atol=1e-4) and np.allclose(x.std(axis=0), 1.0, 1e-3)
    rng = np.random.default_rng(0)
    g = Genome.random(rng, 40, (16,), 10, "tanh")
    f = t.fitness([g])
    assert f.shape == (1,) and -0.01 < f[0] < 0.5  # an untrained net is near chance


def test_mnist1d_cache_is_used_only_when_its_content_is_the_recipes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("QUDAG_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(datasets, "_MNIST1D", [])
    generated = datasets.mnist1d_arrays()
    assert datasets.arrays_digest(generated) == datasets.MNIST1D_DIGEST  # the pinned recipe
    (cached,) = tmp_path.glob("mnist1d-*.npz")
    assert not list(tmp_path.glob(".mnist1d-*"))  # no temporary file left behind

    def no_generation() -> Any:
        raise AssertionError("generated although a valid cache exists")

    monkeypatch.setattr(datasets, "generate_mnist1d", no_generation)
    monkeypatch.setattr(datasets, "_MNIST1D", [])
    read = datasets.mnist1d_arrays()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(read, generated, strict=True))

    # An edited cache (one label changed) is not the task: ignored, regenerated, rewritten.
    with np.load(cached, allow_pickle=False) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    arrays["y_test"][0] = (arrays["y_test"][0] + 1) % 10
    with cached.open("wb") as f:
        np.savez(f, **arrays)
    calls = []

    def generate() -> Any:
        calls.append(1)
        return generated

    monkeypatch.setattr(datasets, "generate_mnist1d", generate)
    monkeypatch.setattr(datasets, "_MNIST1D", [])
    again = datasets.mnist1d_arrays()
    assert calls == [1] and again[3].tobytes() == generated[3].tobytes()
    monkeypatch.setattr(datasets, "generate_mnist1d", no_generation)
    monkeypatch.setattr(datasets, "_MNIST1D", [])
    assert datasets.mnist1d_arrays()[3].tobytes() == generated[3].tobytes()  # the fixed file
    cached.write_bytes(b"not an npz")  # a truncated or foreign file: generate, never crash
    monkeypatch.setattr(datasets, "generate_mnist1d", generate)
    monkeypatch.setattr(datasets, "_MNIST1D", [])
    assert datasets.mnist1d_arrays()[0].tobytes() == generated[0].tobytes() and calls == [1, 1]
