"""Shared fixtures for the dag tests: signed random DAGs, generated once per test process.

Signing costs ~1 ms per vertex, so every generator here is cached (`functools.cache`): the
first test that asks pays, the others reuse the same bytes.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from qudag.crypto.signing import Identity
from qudag.dag.payloads import attestation_payload
from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex
from qudag.evolution.genome import Genome
from qudag.evolution.template import Template

NOW_MS = 1_750_000_000_000  # June 2025: in the past, so the CLI (real clock) accepts them
TS0 = NOW_MS - 3_600_000


def template_payload(
    task: str = "xor", fitness: float = 0.5, genetic: tuple[bytes, ...] = (), hidden: int = 4
) -> dict[str, Any]:
    """A real `Template.to_dict()` for a random 2-`hidden`-2 net (so it passes evolution's
    strict decoder, which a node and the CLI register); only the fields dag indexes vary."""
    genome = Genome.random(np.random.default_rng(hidden), 2, [hidden], 2)
    template = Template(
        task="xor",
        task_version=1,
        genome=genome,
        input_mean=np.zeros(2, dtype=np.float32),
        input_scale=np.ones(2, dtype=np.float32),
        output="logits",
        fitness=0.5,
        n_params=genome.n_params,
        n_bytes=genome.n_bytes,
        latency_ns=1000,
        parents=(),
        operator="init",
        generation=0,
    )
    payload = template.to_dict()
    # Set the indexed fields in the map itself, so tests can also build invalid ones.
    payload["task"] = task
    payload["objectives"]["fitness"] = fitness
    payload["parents"] = sorted(genetic)
    return payload


@dataclass(frozen=True)
class Dag:
    identities: tuple[Identity, ...]
    raws: tuple[bytes, ...]  # topological delivery order
    ids: tuple[bytes, ...]

    def by_id(self) -> dict[bytes, bytes]:
        return dict(zip(self.ids, self.raws, strict=True))


@functools.cache
def identities(n: int = 4) -> tuple[Identity, ...]:
    return tuple(Identity.generate() for _ in range(n))


@functools.cache
def random_dag(seed: int = 0, n: int = 60, n_authors: int = 3, equivocate: bool = True) -> Dag:
    """A random DAG of `n` valid vertices: identities, templates, attestations.

    Every author chains its own vertices (seq rule) and also points at up to 3 random earlier
    vertices. With `equivocate`, author 0 also signs a second, different vertex for one seq.
    """
    rng = random.Random(seed)
    authors = identities(4)[:n_authors]
    raws: list[bytes] = []
    ids: list[bytes] = []
    last: dict[bytes, bytes] = {}
    seq: dict[bytes, int] = {}
    templates: list[bytes] = []

    def add(raw: bytes) -> bytes:
        vid = decode_vertex(raw).id
        raws.append(raw)
        ids.append(vid)
        return vid

    for i, identity in enumerate(authors):
        vid = add(make_identity_vertex(identity, TS0 + i, ids[-1:]))
        last[identity.key_id] = vid
        seq[identity.key_id] = 1
    equivocation_done = not equivocate
    while len(raws) < n:
        identity = rng.choice(authors)
        author = identity.key_id
        others = rng.sample(ids, min(len(ids), rng.randint(0, 3)))
        parents = {last[author], *others}
        ts = TS0 + len(raws)
        if templates and rng.random() < 0.2:
            target = rng.choice(templates)
            parents.add(target)
            verdict = "valid" if rng.random() < 0.8 else "invalid"
            kind, payload = "attestation", attestation_payload(target, rng.random(), verdict)
        else:
            genetic = tuple(rng.sample(templates, min(len(templates), rng.randint(0, 2))))
            kind, payload = "template", template_payload("xor", rng.random(), genetic)
        chosen = sorted(parents)
        if len(chosen) > 8:
            chosen = sorted({last[author], *chosen[:7]})
        raw = make_vertex(identity, seq[author], ts, chosen, kind, payload)
        vid = add(raw)
        if not equivocation_done and author == authors[0].key_id and seq[author] >= 2:
            # A second vertex for the same (author, seq): different payload, same parents.
            twin = make_vertex(
                identity, seq[author], ts + 1, chosen, "template", template_payload()
            )
            add(twin)
            equivocation_done = True
        last[author] = vid
        seq[author] += 1
        if kind == "template":
            templates.append(vid)
    return Dag(tuple(authors), tuple(raws), tuple(ids))
