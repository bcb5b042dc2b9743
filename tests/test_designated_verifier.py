"""Issue 17, section 3: "A task's author may hold private held-out data and act as the task's
designated verifier: its attestations carry scores nobody else can reproduce, shown as such."

What a user relies on: the private rows never leave the author's node (the chunk protocol
refuses them), the task vertex commits to them (BLAKE3 and row count, so a later reveal can be
audited), an old task vertex without the commitment still decodes, the author's attestation
carries each template's score on them, anyone else's claim to such a score is ignored, and
every listing labels it as the task author's private score.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_node_core import listed, publications
from test_published_tasks import csv_bytes, publish_cli

from qudag.crypto.canonical import DecodeError, unpack
from qudag.crypto.keystore import load_identity
from qudag.crypto.signing import Identity
from qudag.dag.errors import VertexError
from qudag.dag.payloads import (
    DESIGNATED_KEY,
    KIND_ATTESTATION,
    attestation_payload,
    check_payload,
)
from qudag.dag.store import Store
from qudag.dag.vertex import decode_vertex, make_identity_vertex, make_vertex
from qudag.evolution.genome import Genome
from qudag.evolution.holdout import PrivateScore
from qudag.evolution.published import TASK_ROOT_ENV, blob_cache, make_spec, private_path
from qudag.evolution.tasks import get_task
from qudag.evolution.taskspec import MAX_PRIVATE_ROWS, PRIVATE_KEY, TaskSpec
from qudag.evolution.template import Template, from_genome
from qudag.evolution.verify import remeasure_designated, remeasure_with_holdout, verify_claim
from qudag.node.cli import main
from qudag.node.commands import templates as templates_cli
from qudag.node.protocol import messages
from qudag.node.protocol.core import (
    NODE_DECODERS,
    CoreConfig,
    PeerCore,
    task_tolerances,
    task_versions,
)
from qudag.node.protocol.datafetch import TaskData

PRIVATE_ROWS = 80


@pytest.fixture(scope="module")
def small() -> bytes:
    return csv_bytes(300)


@pytest.fixture(scope="module")
def private() -> bytes:
    return csv_bytes(PRIVATE_ROWS, seed=7)


def published(
    small: bytes, private: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, str]:
    secret = tmp_path / "private.csv"
    secret.write_bytes(private)
    return publish_cli(small, tmp_path, capsys, "--private-holdout", str(secret))


# --- the task vertex's commitment ------------------------------------------------------------
def test_an_old_task_vertex_without_the_field_decodes_byte_for_byte(small: bytes) -> None:
    spec = make_spec(small, target="label", name="demo")
    raw = spec.to_bytes()
    assert PRIVATE_KEY not in unpack(raw, 1 << 20) and spec.private is None
    assert TaskSpec.from_bytes(raw).to_bytes() == raw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(digest=st.binary(min_size=32, max_size=32), rows=st.integers(1, MAX_PRIVATE_ROWS))
def test_any_commitment_round_trips(small: bytes, digest: bytes, rows: int) -> None:
    base = unpack(make_spec(small, target="label", name="demo").to_bytes(), 1 << 20)
    base[PRIVATE_KEY] = {"blake3": digest, "rows": rows}
    spec = TaskSpec.from_dict(base)
    assert spec.private is not None and (spec.private.blake3, spec.private.rows) == (digest, rows)
    assert spec.to_dict() == base and TaskSpec.from_bytes(spec.to_bytes()) == spec


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=st.one_of(
        st.fixed_dictionaries({"blake3": st.binary(max_size=40), "rows": st.integers()}),
        st.fixed_dictionaries({"rows": st.integers(1, 9), "blake3": st.just(bytes(32))}),
        st.dictionaries(st.text(max_size=8), st.integers() | st.binary(max_size=33), max_size=3),
        st.integers() | st.binary(max_size=40) | st.none(),
    )
)
def test_a_bad_commitment_is_refused(small: bytes, value: Any) -> None:
    base = unpack(make_spec(small, target="label", name="demo").to_bytes(), 1 << 20)
    base[PRIVATE_KEY] = value
    good = (
        isinstance(value, dict)
        and list(value) == ["blake3", "rows"]
        and isinstance(value["blake3"], bytes)
        and len(value["blake3"]) == 32
        and isinstance(value["rows"], int)
        and 1 <= value["rows"] <= MAX_PRIVATE_ROWS
    )
    if good:
        assert TaskSpec.from_dict(base).private is not None
    else:
        with pytest.raises(DecodeError):
            TaskSpec.from_dict(base)


def test_the_commitment_is_the_last_key(small: bytes) -> None:
    base = unpack(make_spec(small, target="label", name="demo").to_bytes(), 1 << 20)
    moved = {PRIVATE_KEY: {"blake3": bytes(32), "rows": 3}, **base}
    with pytest.raises(DecodeError, match="out of order"):
        TaskSpec.from_dict(moved)


# --- the attestation's designated score ------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        st.fixed_dictionaries({"n": st.integers(), "fitness": st.floats()}),
        st.dictionaries(st.sampled_from(["n", "fitness", "x"]), st.integers() | st.floats()),
        st.integers() | st.none(),
    )
)
def test_the_designated_field_is_decoded_strictly(value: Any) -> None:
    template = bytes(range(32))
    payload = attestation_payload(template, 0.5, "valid")
    payload[DESIGNATED_KEY] = value
    good = (
        isinstance(value, dict)
        and list(value) == ["n", "fitness"]
        and isinstance(value["n"], int)
        and 1 <= value["n"] <= 2**20
        and isinstance(value["fitness"], float)
        and math.isfinite(value["fitness"])
    )
    if good:
        check_payload(KIND_ATTESTATION, payload, bytes(32), (template,))
    else:
        with pytest.raises((VertexError, DecodeError)):
            check_payload(KIND_ATTESTATION, payload, bytes(32), (template,))


def test_the_designated_field_comes_after_the_held_out_one() -> None:
    template, beacon = bytes(range(32)), bytes(32)
    payload = attestation_payload(template, 0.5, "valid", ((beacon,), 10, 0.5, 0.1), (5, 0.5))
    assert list(payload) == ["template", "fitness", "verdict", "holdout", DESIGNATED_KEY]
    check_payload(KIND_ATTESTATION, payload, bytes(32), (beacon, template))
    swapped = {k: payload[k] for k in ["template", "fitness", "verdict", DESIGNATED_KEY, "holdout"]}
    with pytest.raises(DecodeError, match="out of order"):
        check_payload(KIND_ATTESTATION, swapped, bytes(32), (beacon, template))


# --- publishing -------------------------------------------------------------------------------
def test_publish_with_private_rows_keeps_them_and_commits_to_them(
    small: bytes, private: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, tid = published(small, private, tmp_path, capsys)
    kept = private_path(d, bytes.fromhex(tid))
    assert kept.read_bytes() == private and kept.stat().st_mode & 0o077 == 0
    assert main(["task", "show", tid[:12], "--data-dir", str(d)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["private_holdout"] == {
        "blake3": blake3.blake3(private).hexdigest(),
        "rows": PRIVATE_ROWS,
    }
    # Never served: the chunk protocol answers "not held" for the private file's hash, and
    # serves the public data.
    node = PeerCore(
        Identity.generate(),
        Store.open(":memory:", decoders=NODE_DECODERS),
        CoreConfig(tasks=()),
        random.Random(0),
        data=TaskData(blob_cache(d)),
    )
    for digest, held in (
        (blake3.blake3(private).digest(), False),
        (blake3.blake3(small).digest(), True),
    ):
        answer = node.on_sync_request("peer", messages.encode(messages.GetChunk(digest, 0)), 0)
        chunk = messages.decode(answer)
        assert isinstance(chunk, messages.Chunk) and chunk.have is held


def test_publish_without_private_rows_commits_to_none(
    small: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d, tid = publish_cli(small, tmp_path, capsys)
    assert not private_path(d, bytes.fromhex(tid)).exists()
    assert main(["task", "show", tid[:12], "--data-dir", str(d)]) == 0
    assert json.loads(capsys.readouterr().out)["private_holdout"] is None


def test_publishing_with_private_rows_reads_each_file_once(
    small: bytes, private: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commitment is checked against the table the spec was made from: a 10 MB task's
    data is parsed once, not three times."""
    from qudag.evolution import published as published_module

    read: list[bytes] = []
    real = published_module.parse_csv_bytes

    def counting(raw: bytes, *args: Any) -> Any:
        read.append(raw)
        return real(raw, *args)

    monkeypatch.setattr(published_module, "parse_csv_bytes", counting)
    spec = make_spec(small, target="label", name="demo", private=private)
    assert spec.private is not None and spec.private.rows == PRIVATE_ROWS
    assert sorted(read) == sorted([small, private])


def assert_private_rows_refused(
    small: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str], secret: Path, message: str
) -> None:
    """`task publish --private-holdout secret` exits 2 with `message` as one clear line, and
    publishes nothing."""
    csv = tmp_path / "data.csv"
    if not csv.exists():
        csv.write_bytes(small)
    d = tmp_path / "node"
    args = ["task", "publish", str(csv), "--target", "label", "--data-dir", str(d)]
    assert main([*args, "--private-holdout", str(secret)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (d / "ledger.sqlite3").exists()  # nothing published


@pytest.mark.parametrize(
    "rows, message",
    [
        (b"a,b,label,value\n1,2,1,3\n", "not the task's features"),
        (b"a,b,c,label,value\n1,2,3,7,4\n", "labels the task's data does not have"),
    ],
)
def test_private_rows_that_are_not_rows_of_the_task_are_refused(
    small: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: bytes,
    message: str,
) -> None:
    secret = tmp_path / "private.csv"
    secret.write_bytes(rows)
    assert_private_rows_refused(small, tmp_path, capsys, secret, message)


def test_more_private_rows_than_a_task_vertex_carries_are_one_clear_line(
    small: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import qudag.evolution.published as published

    monkeypatch.setattr(published, "MAX_PRIVATE_ROWS", 1)  # two rows are then too many
    secret = tmp_path / "private.csv"
    secret.write_bytes(b"".join(small.splitlines(keepends=True)[:3]))  # header and two rows
    assert_private_rows_refused(
        small, tmp_path, capsys, secret, "more than 1 private held-out rows"
    )


def test_the_published_data_itself_is_refused_as_private_rows(
    small: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "data.csv"
    csv.write_bytes(small)
    assert_private_rows_refused(small, tmp_path, capsys, csv, "the same rows as")


# --- the designated verifier at work -------------------------------------------------------
def _cores(d: Path, tid: str) -> tuple[PeerCore, PeerCore, str]:
    """The task's author (its node's key and ledger) and another peer, both on the task."""
    name = "task:" + tid
    settings_ = {
        "tasks": (name,),
        "tolerances": task_tolerances((name,)),
        "versions": task_versions((name,)),
        "attest_quorum": 1,  # the sortition alone would rarely draw the author
    }
    author = PeerCore(
        load_identity(d / "node.key"),
        Store.open(d / "ledger.sqlite3", decoders=NODE_DECODERS),
        CoreConfig(**settings_),  # type: ignore[arg-type]
        random.Random(0),
    )
    other = PeerCore(
        Identity.generate(),
        Store.open(":memory:", decoders=NODE_DECODERS),
        CoreConfig(**settings_),  # type: ignore[arg-type]
        random.Random(1),
    )
    author.network_size = other.network_size = 1000
    return author, other, name


Network = tuple[Path, PeerCore, PeerCore, str]


@pytest.fixture
def network(
    small: bytes,
    private: bytes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Network:
    """A task published with private rows: (its data dir, its author's core, another
    peer's core, the task's name); this process loads it from that data dir."""
    d, tid = published(small, private, tmp_path, capsys)
    monkeypatch.setenv(TASK_ROOT_ENV, str(d))
    author, other, name = _cores(d, tid)
    return d, author, other, name


def _template(name: str, seed: int) -> Template:
    task = get_task(name)
    genome = Genome.random(np.random.default_rng(seed), task.n_inputs, [4], task.n_outputs)
    draft = from_genome(genome, task, 0.0, generation=seed, latency_repeats=3)
    return replace(draft, fitness=verify_claim(draft))


def _sync(src: PeerCore, dst: PeerCore, now: int) -> None:
    raws = tuple(src.store.get(v) or b"" for v in src.store.topological_order())
    dst.on_sync_response("peer", messages.encode(messages.Vertices(raws, False)), now)


def _remeasure_all(core: PeerCore, now: int, designated: PrivateScore | None = None) -> list[Any]:
    """Re-measure every queued claim as the daemon's verifier child does; `designated`
    stands in for its score on private rows (a peer that is not the author has none)."""
    out = []
    while (job := core.next_reevaluation()) is not None:
        _, measured, holdout = remeasure_with_holdout(job.template, job.holdout_seed)
        private = remeasure_designated(job.template) if designated is None else designated
        out += core.on_reevaluated(job, measured, now, holdout, private)[1]
    return out


def test_the_authors_attestation_carries_its_private_score_shown_as_such(
    network: Network, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, author, other, name = network
    now = time.time_ns() // 1_000_000
    _sync(author, other, now)
    template_id, _ = other.publish_template(_template(name, 1), now + 1)
    _sync(other, author, now + 2)
    actions = _remeasure_all(author, now + 3)
    (attestation,) = [
        v for v in map(decode_vertex, (p.data for p in publications(actions)))
        if v.kind == KIND_ATTESTATION
    ]  # fmt: skip
    # Always attested (the sortition of 1 in 1000 did not decide it), with the score on the
    # private rows: the task's fitness on them, which only the author can compute.
    score = remeasure_designated(_template(name, 1))
    assert score is not None and score.n == PRIVATE_ROWS
    assert attestation.payload[DESIGNATED_KEY] == {"n": PRIVATE_ROWS, "fitness": score.fitness}
    (mine,) = listed(author, name)
    assert mine["designated"] == {
        "fitness": score.fitness, "n": PRIVATE_ROWS, "by": "us", "reproducible": False,
    }  # fmt: skip
    # Another peer shows it as the task author's, beside its own claim check and held-out.
    _sync(author, other, now + 4)
    (theirs,) = listed(other, name)
    assert theirs["id"] == template_id.hex()
    assert theirs["designated"]["by"] == author.me.hex()
    assert theirs["designated"]["reproducible"] is False
    # Display only: the template (the other peer's own) stands as it did, verified on its
    # author's engine, not flagged, whatever the private score says.
    assert theirs["verified"] is True and theirs["overfit"] is False
    # The CLI labels it as private, not reproducible.
    assert templates_cli._designated(theirs).endswith("(private)")
    author.store.close()
    monkeypatch.setenv("COLUMNS", "300")  # the table on one line per row, as a wide terminal
    assert main(["templates", "list", "--data-dir", str(d), "--task", name]) == 0
    table = capsys.readouterr().out
    assert f"{score.fitness:.4f}" in table and "(private)" in table
    assert "not reproducible" in table


def test_an_edited_private_file_is_not_scored_and_says_so_once(
    network: Network, caplog: pytest.LogCaptureFixture
) -> None:
    """The file the author edited after publishing is not what the task commits to: no
    designated score for any template, and the operator reads one warning naming the file
    and the task, not one per template."""
    d, _, _, name = network
    tid = name.removeprefix("task:")
    secret = private_path(d, bytes.fromhex(tid))
    secret.write_bytes(secret.read_bytes() + b"1,2,3,1,4\n")
    with caplog.at_level("WARNING", logger="qudag.evolution.published"):
        scores = [remeasure_designated(_template(name, seed)) for seed in (1, 2, 3)]
    assert scores == [None, None, None]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert str(secret) in warnings[0] and tid in warnings[0]


def test_a_strangers_designated_score_is_ignored(network: Network) -> None:
    """Ignored, not rejected: the attestation is valid ledger data (its validity cannot depend
    on whether the task vertex is held yet), but only the task author's score is counted."""
    _, author, other, name = network
    now = time.time_ns() // 1_000_000
    _sync(author, other, now)
    author.publish_template(_template(name, 2), now + 1)
    _sync(author, other, now + 2)
    # The other peer's own node does not put a designated score in its attestation ...
    actions = _remeasure_all(other, now + 3, designated=PrivateScore(5, 0.99))
    attestations = [
        v for v in map(decode_vertex, (p.data for p in publications(actions)))
        if v.kind == KIND_ATTESTATION
    ]  # fmt: skip
    assert all(DESIGNATED_KEY not in a.payload for a in attestations)
    # ... and a hand-made one from a stranger is stored (valid) but its score is not shown.
    stranger = Identity.generate()
    (entry,) = listed(other, name)
    target = bytes.fromhex(entry["id"])
    identity = make_identity_vertex(stranger, now + 4, [target])
    forged = make_vertex(
        stranger, 1, now + 5, sorted([target, decode_vertex(identity).id]), KIND_ATTESTATION,
        attestation_payload(target, entry["claimed_fitness"], "valid", None, (5, 0.99)),
    )  # fmt: skip
    for raw in (identity, forged):
        other.on_sync_response("peer", messages.encode(messages.Vertices((raw,), False)), now + 6)
    assert other.store.get(decode_vertex(forged).id) is not None
    (entry,) = listed(other, name)
    assert entry["designated"] is None


def test_the_docs_give_the_bytes_the_encoders_write() -> None:
    """docs/vertex-format.md spells both new fields byte for byte."""
    from qudag.crypto.canonical import pack

    doc = (Path(__file__).resolve().parent.parent / "docs" / "vertex-format.md").read_text()
    flat = " ".join(doc.split())
    designated = pack(attestation_payload(bytes(32), 0.5, "valid", None, (80, 0.5))["designated"])
    assert designated.hex(" ").startswith("82 a1 6e 50 a7 66 69 74 6e 65 73 73 cb")
    assert "82 a1 6e <n> a7 66 69 74 6e 65 73 73 cb" in flat
    commitment = pack({"blake3": bytes(32), "rows": 80}).hex(" ")
    assert commitment.startswith("82 a6 62 6c 61 6b 65 33 c4 20")
    assert commitment.endswith("a4 72 6f 77 73 50")
    assert "82 a6 62 6c 61 6b 65 33 c4 20 <32 bytes> a4 72 6f 77 73 <rows>" in flat
