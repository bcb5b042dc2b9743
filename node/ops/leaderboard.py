"""A task's leaderboard: the Pareto front of its verified templates.

Why a front and not a ranking: a user picks a template for a job, and the jobs differ (the
most accurate net, or one that fits 2 KB, or answers in a microsecond); no single number
orders them. A verified template is on the front unless another is at least as good on
every objective and better on one:

- `fitness`: the node's own re-measurement on the task's validation split (the verified
  fitness `PeerCore.ranked_templates` shows; a template verified on attestations alone has
  none and shows its claim, marked so);
- `held_out`: its score (accuracy or R^2) on the task's test split, which evolution never
  sees, computed here when this machine can load the task (else absent, and left out of the
  comparison);
- `bytes` of weights, and `latency_ns` as its author measured it (a claim: latency depends
  on the author's machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qudag.evolution.genome import GenomeError
from qudag.evolution.tasks import TaskError, get_task
from qudag.evolution.template import Template

Row = dict[str, Any]


def held_out_score(template: Template) -> float | None:
    """The template's score on its task's test split, or None if the task is not loadable
    here (or is another version, or the net does not fit it)."""
    try:
        task = get_task(template.task)
        if task.version != template.task_version:
            return None
        return float(task.score(template.genome, "test"))
    except (TaskError, GenomeError):
        return None


def leaderboard_row(entry: Row, template: Template) -> Row:
    """A `/templates` entry (observatory.standing_json) with its objectives."""
    measured = entry.get("verified_fitness")
    return {
        "id": entry["id"],
        "author": entry["author"],
        "fitness": measured if measured is not None else entry.get("claimed_fitness"),
        "fitness_measured": measured is not None,
        "held_out": held_out_score(template),
        "bytes": template.n_bytes,
        "latency_ns": template.latency_ns,
        "verifications": entry.get("verifications", 0),
    }


def _dominates(a: Row, b: Row) -> bool:
    pairs = [(a["fitness"], b["fitness"]), (-a["bytes"], -b["bytes"])]
    pairs.append((-a["latency_ns"], -b["latency_ns"]))
    if a["held_out"] is not None and b["held_out"] is not None:
        pairs.append((a["held_out"], b["held_out"]))
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_front(rows: list[Row]) -> list[Row]:
    """The rows no other row dominates, best fitness first (ties by id)."""
    front = [r for r in rows if not any(_dominates(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: (-r["fitness"], r["id"]))


def front(entries: list[Row], fetch: Callable[[str], Template]) -> list[Row]:
    """The front of the verified entries of a `/templates` listing; `fetch` gives the
    (signature-checked) template of an id."""
    rows = [leaderboard_row(e, fetch(e["id"])) for e in entries if e.get("verified") is True]
    return pareto_front(rows)
