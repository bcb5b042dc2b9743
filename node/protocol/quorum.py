"""Sortition: which peers publish a template or attest a claim, so that the network's ledger
grows with what is found, not with how many peers found it (issue 14, docs/ARCHITECTURE.md,
"Replication at scale").

Every peer can check a claim and every peer may find the same improvement; if each of them
wrote a vertex, every peer would store O(N) vertices per event and the network O(N^2). Instead
each peer draws a number from a hash of what it is about to sign and its own key, and writes
only if the draw is below `expected / network_size`: about `expected` writers per event,
whatever N is. The draw is a hash, not a random number, so an author cannot choose who
attests its claim (it would have to grind template ids against keys it does not hold), and a
run replays exactly.

The network size is each peer's own estimate (`PeerCore.network_size`, set by the driver).
An estimate that is too low only makes more peers write: the error costs bytes, never
verification.
"""

from __future__ import annotations

import blake3

_SCALE = float(2**64)


def draw(label: bytes, *parts: bytes) -> float:
    """A number in [0, 1) fixed by `label` and `parts` (length-prefixed: no two part lists
    hash alike)."""
    hasher = blake3.blake3(label)
    for part in parts:
        hasher.update(len(part).to_bytes(4, "big"))
        hasher.update(part)
    return int.from_bytes(hasher.digest()[:8], "big") / _SCALE


def chosen(value: float, expected: float, network_size: int) -> bool:
    """Whether a draw `value` selects its peer: with probability `expected / network_size`
    (1 when `expected` <= 0, i.e. no sortition, or when the network is that small)."""
    if expected <= 0 or network_size <= expected:
        return True
    return value < expected / network_size


def attests(template_id: bytes, verifier: bytes, expected: int, network_size: int) -> bool:
    """Whether `verifier` publishes its verdict on `template_id` as an attestation vertex (it
    re-measures and records the verdict either way)."""
    return chosen(draw(b"qudag/attest", template_id, verifier), expected, network_size)


def publishes(
    author: bytes, task: str, generation: int, waited: int, expected: int, network_size: int
) -> bool:
    """Whether `author` publishes a front-improving template of `task` at `generation`, having
    held one back for `waited` earlier publication rounds. The chance doubles with each round
    waited, so a find that only one peer made reaches the ledger within about
    log2(network_size / expected) rounds, while a find that many peers share (everyone reached
    the task's maximum) is written by about `expected` of them."""
    scaled = expected * 2.0 ** min(waited, 62)
    value = draw(b"qudag/publish", author, task.encode(), generation.to_bytes(8, "big"))
    return chosen(value, scaled, network_size)


def es_group(member: bytes, task: str, network_size: int, group_size: int) -> tuple[int, int]:
    """(groups, ours): the shared-ES group of `member` for `task`, among
    network_size // group_size groups (at least 1; `group_size` <= 0: one group).

    Why groups: a peer pools every set of its group each generation, so its es messages grow
    with the group, not the network; and the gain of pooling stops growing at 8-16 peers
    (docs/studies.md, study 6: the critical batch size), so a group of that size loses
    nothing that a larger one would give. Groups share their finds through templates."""
    groups = max(1, network_size // group_size) if group_size > 0 else 1
    if groups == 1:
        return 1, 0  # no hash: this runs for every result set a daemon receives
    return groups, int(draw(b"qudag/es-group", member, task.encode()) * groups)
