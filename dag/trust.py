"""Trust queries: recorded re-measurements and the migrant ordering built on them.

The template ordering rule (docs/vertex-format.md, "Template ordering") lives in
`TrustQueries.templates`; which verifiers count is the caller's choice.
"""

import math
from collections.abc import Iterable
from typing import Any, Literal

from qudag.dag.payloads import ID_SIZE, VERDICTS
from qudag.dag.records import TemplateEntry, Verification
from qudag.dag.store_base import StoreBase


class TrustQueries(StoreBase):
    """Verdicts on templates and the templates they let through."""

    def record_verification(
        self, template_id: bytes, verifier: bytes, fitness: float, verdict: str, ts_ms: int
    ) -> None:
        """Record a re-measurement made locally (not from an attestation vertex)."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict is one of {VERDICTS}")
        if len(template_id) != ID_SIZE or len(verifier) != ID_SIZE:
            raise ValueError("template and verifier are 32-byte ids")
        if not math.isfinite(fitness):
            raise ValueError("fitness must be finite")
        self._begin()
        try:
            self._db.execute(
                "INSERT INTO verifications (template, verifier, fitness, verdict, ts_ms, vertex) "
                "VALUES (?, ?, ?, ?, ?, NULL)",
                (template_id, verifier, float(fitness), verdict, ts_ms),
            )
            self._commit()
        except BaseException:
            self._rollback()
            raise

    def verifications(self, template_id: bytes) -> list[Verification]:
        rows = self._db.execute(
            "SELECT ver.template, ver.verifier, ver.fitness, ver.verdict, ver.ts_ms, v.id "
            "FROM verifications ver LEFT JOIN vertices v ON v.n = ver.vertex "
            "WHERE ver.template = ? ORDER BY ver.ts_ms, ver.verifier, ver.rowid",
            (template_id,),
        )
        return [Verification(*row) for row in rows]

    def verdicts_by(self, verifier: bytes) -> list[tuple[bytes, str]]:
        """(template id, verdict) of every re-measurement by `verifier`, attested or recorded
        locally, in the order they were made."""
        rows = self._db.execute(
            "SELECT template, verdict FROM verifications WHERE verifier = ? ORDER BY ts_ms, rowid",
            (verifier,),
        )
        return [(bytes(t), str(v)) for t, v in rows]

    def templates(
        self,
        task: str,
        limit: int = 20,
        *,
        task_version: int | None = None,
        trusted: Iterable[bytes] | Literal["unflagged-authors", "every-verifier"],
        distrusted: Iterable[bytes] = (),
        include_unverified: bool = True,
    ) -> list[TemplateEntry]:
        """Templates of `task`, best first, as the evolution loop samples migrants.

        Rule (docs/vertex-format.md, "Template ordering"): only verifications by `trusted`
        verifiers count ("every-verifier": local records and attestations alike, for tools
        that show the ledger as it is). Whom to trust is the caller's decision (a node asks
        `TrustPolicy.trusted_verifiers`), so there is no default. A
        template is excluded if its author is flagged (equivocation) or if any counted
        verification says "invalid". Its verified fitness is the *minimum* re-measured fitness
        over counted "valid" verdicts (the most pessimistic honest measurement). Verified
        templates come first by verified fitness (descending), then, if `include_unverified`,
        unverified ones by claimed fitness (descending); ties by id ascending.

        `trusted="unflagged-authors"` trusts every stored author that is not flagged, and
        `distrusted` removes verifiers from whatever `trusted` allows: the same answer as
        listing those authors, without copying every author row (with their 1,952-byte keys)
        out of the store at each call.
        """
        params: list[Any] = [task]
        version_sql = ""
        if task_version is not None:
            version_sql = " AND t.task_version = ?"
            params.append(task_version)
        # The unary + keeps SQLite from driving the `verifications_template (template,
        # verifier)` index with the trusted list, one probe per template *and* trusted author
        # (quadratic: ~1 M probes per call on a 1,000-peer ledger); it finds a template's
        # few verdicts by template and tests each verifier against the list instead.
        trust_sql = ""
        trust_params: list[Any] = []
        if trusted == "unflagged-authors":
            trust_sql = " AND +ver.verifier IN (SELECT author FROM authors WHERE flagged = 0)"
        elif trusted != "every-verifier":
            trust_list = sorted(set(trusted))
            trust_sql = f" AND +ver.verifier IN ({','.join('?' * len(trust_list))})"
            trust_params = list(trust_list)
            if not trust_list:
                trust_sql = " AND 0"
        distrust_list = sorted(set(distrusted))
        if distrust_list:
            trust_sql += f" AND ver.verifier NOT IN ({','.join('?' * len(distrust_list))})"
            trust_params += distrust_list
        having = "" if include_unverified else " AND vf IS NOT NULL"
        source = "templates t JOIN vertices v ON v.n = t.n"
        source_params: list[Any] = []
        if not include_unverified:
            # Start from the (few) valid verdicts, not from every template of the task
            # (CROSS JOIN fixes that loop order in SQLite): the daemon asks this on every tick,
            # and scanning a 20,000-template ledger took a large share of a catching-up
            # node's CPU.
            trust_filter = trust_sql.replace("ver.verifier", "verifier")
            source = (
                "(SELECT DISTINCT template FROM verifications WHERE verdict = 'valid'"
                f"{trust_filter}) vv CROSS JOIN vertices v ON v.id = vv.template "
                "JOIN templates t ON t.n = v.n"
            )
            source_params = list(trust_params)
        sql = (
            "SELECT v.id, v.author, t.task, t.task_version, t.fitness, "
            "  min(CASE WHEN ver.verdict = 'valid' THEN ver.fitness END) AS vf, "
            "  count(CASE WHEN ver.verdict = 'valid' THEN 1 END), "
            "  count(CASE WHEN ver.verdict = 'invalid' THEN 1 END) AS bad "
            f"FROM {source} "
            "JOIN authors a ON a.author = v.author "
            f"LEFT JOIN verifications ver ON ver.template = v.id{trust_sql} "
            f"WHERE t.task = ?{version_sql} AND a.flagged = 0 "
            "GROUP BY t.n "
            f"HAVING bad = 0{having} "
            "ORDER BY vf IS NULL, vf DESC, t.fitness DESC, v.id "
            "LIMIT ?"
        )
        rows = self._db.execute(sql, [*source_params, *trust_params, *params, max(0, limit)])
        return [TemplateEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]
