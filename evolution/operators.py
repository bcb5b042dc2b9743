"""Variation operators on `Genome`s: pure functions of (genome(s), numpy Generator, limits).

Every operator returns a new, shape-valid `Genome` (the `Genome` constructor checks shapes) or
the *same object* it was given when it does not apply (no hidden layer to change, or the
result would break `GenomeLimits`); the engine uses `is` to tell. None of them allocates
anything sized from an unchecked shape: growth is checked against the limits first.

Function-preserving growth (the seed's "dynamic morphing"):
- `add_neuron`: the new hidden neuron gets random incoming weights and *zero outgoing*
  weights, so the net computes the same function (up to float rounding of a +0 term).
- `add_layer`: the new layer is square, identity weights, zero bias. Its activation is `relu`
  when it follows a relu layer (relu(relu(z)) = relu(z): exact) and `identity` otherwise
  (exact for any input). `change_activation` may later make it non-linear.
- `remove_layer` folds a hidden layer into the next one (W_i @ W_{i+1}); exact when that layer
  is linear (identity), an approximation otherwise.

`adam_steps` is the optional Lamarckian operator: a few Adam steps of numpy backprop on the
task's training split (softmax cross-entropy for classification, MSE for regression); the
learned weights are written back into the genome.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qudag.evolution.genome import DEFAULT_LIMITS, Genome, GenomeError, GenomeLimits

# Activations the search may give hidden layers; the output head keeps the one it has.
HIDDEN_ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "sigmoid", "sin", "identity")

SIGMA_MIN = 1e-4
SIGMA_MAX = 1.0


def adapt_sigma(sigma: float, rng: np.random.Generator, tau: float = 0.5) -> float:
    """Self-adaptive (log-normal) step size: sigma * exp(tau * N(0, 1)), clipped."""
    new = sigma * float(np.exp(tau * rng.standard_normal()))
    return float(min(max(new, SIGMA_MIN), SIGMA_MAX))


def perturb_weights(genome: Genome, rng: np.random.Generator, sigma: float) -> Genome:
    """Gaussian perturbation of every weight and bias with standard deviation `sigma`."""
    flat = genome.flat_params()
    noise = (rng.standard_normal(flat.size) * sigma).astype(np.float32)
    return Genome.from_flat(genome.n_inputs, genome.layer_sizes, genome.activations, flat + noise)


def add_neuron(
    genome: Genome, rng: np.random.Generator, limits: GenomeLimits = DEFAULT_LIMITS
) -> Genome:
    """Append one neuron to a random hidden layer; its outgoing weights are zero."""
    n_hidden = len(genome.layer_sizes) - 1
    if n_hidden == 0:
        return genome
    i = int(rng.integers(n_hidden))
    sizes = list(genome.layer_sizes)
    sizes[i] += 1
    if not limits.fits(genome.n_inputs, tuple(sizes)):
        return genome
    weights = list(genome.weights)
    biases = list(genome.biases)
    fan_in = weights[i].shape[0]
    col = (rng.standard_normal((fan_in, 1)) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    weights[i] = np.concatenate([weights[i], col], axis=1)
    biases[i] = np.concatenate([biases[i], np.zeros(1, dtype=np.float32)])
    row = np.zeros((1, weights[i + 1].shape[1]), dtype=np.float32)
    weights[i + 1] = np.concatenate([weights[i + 1], row], axis=0)
    return Genome(genome.n_inputs, tuple(sizes), genome.activations, tuple(weights), tuple(biases))


def remove_neuron(
    genome: Genome, rng: np.random.Generator, limits: GenomeLimits = DEFAULT_LIMITS
) -> Genome:
    """Drop the neuron with the smallest outgoing weights from a random hidden layer (width > 1)."""
    candidates = [i for i, s in enumerate(genome.layer_sizes[:-1]) if s > 1]
    if not candidates:
        return genome
    i = candidates[int(rng.integers(len(candidates)))]
    out_norm = np.abs(genome.weights[i + 1]).sum(axis=1)
    k = int(np.argmin(out_norm))
    keep = np.arange(genome.layer_sizes[i]) != k
    weights = list(genome.weights)
    biases = list(genome.biases)
    weights[i] = np.ascontiguousarray(weights[i][:, keep])
    biases[i] = np.ascontiguousarray(biases[i][keep])
    weights[i + 1] = np.ascontiguousarray(weights[i + 1][keep, :])
    sizes = list(genome.layer_sizes)
    sizes[i] -= 1
    return Genome(genome.n_inputs, tuple(sizes), genome.activations, tuple(weights), tuple(biases))


def add_layer(
    genome: Genome, rng: np.random.Generator, limits: GenomeLimits = DEFAULT_LIMITS
) -> Genome:
    """Insert an identity-initialised square layer before a random layer (see module doc)."""
    options = []
    for pos in range(len(genome.layer_sizes)):
        width = genome.n_inputs if pos == 0 else genome.layer_sizes[pos - 1]
        sizes = (*genome.layer_sizes[:pos], width, *genome.layer_sizes[pos:])
        if limits.fits(genome.n_inputs, sizes):
            options.append((pos, width, sizes))
    if not options:
        return genome
    pos, width, sizes = options[int(rng.integers(len(options)))]
    act = "relu" if pos > 0 and genome.activations[pos - 1] == "relu" else "identity"
    weights = (*genome.weights[:pos], np.eye(width, dtype=np.float32), *genome.weights[pos:])
    biases = (*genome.biases[:pos], np.zeros(width, dtype=np.float32), *genome.biases[pos:])
    acts = (*genome.activations[:pos], act, *genome.activations[pos:])
    return Genome(genome.n_inputs, sizes, acts, weights, biases)


def remove_layer(
    genome: Genome, rng: np.random.Generator, limits: GenomeLimits = DEFAULT_LIMITS
) -> Genome:
    """Fold a random hidden layer into the next: W = W_i @ W_{i+1}, b = b_i @ W_{i+1} + b_{i+1}."""
    n_hidden = len(genome.layer_sizes) - 1
    options = []
    for i in range(n_hidden):
        sizes = (*genome.layer_sizes[:i], *genome.layer_sizes[i + 1 :])
        if limits.fits(genome.n_inputs, sizes):
            options.append(i)
    if not options:
        return genome
    i = options[int(rng.integers(len(options)))]
    w_next = genome.weights[i + 1]
    merged_w = (genome.weights[i] @ w_next).astype(np.float32)
    merged_b = (genome.biases[i] @ w_next + genome.biases[i + 1]).astype(np.float32)
    weights = (*genome.weights[:i], merged_w, *genome.weights[i + 2 :])
    biases = (*genome.biases[:i], merged_b, *genome.biases[i + 2 :])
    sizes = (*genome.layer_sizes[:i], *genome.layer_sizes[i + 1 :])
    acts = (*genome.activations[:i], *genome.activations[i + 1 :])
    return Genome(genome.n_inputs, sizes, acts, weights, biases)


def change_activation(genome: Genome, rng: np.random.Generator) -> Genome:
    """Give a random hidden layer a different activation from `HIDDEN_ACTIVATIONS`."""
    n_hidden = len(genome.layer_sizes) - 1
    if n_hidden == 0:
        return genome
    i = int(rng.integers(n_hidden))
    choices = [a for a in HIDDEN_ACTIVATIONS if a != genome.activations[i]]
    acts = list(genome.activations)
    acts[i] = choices[int(rng.integers(len(choices)))]
    return Genome(genome.n_inputs, genome.layer_sizes, tuple(acts), genome.weights, genome.biases)


def crossover(
    primary: Genome, donor: Genome, rng: np.random.Generator, rate: float = 0.5
) -> Genome:
    """Layer-aligned, neuron-wise uniform crossover; works across different shapes.

    The child has `primary`'s architecture. Hidden layer j is aligned with the donor's hidden
    layer j (if it has one) and output head with output head. In each aligned pair, every
    neuron present in both (column k < both widths) takes, with probability `rate`, the
    donor's incoming weights (over the fan-in both share) and bias. So a migrant from another
    peer with a different shape can still pass on its aligned neurons. Returns `primary`
    unchanged if the two do not share the input and output widths (different tasks).
    """
    if primary.n_inputs != donor.n_inputs or primary.n_outputs != donor.n_outputs:
        return primary
    n_layers = len(primary.layer_sizes)
    d_hidden = len(donor.layer_sizes) - 1
    weights = [w.copy() for w in primary.weights]
    biases = [b.copy() for b in primary.biases]
    changed = False
    for i in range(n_layers):
        j = d_hidden if i == n_layers - 1 else i
        if i < n_layers - 1 and i >= d_hidden:
            continue
        dw, db = donor.weights[j], donor.biases[j]
        rows = min(weights[i].shape[0], dw.shape[0])
        cols = min(weights[i].shape[1], dw.shape[1])
        take = np.flatnonzero(rng.random(cols) < rate)
        if take.size == 0:
            continue
        weights[i][:rows, take] = dw[:rows, take]
        biases[i][take] = db[take]
        changed = True
    if not changed:
        return primary
    return primary.with_params(weights, biases)


# --- Lamarckian learning ------------------------------------------------------------------
def _act_grad(name: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    if name == "identity":
        return np.ones_like(z)
    grad: np.ndarray
    if name == "tanh":
        grad = 1.0 - a * a
    elif name == "relu":
        grad = (z > 0).astype(z.dtype)
    elif name == "sigmoid":
        grad = a * (1.0 - a)
    elif name == "sin":
        grad = np.cos(z)
    else:
        raise GenomeError(f"no gradient for activation {name!r}")
    return grad


def adam_steps(
    genome: Genome,
    x: np.ndarray,
    y: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    steps: int = 20,
    lr: float = 0.01,
    batch_size: int = 0,
    weight_decay: float = 0.0,
) -> Genome:
    """`steps` Adam updates on (x, y); `batch_size` 0 = full batch, else sampled minibatches.

    kind 'classification': softmax cross-entropy on the outputs as logits (y: int classes);
    'regression': mean squared error (y: float targets, one output). Returns the genome
    unchanged if learning produced a non-finite parameter.
    """
    from qudag.evolution.genome import ACTIVATIONS

    ws = [w.astype(np.float32, copy=True) for w in genome.weights]
    bs = [b.astype(np.float32, copy=True) for b in genome.biases]
    params = [p for pair in zip(ws, bs, strict=True) for p in pair]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = x.shape[0]
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            if batch_size and batch_size < n:
                idx = rng.integers(0, n, size=batch_size)
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x, y
            hs = [xb]
            zs = []
            h = xb
            for w, b, act in zip(ws, bs, genome.activations, strict=True):
                z = h @ w + b
                h = ACTIVATIONS[act](z)
                zs.append(z)
                hs.append(h)
            bsz = xb.shape[0]
            if kind == "classification":
                logits = h - h.max(axis=1, keepdims=True)
                p = np.exp(logits)
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(bsz), yb] -= 1.0
                dh = p / bsz
            else:
                dh = 2.0 * (h - yb.reshape(bsz, -1)) / bsz
            grads: list[np.ndarray] = []
            for li in range(len(ws) - 1, -1, -1):
                dz = dh * _act_grad(genome.activations[li], zs[li], hs[li + 1])
                gw = hs[li].T @ dz
                if weight_decay:
                    gw = gw + weight_decay * ws[li]
                grads.append(dz.sum(axis=0))
                grads.append(gw)
                if li > 0:
                    dh = dz @ ws[li].T
            grads.reverse()  # now [gw0, gb0, gw1, gb1, ...]
            c1 = 1.0 - beta1**t
            c2 = 1.0 - beta2**t
            for p_, g_, m_, v_ in zip(params, grads, m, v, strict=True):
                m_ *= beta1
                m_ += (1.0 - beta1) * g_
                v_ *= beta2
                v_ += (1.0 - beta2) * (g_ * g_)
                p_ -= (lr * (m_ / c1) / (np.sqrt(v_ / c2) + eps)).astype(np.float32)
    if not all(np.all(np.isfinite(p)) for p in params):
        return genome
    return genome.with_params(
        [p.astype(np.float32) for p in params[0::2]], [p.astype(np.float32) for p in params[1::2]]
    )


def adam_steps_batch(
    genomes: Sequence[Genome],
    x: np.ndarray,
    y: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    steps: int = 20,
    lr: float = 0.01,
    batch_size: int = 0,
    weight_decay: float = 0.0,
) -> list[Genome]:
    """`adam_steps` for many genomes of one `shape_key` at once (stacked over a leading axis).

    Each genome gets its own minibatches and its own Adam state; only the Python overhead is
    shared, which is most of the cost of one step of a tiny net. A genome whose parameters
    become non-finite is returned unchanged.
    """
    if not genomes:
        return []
    from qudag.evolution.genome import ACTIVATIONS

    first = genomes[0]
    if any(g.shape_key() != first.shape_key() for g in genomes):
        raise GenomeError("adam_steps_batch needs genomes of one shape")
    acts = first.activations
    n_layers = len(acts)
    p_count = len(genomes)
    ws = [np.stack([g.weights[li] for g in genomes]) for li in range(n_layers)]
    bs = [np.stack([g.biases[li] for g in genomes]) for li in range(n_layers)]
    params = [p for pair in zip(ws, bs, strict=True) for p in pair]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = x.shape[0]
    rows = np.arange(p_count)[:, None]
    full = np.broadcast_to(np.arange(n), (p_count, n))
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            if batch_size and batch_size < n:
                idx = rng.integers(0, n, size=(p_count, batch_size))
            else:
                idx = full
            xb, yb = x[idx], y[idx]
            bsz = idx.shape[1]
            hs = [xb]
            zs = []
            h = xb
            for w, b, act in zip(ws, bs, acts, strict=True):
                z = np.matmul(h, w) + b[:, None, :]
                h = ACTIVATIONS[act](z)
                zs.append(z)
                hs.append(h)
            if kind == "classification":
                e = np.exp(h - h.max(axis=2, keepdims=True))
                e /= e.sum(axis=2, keepdims=True)
                e[rows, np.arange(bsz)[None, :], yb] -= 1.0
                dh = e / bsz
            else:
                dh = 2.0 * (h - yb.reshape(p_count, bsz, -1)) / bsz
            grads: list[np.ndarray] = []
            for li in range(n_layers - 1, -1, -1):
                dz = dh * _act_grad(acts[li], zs[li], hs[li + 1])
                gw = np.matmul(hs[li].transpose(0, 2, 1), dz)
                if weight_decay:
                    gw = gw + weight_decay * ws[li]
                grads.append(dz.sum(axis=1))
                grads.append(gw)
                if li > 0:
                    dh = np.matmul(dz, ws[li].transpose(0, 2, 1))
            grads.reverse()
            c1 = 1.0 - beta1**t
            c2 = 1.0 - beta2**t
            for p_, g_, m_, v_ in zip(params, grads, m, v, strict=True):
                m_ *= beta1
                m_ += (1.0 - beta1) * g_
                v_ *= beta2
                v_ += (1.0 - beta2) * (g_ * g_)
                p_ -= (lr * (m_ / c1) / (np.sqrt(v_ / c2) + eps)).astype(np.float32)
    out: list[Genome] = []
    for i, g in enumerate(genomes):
        w_i = [w[i] for w in ws]
        b_i = [b[i] for b in bs]
        if all(np.all(np.isfinite(a)) for a in (*w_i, *b_i)):
            out.append(g.with_params([a.copy() for a in w_i], [a.copy() for a in b_i]))
        else:
            out.append(g)
    return out
