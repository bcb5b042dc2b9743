"""Batched, deterministic forward passes and fitness metrics for whole populations.

Why batched: a generation of tiny nets is dominated by Python overhead if each genome is run
alone, so genomes with the same `Genome.shape_key()` are stacked into (P, fan_in, width) arrays
and run with one `np.matmul` per layer over a leading population axis.

Why deterministic, and how: a peer re-checks another peer's fitness claim, and the engine's
checkpoints must resume bit for bit, so a genome's fitness must not depend on which other
genomes shared its batch. NumPy's stacked matmul calls one BLAS GEMM per population slice with
that genome's own (N, fan_in) x (fan_in, width) shapes, so a slice's result does not depend on P;
everything after the matmuls is elementwise or a per-genome reduction over that genome's own
contiguous rows. The single-genome path (`verify_claim`, `Task.score`) goes through exactly
the same functions with P = 1 and the tests assert equal fitness bits for P = 1 and large P.

Containment: `check_genome` validates the declared shape against `GenomeLimits` (no
allocation), and `forward_many` chunks the population so that no stacked activation array
exceeds `MAX_BATCH_BYTES`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from qudag.evolution.genome import ACTIVATIONS, DEFAULT_LIMITS, Genome, GenomeError, GenomeLimits

# Upper bound for one stacked activation array (float32 bytes); larger populations are chunked.
# Small enough that a chunk's temporaries stay in cache: on digits 64-128-10, population 100,
# 1 MiB chunks (5 genomes) took 73 ms and 128-256 KiB chunks (1 genome) 30 ms; tiny nets
# still stack hundreds of genomes per chunk, which is where batching pays (xor: ~6-14x).
MAX_BATCH_BYTES = 256 * 2**10
# Shared inputs up to this many elements are tiled per genome instead of one GEMM per genome.
TILE_MAX_ELEMENTS = 4096

# Fitness of a genome whose outputs are not finite (overflow): below every finite fitness.
NONFINITE_FITNESS = -1.0e3

# Classification fitness = accuracy - CE_WEIGHT * min(mean cross-entropy, CE_CLIP).
# The cross-entropy term is at most 1e-3, less than one sample of accuracy on any split under
# 1,000 samples, so it only breaks ties between nets of equal accuracy (and gives selection a
# gradient on plateaus such as XOR's 3/4).
CE_WEIGHT = 1.0e-4
CE_CLIP = 10.0

# Regression fitness = max(R^2, R2_FLOOR).
R2_FLOOR = -100.0


def check_genome(
    genome: Genome, n_inputs: int, n_outputs: int, limits: GenomeLimits = DEFAULT_LIMITS
) -> None:
    """Raise `GenomeError` unless the genome's declared shape fits the task and the limits.

    Uses only the declared sizes, so nothing proportional to a hostile size is allocated.
    """
    limits.check(genome.n_inputs, genome.layer_sizes)
    if genome.n_inputs != n_inputs:
        raise GenomeError(f"genome has {genome.n_inputs} inputs, the task has {n_inputs}")
    if genome.n_outputs != n_outputs:
        raise GenomeError(f"genome has {genome.n_outputs} outputs, the task has {n_outputs}")


def flops(genome: Genome) -> int:
    """Multiply-adds of one forward pass per sample: the deterministic latency proxy."""
    total = 0
    fan_in = genome.n_inputs
    for size in genome.layer_sizes:
        total += fan_in * size + size
        fan_in = size
    return total


def forward_stacked(
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    activations: Sequence[str],
    x: np.ndarray,
) -> np.ndarray:
    """Run P stacked nets: `weights[i]` is (P, fan_in, width), `x` is (N, in) or (P, N, in).

    Returns (P, N, n_outputs) float32.
    """
    h = x
    with np.errstate(all="ignore"):
        for w, b, act in zip(weights, biases, activations, strict=True):
            if h.ndim == 2 and h.size > TILE_MAX_ELEMENTS:
                # Shared inputs: matmul broadcasting a stride-0 operand over P leaves BLAS
                # (measured 40x slower), so run one GEMM per genome into a stacked output.
                z = np.empty((w.shape[0], h.shape[0], w.shape[2]), dtype=np.float32)
                for i in range(w.shape[0]):
                    np.matmul(h, w[i], out=z[i])
            elif h.ndim == 2:
                # Small shared inputs: a contiguous copy per genome is cheaper than P calls.
                # (The choice depends on the input's size only, never on P.)
                tiled = np.ascontiguousarray(np.broadcast_to(h, (w.shape[0], *h.shape)))
                z = np.matmul(tiled, w)
            else:
                z = np.matmul(h, w)
            h = ACTIVATIONS[act](z + b[:, None, :])
    return np.asarray(h, dtype=np.float32)


def _chunk_size(genomes: Sequence[Genome], n_rows: int) -> int:
    widest = max(max(g.layer_sizes) for g in genomes)
    widest = max(widest, genomes[0].n_inputs)
    per_genome = max(1, n_rows * widest * 4)
    return max(1, MAX_BATCH_BYTES // per_genome)


def group_by_shape(genomes: Sequence[Genome]) -> dict[tuple[object, ...], list[int]]:
    """Indices of genomes grouped by `shape_key`, in first-seen order (deterministic)."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, g in enumerate(genomes):
        groups.setdefault(g.shape_key(), []).append(i)
    return groups


def forward_chunks(
    genomes: Sequence[Genome],
    x: np.ndarray | Callable[[Sequence[int]], np.ndarray],
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield (genome indices, stacked outputs (P, N, n_outputs)) chunk by chunk.

    `x` is the shared input (N, n_inputs) float32, or a function of a chunk's genome indices
    returning per-genome inputs (P, N, n_inputs) (control tasks: each net sees its own states).
    Chunks hold genomes of one `shape_key`, at most `MAX_BATCH_BYTES` of activations each.
    """
    for indices in group_by_shape(genomes).values():
        members = [genomes[i] for i in indices]
        n_rows = x.shape[0] if isinstance(x, np.ndarray) else 1
        step = _chunk_size(members, n_rows)
        for start in range(0, len(indices), step):
            chunk_idx = indices[start : start + step]
            chunk = [genomes[i] for i in chunk_idx]
            ws = [np.stack([g.weights[li] for g in chunk]) for li in range(len(chunk[0].weights))]
            bs = [np.stack([g.biases[li] for g in chunk]) for li in range(len(chunk[0].biases))]
            xin = x if isinstance(x, np.ndarray) else x(chunk_idx)
            yield chunk_idx, forward_stacked(ws, bs, chunk[0].activations, xin)


def forward_many(
    genomes: Sequence[Genome],
    x: np.ndarray | Callable[[Sequence[int]], np.ndarray],
) -> list[np.ndarray]:
    """Outputs (N, n_outputs) of every genome, in order (see `forward_chunks`)."""
    out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(genomes)
    for chunk_idx, y in forward_chunks(genomes, x):
        for j, i in enumerate(chunk_idx):
            out[i] = y[j]
    return out


def classification_metrics(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy in nats) of one genome's (N, C) logits; float64 math."""
    n = y.shape[0]
    correct = int(np.count_nonzero(np.argmax(logits, axis=1) == y))
    z = logits.astype(np.float64)
    m = np.max(z, axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.sum(np.exp(z - m), axis=1))
    ce = float(np.sum(lse - z[np.arange(n), y]) / n)
    return correct / n, ce


def classification_fitness_stack(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`classification_fitness` of P genomes at once from stacked (P, N, C) logits.

    Every reduction runs along a genome's own contiguous rows (last axis, then each genome's
    row of N values), so each genome's result has the same bits as with P = 1.
    """
    p, n = logits.shape[0], y.shape[0]
    finite = np.isfinite(logits.reshape(p, -1)).all(axis=1)
    correct = np.count_nonzero(logits.argmax(axis=2) == y, axis=1)
    with np.errstate(all="ignore"):
        z = logits.astype(np.float64)
        m = z.max(axis=2, keepdims=True)
        lse = m[:, :, 0] + np.log(np.exp(z - m).sum(axis=2))
        ce = (lse - z[:, np.arange(n), y]).sum(axis=1) / n
    fit = correct / n - CE_WEIGHT * np.minimum(ce, CE_CLIP)
    return np.where(finite, fit, NONFINITE_FITNESS)


def classification_fitness(logits: np.ndarray, y: np.ndarray) -> float:
    """accuracy - CE_WEIGHT * min(mean cross-entropy, CE_CLIP); NONFINITE_FITNESS on overflow."""
    if not np.all(np.isfinite(logits)):
        return NONFINITE_FITNESS
    acc, ce = classification_metrics(logits, y)
    return float(acc - CE_WEIGHT * min(ce, CE_CLIP))


def r2_score(pred: np.ndarray, y: np.ndarray) -> float:
    """Coefficient of determination of (N, 1) predictions; float64 math."""
    p = pred[:, 0].astype(np.float64)
    t = y.astype(np.float64)
    sse = float(np.sum((t - p) ** 2))
    sst = float(np.sum((t - np.mean(t)) ** 2))
    if sst == 0.0:
        return 1.0 if sse == 0.0 else R2_FLOOR
    return 1.0 - sse / sst


def regression_fitness(pred: np.ndarray, y: np.ndarray) -> float:
    """max(R^2, R2_FLOOR); NONFINITE_FITNESS on overflow."""
    if not np.all(np.isfinite(pred)):
        return NONFINITE_FITNESS
    return float(max(r2_score(pred, y), R2_FLOOR))
