"""Evolution against outside baselines: neat-python on XOR, scikit-learn on digits, onnxruntime.

Run: `python benchmarks/bench_evolution.py [--quick] [--only xor,digits,synth,evals,exports]
[--breakdown]`.
Every figure is printed beside a baseline measured in the same run (medians):

1. XOR vs neat-python 2.0.0 with its standard XOR example config (pop 150, fitness threshold
   3.9 on 4 - SSE of a sigmoid output; the config is written below from the example's values).
   Both sides stop on the *same* criterion: 4 - SSE >= 3.9, where our nets' output is the
   softmax probability of class 1 (our XOR nets emit two logits). Evaluations to solve and wall
   time per seed, medians over the seeds; our side is the engine's `Evolution` stepped until an
   individual of the population or hall of fame meets the criterion, in two settings: the
   engine's default for XOR (Lamarckian: a few Adam steps per child, which are *not* fitness
   evaluations and are reported separately) and gradient-free (no Adam steps). A run that does
   not solve within its cap counts with its capped figures (and is reported).
2. digits: test accuracy of the best evolved template (validation-selected, <= 50 KB; run
   through `synthesize` from the template bytes on raw test features) against scikit-learn's
   MLPClassifier(hidden_layer_sizes=(16,)) and LogisticRegression fitted on the same train split.
3. Synthesis from template bytes for representative nets of <= 1k parameters (xor,
   two-spirals, mnist1d and digits widths) and one of ~6.5k, each over 64 distinct templates
   of one task and shape cycled (different weights, fitness, parents, generation, latency; the
   task's standardisation, as in every template of a task), so no cache can hold a template's
   result,
   median and p10/p90, against a bare `np.frombuffer` of the same bytes (the floor of any numpy
   decoder) and onnxruntime `InferenceSession` creation; version-1 bytes (old ledgers, generic
   decoder) and the first net of a shape never seen; single-sample inference against
   `InferenceSession.run`. With `--breakdown`, where a synthesis from bytes spends its time:
   each step timed on its own over the same templates (medians), the walk's own work being the
   walk's time less the steps it contains.
4. Genome-evaluations per second on digits (validation split), population 100, through
   `Task.fitness` (batched), against the same genomes evaluated one at a time.
5. The WebAssembly and C exports of the nets of section 3: sizes, and per-sample time (wasm
   under wasmtime, batch of 256 and single call; C compiled with gcc -O2, in a native loop and
   through ctypes) beside our runtime and onnxruntime's run on one sample.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from qudag.crypto.canonical import unpack
from qudag.evolution.engine import Evolution, default_config
from qudag.evolution.export import export_onnx
from qudag.evolution.genome import Genome
from qudag.evolution.netformat import params_finite
from qudag.evolution.synthesis import synthesize
from qudag.evolution.tasks import Task, get_task
from qudag.evolution.template import (
    MAX_TEMPLATE_BYTES,
    Template,
    from_genome,
    parse_template_bytes,
    parse_template_map,
    walk_template_layout,
)
from qudag.simulations.neat_baseline import NEAT_XOR_EXAMPLE, load_neat_config

XOR_INPUTS = [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]
XOR_OUTPUTS = [0.0, 1.0, 1.0, 0.0]
NEAT_MAX_GENERATIONS = 300  # the example's own cap
OURS_MAX_EVALUATIONS = 30_000


def med(values: list[float]) -> float:
    return float(statistics.median(values))


def median_ns(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return med([float(t) for t in times])


# --- 1. XOR vs neat-python -------------------------------------------------------------------
def neat_xor_run(config: Any, seed: int) -> tuple[int, float, bool]:
    import neat

    evaluations = 0

    def eval_genomes(genomes: list[tuple[int, Any]], cfg: Any) -> None:
        nonlocal evaluations
        for _, genome in genomes:  # the example's eval_genomes, counting evaluations
            evaluations += 1
            net = neat.nn.FeedForwardNetwork.create(genome, cfg)
            fitness = 4.0
            for xi, xo in zip(XOR_INPUTS, XOR_OUTPUTS, strict=True):
                fitness -= (net.activate(xi)[0] - xo) ** 2
            genome.fitness = fitness

    saved = random.getstate()
    t0 = time.perf_counter()
    pop = neat.Population(config, seed=seed)
    winner = pop.run(eval_genomes, NEAT_MAX_GENERATIONS)
    seconds = time.perf_counter() - t0
    random.setstate(saved)
    return evaluations, seconds, winner.fitness >= 3.9


def xor_neat_fitness(task: Task, genome: Genome) -> float:
    """neat's XOR fitness for one of our nets: 4 - SSE of softmax P(class 1)."""
    out = genome.forward(task.standardize(task.x_val)).astype(np.float64)
    z = np.exp(out - out.max(axis=1, keepdims=True))
    p1 = z[:, 1] / z.sum(axis=1)
    return float(4.0 - np.sum((p1 - task.y_val) ** 2))


def ours_xor_run(seed: int, gradient_free: bool) -> tuple[int, float, bool, int]:
    t0 = time.perf_counter()
    task = get_task("xor")
    overrides: dict[str, Any] = {}
    if gradient_free:
        overrides = {"lamarck_steps": 0, "weight_rate": 0.9}
    evo = Evolution(task, default_config(task, **overrides), seed=seed)
    solved = False
    while evo.evaluations < OURS_MAX_EVALUATIONS:
        if max(xor_neat_fitness(task, i.genome) for i in evo.population + evo.hall_of_fame) >= 3.9:
            solved = True
            break
        evo.step()
    seconds = time.perf_counter() - t0
    return evo.evaluations, seconds, solved, evo.gradient_steps


def bench_xor(seeds: int) -> dict[str, Any]:
    import neat

    print(
        f"1. XOR vs neat-python {neat.__version__ if hasattr(neat, '__version__') else '2.x'}"
        f" (same criterion 4 - SSE >= 3.9), {seeds} seeds each, medians"
    )
    config = load_neat_config(NEAT_XOR_EXAMPLE)
    rows: dict[str, list[tuple[int, float, bool, int]]] = {"neat": [], "ours": [], "ours_gf": []}
    for seed in range(seeds):  # interleaved, so machine load hits every side alike
        e, s, ok = neat_xor_run(config, seed)
        rows["neat"].append((e, s, ok, 0))
        rows["ours"].append(ours_xor_run(seed, gradient_free=False))
        rows["ours_gf"].append(ours_xor_run(seed, gradient_free=True))
    out: dict[str, Any] = {}
    for key, label in (
        ("neat", "neat-python (pop 150)"),
        ("ours", "ours, default (Lamarckian)"),
        ("ours_gf", "ours, gradient-free"),
    ):
        r = rows[key]
        out[key] = {
            "evaluations": med([float(x[0]) for x in r]),
            "seconds": med([x[1] for x in r]),
            "solved": sum(x[2] for x in r),
            "gradient_steps": med([float(x[3]) for x in r]),
        }
        o = out[key]
        extra = f", Adam steps {o['gradient_steps']:,.0f}" if o["gradient_steps"] else ""
        ms = o["seconds"] * 1e3
        print(
            f"   {label:<28} evaluations {o['evaluations']:>8,.0f}   wall {ms:8.1f} ms"
            f"   solved {o['solved']}/{seeds}{extra}"
        )
    n = out["neat"]
    for key, label in (("ours", "default"), ("ours_gf", "gradient-free")):
        o = out[key]
        print(
            f"   ratio {label:<14} evaluations {o['evaluations'] / n['evaluations']:.4f} of neat's"
            f" (goal <= 0.2), wall time {n['seconds'] / o['seconds']:.1f}x faster (goal >= 20x)"
        )
    return out


# --- 2. digits vs scikit-learn -------------------------------------------------------------
def bench_digits(seeds: int, generations: int) -> dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    task = get_task("digits")
    assert task.x_train is not None and task.x_test is not None and task.y_test is not None
    print(
        f"2. digits test accuracy: best evolved template ({generations} generations, "
        f"{seeds} seeds) vs scikit-learn, same split"
    )
    xs_train, y_train = task.split("train")
    xs_test, y_test = task.split("test")
    baselines: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, model in (
            (
                "MLPClassifier(16)",
                MLPClassifier(hidden_layer_sizes=(16,), max_iter=2000, random_state=0),
            ),
            ("LogisticRegression", LogisticRegression(max_iter=5000)),
        ):
            t0 = time.perf_counter()
            model.fit(xs_train, y_train)
            acc = float(np.mean(model.predict(xs_test) == y_test))
            baselines[name] = acc
            print(f"   {name:<22} test accuracy {acc:.4f}   (fit {time.perf_counter() - t0:.2f} s)")
    accs = []
    sizes = []
    times = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        evo = Evolution(task, seed=seed)
        evo.run(generations)
        best = evo.best
        template = from_genome(best.genome, task, best.task_fitness, operator=best.operator)
        data = template.to_bytes()
        net = synthesize(data)
        acc = float(np.mean(np.argmax(net(task.x_test), axis=1) == task.y_test))
        assert abs(acc - task.score(best.genome)) < 1e-9, "synthesized net disagrees with task"
        times.append(time.perf_counter() - t0)
        accs.append(acc)
        sizes.append(len(data))
        print(
            f"   evolved seed {seed}: test accuracy {acc:.4f}, {template.n_params} params, "
            f"template {len(data):,} bytes, layers {list(template.genome.layer_sizes)}, "
            f"{times[-1]:.1f} s"
        )
    m = med(accs)
    print(
        f"   evolved median test accuracy {m:.4f} (goal >= 0.97); largest template "
        f"{max(sizes):,} bytes (limit 51,200 B of weights)"
    )
    for name, acc in baselines.items():
        print(f"   ratio evolved / {name}: {m / acc:.4f}")
    return {"evolved": accs, "baselines": baselines, "template_bytes": sizes, "seconds": times}


# --- 3. synthesis vs onnxruntime -----------------------------------------------------------
def _template_of(
    n_inputs: int,
    hidden: tuple[int, ...],
    n_outputs: int,
    seed: int,
    task: str = "bench",
    activation: str = "tanh",
    format_version: int = 2,
) -> Template:
    rng = np.random.default_rng(seed)
    g = Genome.random(rng, n_inputs, hidden, n_outputs, activation=activation)
    # the standardisation is the task's, the same in every template of the task
    task_rng = np.random.default_rng(list(task.encode()))
    return Template(
        task=task,
        task_version=1,
        genome=g,
        input_mean=task_rng.standard_normal(n_inputs).astype(np.float32),
        input_scale=task_rng.uniform(0.5, 2.0, n_inputs).astype(np.float32),
        output="logits",
        fitness=float(rng.uniform(0.5, 1.0)),
        n_params=g.n_params,
        n_bytes=g.n_bytes,
        latency_ns=int(rng.integers(1_000, 10_000)),
        parents=(rng.bytes(32), rng.bytes(32)),
        operator="mutate",
        generation=int(rng.integers(1, 5_000)),
        format_version=format_version,
    )


# Representative nets of at most ~1k parameters (the goal's range), each as a task evolves it
# (real task names and widths), and one ~6.5k net above that range.
SYNTH_NETS: tuple[tuple[str, str, tuple[int, tuple[int, ...], int], str], ...] = (
    ("xor", "xor", (2, (4,), 2), "tanh"),
    ("two-spirals", "two-spirals", (2, (16, 16), 2), "tanh"),
    ("mnist1d", "mnist1d", (40, (19,), 10), "relu"),
    ("digits", "digits", (64, (13,), 10), "relu"),
    ("~6.5k", "digits", (64, (64, 32), 10), "tanh"),
)
POOL = 64  # distinct templates per net, cycled: no cache can hold one template's result


def spread_ns(fn: Callable[[Any], Any], items: list[Any], repeats: int) -> tuple[float, ...]:
    """(p10, median, p90) of `fn(item)`, cycling through `items`, after a warm-up pass."""
    for item in items:
        fn(item)
    times = []
    n = len(items)
    for i in range(repeats):
        item = items[i % n]
        t0 = time.perf_counter_ns()
        fn(item)
        times.append(time.perf_counter_ns() - t0)
    q = np.percentile(np.array(times, dtype=np.float64), [10, 50, 90])
    return tuple(float(v) / 1e3 for v in q)


def _cold_caches() -> None:
    """Forget every shape and prefix seen, as a process that never saw this net's shape."""
    from qudag.evolution import netformat, synthesis, template

    netformat._SHAPES.clear()  # noqa: SLF001
    template._W_NET_CACHE.clear()  # noqa: SLF001
    template._W_PREFIX_CACHE.clear()  # noqa: SLF001
    synthesis._PLANS.clear()  # noqa: SLF001


def synthesis_breakdown(blobs: list[bytes], repeats: int) -> dict[str, float]:
    """Medians (us) of the steps of `synthesize(bytes)`, each timed on its own over `blobs`:
    the float region's copy and view, its finiteness check (each less the cost of calling the
    lambda that runs it), the whole walk (which holds both), the whole synthesis (the walk,
    then the `Network`)."""
    walked = [walk_template_layout(b) for b in blobs]
    regions = []
    for b, w in zip(blobs, walked, strict=True):
        assert w is not None, "a benchmark template the walker refuses"
        at = b.index(w.rec.tobytes())
        regions.append((b, w.net, at, at + w.net.float_bytes))
    recs = [(w.net, w.rec) for w in walked if w is not None]
    call = spread_ns(lambda r: None, regions, repeats)[1]
    view = spread_ns(lambda r: np.ndarray((), r[1].dtype, r[0][r[2] : r[3]]), regions, repeats)[1]
    view -= call
    finite = spread_ns(lambda r: params_finite(r[0], r[1]["params"]), recs, repeats)[1] - call
    walk = spread_ns(walk_template_layout, blobs, repeats)[1]
    synth = spread_ns(synthesize, blobs, repeats)[1]
    return {
        "walk_only_us": walk - view - finite,
        "view_us": view,
        "finite_us": finite,
        "walk_us": walk,
        "build_us": synth - walk,
        "synth_us": synth,
    }


def bench_synthesis(repeats: int, ort_repeats: int, breakdown: bool = False) -> dict[str, Any]:
    import onnxruntime as ort

    print(
        f"3. synthesis from bytes (medians [p10-p90] of {repeats} runs over {POOL} distinct "
        f"templates per net) and single-sample inference vs onnxruntime {ort.__version__}"
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    out: dict[str, Any] = {}
    for label, task, shape, act in SYNTH_NETS:
        pool = [_template_of(*shape, seed=s, task=task, activation=act) for s in range(POOL)]
        blobs = [t.to_bytes() for t in pool]
        v1_blobs = [
            _template_of(*shape, seed=s, task=task, activation=act, format_version=1).to_bytes()
            for s in range(POOL)
        ]
        t = pool[0]
        data = blobs[0]
        p10, synth_bytes, p90 = spread_ns(synthesize, blobs, repeats)
        # the floor: numpy's cheapest look at the same bytes, in the same run
        _, frombuffer, _ = spread_ns(lambda b: np.frombuffer(b, dtype=np.uint8), blobs, repeats)
        _, synth_v1, _ = spread_ns(synthesize, v1_blobs, repeats // 4)
        _, generic, _ = spread_ns(
            lambda b: parse_template_map(unpack(b, max_size=MAX_TEMPLATE_BYTES)),
            blobs,
            repeats // 4,
        )
        _, synth_obj, _ = spread_ns(synthesize, pool, repeats // 4)
        _, decode, _ = spread_ns(Template.from_bytes, blobs, repeats // 4)
        _, parse, _ = spread_ns(parse_template_bytes, blobs, repeats)
        cold = []
        for b in blobs[:20]:
            _cold_caches()
            t0 = time.perf_counter_ns()
            synthesize(b)
            cold.append((time.perf_counter_ns() - t0) / 1e3)
        model = export_onnx(t)
        x = np.random.default_rng(2).standard_normal(shape[0]).astype(np.float32)
        sess_new = median_ns(
            lambda model=model: ort.InferenceSession(
                model, sess_options=opts, providers=["CPUExecutionProvider"]
            ),
            ort_repeats,
        )
        net = synthesize(data)
        sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        feed = {"x": x[None, :]}
        assert np.allclose(sess.run(None, feed)[0][0], net(x), rtol=1e-5, atol=1e-5)
        infer = median_ns(lambda net=net, x=x: net(x), repeats)
        ort_run = median_ns(lambda sess=sess, feed=feed: sess.run(None, feed), repeats)
        fwd = median_ns(lambda g=t.genome, x=x: g.forward(x[None, :]), repeats // 4)
        out[label] = {
            "params": t.n_params,
            "template_bytes": len(data),
            "synth_bytes_us": synth_bytes,
            "synth_p10_us": p10,
            "synth_p90_us": p90,
            "frombuffer_us": frombuffer,
            "synth_v1_us": synth_v1,
            "generic_parse_us": generic,
            "synth_template_us": synth_obj,
            "decode_us": decode,
            "parse_us": parse,
            "cold_us": float(statistics.median(cold)),
            "ort_session_us": sess_new / 1e3,
            "infer_us": infer / 1e3,
            "ort_run_us": ort_run / 1e3,
            "genome_forward_us": fwd / 1e3,
        }
        o = out[label]
        print(
            f"   {label:>11} ({o['params']:>5} params, {o['template_bytes']:>6} B): "
            f"synthesize(bytes) {o['synth_bytes_us']:5.2f} us [{p10:.2f}-{p90:.2f}]"
            f" | np.frombuffer(same bytes) {frombuffer:.2f} us: ratio "
            f"{o['synth_bytes_us'] / frombuffer:4.1f}x"
        )
        print(
            f"   {'':>11}   parse_template_bytes (every field decoded) {parse:5.2f} us, generic"
            f" decoder {generic:5.1f} us;"
            f" version-1 bytes (generic path) {synth_v1:5.1f} us; first net of a new shape"
            f" {o['cold_us']:6.1f} us"
        )
        print(
            f"   {'':>11}   synthesize(Template object) {synth_obj:5.1f} us; Template.from_bytes"
            f" {decode:5.1f} us; ort InferenceSession {o['ort_session_us']:6.1f} us (ratio"
            f" {o['ort_session_us'] / o['synth_bytes_us']:4.0f}x)"
        )
        print(
            f"   {'':>11}   single sample: ours {o['infer_us']:5.2f} us  | ort run "
            f"{o['ort_run_us']:6.2f} us  ratio {o['ort_run_us'] / o['infer_us']:4.1f}x"
            f"  (Genome.forward {o['genome_forward_us']:.2f} us)"
        )
        if breakdown:
            b = o["breakdown"] = synthesis_breakdown(blobs, repeats)
            print(
                f"   {'':>11}   breakdown: walk {b['walk_us']:.2f} us (structure"
                f" {b['walk_only_us']:.2f} + float copy and view {b['view_us']:.2f} + finiteness"
                f" {b['finite_us']:.2f}) + Network {b['build_us']:.2f} us = {b['synth_us']:.2f} us"
            )
    return out


# --- 5. exported WebAssembly and C vs our runtime and onnxruntime ----------------------------
_C_HARNESS = r"""
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c99 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
void qudag_predict(const float *in, float *out);
int main(int argc, char **argv) {
    int n_in = atoi(argv[1]), n_out = atoi(argv[2]), reps = atoi(argv[3]), r, i;
    float *in = malloc(sizeof(float) * n_in), *out = malloc(sizeof(float) * n_out), sink = 0;
    struct timespec t0, t1;
    for (i = 0; i < n_in; i++) in[i] = (float)(i % 7) * 0.25f - 0.5f;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (r = 0; r < reps; r++) { in[r % n_in] += 1e-6f; qudag_predict(in, out); sink += out[0]; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f %g\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / reps, sink);
    return 0;
}
"""


def _export_row(
    label: str, shape: tuple[int, tuple[int, ...], int], tmp: str, repeats: int, opts: Any
) -> dict[str, Any]:
    import ctypes
    import subprocess

    import onnxruntime as ort
    import wasmtime

    from qudag.evolution.export_native import export_c, export_wasm

    t = _template_of(*shape, seed=1)
    n_in, n_out = shape[0], shape[2]
    module = export_wasm(t)
    c_src = export_c(t)
    onnx_model = export_onnx(t)
    x = np.random.default_rng(2).standard_normal((256, n_in)).astype(np.float32)
    # wasm: one call of 256 samples (per sample), and one call of 1 sample
    store = wasmtime.Store()
    inst = wasmtime.Instance(store, wasmtime.Module(store.engine, module), [])
    ex = inst.exports(store)
    mem, predict = ex["memory"], ex["predict"]
    ip, op = ex["input_ptr"].value(store), ex["output_ptr"].value(store)
    mem.write(store, x.tobytes(), ip)
    wasm_batch = median_ns(lambda: predict(store, ip, op, 256), max(20, repeats // 50))
    wasm_one = median_ns(lambda: predict(store, ip, op, 1), repeats)
    got = np.frombuffer(bytes(mem.read(store, op, op + 4 * 256 * n_out)), "<f4")
    net = synthesize(t.to_bytes())
    assert np.allclose(got.reshape(256, n_out), net(x), rtol=1e-5, atol=1e-5)
    # C: a generated main timing 200k calls in-process, and one call through ctypes
    c_file = os.path.join(tmp, f"net{n_in}_{len(shape[1])}.c")
    with open(c_file, "w") as fh:
        fh.write(c_src)
    main_c = os.path.join(tmp, "main.c")
    with open(main_c, "w") as fh:
        fh.write(_C_HARNESS)
    exe = c_file[:-2]
    flags = ["-O2", "-std=c99", "-Wall", "-Werror"]
    subprocess.run(["gcc", *flags, "-o", exe, main_c, c_file], check=True)
    so = exe + ".so"
    subprocess.run(["gcc", *flags, "-shared", "-fPIC", "-o", so, c_file], check=True)
    c_runs = [
        float(subprocess.run([exe, str(n_in), str(n_out), "200000"], check=True,
                             capture_output=True, text=True).stdout.split()[0])
        for _ in range(5)
    ]  # fmt: skip
    lib = ctypes.CDLL(so)
    fp = ctypes.POINTER(ctypes.c_float)
    xin = np.ascontiguousarray(x[0])
    yout = np.zeros(n_out, np.float32)
    pin, pout = xin.ctypes.data_as(fp), yout.ctypes.data_as(fp)
    fn = lib.qudag_predict
    c_ctypes = median_ns(lambda: fn(pin, pout), repeats)
    ours = median_ns(lambda: net(xin), repeats)
    sess = ort.InferenceSession(onnx_model, sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {"x": x[:1]}
    ort_one = median_ns(lambda: sess.run(None, feed), repeats)
    o = {
        "params": t.n_params,
        "wasm_bytes": len(module),
        "c_bytes": len(c_src),
        "onnx_bytes": len(onnx_model),
        "template_bytes": len(t.to_bytes()),
        "wasm_per_sample_us": wasm_batch / 256 / 1e3,
        "wasm_call_us": wasm_one / 1e3,
        "c_native_us": statistics.median(c_runs) / 1e3,
        "c_ctypes_us": c_ctypes / 1e3,
        "ours_us": ours / 1e3,
        "ort_run_us": ort_one / 1e3,
    }
    print(
        f"   {label:>6} ({o['params']:>5} params): sizes wasm {o['wasm_bytes']:>6} B, "
        f"C source {o['c_bytes']:>7} B, onnx {o['onnx_bytes']:>6} B, "
        f"template {o['template_bytes']:>6} B"
    )
    print(
        f"   {'':>6}   per sample: wasm {o['wasm_per_sample_us']:6.3f} us (256 per call),"
        f" {o['wasm_call_us']:5.2f} us (1 per call) | C {o['c_native_us']:6.3f} us "
        f"(native loop), {o['c_ctypes_us']:5.2f} us (ctypes call) | ours "
        f"{o['ours_us']:5.2f} us | ort run {o['ort_run_us']:5.2f} us"
    )
    print(
        f"   {'':>6}   ours / export per sample (>1: the export is faster): wasm batch "
        f"{o['ours_us'] / o['wasm_per_sample_us']:5.2f}x, C native "
        f"{o['ours_us'] / o['c_native_us']:5.2f}x; "
        f"ort run / ours {o['ort_run_us'] / o['ours_us']:4.1f}x"
    )
    return o


def bench_exports(repeats: int) -> dict[str, Any]:
    """Sizes and per-sample times of the wasm and C exports (gcc -O2), same nets as section 3."""
    from importlib.metadata import version

    import onnxruntime as ort

    print(
        f"5. exports: WebAssembly under wasmtime {version('wasmtime')} (Python bindings), C built "
        "with gcc -O2 -std=c99, per-sample medians; vs our runtime and onnxruntime (1 sample)"
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, shape in (
            ("~20", (2, (4,), 2)),
            ("~1k", (64, (14,), 10)),
            ("~6.5k", (64, (64, 32), 10)),
        ):
            out[label] = _export_row(label, shape, tmp, repeats, opts)
    return out


# --- 4. genome-evaluations per second ------------------------------------------------------
def bench_evals(repeats: int) -> dict[str, Any]:
    task = get_task("digits")
    x, y = task.split("val")
    print(f"4. digits genome-evaluations/s, population 100, validation split ({len(y)} samples)")
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    populations = {
        "64-128-10 relu (equal shapes)": [
            Genome.random(rng, 64, (128,), 10, "relu") for _ in range(100)
        ],
        "mixed widths 8..128": [
            Genome.random(rng, 64, (int(w),), 10, "relu")
            for w in rng.choice([8, 16, 32, 64, 128], size=100)
        ],
    }
    for label, pop in populations.items():
        batched = median_ns(lambda pop=pop: task.fitness(pop), repeats, warmup=1)
        single = median_ns(lambda pop=pop: [task.fitness([g]) for g in pop], repeats, warmup=1)
        a = np.concatenate([task.fitness([g]) for g in pop])
        assert a.tobytes() == task.fitness(pop).tobytes(), "batching changed fitness bits"
        out[label] = {"batched_per_s": 100 / (batched / 1e9), "single_per_s": 100 / (single / 1e9)}
        o = out[label]
        print(
            f"   {label:<30} batched {o['batched_per_s']:>9,.0f}/s   one at a time "
            f"{o['single_per_s']:>9,.0f}/s   ratio {o['batched_per_s'] / o['single_per_s']:.2f}x"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few seeds and repeats (smoke run)")
    parser.add_argument(
        "--only",
        default="xor,digits,synth,evals,exports",
        help="comma-separated subset to run",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="with synth: where a synthesis from bytes spends its time, step by step",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads (default 1: on a shared, oversubscribed box OpenBLAS's spinning "
        "worker threads made single matmuls up to ~80x slower at random; 0 = library default)",
    )
    args = parser.parse_args()
    if args.blas_threads > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")
    only = set(args.only.split(","))
    unknown = only - {"xor", "digits", "synth", "evals", "exports"}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    q = args.quick
    print(
        f"bench_evolution ({'quick' if q else 'full'}), Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, BLAS threads {args.blas_threads or 'default'}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if "xor" in only:
        bench_xor(seeds=5 if q else 30)
    if "digits" in only:
        bench_digits(seeds=1 if q else 3, generations=10 if q else 60)
    if "synth" in only:
        bench_synthesis(
            repeats=500 if q else 5000, ort_repeats=50 if q else 300, breakdown=args.breakdown
        )
    if "evals" in only:
        bench_evals(repeats=3 if q else 15)
    if "exports" in only:
        bench_exports(repeats=300 if q else 3000)


if __name__ == "__main__":
    main()
