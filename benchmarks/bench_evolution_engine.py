"""Evolution engine core: evaluation throughput, XOR evaluations-to-solve, digits accuracy.

Run: `python benchmarks/bench_evolution_engine.py [--quick]`. Every figure is printed beside a
baseline measured in the same run (medians):

1. Genome-evaluations per second, population 100 (digits at two widths, two-spirals, xor):
   the batched `Task.fitness` against evaluating the same genomes one at a time with
   `Genome.forward` and the same metric (the obvious loop). Batch-order bits are checked.
2. XOR evaluations to solve (every sample right, mean cross-entropy <= 0.1) with the default
   (Lamarckian) settings against pure evolution (no gradient steps), N seeds each.
   Gradient steps are reported separately: they are not fitness evaluations.
3. digits test accuracy of the best evolved net (<= 50 KB, default settings, 60 generations)
   against scikit-learn's LogisticRegression on the same split.
(The neat-python and MLPClassifier comparisons live in the templates helper's benchmark.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from qudag.evolution.engine import Evolution, default_config
from qudag.evolution.evaluate import classification_fitness
from qudag.evolution.genome import Genome
from qudag.evolution.tasks import Task, get_task


def _median_time(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_throughput(repeats: int) -> None:
    rng = np.random.default_rng(0)
    print(f"1. genome-evaluations/s, population 100, validation split (median of {repeats})")
    cases = [("digits", (128,)), ("digits", (32,)), ("two-spirals", (16, 16)), ("xor", (4,))]
    for name, hidden in cases:
        task = get_task(name)
        x, y = task.split("val")
        pop = [
            Genome.random(rng, task.n_inputs, hidden, task.n_outputs, "relu") for _ in range(100)
        ]

        def batched(pop: list[Genome] = pop, task: Task = task) -> np.ndarray:
            return task.fitness(pop)

        def one_by_one(pop: list[Genome] = pop, x: np.ndarray = x, y: np.ndarray = y) -> np.ndarray:
            return np.array([classification_fitness(g.forward(x), y) for g in pop])

        assert batched().tobytes() == task.fitness(pop[::-1])[::-1].tobytes()
        tb, tl = [], []
        for _ in range(repeats):  # interleaved: the shared machine's load hits both alike
            tb.append(_median_time(batched, 1))
            tl.append(_median_time(one_by_one, 1))
        b, lo = statistics.median(tb), statistics.median(tl)
        shape = "-".join(str(v) for v in (task.n_inputs, *hidden, task.n_outputs))
        print(
            f"   {name} {shape} ({pop[0].n_params} params, {len(x)} samples): "
            f"batched {100 / b:,.0f}/s, one-by-one {100 / lo:,.0f}/s, ratio {lo / b:.2f}x"
        )


def bench_xor(seeds: int) -> None:
    task = get_task("xor")
    print(f"2. XOR evaluations to solve, {seeds} seeds (medians)")
    variants = {
        "default (Lamarckian Adam)": {},
        "pure evolution": {
            "lamarck_steps": 0,
            "population": 50,
            "weight_rate": 0.9,
            "structure_rate": 0.2,
        },
    }
    medians = {}
    for label, over in variants.items():
        evals, steps, secs, unsolved = [], [], [], 0
        for seed in range(seeds):
            t0 = time.perf_counter()
            evo = Evolution(task, default_config(task, **over), seed=seed)
            evo.run(400, stop_when_solved=True)
            secs.append(time.perf_counter() - t0)
            if evo.solved_at is None:
                unsolved += 1
                continue
            evals.append(evo.solved_at)
            steps.append(evo.gradient_steps)
        medians[label] = statistics.median(evals) if evals else float("nan")
        print(
            f"   {label}: {medians[label]:.0f} evaluations (+{statistics.median(steps):.0f} "
            f"gradient steps), {statistics.median(secs) * 1e3:.1f} ms, unsolved {unsolved}"
        )
    a, b = medians.values()
    print(f"   pure / Lamarckian evaluations: {b / a:.1f}x")


def bench_digits(seeds: int) -> None:
    from sklearn.linear_model import LogisticRegression

    task = get_task("digits")
    print(f"3. digits, default settings, 60 generations, {seeds} seed(s)")
    accs, secs = [], []
    for seed in range(seeds):
        t0 = time.perf_counter()
        evo = Evolution(task, seed=seed)
        evo.run(60)
        secs.append(time.perf_counter() - t0)
        acc = task.score(evo.best.genome, "test")
        accs.append(acc)
        print(
            f"   seed {seed}: val fitness {evo.best.task_fitness:.4f}, test accuracy {acc:.4f}, "
            f"{evo.best.genome.n_bytes} bytes, {secs[-1]:.1f} s, {evo.evaluations} evaluations"
        )
    xs, ys = task.split("train")
    xt, yt = task.split("test")
    t0 = time.perf_counter()
    lr = LogisticRegression(max_iter=2000).fit(xs, ys)
    lr_s = time.perf_counter() - t0
    lr_acc = float(lr.score(xt, yt))
    med = statistics.median(accs)
    print(
        f"   evolved median test accuracy {med:.4f} in {statistics.median(secs):.1f} s; "
        f"LogisticRegression {lr_acc:.4f} in {lr_s:.2f} s; ratio {med / lr_acc:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few seeds/repeats (smoke run)")
    args = parser.parse_args()
    bench_throughput(3 if args.quick else 15)
    bench_xor(5 if args.quick else 30)
    bench_digits(1 if args.quick else 3)


if __name__ == "__main__":
    main()
