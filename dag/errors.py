"""The one error type of the ledger: a vertex that is invalid, with a stable reason label."""

from __future__ import annotations

from qudag.crypto.canonical import DecodeError


class VertexError(DecodeError):
    """A vertex that is invalid. `reason` is a short stable string, usable as a metrics label.

    Reasons: oversize, malformed, non-canonical, trailing-bytes, type, missing-field,
    unknown-field, bad-version, range, too-many-parents, unsorted-parents, no-parents,
    unknown-kind, bad-seq, bad-payload, author-mismatch, bad-signature, unknown-author,
    future-timestamp, bad-attestation. A registered payload decoder may add its own
    `DecodeError` reasons (they are passed through unchanged).
    """
