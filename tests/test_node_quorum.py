"""Issue 14: the sortitions that keep a peer's ledger flat in the network's size
(node/protocol/quorum.py). The core rules built on them (publish what beats the known front,
attest by quorum, keep the other verdicts locally) are tested in test_node_core.py."""

from __future__ import annotations

import math

import blake3
from hypothesis import given
from hypothesis import strategies as st

from qudag.node.protocol import quorum

TASK = "xor"


def ids(label: str, n: int) -> list[bytes]:
    return [blake3.blake3(f"{label}{i}".encode()).digest() for i in range(n)]


def test_about_the_expected_number_of_verifiers_attest_whatever_the_network_size() -> None:
    expected = 6
    for network in (1_000, 10_000):
        verifiers = ids(f"verifier{network}-", network)
        counts = [
            sum(quorum.attests(t, v, expected, network) for v in verifiers)
            for t in ids("template", 40)
        ]
        mean = sum(counts) / len(counts)
        # Binomial(network, 6/network): mean 6, sd ~2.4; over 40 templates the mean is within
        # ~1.2 of 6 with overwhelming probability, and no template goes unattested often.
        assert 4.5 <= mean <= 7.5, (network, counts)
        assert max(counts) <= 18
        assert sum(c < 2 for c in counts) <= 6


def test_in_a_network_no_larger_than_the_quorum_every_peer_writes() -> None:
    for verifier in ids("v", 6):
        assert quorum.attests(b"t" * 32, verifier, 6, 6)
        assert quorum.publishes(verifier, TASK, 10, 0, 4, 4)
    assert quorum.attests(b"t" * 32, b"v" * 32, 0, 1_000_000)  # 0: no sortition


@given(
    network=st.integers(min_value=1, max_value=10**7),
    expected=st.integers(min_value=1, max_value=16),
    author=st.binary(min_size=32, max_size=32),
)
def test_a_lone_find_is_published_within_log2_rounds(
    network: int, expected: int, author: bytes
) -> None:
    """A peer that keeps a front-improving template round after round is drawn at the latest
    when its doubled chance reaches 1: a find nobody else made is never lost."""
    bound = max(0, math.ceil(math.log2(max(1.0, network / expected))))
    drawn = [quorum.publishes(author, TASK, g, g, expected, network) for g in range(bound + 1)]
    assert any(drawn)


def test_es_groups_split_the_network_into_groups_of_about_the_size_asked() -> None:
    members = ids("member", 1_000)
    sizes: dict[int, int] = {}
    for member in members:
        groups, ours = quorum.es_group(member, TASK, 1_000, 16)
        assert groups == 62 and 0 <= ours < groups
        sizes[ours] = sizes.get(ours, 0) + 1
    assert len(sizes) == 62
    assert 16 * 0.3 <= min(sizes.values()) and max(sizes.values()) <= 16 * 2.5
    assert quorum.es_group(members[0], TASK, 1_000, 0) == (1, 0)  # no groups
    assert quorum.es_group(members[0], TASK, 10, 16) == (1, 0)  # smaller than a group
