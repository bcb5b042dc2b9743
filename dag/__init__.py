"""The DAG ledger: signed vertices (vertex.py), their kinds (payloads.py), validation rules
(validate.py) and the SQLite store (store.py). docs/vertex-format.md is the byte-level spec.

The names most callers need are re-exported here.
"""

from qudag.dag.errors import VertexError
from qudag.dag.payloads import (
    KIND_ATTESTATION,
    KIND_IDENTITY,
    KIND_TEMPLATE,
    KINDS,
    PayloadDecoders,
    attestation_payload,
    payload_decoders,
)
from qudag.dag.records import BatchRejected, IngestResult, IngestStatus, StoreError, TemplateEntry
from qudag.dag.store import Store, ledger_path
from qudag.dag.vertex import (
    MAX_VERTEX_SIZE,
    SIGNING_CONTEXT,
    Vertex,
    decode_vertex,
    make_identity_vertex,
    make_vertex,
)

__all__ = [
    "KINDS",
    "KIND_ATTESTATION",
    "KIND_IDENTITY",
    "KIND_TEMPLATE",
    "PayloadDecoders",
    "MAX_VERTEX_SIZE",
    "SIGNING_CONTEXT",
    "BatchRejected",
    "IngestResult",
    "IngestStatus",
    "Store",
    "StoreError",
    "TemplateEntry",
    "Vertex",
    "VertexError",
    "attestation_payload",
    "decode_vertex",
    "ledger_path",
    "make_identity_vertex",
    "make_vertex",
    "payload_decoders",
]
