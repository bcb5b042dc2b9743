"""WebAssembly and C exports give `synthesize`'s outputs (1e-5) under wasmtime and gcc."""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import wasmtime
from test_evolution_template import make_template

from qudag.evolution.export_native import (
    WASM_BATCH_CAPACITY,
    export_c,
    export_wasm,
)
from qudag.evolution.genome import Genome
from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import Template, from_genome

ACTS = ["tanh", "relu", "sigmoid", "sin", "identity"]
SHAPES = [(2, (), 1), (2, (4,), 1), (13, (8, 6), 3), (64, (32,), 10), (30, (16, 16, 8), 2)]


class WasmNet:
    """The exported module under wasmtime, called as docs/export-formats.md says a page would."""

    def __init__(self, module_bytes: bytes) -> None:
        self.store = wasmtime.Store()
        module = wasmtime.Module(self.store.engine, module_bytes)
        self.instance = wasmtime.Instance(self.store, module, [])
        ex = self.instance.exports(self.store)
        self.memory = ex["memory"]
        self.predict = ex["predict"]
        self.n_inputs = ex["n_inputs"].value(self.store)
        self.n_outputs = ex["n_outputs"].value(self.store)
        self.in_ptr = ex["input_ptr"].value(self.store)
        self.out_ptr = ex["output_ptr"].value(self.store)
        self.capacity = ex["batch_capacity"].value(self.store)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), self.capacity):
            chunk = np.ascontiguousarray(x[start : start + self.capacity], dtype="<f4")
            self.memory.write(self.store, chunk.tobytes(), self.in_ptr)
            self.predict(self.store, self.in_ptr, self.out_ptr, len(chunk))
            raw = self.memory.read(self.store, self.out_ptr, self.out_ptr + 4 * chunk.size)
            raw = raw[: 4 * len(chunk) * self.n_outputs]
            out.append(np.frombuffer(bytes(raw), dtype="<f4").reshape(len(chunk), -1))
        return np.concatenate(out)


def build_c(source: str, tmp_path: Path, name: str = "net") -> ctypes.CDLL:
    """Compile as the issue asks (-O2 -std=c99 -Wall -Werror), load through ctypes."""
    c_file = tmp_path / f"{name}.c"
    c_file.write_text(source)
    lib = tmp_path / f"lib{name}.so"
    subprocess.run(
        ["gcc", "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared"]
        + ["-fPIC", "-o", str(lib), str(c_file)],
        check=True,
        capture_output=True,
        text=True,
    )
    return ctypes.CDLL(str(lib))


def run_c(lib: ctypes.CDLL, x: np.ndarray, n_outputs: int) -> np.ndarray:
    fn = lib.qudag_predict
    fn.restype = None
    fn.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
    out = np.zeros((len(x), n_outputs), dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    for i in range(len(x)):
        fn(x[i].ctypes.data_as(fp), out[i].ctypes.data_as(fp))
    return out


def raw_inputs(t: Template, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (t.input_mean + rng.standard_normal((n, t.genome.n_inputs)) * 2 * t.input_scale).astype(
        np.float32
    )


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize(("n_in", "hidden", "n_out"), SHAPES)
def test_wasm_equals_our_network(act: str, n_in: int, hidden: tuple[int, ...], n_out: int) -> None:
    t = make_template(
        seed=n_in + len(hidden), n_inputs=n_in, hidden=hidden, n_outputs=n_out, act=act
    )
    x = raw_inputs(t, 40)
    net = WasmNet(export_wasm(t))
    assert (net.n_inputs, net.n_outputs) == (n_in, n_out)
    np.testing.assert_allclose(net(x), synthesize(t)(x), rtol=1e-5, atol=1e-5)


@needs_gcc
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize(("n_in", "hidden", "n_out"), SHAPES[1:4])
def test_c_equals_our_network(
    act: str, n_in: int, hidden: tuple[int, ...], n_out: int, tmp_path: Path
) -> None:
    t = make_template(
        seed=n_in + len(hidden), n_inputs=n_in, hidden=hidden, n_outputs=n_out, act=act
    )
    x = raw_inputs(t, 40)
    lib = build_c(export_c(t), tmp_path)
    np.testing.assert_allclose(run_c(lib, x, n_out), synthesize(t)(x), rtol=1e-5, atol=1e-5)


def _probe(act: str) -> Template:
    """A 1 -> 1 net of weight 1, bias 0, no standardisation: outputs act(x) itself."""
    g = Genome(1, (1,), (act,), (np.ones((1, 1), np.float32),), (np.zeros(1, np.float32),))
    return make_template(
        genome=g,
        input_mean=np.zeros(1, np.float32),
        input_scale=np.ones(1, np.float32),
        n_params=2,
        n_bytes=8,
        parents=(),
    )


PROBE_X = np.concatenate(
    [
        np.linspace(-30, 30, 4001),
        np.geomspace(1e-30, 1e3, 600),
        -np.geomspace(1e-30, 1e3, 600),
        [0.0, -0.0, 1e4, -1e4, 1e5, 123456.7],
    ]
).astype(np.float32)


def _reference(act: str, x: float) -> float:
    if act == "tanh":
        return math.tanh(x)
    if act == "sigmoid":
        return 0.5 * math.tanh(0.5 * x) + 0.5
    return math.sin(x)


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "sin"])
def test_activation_approximations_are_accurate_to_1e_6_relative(act: str, tmp_path: Path) -> None:
    t = _probe(act)
    want = np.array([_reference(act, float(v)) for v in PROBE_X])
    tol = 1e-6 * np.abs(want) + 1e-30
    wasm = WasmNet(export_wasm(t))(PROBE_X[:, None])[:, 0].astype(np.float64)
    bad = np.abs(wasm - want) > tol
    assert not bad.any(), (PROBE_X[bad][:5], wasm[bad][:5], want[bad][:5])
    if shutil.which("gcc"):
        c = run_c(build_c(export_c(t), tmp_path), PROBE_X[:, None], 1)[:, 0].astype(np.float64)
        bad = np.abs(c - want) > tol
        assert not bad.any(), (PROBE_X[bad][:5], c[bad][:5], want[bad][:5])


def test_nan_and_inf_inputs_do_not_trap() -> None:
    for act in ("tanh", "sin"):
        out = WasmNet(export_wasm(_probe(act)))(
            np.array([[np.nan], [np.inf], [-np.inf]], dtype=np.float32)
        )[:, 0]
        assert np.isnan(out[0])
        if act == "tanh":
            assert out[1] == 1.0 and out[2] == -1.0
        else:
            assert np.isnan(out[1]) and np.isnan(out[2])


def test_wasm_module_is_self_contained_and_says_its_layout() -> None:
    t = make_template(n_inputs=5, hidden=(7,), n_outputs=3)
    data = export_wasm(t)
    store = wasmtime.Store()
    module = wasmtime.Module(store.engine, data)
    assert module.imports == []
    names = sorted(e.name for e in module.exports)
    assert names == sorted(
        ["memory", "predict", "n_inputs", "n_outputs", "input_ptr", "output_ptr", "batch_capacity"]
    )
    net = WasmNet(data)
    assert net.capacity == WASM_BATCH_CAPACITY
    assert net.in_ptr % 16 == 0 and net.out_ptr >= net.in_ptr + 4 * 5 * WASM_BATCH_CAPACITY
    # a full batch fits in the memory the module declares
    x = raw_inputs(t, WASM_BATCH_CAPACITY)
    np.testing.assert_allclose(net(x), synthesize(t)(x), rtol=1e-5, atol=1e-5)
    # n <= 0 computes nothing; a pointer outside memory traps instead of reading garbage
    net.predict(net.store, net.in_ptr, net.out_ptr, 0)
    with pytest.raises(wasmtime.Trap):
        net.predict(net.store, 1 << 30, net.out_ptr, 1)


def _task_template(task_name: str) -> tuple[Template, np.ndarray]:
    from qudag.evolution.tasks import get_task

    task = get_task(task_name)
    rng = np.random.default_rng(3)
    g = Genome.random(rng, task.n_inputs, (12,), task.n_outputs, activation="tanh")
    acts = ("sin",) if task_name == "xor" else g.activations[:-1]
    g = Genome(g.n_inputs, g.layer_sizes, (*acts, "sigmoid"), g.weights, g.biases)
    t = from_genome(g, task, fitness=0.5, latency_repeats=1)
    if task.x_test is not None:
        return t, task.x_test
    # control tasks have no data split: observations of a seeded random-action rollout
    import gymnasium

    env = gymnasium.make(task_name.removeprefix("gym:"))
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    seen = [obs]
    for _ in range(199):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        seen.append(obs if not (term or trunc) else env.reset()[0])
    env.close()
    return t, np.asarray(seen, dtype=np.float32)


@needs_gcc
@pytest.mark.parametrize("task_name", ["xor", "iris", "digits", "gym:Pendulum-v1"])
def test_exports_match_synthesize_on_task_test_splits(task_name: str, tmp_path: Path) -> None:
    t, x_raw = _task_template(task_name)
    x = np.asarray(x_raw, dtype=np.float32)
    want = synthesize(t.to_bytes())(x)
    np.testing.assert_allclose(WasmNet(export_wasm(t))(x), want, rtol=1e-5, atol=1e-5)
    lib = build_c(export_c(t), tmp_path)
    np.testing.assert_allclose(run_c(lib, x, t.genome.n_outputs), want, rtol=1e-5, atol=1e-5)


@needs_gcc
def test_cli_exports_by_extension_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qudag.evolution.template import save_template
    from qudag.node.cli import main

    t = make_template(seed=5, n_inputs=3, hidden=(6,), n_outputs=2, act="sin")
    tpl = str(save_template(t, tmp_path / "best.qtpl"))
    x = raw_inputs(t, 10)
    want = synthesize(t)(x)
    wasm_path, c_path = tmp_path / "m.wasm", tmp_path / "m.c"
    assert main(["template", "export", tpl, "-o", str(wasm_path)]) == 0
    assert "wasm" in capsys.readouterr().out
    np.testing.assert_allclose(WasmNet(wasm_path.read_bytes())(x), want, rtol=1e-5, atol=1e-5)
    assert main(["template", "export", tpl, "-o", str(c_path)]) == 0
    assert ", c)" in capsys.readouterr().out
    lib = build_c(c_path.read_text(), tmp_path, "cli")
    np.testing.assert_allclose(run_c(lib, x, 2), want, rtol=1e-5, atol=1e-5)
    before = wasm_path.read_bytes()
    assert main(["template", "export", tpl, "--format", "wasm", "-o", str(c_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["template", "export", tpl, "--format", "c", "-o", str(wasm_path), "--force"]) == 0
    assert wasm_path.read_bytes() != before and wasm_path.read_text().startswith("/*")
