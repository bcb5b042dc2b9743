"""Short fuzz runs (CI) of every decoder of outside bytes; the long runs are fuzz/run.py.

Targets and oracles live in fuzz/targets.py: a decoder may only reject with its typed error,
and whatever it accepts must pass an exact oracle (canonical re-encoding, genuine signature,
matching key pair, checked config). Hypothesis drives two kinds of input per target: stacked
byte mutations of genuine seeds (seeded, so a failure reproduces) and plain random bytes; the
sync messages and the config file also get structure-aware inputs (random canonical msgpack
maps with an `op`, random TOML documents over the real setting names). Budget: ~15 s.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag.crypto.canonical import DecodeError, pack
from qudag.node.ops.config import settings_help

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
import targets  # noqa: E402

TARGETS = {t.name: t for t in targets.build_targets()}
FAST = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def test_every_seed_is_accepted_so_the_oracles_see_valid_inputs() -> None:
    for target in TARGETS.values():
        for seed in target.seeds:
            assert target.run(seed), f"{target.name}: a genuine seed was rejected"


@pytest.mark.parametrize("name", sorted(TARGETS))
@FAST
@given(seed=st.integers(0, 2**63 - 1), raw=st.binary(max_size=96))
def test_mutated_and_random_inputs_only_raise_typed_errors(
    name: str, seed: int, raw: bytes
) -> None:
    target = TARGETS[name]
    rng = np.random.default_rng(seed)
    target.run(targets.mutate(rng, target.seeds))
    target.run(raw)


_scalars = st.one_of(
    st.integers(-(2**64), 2**64 - 1),
    st.booleans(),
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=12),
    st.floats(allow_nan=True),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@FAST
@given(
    op=st.sampled_from(["heads", "get", "since", "vertices", "since/2", "page/2", "other"]),
    body=st.dictionaries(st.sampled_from(["tips", "count", "ids", "have", "limit", "more",
                                          "vertices", "after", "next", "x"]), _values, max_size=4),
)  # fmt: skip
def test_structured_sync_messages(op: str, body: dict[str, Any]) -> None:
    try:
        data = pack({"op": op, **body})
    except (TypeError, ValueError, OverflowError):
        return  # not encodable (e.g. an int beyond 64 bits): nothing to send
    TARGETS["sync-message"].run(data)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value)


_KEYS = [name for name, _env, _flag, _help in settings_help()] + ["unknown_key", "data-dir"]
_toml_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=30),
    st.sampled_from(["xor", "/ip4/10.1.2.3/tcp/4001", "0.0.0.0:8700", "debug", "forever", ""]),
)


@FAST
@given(
    doc=st.dictionaries(
        st.sampled_from(_KEYS), _toml_scalars | st.lists(_toml_scalars, max_size=3), max_size=6
    )
)
def test_structured_config_files(doc: dict[str, Any]) -> None:  # fmt: skip
    text = "\n".join(f"{key} = {_toml_value(value)}" for key, value in doc.items()) + "\n"
    TARGETS["config-toml"].run(text.encode())


def test_the_vertex_oracle_catches_a_validator_that_accepts_forgeries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guard against a test that cannot fail: disable the signature rule and a vertex with a
    flipped signature bit must be reported as an invalid input accepted."""
    world = targets.world()
    forged = bytearray(world.vertices[2])
    forged[-10] ^= 0x01  # inside the signature (the last field of the wire form)
    with pytest.raises(DecodeError, match="bad-signature"):
        TARGETS["vertex"].check(bytes(forged))
    monkeypatch.setattr(targets, "validate", lambda *args, **kwargs: None)
    with pytest.raises(targets.InvalidAccepted):
        TARGETS["vertex"].check(bytes(forged))


def test_the_message_oracle_catches_a_lenient_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that accepted a trailing byte would be caught by the re-encoding oracle."""
    genuine = TARGETS["sync-message"].seeds[0]
    real_decode = targets.messages.decode
    monkeypatch.setattr(targets.messages, "decode", lambda data: real_decode(data[:-1]))
    with pytest.raises(targets.InvalidAccepted):
        TARGETS["sync-message"].check(genuine + b"\x00")


@pytest.mark.parametrize(
    "document",
    [
        b'data_dir = "~.0.0.0:8700"\n',  # fuzz/run.py config-toml crash: pathlib RuntimeError
        b'key = "~no-such-user-qudag/node.key"\n',
    ],
)
def test_regressions_found_by_the_long_fuzz_runs(document: bytes) -> None:
    assert not TARGETS["config-toml"].run(document)
