"""The daemon's ledger routes beyond /status and /metrics: /templates, /migrants, /identities/.

Each answers from the live core and store through `PeerCore`'s own rules (the templates list is
`PeerCore.ranked_templates`, the one ranking the migrant sampler uses), so what a client sees
is what the node acts on. The HTTP server itself is node/ops/http.py.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable

from qudag.dag.payloads import KIND_IDENTITY
from qudag.node.ops.http import ExtraHandler, Response, json_response
from qudag.node.ops.observatory import BadQuery, query_limit, query_task, standing_json
from qudag.node.protocol.core import PeerCore


class LedgerRoutes:
    """The routes, over one node's core (and the ledger it holds, `core.store`)."""

    def __init__(
        self,
        core: PeerCore,
        default_task: Callable[[], str],
        injected: Callable[[str], set[bytes] | None],
    ) -> None:
        """`default_task()`: the task a query that names none means; `injected(task)`:
        migrant ids the breeder of `task` injected, None if the node does not evolve it."""
        self.core = core
        self.default_task = default_task
        self.injected = injected

    def handlers(self) -> dict[str, ExtraHandler]:
        return {
            "/templates": self.templates,
            "/migrants": self.migrants,
            "/identities/": self.identity,
        }

    def templates(self, path: str, query: str) -> Response:
        """Templates of a task, best verified first, judged by the one rule the migrant
        sampler uses (`PeerCore.ranked_templates`): banned and equivocating authors are left
        out, only our verdicts and those of attesters with a proven record count, nothing we
        cannot re-measure is verified on others' word, and the verified fitness is our own
        measurement."""
        params = urllib.parse.parse_qs(query, keep_blank_values=False)
        task = query_task(params, self.default_task)
        try:
            limit = query_limit(params, 20, 100)
        except BadQuery as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(
            200,
            {
                "task": task,
                "templates": [
                    standing_json(s, self.core.me) for s in self.core.ranked_templates(task, limit)
                ],
            },
        )

    def migrants(self, path: str, query: str) -> Response:
        """Template vertex ids this node's breeder has injected as migrants (for audits: a
        banned author's templates must never appear here)."""
        task = query_task(urllib.parse.parse_qs(query), self.default_task)
        injected = self.injected(task)
        if injected is None:
            return json_response(404, {"error": f"this node does not evolve task {task!r}"})
        return json_response(200, {"task": task, "injected": sorted(v.hex() for v in injected)})

    def identity(self, path: str, query: str) -> Response:
        """Raw identity vertex (seq 0) of an author key id: what a client needs to check the
        signature of that author's vertices itself."""
        try:
            author = bytes.fromhex(path.rsplit("/", 1)[1])
        except ValueError:
            author = b""
        if len(author) != 32:
            return json_response(400, {"error": "an author key id is 64 hex characters"})
        ids = self.core.store.vertex_ids_by(author, KIND_IDENTITY)
        raw = self.core.store.get(ids[0]) if ids else None
        if raw is None:
            return json_response(404, {"error": "no identity vertex for this author"})
        return Response(200, raw, "application/octet-stream")
