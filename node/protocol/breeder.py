"""One task's evolving population inside a peer, and the genealogy that ties it to the ledger.

The evolution engine knows genomes and in-run parent ids (hashes of genome bytes); the ledger
knows template *vertex* ids. `Breeder` joins the two: every individual carries the set of
template vertices it descends from (`lineage`): a migrant starts with the vertex it came from,
an individual we publish starts over with the vertex we published it as, and a child inherits
the union of its parents' sets (at most `MAX_GENETIC_PARENTS`, the most recent kept). A
published template lists exactly that set as its genetic parents, so the ledger *is* the
genealogy.

Two searches sit behind one interface: `islands` (the NSGA-II engine, evolution/engine.py,
fed by migrants) and `es` (the shared evolution strategy, evolution/es.py, fed by other
peers' result sets; `advance` returns this generation's own set for the network).

CPU-bound and free of network and clock: the daemon calls `advance` in a child process; the
simulator calls it inline. Persistence (checkpoint + lineage) is optional so a simulator can
run thousands of breeders without touching disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qudag.crypto.canonical import DecodeError, fields, pack, unpack
from qudag.crypto.files import write_file_atomic
from qudag.evolution.engine import Evolution, EvolutionConfig, default_config
from qudag.evolution.es import ESConfig, ResultSet, SharedES, load_state, save_state
from qudag.evolution.tasks import Task, get_task
from qudag.evolution.template import Template, from_genome
from qudag.evolution.toolbox import Individual, genome_id

MAX_GENETIC_PARENTS = 8
LINEAGE_FILE = "lineage.msgpack"
ES_STATE_FILE = "es.msgpack"
MAX_LINEAGE_FILE = 16 * 1024 * 1024


@dataclass(frozen=True)
class GenerationReport:
    task: str
    generation: int
    evaluations: int
    best_fitness: float
    mean_fitness: float
    best_params: int
    migrants_injected: int
    best_id: bytes = b""  # genome id of the best individual
    results: ResultSet | None = None  # es: this generation's result set, for the network
    sets_used: int = 0  # es: result sets pooled in this generation's update (own included)


SEARCHES = ("islands", "es")


class Breeder:
    def __init__(
        self,
        task: Task | str,
        seed: int,
        *,
        config: EvolutionConfig | None = None,
        state_dir: Path | None = None,
        search: str = "islands",
        es_config: ESConfig | None = None,
    ) -> None:
        if search not in SEARCHES:
            raise ValueError(f"search is one of {', '.join(SEARCHES)}")
        self.task = get_task(task) if isinstance(task, str) else task
        self.search = search
        self.state_dir = state_dir
        self.lineage: dict[bytes, tuple[bytes, ...]] = {}
        self.injected: set[bytes] = set()  # template vertex ids already used as migrants
        self.published: dict[bytes, bytes] = {}  # genome id -> template vertex id
        self.evolution: Evolution | SharedES
        restored = self._restore() if state_dir is not None else None
        if restored is not None:
            self.evolution = restored
        elif search == "es":
            self.evolution = SharedES(self.task, es_config, seed)
        else:
            self.evolution = Evolution(self.task, config or default_config(self.task), seed)

    # --- the generation -------------------------------------------------------------------
    def advance(
        self,
        migrants: Sequence[tuple[bytes, Template]] = (),
        results: Sequence[ResultSet] = (),
    ) -> GenerationReport:
        """Inject new migrants, run one generation (pooling `results` in the es search),
        update genealogy, checkpoint."""
        fresh = [(vid, t) for vid, t in migrants if vid not in self.injected]
        injected = 0
        if fresh:
            for vid, template in fresh:
                self.injected.add(vid)
                self.lineage[genome_id(template.genome)] = (vid,)
            injected = self.evolution.inject([t.genome for _, t in fresh])
        own: ResultSet | None = None
        if isinstance(self.evolution, SharedES):
            row, own = self.evolution.step(results)
        else:
            row = self.evolution.step()
        self._inherit(self.evolution.population)
        if self.state_dir is not None:
            self.save()
        return GenerationReport(
            task=self.task.name,
            generation=int(row["gen"]),
            evaluations=int(row["evals"]),
            best_fitness=float(row["best"]),
            mean_fitness=float(row["mean"]),
            best_params=int(row["best_params"]),
            migrants_injected=injected,
            best_id=self.evolution.best.id,
            results=own,
            sets_used=int(row.get("sets", 0)),
        )

    def _inherit(self, individuals: Sequence[Individual]) -> None:
        for ind in individuals:
            if ind.id in self.lineage:
                continue
            merged: dict[bytes, None] = {}
            for parent in ind.parents:
                for vid in self.lineage.get(parent, ()):
                    merged[vid] = None
            self.lineage[ind.id] = tuple(merged)[-MAX_GENETIC_PARENTS:]
        alive = {ind.id for ind in self.evolution.population}
        alive.update(ind.id for ind in self.evolution.hall_of_fame)
        self.lineage = {k: v for k, v in self.lineage.items() if k in alive}

    # --- publishing -----------------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.evolution.generation

    @property
    def best(self) -> Individual:
        return self.evolution.best

    def best_template(self) -> Template:
        """The best individual as a template whose genetic parents are its ledger ancestry."""
        best = self.evolution.best
        return from_genome(
            best.genome,
            self.task,
            best.task_fitness,
            parents=self.lineage.get(best.id, ()),
            operator=best.operator,
            generation=self.evolution.generation,
        )

    def mark_published(self, genome_id: bytes, vertex_id: bytes) -> None:
        """Descendants of the published individual `genome_id` descend from its vertex."""
        self.lineage[genome_id] = (vertex_id,)
        self.published[genome_id] = vertex_id

    # --- persistence ----------------------------------------------------------------------
    def save(self) -> None:
        from qudag.evolution.checkpoint import save_checkpoint

        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.evolution, SharedES):
            write_file_atomic(self.state_dir / ES_STATE_FILE, save_state(self.evolution))
        else:
            save_checkpoint(self.evolution, self.state_dir)
        data = pack(
            {
                "lineage": [[k, list(v)] for k, v in sorted(self.lineage.items())],
                "injected": sorted(self.injected),
                "published": [[k, v] for k, v in sorted(self.published.items())],
            }
        )
        write_file_atomic(self.state_dir / LINEAGE_FILE, data)

    def _restore(self) -> Evolution | SharedES | None:
        from qudag.evolution.checkpoint import load_checkpoint

        assert self.state_dir is not None
        path = self.state_dir / LINEAGE_FILE
        if not path.exists():
            return None
        evolution: Evolution | SharedES
        if self.search == "es":
            es_path = self.state_dir / ES_STATE_FILE
            if not es_path.exists():
                raise DecodeError("missing", f"{es_path}: no es state beside the lineage file")
            evolution = load_state(self.task, es_path.read_bytes())
        else:
            evolution = load_checkpoint(self.state_dir)
        value = fields(
            unpack(path.read_bytes(), MAX_LINEAGE_FILE),
            {"lineage": list, "injected": list, "published": list},
            "lineage",
        )
        try:
            self.lineage = {bytes(k): tuple(v) for k, v in value["lineage"]}
            self.injected = {bytes(v) for v in value["injected"]}
            self.published = {bytes(k): bytes(v) for k, v in value["published"]}
        except (TypeError, ValueError):
            raise DecodeError("malformed", "lineage file") from None
        return evolution
