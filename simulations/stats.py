"""The statistics of a run: per-peer counters, what one process gathers, merging, and CIs.

A run's figures come in two steps. Gathering (`sample_part`, `summary_part`) reads one
process's peers of a `Simulation`; merging (`merge_sample`, `merge_summary`) makes the
time-series row and the summary from the parts. Why two steps: a parallel run
(simulations/parallel.py) merges parts computed in several processes, and the studies
aggregate runs; both need the merging without a `Simulation`.
"""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from qudag.dag.payloads import VERDICT_VALID
from qudag.evolution.template import Template
from qudag.evolution.toolbox import genome_id
from qudag.simulations.config import SimConfig, run_target

if TYPE_CHECKING:
    from qudag.crypto.signing import Identity
    from qudag.dag.store import Store
    from qudag.evolution.genome import Genome
    from qudag.simulations.peer import SimPeer
    from qudag.simulations.sim import Simulation


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


def honest_online(sim: Simulation) -> list[SimPeer]:
    return [p for p in sim.local_peers if p.online and p.honest]


def total_evaluations(sim: Simulation) -> int:
    total = 0
    for p in sim.local_peers:
        if p.breeder is not None:
            total += p.breeder.evolution.evaluations
        total += p.counters.evaluations_reeval
    return total


def sample(sim: Simulation, interval: float) -> None:
    sample_now(sim)
    sim.sched.after(interval, sample, sim, interval)


def sample_now(sim: Simulation) -> None:
    part = sample_part(sim)
    if part is None:
        return
    sim.samples.append(part)
    if sim.workers > 1:
        return  # the rows are merged from every process's samples at the end
    now = sim.sched.now
    row = merge_sample([part], sim.target)
    if sim.heal_at is not None and sim.covered_at is None:
        if covers(sim, honest_online(sim)):
            sim.covered_at = now
    if row["identical"] and sim._done_generations and sim.identical_at is None:
        sim.identical_at = now
    sim.rows.append(row)


def sample_part(sim: Simulation) -> dict[str, Any] | None:
    """This process's share of a time-series row (`merge_sample` makes the row)."""
    honest = honest_online(sim)
    if not honest:
        return None
    counts = [p.store.count() for p in honest]
    # Sets can only be identical if the counts are: hash them only then.
    digests = sorted({p.digest() for p in honest}) if len(set(counts)) == 1 else None
    return {
        "t_ms": int(sim.sched.now),
        "generation": min(p.generation for p in honest),
        "evaluations": total_evaluations(sim),
        "bests": _bests(honest),
        "counts": counts,
        "orphans_max": max(p.store.orphan_count() for p in honest),
        "messages": sim.net.messages,
        "bytes": sim.net.bytes,
        "sync_requests": sim.sync_requests,
        "online": sum(p.online for p in sim.local_peers),
        "digests": digests,
    }


def covers(sim: Simulation, honest: list[SimPeer]) -> bool:
    return all(all(p.store.has(v) for v in sim.heal_union) for p in honest)


def honest_sets_identical(sim: Simulation) -> bool:
    if sim._merged is not None:
        return bool(sim._merged["identical_honest_sets"])
    honest = honest_online(sim)
    return len({p.digest() for p in honest}) == 1


def ledger_bytes(sim: Simulation, peer: SimPeer) -> int:
    """The wire bytes of every vertex the peer stores (from its store, so that a vertex
    this process only ever saw in a sync answer counts too)."""
    store = peer.store
    return sum(len(store.get(v) or b"") for v in store.topological_order())


def vouched_for_false(store: Store, found_false: set[bytes], attester: Identity) -> bool:
    """Whether `store` holds a "valid" verdict of `attester` on a claim its peer found false
    (`found_false`): the evidence that peer needs to judge the attester. A lie can reach a
    peer without its attestations (relayed by liars whose link closes between the two), and
    a lie re-measured alone proves nothing against the attester."""
    return any(
        t in found_false for t, v in store.verdicts_by(attester.key_id) if v == VERDICT_VALID
    )


def summary_part(sim: Simulation) -> dict[str, Any]:
    """This process's share of `summary()` (`merge_summary` adds the shares up)."""
    cfg = sim.config
    honest = honest_online(sim)
    liars = [p for p in sim.local_peers if not p.honest]
    liar_keys = [p.identity.key_id for p in liars]
    # Sybil attesters (`collude`): of the honest peers that hold a sybil's "valid"
    # attestation of a lie they re-measured (and found false), the share that banned it.
    found_false = {
        p.idx: {t for t, v in p.store.verdicts_by(p.identity.key_id) if v == "invalid"}
        for p in honest
    }
    silent = {p.identity.key_id for p in liars if p.strategy == "sybil"}
    banned_by = [
        sum(p.core.trust.banned(k) for p in honest) / max(1, len(honest))
        for k in liar_keys
        if k not in silent
    ]
    # A `sybil` liar's own key claims nothing; each fresh key that made a claim counts,
    # judged by the honest peers that re-measured that claim.
    for liar in liars:
        for key, vid in liar.byz_state.get("fresh_claims", []):
            judges = [p for p in honest if vid in found_false[p.idx]]
            if judges:
                banned_by.append(sum(p.core.trust.banned(key) for p in judges) / len(judges))
    flagged_by = [
        sum(k in set(p.store.flagged_authors()) for p in honest) / max(1, len(honest))
        for k in liar_keys
    ]
    attesters_banned_by = []
    for liar in liars:
        for sybil in liar.byz_state.get("sybils", []):
            judges = [p for p in honest if vouched_for_false(p.store, found_false[p.idx], sybil)]
            if judges:
                banned = sum(p.core.trust.banned(sybil.key_id) for p in judges)
                attesters_banned_by.append(banned / len(judges))
    return {
        "honest": len(honest),
        "liars": len(liars),
        "generations": [p.generation for p in honest],
        "evaluations": total_evaluations(sim),
        "bests": _bests(honest),
        "counts": [p.store.count() for p in honest],
        "ledger": [ledger_bytes(sim, p) for p in honest] if cfg.mode == "sharing" else [0],
        "orphans": [p.store.orphan_count() for p in honest],
        "messages": sim.net.messages,
        "bytes": sim.net.bytes,
        "duplicates": sum(p.counters.duplicates for p in sim.local_peers),
        "sync_requests": sim.sync_requests,
        "sync_failed": sim.sync_failed,
        "digests": sorted({p.digest() for p in honest}),
        "isolated": [sim.isolated_at.get(p.idx) for p in liars],
        "honest_links": honest_links(sim, honest),
        "rediscovered": sim.rediscovered,
        "banned_by": banned_by,
        "flagged_by": flagged_by,
        "attesters_banned_by": attesters_banned_by,
        "migrants": sum(p.counters.migrants for p in honest),
        "migrants_from_liars": sum(p.counters.migrants_from_liars for p in honest),
        "es_sets_pooled": sum(p.counters.es_sets_pooled for p in honest),
        "es_lag": sum(p.counters.es_lag for p in honest),
        "rejected": sum(sum(p.core.stats.rejected.values()) for p in honest),
        "sim_time_ms": int(sim.sched.now),
        "events_executed": sim.sched.executed,
        "signature_cache_hits": sim.verified.hits,
        "signature_checks": sim.verified.misses,
        "decode_cache_hits": sim.decoded.hits,
        "decodes": sim.decoded.misses,
        "reached_t_ms": sim.reached_at,
        "reached_evals": sim.reached_evals,
        "identical_t_ms": sim.identical_at,
        "heal_t_ms": sim.heal_at,
        "covered_after_heal_ms": (
            None if sim.covered_at is None or sim.heal_at is None else sim.covered_at - sim.heal_at
        ),
        "wall_s": sim.wall_s,
        "cpu_s": sim.cpu_s,
        "wait_s": sim.wait_s,
        "peak_rss_mb": sim.peak_rss_mb,
        "rss_mb": sim.rss_mb,
        # Last: reading the stores here goes through the decode cache counted above.
        "liar_migrant_tests": list(sim.liar_migrant_tests),
        "honest_best_test": honest_best_test(sim, honest),
    }


def honest_links(sim: Simulation, honest: list[SimPeer]) -> list[list[Any]]:
    """[peer index, its links to online honest peers] for each of `honest`: whether the
    honest peers are still connected among themselves once liars were cut off."""
    return [
        [p.idx, sorted(b for b in p.links if sim.peers[b].honest and sim.peers[b].online)]
        for p in honest
    ]


def honest_link_figures(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """At the end of the run: honest peers with no link to an honest peer
    (`honest_cut_off`), and how many parts the honest peers' links split them into
    (`honest_components`; 1: every honest peer can reach every other without a liar)."""
    links = [pair for p in parts for pair in p["honest_links"]]
    graph = nx.Graph()
    graph.add_nodes_from(idx for idx, _ in links)
    graph.add_edges_from((idx, b) for idx, bs in links for b in bs)
    return {
        "honest_cut_off": sum(not bs for _, bs in links),
        "honest_components": nx.number_connected_components(graph) if links else 0,
    }


def honest_best_test(sim: Simulation, honest: list[SimPeer]) -> float | None:
    """The best test-split score among the templates the honest peers published (None if
    they published none): the bar a liar's migrant must fall below to be worse than what
    the honest peers found. An honest peer that took a liar's net as a migrant may hold it
    as its best and publish it under its own key, so a net that is a sampled liar migrant
    does not count; nets bred from one do (their lineage is not kept)."""
    best: float | None = None
    for p in honest:
        for standing in p.core.ranked_templates(sim.task.name, 1_000_000):
            vertex = p.store.vertex(standing.id) if standing.author == p.identity.key_id else None
            if vertex is None:
                continue
            genome = Template.from_dict(vertex.payload).genome  # our own: it decodes
            if genome_id(genome) in sim.liar_genomes:
                continue
            score = test_score(sim, standing.id, genome)
            best = score if best is None else max(best, score)
    return best


def test_score(sim: Simulation, vid: bytes, genome: Genome) -> float:
    """The task's reporting score of a template on the test split, once per template id: the
    split no peer evolves or verifies on, so it tells whether a net generalises."""
    if vid not in sim.test_scores:
        sim.test_scores[vid] = sim.task.score(genome, "test")
    return sim.test_scores[vid]


def liar_migrant_figures(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Of the liars' migrants honest peers sampled: how many score below the honest best
    on the test split (`liar_migrants_worse`; None if some were sampled but the honest
    peers published nothing to compare them with), and their lowest and highest test
    score (None if none was sampled)."""
    tests = [t for p in parts for t in p["liar_migrant_tests"]]
    bars = [p["honest_best_test"] for p in parts if p["honest_best_test"] is not None]
    bar = max(bars, default=None)
    worse_unknown = None if tests else 0  # nothing sampled: none worse, bar or not
    return {
        "honest_best_test": bar,
        "liar_migrants_worse": sum(t < bar for t in tests) if bar is not None else worse_unknown,
        "liar_migrant_test_min": min(tests, default=None),
        "liar_migrant_test_max": max(tests, default=None),
    }


def _bests(peers: list[SimPeer]) -> list[list[Any]]:
    """[peer index, best fitness] pairs: merged in index order, a mean is the same float
    whichever process held which peer."""
    return [[p.idx, p.breeder.best.task_fitness] for p in peers if p.breeder is not None]


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
        **liar_migrant_figures(parts),
        **honest_link_figures(parts),
        "rediscovered": total("rediscovered"),
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
