"""Shared test set-up.

The payload-decoder registry (`dag.payloads.register_payload_decoder`) is process-wide: a
`PeerCore` installs evolution's strict template decoder in it. The dag tests build template
vertices with minimal payloads (dag must not depend on evolution), so they run with the
registry as a fresh process has it, whatever ran before them in this process.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qudag.dag import payloads


@pytest.fixture(autouse=True)
def _fresh_payload_decoders(request: pytest.FixtureRequest) -> Iterator[None]:
    if not request.module.__name__.split(".")[-1].startswith("test_dag_"):
        yield
        return
    saved = dict(payloads._DECODERS)
    payloads._DECODERS.clear()
    try:
        yield
    finally:
        payloads._DECODERS.clear()
        payloads._DECODERS.update(saved)
