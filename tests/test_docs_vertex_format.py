"""Issue 13 item 17: docs/vertex-format.md specifies the template payload itself (keys, order,
which are required) and says what `dag export` / `dag import` do with pending vertices; the
README and the commands agree with it."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from test_node_core import honest_template

from qudag.crypto.signing import Identity
from qudag.dag.store import Store
from qudag.evolution import template as tpl
from qudag.node.cli import main
from qudag.node.protocol.core import (
    NODE_DECODERS,
    CoreConfig,
    PeerCore,
    Publish,
    task_tolerances,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "vertex-format.md").read_text()
NOW = 1_700_000_000_000


def section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n#", start + len(title))
    return DOC[start : end if end != -1 else None]


def test_template_keys_are_specified_in_order() -> None:
    text = section("### template")
    keys = re.findall(r"^\| `(\w+)` ", text, flags=re.MULTILINE)
    assert keys == [*tpl._TEMPLATE_SCHEMA_V2, tpl.COLUMNS_KEY]
    assert "code points" in text and "optional" in text
    for name in (*tpl._GENOME_SCHEMA, *tpl._COLUMNS_SCHEMA, *tpl._OBJECTIVES_SCHEMA):
        assert f'"{name}"' in text, name
    assert f"{tpl.MAX_TEMPLATE_BYTES:,}" in text
    assert "not required to be sorted" in text


def test_the_net_field_example_is_what_the_encoder_writes() -> None:
    from test_evolution_template import make_template

    text = section("### template")
    t = make_template(n_inputs=3, hidden=(4,), n_outputs=2, act="relu", output="values")
    net = t.to_dict()["net"]
    assert f"`{net[:12].hex(' ')}`" in text and len(net) == 140 and "140" in text


def test_identity_and_attestation_payloads_are_closed() -> None:
    assert "No other key is allowed" in section("### identity")
    assert "no other key is allowed" in section("### attestation")


def test_import_with_missing_parents_stores_the_rest_as_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    identity = Identity.generate()
    stream = tmp_path / "partial.bin"
    # A stream holding a vertex whose parent (the identity vertex) is not in it.
    store = Store.open(tmp_path / "src.sqlite3", decoders=NODE_DECODERS)
    core = PeerCore(
        identity,
        store,
        CoreConfig(tasks=("xor",), tolerances=task_tolerances(("xor",))),
        random.Random(0),
    )
    pubs = [a for a in core.start(NOW) if isinstance(a, Publish)]
    _, actions = core.publish_template(honest_template(1), NOW + 1)
    pubs += [a for a in actions if isinstance(a, Publish)]
    store.close()
    stream.write_bytes(b"".join(p.data for p in pubs[1:]))  # without the identity vertex
    assert main(["dag", "import", "--data-dir", str(tmp_path / "dst"), "--in", str(stream)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pending"] == len(pubs) - 1 and summary["vertices"] == 0
    # Export writes stored vertices only: the pending ones are not in it.
    out = tmp_path / "out.bin"
    assert main(["dag", "export", "--data-dir", str(tmp_path / "dst"), "--out", str(out)]) == 0
    assert out.read_bytes() == b""
    # The documents say so, and `dag export --help` points at the framing section.
    assert "pending" in section("## 7. Export stream")
    readme = (ROOT / "README.md").read_text()
    assert "all or nothing;" not in readme and "stored as pending" in readme
    with pytest.raises(SystemExit):
        main(["dag", "export", "--help"])
    assert "section 7" in " ".join(capsys.readouterr().out.split())
