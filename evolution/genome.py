"""Architecture genomes: small feed-forward nets, directly encoded, with a strict byte form.

A genome is the whole net: input width, the width of every layer after the input (the last one
is the output head, whose width the task fixes), one activation per layer, and float32 weights
and biases. Everything that crosses a process boundary uses `to_bytes`/`from_bytes` (canonical
msgpack, weights as one little-endian float32 blob); DEAP's `creator` classes never do.

Limits are checked from the declared sizes *before* any array is allocated, so a hostile or
corrupt genome cannot make a peer allocate more than `GenomeLimits` allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qudag.crypto.canonical import DecodeError, fields, pack, unpack


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))).astype(
        np.float32, copy=False
    )


def _relu(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.maximum(x, np.float32(0.0))
    return out


# Name -> elementwise float32 function. Names are part of the byte format: only append.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": _identity,
    "tanh": np.tanh,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "sin": np.sin,
}

GENOME_FORMAT_VERSION = 1


@dataclass(frozen=True)
class GenomeLimits:
    """Hard bounds on a genome's size; checked before allocation. Defaults fit ~50 KB nets."""

    max_layers: int = 8
    max_width: int = 256
    max_inputs: int = 1024
    max_params: int = 12_800  # 12,800 float32 = 51,200 bytes

    def check(self, n_inputs: int, layer_sizes: Sequence[int]) -> int:
        """Return the parameter count of that shape, or raise `GenomeError` if over a limit."""
        if not 1 <= n_inputs <= self.max_inputs:
            raise GenomeError(f"n_inputs {n_inputs} outside 1..{self.max_inputs}")
        if not 1 <= len(layer_sizes) <= self.max_layers:
            raise GenomeError(f"{len(layer_sizes)} layers outside 1..{self.max_layers}")
        params = 0
        fan_in = n_inputs
        for size in layer_sizes:
            if not 1 <= size <= self.max_width:
                raise GenomeError(f"layer width {size} outside 1..{self.max_width}")
            params += fan_in * size + size
            fan_in = size
        if params > self.max_params:
            raise GenomeError(f"{params} parameters > limit {self.max_params}")
        return params

    def fits(self, n_inputs: int, layer_sizes: Sequence[int]) -> bool:
        """Whether `check` would accept that shape."""
        try:
            self.check(n_inputs, layer_sizes)
        except GenomeError:
            return False
        return True


DEFAULT_LIMITS = GenomeLimits()


class GenomeError(ValueError):
    """A genome that is malformed or exceeds the limits."""


@dataclass(frozen=True, eq=False)
class Genome:
    """A feed-forward net. `weights[i]` has shape (fan_in, layer_sizes[i]), float32."""

    n_inputs: int
    layer_sizes: tuple[int, ...]
    activations: tuple[str, ...]
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if len(self.activations) != len(self.layer_sizes):
            raise GenomeError("one activation per layer is required")
        for name in self.activations:
            if name not in ACTIVATIONS:
                raise GenomeError(f"unknown activation {name!r}")
        if len(self.weights) != len(self.layer_sizes) or len(self.biases) != len(self.layer_sizes):
            raise GenomeError("one weight matrix and bias vector per layer is required")
        fan_in = self.n_inputs
        for w, b, size in zip(self.weights, self.biases, self.layer_sizes, strict=True):
            if w.shape != (fan_in, size) or b.shape != (size,):
                raise GenomeError("weight shapes do not match layer sizes")
            if w.dtype != np.float32 or b.dtype != np.float32:
                raise GenomeError("weights must be float32")
            fan_in = size

    # --- shape -------------------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        return self.layer_sizes[-1]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return self.layer_sizes[:-1]

    @property
    def n_params(self) -> int:
        return sum(w.size + b.size for w, b in zip(self.weights, self.biases, strict=True))

    @property
    def n_bytes(self) -> int:
        """Bytes of parameters (float32): the 'size' objective."""
        return 4 * self.n_params

    def shape_key(self) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
        """Genomes with equal keys can be stacked and evaluated in one batched pass."""
        return (self.n_inputs, self.layer_sizes, self.activations)

    # --- running -----------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a (batch, n_inputs) float32 array; the output head is applied as is."""
        h = np.asarray(x, dtype=np.float32)
        for w, b, act in zip(self.weights, self.biases, self.activations, strict=True):
            h = ACTIVATIONS[act](h @ w + b)
        return h

    # --- construction ------------------------------------------------------------------
    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        n_inputs: int,
        hidden: Sequence[int],
        n_outputs: int,
        activation: str = "tanh",
        output_activation: str = "identity",
    ) -> Genome:
        """He/Glorot-scaled random weights; zero biases."""
        sizes = (*hidden, n_outputs)
        acts = tuple([activation] * len(hidden) + [output_activation])
        weights = []
        fan_in = n_inputs
        for size in sizes:
            scale = np.float32(np.sqrt(2.0 / (fan_in + size)))
            weights.append((rng.standard_normal((fan_in, size)) * scale).astype(np.float32))
            fan_in = size
        biases = tuple(np.zeros(s, dtype=np.float32) for s in sizes)
        return cls(n_inputs, tuple(sizes), acts, tuple(weights), biases)

    def with_params(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> Genome:
        return Genome(
            self.n_inputs, self.layer_sizes, self.activations, tuple(weights), tuple(biases)
        )

    def flat_params(self) -> np.ndarray:
        """All parameters as one float32 vector: layer by layer, W row-major then b."""
        parts: list[np.ndarray] = []
        for w, b in zip(self.weights, self.biases, strict=True):
            parts.append(w.ravel())
            parts.append(b)
        return np.concatenate(parts).astype(np.float32, copy=False)

    @classmethod
    def from_flat(
        cls,
        n_inputs: int,
        layer_sizes: Sequence[int],
        activations: Sequence[str],
        flat: np.ndarray,
    ) -> Genome:
        weights = []
        biases = []
        offset = 0
        fan_in = n_inputs
        for size in layer_sizes:
            n = fan_in * size
            weights.append(flat[offset : offset + n].reshape(fan_in, size).copy())
            offset += n
            biases.append(flat[offset : offset + size].copy())
            offset += size
            fan_in = size
        if offset != flat.size:
            raise GenomeError("parameter count does not match the layer sizes")
        return cls(n_inputs, tuple(layer_sizes), tuple(activations), tuple(weights), tuple(biases))

    # --- bytes -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """The canonical map (field order is part of the format)."""
        return {
            "v": GENOME_FORMAT_VERSION,
            "n_inputs": self.n_inputs,
            "layers": list(self.layer_sizes),
            "acts": list(self.activations),
            "params": self.flat_params().astype("<f4").tobytes(),
        }

    def to_bytes(self) -> bytes:
        return pack(self.to_dict())

    @classmethod
    def from_dict(cls, value: object, limits: GenomeLimits = DEFAULT_LIMITS) -> Genome:
        """Strictly rebuild a genome from its canonical map; raises `DecodeError`."""
        d = fields(
            value,
            {"v": int, "n_inputs": int, "layers": list, "acts": list, "params": bytes},
            "genome",
        )
        if d["v"] != GENOME_FORMAT_VERSION:
            raise DecodeError("version", f"genome format {d['v']}")
        layers = d["layers"]
        acts = d["acts"]
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in layers):
            raise DecodeError("type", "genome.layers must be integers")
        if not all(isinstance(a, str) for a in acts):
            raise DecodeError("type", "genome.acts must be strings")
        try:
            n_params = limits.check(d["n_inputs"], layers)
        except GenomeError as exc:
            raise DecodeError("limit", str(exc)) from None
        if len(d["params"]) != 4 * n_params:
            raise DecodeError("size", "params length does not match layer sizes")
        flat = np.frombuffer(d["params"], dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(flat)):
            raise DecodeError("value", "non-finite parameter")
        try:
            return cls.from_flat(d["n_inputs"], layers, acts, flat)
        except GenomeError as exc:
            raise DecodeError("value", str(exc)) from None

    @classmethod
    def from_bytes(cls, data: bytes, limits: GenomeLimits = DEFAULT_LIMITS) -> Genome:
        return cls.from_dict(unpack(data, max_size=4 * limits.max_params + 4096), limits)
