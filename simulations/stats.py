"""The statistics of a run: per-peer counters, merging the parts of a parallel run, and CIs.

Why apart from the simulator: a parallel run (simulations/parallel.py) merges parts computed in
several processes, and the studies aggregate runs; both need these figures without a
`Simulation`.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qudag.simulations.config import SimConfig, run_target


@dataclass
class PeerCounters:
    msgs_in: int = 0
    msgs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    duplicates: int = 0
    evaluations_reeval: int = 0
    migrants_from_liars: int = 0
    migrants: int = 0
    es_sets_pooled: int = 0  # result sets of other peers pooled (the es search)
    es_lag: int = 0  # summed generations each pooled set was behind ours


def _best_stats(bests: list[float], target: float | None, keys: tuple[str, ...]) -> dict[str, Any]:
    """The best-fitness figures of a row or a summary (NaN without peers), in `keys` order."""
    nan = float("nan")
    stats = {
        "best_max": max(bests) if bests else nan,
        "best_mean": float(np.mean(bests)) if bests else nan,
        "best_min": min(bests) if bests else nan,
        "reached_frac": (
            sum(b >= target for b in bests) / len(bests) if bests and target is not None else nan
        ),
    }
    return {k: stats[k] for k in keys}


def _merged_bests(parts: list[dict[str, Any]]) -> list[float]:
    return [b for _, b in sorted(pair for p in parts for pair in p["bests"])]


def merge_sample(parts: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    """One time-series row from every process's `sample_part` at the same instant."""
    bests = _merged_bests(parts)
    counts = [c for p in parts for c in p["counts"]]
    identical = False
    if len(set(counts)) == 1 and all(p["digests"] is not None for p in parts):
        identical = len({d for p in parts for d in p["digests"]}) == 1
    return {
        "t_ms": parts[0]["t_ms"],
        "generation": min(p["generation"] for p in parts),
        "evaluations": sum(p["evaluations"] for p in parts),
        **_best_stats(bests, target, ("best_max", "best_mean", "best_min", "reached_frac")),
        "vertices_mean": float(np.mean(counts)),
        "vertices_min": min(counts),
        "vertices_max": max(counts),
        "orphans_max": max(p["orphans_max"] for p in parts),
        "messages": sum(p["messages"] for p in parts),
        "bytes": sum(p["bytes"] for p in parts),
        "sync_requests": sum(p["sync_requests"] for p in parts),
        "online": sum(p["online"] for p in parts),
        "identical": int(identical),
    }


def merge_summary(config: SimConfig, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """`Simulation.summary()` from every process's `summary_part`."""

    def total(key: str) -> Any:
        return sum(p[key] for p in parts)

    def joined(key: str) -> list[Any]:
        return [x for p in parts for x in p[key]]

    bests, counts, iso = _merged_bests(parts), joined("counts"), joined("isolated")
    banned_by, flagged_by = joined("banned_by"), joined("flagged_by")
    attesters_banned_by = joined("attesters_banned_by")
    honest = total("honest")
    n = max(1, config.peers)
    reached = [p["reached_t_ms"] for p in parts if p["reached_t_ms"] is not None]
    return {
        "peers": config.peers,
        "replication": config.replication,
        "honest": honest,
        "liars": total("liars"),
        "generations": min(joined("generations"), default=0),
        "evaluations": total("evaluations"),
        **_best_stats(bests, run_target(config), ("best_max", "best_mean", "reached_frac")),
        "reached_t_ms": min(reached) if reached else None,
        "reached_evals": parts[0]["reached_evals"] if len(parts) == 1 else None,
        "vertices_mean": float(np.mean(counts)) if honest else 0,
        "ledger_bytes_mean": float(np.mean(joined("ledger"))),
        "orphans_max": max(joined("orphans"), default=0),
        "messages_per_peer": total("messages") / n,
        "bytes_per_peer": total("bytes") / n,
        "duplicates_per_peer": total("duplicates") / n,
        "sync_requests": total("sync_requests"),
        "sync_failed": total("sync_failed"),
        "identical_honest_sets": int(len(set(joined("digests"))) == 1) if honest else 0,
        "identical_t_ms": parts[0]["identical_t_ms"] if len(parts) == 1 else None,
        "heal_t_ms": parts[0]["heal_t_ms"],
        "covered_after_heal_ms": parts[0]["covered_after_heal_ms"],
        "liars_isolated_frac": (
            sum(t is not None for t in iso) / len(iso) if iso else float("nan")
        ),
        "liar_isolation_t_ms_max": (
            max(t for t in iso if t is not None)
            if iso and all(t is not None for t in iso)
            else None
        ),
        "liars_banned_frac": float(np.mean(banned_by)) if banned_by else float("nan"),
        "liars_flagged_frac": float(np.mean(flagged_by)) if flagged_by else float("nan"),
        "attesters_banned_frac": (
            float(np.mean(attesters_banned_by)) if attesters_banned_by else float("nan")
        ),
        "migrants": total("migrants"),
        "migrants_from_liars": total("migrants_from_liars"),
        "es_sets_pooled": total("es_sets_pooled"),
        "es_mean_lag": (
            total("es_lag") / total("es_sets_pooled") if total("es_sets_pooled") else None
        ),
        "rejected": total("rejected"),
        "sim_time_ms": max(p["sim_time_ms"] for p in parts),
        "events_executed": total("events_executed"),
        "signature_cache_hits": total("signature_cache_hits"),
        "signature_checks": total("signature_checks"),
        "decode_cache_hits": total("decode_cache_hits"),
        "decodes": total("decodes"),
        "wall_s": max(p["wall_s"] for p in parts),
        "cpu_s": total("cpu_s"),
        # wall s the workers spent at window ends waiting for each other, summed over them:
        # what a parallel run loses to uneven windows
        "wait_s": total("wait_s"),
        "peak_rss_mb": total("peak_rss_mb"),
        "rss_mb": total("rss_mb"),
    }


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * resource.getpagesize() / 2**20


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95 % confidence interval (Student's t), NaNs dropped."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    if not xs:
        return float("nan"), float("nan")
    m = float(np.mean(xs))
    if len(xs) < 2:
        return m, float("nan")
    sd = float(np.std(xs, ddof=1))
    return m, _T975.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
    17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 29: 2.045, 30: 2.042,
}  # fmt: skip
