"""The MCP server of `qudag-node mcp`: the tools an orchestrator (an LLM agent) needs.

Why MCP: an orchestrator that wants a small learned function asks for it in tool calls, not
through our command line. Every tool is a thin layer over what the commands already do, so
that the rules live in one place:

- `leaderboard` is the node's own ranking (`GET /templates`, `PeerCore.ranked_templates`:
  best verified first, banned authors left out), fetched as `templates list` fetches it:
  each template with its claimed and re-measured fitness, the held-out score the node goes
  by and whose it is (`held_out`, `overfit`), and a published task author's score on its
  private rows (`designated`, marked not reproducible);
- `pull_template` fetches, checks (BLAKE3 id, ML-DSA-65 signature under the author's
  identity vertex) and strictly decodes a template exactly as `templates pull` does
  (`NodeClient.fetch_template`);
- `run_template` runs the synthesis runtime on inputs as `synthesize` does, with its input
  checks and its output records;
- `start_evolution` runs `qudag-node evolve` as a child process (`ops.evolve_jobs`);
- `node_status` is the node's `GET /status`, as `qudag-node status --json` shows it.

Why the node's HTTP API and not its ledger file: the node knows which claims it re-measured
and whom it banned, and no reader may contend for the SQLite file a live daemon writes (the
same reason as `status` and `templates`).

Errors: bad input and unreachable nodes are `UserError`s in the code we reuse; here each
becomes a `ToolError`, which the SDK returns as a tool result with `is_error` set and the one
line as its text (never a traceback). An address given by the caller must be loopback unless
the server was started with `--allow-remote-nodes`: the caller is a model, and the server
should not fetch from anywhere it is told.

The server writes only under its work directory: pulled templates in `templates/`, one folder
per evolution job in `jobs/`.
"""

from __future__ import annotations

import functools
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from qudag.evolution.tasks import list_tasks as task_specs
from qudag.evolution.template import Template, TemplateError, save_template
from qudag.node.commands.status import fetch_status, status_url
from qudag.node.commands.template import (
    csv_input,
    input_rows,
    json_record,
    predict,
    read_template,
    score_predictions,
)
from qudag.node.commands.templates import (
    LIST_LIMIT_MAX,
    MIN_PREFIX,
    NodeClient,
    describe,
    pick,
    standing,
    task_name,
)
from qudag.node.errors import UserError
from qudag.node.ops.evolve_jobs import EvolveRequest, JobManager
from qudag.node.ops.http import exposure_warning

MAX_INPUT_ROWS = 10_000
MAX_RETURNED_PREDICTIONS = 1_000
DEFAULT_JOB_SECONDS = 60.0  # of a run whose caller gave no max_seconds (or the server's limit)
MAX_PULLED = 64  # templates kept in memory for run_template (their files stay)

INSTRUCTIONS = """\
QuDAG-Evo: peers evolve tiny neural networks for tasks and share them as signed templates.
Typical use: list_tasks; leaderboard(task) on a node; pull_template (signature checked);
run_template on your inputs. No node, or no good template? start_evolution on a task or a
CSV file, poll evolution_status(job_id) until its state is not "running", then
run_template(job_id=...). Values are validation fitness (accuracy for classification)."""

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class McpSettings:
    """What `qudag-node mcp` was started with."""

    http: str  # the default node address
    http_source: str  # where it came from, for error messages
    timeout: float
    allow_remote_nodes: bool
    work_dir: Path


def _tool_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """A `UserError` of the reused code becomes the tool's error text (is_error), not a crash."""
    from mcp.server.mcpserver.exceptions import ToolError

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise ToolError(str(exc)) from None

    return wrapper


class Tools:
    """The tools' logic, independent of the SDK (the SDK only registers the methods)."""

    def __init__(self, settings: McpSettings, jobs: JobManager) -> None:
        self.settings = settings
        self.jobs = jobs
        self._pulled: OrderedDict[str, tuple[Template, dict[str, Any]]] = OrderedDict()
        self._pulled_lock = threading.Lock()  # the SDK runs tool calls in worker threads

    # --- nodes --------------------------------------------------------------------------
    def _address(self, http: str | None) -> tuple[str, str]:
        if http is None or not http.strip():
            return self.settings.http, self.settings.http_source
        host = urllib.parse.urlsplit(status_url(http, "http")).hostname or ""
        if exposure_warning(host) is not None and not self.settings.allow_remote_nodes:
            raise UserError(
                f"http {http!r}: only loopback node addresses are allowed (the server was not "
                "started with --allow-remote-nodes)"
            )
        return http, "http"

    def _client(self, http: str | None) -> NodeClient:
        address, source = self._address(http)
        return NodeClient(address, self.settings.timeout, source)

    def node_status(self, http: str | None = None) -> dict[str, Any]:
        """The node's GET /status document."""
        address, source = self._address(http)
        status = fetch_status(address, self.settings.timeout, source)
        return {"node": address, "status": status}

    def list_tasks(self, http: str | None = None) -> dict[str, Any]:
        """Task specs this machine can evolve; with `http`, also the tasks that node runs."""
        result: dict[str, Any] = {"task_specs": task_specs()}
        if http is not None:
            address, source = self._address(http)
            status = fetch_status(address, self.settings.timeout, source)
            tasks = status.get("tasks")
            result["node"] = address
            result["node_tasks"] = {
                str(name): {
                    k: info.get(k)
                    for k in ("generation", "best_fitness", "best_verified_fitness", "published")
                }
                for name, info in (tasks.items() if isinstance(tasks, dict) else [])
                if isinstance(info, dict)
            }
        return result

    def leaderboard(
        self, task: str | None = None, limit: int = 20, http: str | None = None
    ) -> dict[str, Any]:
        """The node's ranking of a task's templates, best verified first."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise UserError(f"limit must be between 1 and {LIST_LIMIT_MAX}")
        client = self._client(http)
        return {"node": client.base, **client.templates(task_name(task), limit)}

    def pull_template(
        self, template_id: str | None = None, task: str | None = None, http: str | None = None
    ) -> dict[str, Any]:
        """Fetch and check a template (the best verified of `task` unless an id is given)."""
        return self._pull(template_id, task, http)[1]

    def _pull(
        self, template_id: str | None, task: str | None, http: str | None
    ) -> tuple[Template, dict[str, Any]]:
        client = self._client(http)
        task = task_name(task)
        fetched = client.fetch_template(pick(client, template_id, task))
        summary = describe(fetched)
        summary.update(standing(client, fetched.vertex.id, fetched.template.task))
        path = self.settings.work_dir / "templates" / f"{summary['id']}.template"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_template(fetched.template, path)
        except OSError as exc:
            raise UserError(f"{path}: cannot write: {exc.strerror or exc}") from None
        except TemplateError as exc:
            raise UserError(str(exc)) from None
        summary["file"] = str(path)
        with self._pulled_lock:
            self._pulled[summary["id"]] = (fetched.template, summary)
            self._pulled.move_to_end(summary["id"])
            while len(self._pulled) > MAX_PULLED:
                self._pulled.popitem(last=False)
        return fetched.template, summary

    # --- running a template -------------------------------------------------------------
    def _template(
        self, template_id: str | None, job_id: str | None, path: str | None, http: str | None
    ) -> tuple[Template, dict[str, Any]]:
        if sum(v is not None for v in (template_id, job_id, path)) != 1:
            raise UserError("give exactly one of template_id, job_id or path")
        if job_id is not None:
            job = self.jobs.get(job_id)
            snap = job.snapshot()
            if snap["template"] is None:
                raise UserError(
                    f"job {job.id} has no template yet (state {snap['state']}); poll "
                    "evolution_status until it is no longer running"
                )
            return read_template(snap["template"]), {"job_id": job.id, "file": snap["template"]}
        if path is not None:
            return read_template(path), {"file": path}
        assert template_id is not None
        ref = template_id.strip().lower()
        with self._pulled_lock:
            matches = [k for k in self._pulled if k.startswith(ref)]
            if len(ref) >= MIN_PREFIX and len(matches) == 1:
                return self._pulled[matches[0]][0], {"id": matches[0], "signature": "verified"}
        template, summary = self._pull(template_id, None, http)  # checked as any pull
        return template, {"id": summary["id"], "signature": "verified"}

    def run_template(
        self,
        inputs: list[float] | list[list[float]] | None = None,
        csv_path: str | None = None,
        template_id: str | None = None,
        job_id: str | None = None,
        path: str | None = None,
        http: str | None = None,
    ) -> dict[str, Any]:
        """Run a template on raw feature rows (or a CSV file's rows, scored if it has the
        target column)."""
        if (inputs is None) == (csv_path is None):
            raise UserError("give exactly one of inputs (rows of numbers) or csv_path")
        template, source = self._template(template_id, job_id, path, http)
        n_inputs = template.genome.n_inputs
        target: list[str] | None = None
        if inputs is not None:
            if len(inputs) > MAX_INPUT_ROWS:
                raise UserError(f"inputs: at most {MAX_INPUT_ROWS} rows per call")
            x, where = input_rows(inputs, n_inputs, "inputs"), "inputs"
        else:
            assert csv_path is not None
            where = f"csv_path {csv_path}"
            x, target = csv_input(csv_path, template)
        out = predict(template, x, where)
        records = [json_record(template, row) for row in out[:MAX_RETURNED_PREDICTIONS]]
        result: dict[str, Any] = {
            "template": {**source, "task": template.task, "output": template.output},
            "rows": int(out.shape[0]),
            "predictions": records,
        }
        if out.shape[0] > MAX_RETURNED_PREDICTIONS:
            result["predictions_truncated_to"] = MAX_RETURNED_PREDICTIONS
        if target is not None:
            result["score"] = score_predictions(template, out, target, where)
        return result

    # --- evolution ----------------------------------------------------------------------
    def start_evolution(
        self,
        task: str | None = None,
        csv_path: str | None = None,
        target: str | None = None,
        kind: Literal["classification", "regression"] | None = None,
        max_seconds: float | None = None,
        generations: int | None = None,
        population: int | None = None,
        seed: int = 0,
        until_fitness: float | None = None,
    ) -> dict[str, Any]:
        """Start `qudag-node evolve` in the background; returns the job to poll."""
        if (task is None) == (csv_path is None):
            raise UserError("give exactly one of task (a task spec) or csv_path")
        if csv_path is not None:
            file = Path(csv_path).expanduser().resolve()
            if not file.is_file():
                raise UserError(f"csv_path {csv_path}: no such file")
            spec = f"csv:{file}"
            if target is not None:
                spec += f":target={target}"
            if kind is not None:
                spec += f":kind={kind}"
        else:
            assert task is not None
            if target is not None or kind is not None:
                raise UserError("target and kind go with csv_path, not with task")
            spec = task
        if max_seconds is None:
            max_seconds = min(DEFAULT_JOB_SECONDS, self.jobs.limits.max_seconds)
        request = EvolveRequest(
            task=spec,
            max_seconds=max_seconds,
            generations=generations,
            population=population,
            seed=seed,
            until_fitness=until_fitness,
        )
        return self.jobs.start(request).snapshot()

    def evolution_status(self, job_id: str) -> dict[str, Any]:
        return self.jobs.get(job_id).snapshot()

    def list_evolutions(self) -> dict[str, Any]:
        return {"jobs": [job.snapshot() for job in self.jobs.jobs()]}

    def cancel_evolution(self, job_id: str) -> dict[str, Any]:
        return self.jobs.cancel(job_id).snapshot()


def build_server(tools: Tools) -> Any:
    """The SDK's `MCPServer` with every tool registered (descriptions are what a model reads)."""
    from mcp.server.mcpserver import MCPServer

    from qudag.node.cli import _version

    app: Any = MCPServer(
        "qudag-evo", instructions=INSTRUCTIONS, version=_version(), log_level="WARNING"
    )
    loopback = "" if tools.settings.allow_remote_nodes else " (loopback only)"
    node = f"http: the node's HTTP address HOST:PORT{loopback}, default {tools.settings.http}."

    def add(fn: Callable[..., Any], description: str, read_only: bool = True) -> None:
        from mcp.types import ToolAnnotations

        app.add_tool(
            _tool_errors(fn),
            name=fn.__name__,
            description=description,
            annotations=ToolAnnotations(read_only_hint=read_only),
        )

    add(
        tools.list_tasks,
        "Task specs this machine can evolve (xor, iris, digits, mnist1d, csv:PATH...). With "
        "http, also the tasks that node evolves, with generation and best fitness. " + node,
    )
    add(
        tools.leaderboard,
        "A node's templates of a task, best verified first, as the node ranks them (liars "
        "and banned authors left out; verified_fitness is the node's own measurement). task "
        f"defaults to the node's first task; limit 1-{LIST_LIMIT_MAX}. " + node,
    )
    add(
        tools.pull_template,
        "Fetch a template from a node and check it: BLAKE3 of the bytes must be its id and the "
        "ML-DSA-65 signature must verify under the author's identity. Without template_id "
        "(64 hex or a unique prefix of >= 8) takes the node's best verified one of task. "
        "Returns its summary (task, fitness, params, layers, node_verified) and a file path; "
        "run_template(template_id=...) runs it. " + node,
        read_only=False,
    )
    add(
        tools.run_template,
        "Run a template on raw feature rows: inputs is one row [x1, x2, ...] or rows "
        f"[[...], ...] (at most {MAX_INPUT_ROWS}), or csv_path a CSV file with the template's "
        "feature columns by name (scored when it also has the target column). The template: "
        "exactly one of template_id (pulled before, or pulled now from the node), job_id (an "
        "evolution job's best) or path (a template file). Classifiers give "
        '{"class", "probabilities"}, regressors {"value"}. ' + node,
    )
    add(
        tools.start_evolution,
        "Start evolving a net in the background (`qudag-node evolve`) and return its job_id. "
        "Give task (a spec from list_tasks) or csv_path (a CSV file; target column, default "
        "the last; kind classification|regression, default guessed). max_seconds bounds the "
        f"run (default {min(DEFAULT_JOB_SECONDS, tools.jobs.limits.max_seconds):g}, at most "
        f"{tools.jobs.limits.max_seconds:g}); generations, population, seed and "
        f"until_fitness are optional. At most {tools.jobs.limits.max_running} run(s) at once.",
        read_only=False,
    )
    add(
        tools.evolution_status,
        "A job's state (running, done, failed, cancelled, timed-out), progress (generation, "
        "total, best and median validation fitness, params, evals, seconds), and when it ended "
        "its result (best_fitness, test_score, template path) and messages.",
    )
    add(tools.list_evolutions, "Every evolution job of this server and its state.")
    add(
        tools.cancel_evolution,
        "Stop a running job; it saves its best net so far, so run_template(job_id=...) still "
        "works afterwards.",
        read_only=False,
    )
    add(tools.node_status, "A node's status (GET /status): peers, ledger, tasks. " + node)
    return app


__all__ = ["McpSettings", "Tools", "build_server"]
