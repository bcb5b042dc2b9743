"""`qudag-node mcp` as an orchestrator meets it: a real subprocess driven by the MCP SDK's own
client (`mcp.stdio_client` + `ClientSession`) over stdin/stdout.

What is checked: the tools are listed; results are the project's own (a template's outputs
equal the synthesis runtime's in this process; a leaderboard equals the node's /templates; a
pulled template is the signed payload of the vertex the node serves); bad input of every kind
is a tool error with one clear line and no traceback; a lying node is caught by the id check;
evolution jobs run, report progress, are bounded (one at a time), cancel with their best net
saved, and do not outlive the server. Every session is bounded in time (`anyio.fail_after`).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import numpy as np
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from test_evolution_template import make_template

from qudag.crypto.signing import Identity
from qudag.dag.vertex import decode_vertex, make_identity_vertex
from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import Template, load_template, save_template
from qudag.node.ops.cluster import start_node, stop_all

pytestmark = [pytest.mark.multiprocess]

T = TypeVar("T")
XOR = [[0, 0], [0, 1], [1, 0], [1, 1]]
TOOLS = {
    "list_tasks",
    "leaderboard",
    "pull_template",
    "run_template",
    "start_evolution",
    "evolution_status",
    "list_evolutions",
    "cancel_evolution",
    "node_status",
}


def server_command() -> str:
    """The installed console script, as an MCP client configuration names it."""
    script = Path(sys.executable).parent / "qudag-node"
    assert script.exists(), script
    return str(script)


def with_session(
    body: Callable[[ClientSession], Awaitable[T]],
    *server_args: str,
    tmp_path: Path,
    timeout: float = 120.0,
) -> T:
    """Start `qudag-node mcp SERVER_ARGS`, run `body` on an initialized session, stop it."""
    errlog_path = tmp_path / f"mcp-stderr-{time.monotonic_ns()}.log"

    async def main() -> T:
        params = StdioServerParameters(command=server_command(), args=["mcp", *server_args])
        with open(errlog_path, "w") as errlog, anyio.fail_after(timeout):
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await body(session)

    try:
        return anyio.run(main)
    except BaseException:
        print("server stderr:\n" + errlog_path.read_text(errors="replace"), file=sys.stderr)
        raise


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert not result.is_error, f"{tool}({arguments}): {text}"
    assert isinstance(result.structured_content, dict)
    # the text content is the same JSON, for clients that read text only
    assert json.loads(result.content[0].text) == result.structured_content  # type: ignore[union-attr]
    return result.structured_content


async def call_error(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error, f"{tool}({arguments}) should fail, gave {text}"
    assert "Traceback" not in text and "\n  File " not in text, text
    return text


async def poll(
    session: ClientSession, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        snap = await call(session, "evolution_status", job_id=job_id)
        if done(snap):
            return snap
        assert time.monotonic() < deadline, f"job did not get there in {timeout} s: {snap}"
        await anyio.sleep(0.3)


def expected_classes(template: Template, rows: list[list[float]]) -> list[Any]:
    net = synthesize(template)
    try:
        out = np.asarray(net(np.asarray(rows, dtype=np.float32)))
    finally:
        net.close()
    names = template.class_names
    return [names[int(k)] if names else int(k) for k in np.argmax(out, axis=1)]


class _LyingNode(http.server.BaseHTTPRequestHandler):
    """Lists one template id, and answers every vertex request with another (valid) vertex."""

    listed = "ab" * 32
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/templates"):
            entry = {"id": self.listed, "verified": True, "verified_fitness": 1.0}
            data = json.dumps({"task": "xor", "templates": [entry]}).encode()
        else:
            data = self.body
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_tools_results_and_errors_over_stdio(tmp_path: Path) -> None:
    template = make_template(seed=5)
    path = save_template(template, tmp_path / "t.template")
    rows = [[0.5, -1.0, 2.0], [3.0, 0.0, -2.5]]
    _LyingNode.body = make_identity_vertex(Identity.generate(), 1_700_000_000_000)
    liar = http.server.HTTPServer(("127.0.0.1", 0), _LyingNode)
    threading.Thread(target=liar.serve_forever, daemon=True).start()
    liar_address = f"127.0.0.1:{liar.server_address[1]}"

    async def body(s: ClientSession) -> None:
        listed = await s.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        assert all(t.description for t in listed.tools)
        tasks = await call(s, "list_tasks")
        assert "xor" in tasks["task_specs"] and "mnist1d" in tasks["task_specs"]

        ran = await call(s, "run_template", path=str(path), inputs=rows)
        assert [p["class"] for p in ran["predictions"]] == expected_classes(template, rows)
        assert ran["rows"] == 2 and ran["template"]["task"] == template.task

        # every kind of bad input: one line, is_error, no traceback
        assert "row 1 has 2 values, the template takes 3" in await call_error(
            s, "run_template", path=str(path), inputs=[[1, 2]]
        )
        assert "validation error" in await call_error(
            s, "run_template", path=str(path), inputs="not rows"
        )
        assert "cannot read template" in await call_error(
            s, "run_template", path=str(tmp_path / "none"), inputs=[[1, 2, 3]]
        )
        assert "no evolution job" in await call_error(s, "evolution_status", job_id="feed")
        assert "no evolution job" in await call_error(s, "cancel_evolution", job_id="feed")
        assert "unknown task" in await call_error(s, "start_evolution", task="bogus")
        assert "only loopback" in await call_error(s, "node_status", http="10.1.2.3:8700")
        assert "connection refused" in await call_error(s, "node_status")  # nothing on :1
        assert "connection refused" in await call_error(s, "leaderboard", task="xor")
        assert "Unknown tool" in await call_error(s, "no_such_tool")
        # a node that serves other bytes than the id it lists: refused, nothing saved
        lie = await call_error(s, "pull_template", task="xor", http=liar_address)
        assert "not the one asked for" in lie
        assert not list((tmp_path / "work" / "templates").glob("*"))

    try:
        with_session(
            body, "--http", "127.0.0.1:1", "--work-dir", str(tmp_path / "work"), tmp_path=tmp_path
        )
    finally:
        liar.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_evolution_jobs_run_report_cancel_and_stop_with_the_server(tmp_path: Path) -> None:
    work = tmp_path / "work"
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, size=(120, 2))
    csv_file = tmp_path / "circle.csv"
    csv_file.write_text(
        "x,y,label\n" + "".join(f"{x:.4f},{y:.4f},{int(x * x + y * y < 0.5)}\n" for x, y in points)
    )

    async def body(s: ClientSession) -> None:
        started = await call(s, "start_evolution", task="xor", max_seconds=60, seed=2)
        job = started["job_id"]
        assert started["state"] == "running"
        done = await poll(s, job, lambda j: j["state"] != "running", 90)
        assert done["state"] == "done", done
        assert done["result"]["task"] == "xor" and done["result"]["test_score"] == 1.0
        assert done["progress"]["generation"] == done["result"]["generations"]
        assert load_template(done["template"]).task == "xor"
        ran = await call(s, "run_template", job_id=job, inputs=XOR)
        assert [p["class"] for p in ran["predictions"]] == [0, 1, 1, 0]

        # bounded: one run at a time (--max-jobs 1); cancel saves the best net so far
        long = await call(s, "start_evolution", task="digits", max_seconds=90, generations=500)
        running = await poll(
            s, long["job_id"], lambda j: (j["progress"] or {}).get("generation", 0) >= 1, 90
        )
        assert running["state"] == "running"
        assert "already running" in await call_error(s, "start_evolution", task="xor")
        cancelled = await call(s, "cancel_evolution", job_id=long["job_id"])
        assert cancelled["state"] == "cancelled" and cancelled["returncode"] is not None
        assert cancelled["template"] is not None  # evolve saved its best on SIGINT
        digit = [[0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
                  0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0,
                  2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]]  # fmt: skip
        ran = await call(s, "run_template", job_id=long["job_id"], inputs=digit)
        assert set(ran["predictions"][0]["probabilities"]) == {str(d) for d in range(10)}

        # a CSV file: evolve on it, then score the job's net on the same file
        table = await call(
            s, "start_evolution", csv_path=str(csv_file), target="label", generations=3, seed=1
        )
        fitted = await poll(s, table["job_id"], lambda j: j["state"] != "running", 90)
        assert fitted["state"] == "done", fitted
        assert fitted["task"].startswith(f"csv:{csv_file}:target=label")
        scored = await call(s, "run_template", job_id=table["job_id"], csv_path=str(csv_file))
        assert scored["rows"] == 120 and 0.0 <= scored["score"]["accuracy"] <= 1.0
        assert scored["score"]["classes"] == ["0", "1"]
        listed = await call(s, "list_evolutions")
        assert [j["state"] for j in listed["jobs"]] == ["done", "cancelled", "done"]

    with_session(body, "--work-dir", str(work), "--max-jobs", "1", tmp_path=tmp_path, timeout=240)
    assert (work / "jobs").is_dir()  # an explicit --work-dir is kept

    # A run still going when the server stops is stopped with it; a temporary work dir goes.
    async def leave_running(s: ClientSession) -> dict[str, Any]:
        job = await call(s, "start_evolution", task="digits", max_seconds=90, generations=500)
        return await poll(s, job["job_id"], lambda j: j["progress"] is not None, 90)

    snap = with_session(leave_running, tmp_path=tmp_path, timeout=120)
    deadline = time.monotonic() + 30
    while _alive(snap["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(snap["pid"]), "the evolution child outlived the server"
    assert not Path(snap["out_dir"]).exists()


def test_sigterm_stops_the_server_and_its_runs_at_once(tmp_path: Path) -> None:
    """`kill` of the server (what a client does when closing stdin is not enough) stops the
    evolution child and removes the temporary work dir, within seconds."""
    found: dict[str, Any] = {}

    async def body(s: ClientSession) -> None:
        job = await call(s, "start_evolution", task="digits", max_seconds=90, generations=500)
        snap = await poll(s, job["job_id"], lambda j: j["progress"] is not None, 90)
        server = int(Path(f"/proc/{snap['pid']}/stat").read_text().split(")")[-1].split()[1])
        found.update(snap, server=server)
        os.kill(server, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while (_alive(server) or _alive(snap["pid"])) and time.monotonic() < deadline:
            await anyio.sleep(0.1)

    with contextlib.suppress(BaseException):  # the session breaks: its server is gone
        with_session(body, tmp_path=tmp_path, timeout=120)
    assert found, "the job never reported progress"
    assert not _alive(found["server"]), "the server ignored SIGTERM"
    assert not _alive(found["pid"]), "the evolution child outlived the server"
    assert not Path(found["out_dir"]).exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose (its parent, the server, is gone or reaping it)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_leaderboard_pull_and_run_against_a_real_node(tmp_path: Path) -> None:
    node = start_node(
        "mcp-node",
        tmp_path / "node",
        [
            "--task", "xor", "--population", "16", "--generations", "8",
            "--publish-every", "2", "--seed", "1", "--when-done", "serve",
        ],
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str) -> bytes:
        with opener.open(f"http://{node.http}{path}", timeout=5) as reply:
            return bytes(reply.read())

    try:
        deadline = time.monotonic() + 90
        while True:
            status = json.loads(get("/status"))
            listed = json.loads(get("/templates?task=xor&limit=20"))["templates"]
            # Our own templates' held-out draws (display only) are measured after every
            # other job: wait for them, so the listing and the leaderboard read one state.
            settled = all(e.get("held_out") is not None for e in listed)
            if status.get("done") and any(e.get("verified") for e in listed) and settled:
                break
            assert time.monotonic() < deadline, f"node not done: {status}"
            time.sleep(0.5)

        async def body(s: ClientSession) -> None:
            board = await call(s, "leaderboard", task="xor")
            assert board["task"] == "xor" and board["templates"] == listed
            best = next(e for e in listed if e["verified"])
            pulled = await call(s, "pull_template", task="xor")
            assert pulled["id"] == best["id"] and pulled["signature"] == "verified"
            assert pulled["node_verified"] is True and pulled["task"] == "xor"
            payload = decode_vertex(get(f"/vertices/{best['id']}")).payload
            assert load_template(pulled["file"]) == Template.from_dict(payload)
            ran = await call(s, "run_template", template_id=best["id"][:10], inputs=XOR)
            assert ran["template"]["id"] == best["id"]
            assert [p["class"] for p in ran["predictions"]] == [0, 1, 1, 0]
            st = await call(s, "node_status")
            assert st["status"]["key_id"] == node.ready["key_id"]
            tasks = await call(s, "list_tasks", http=node.http)
            assert tasks["node_tasks"]["xor"]["generation"] == status["tasks"]["xor"]["generation"]
            unknown = await call_error(s, "pull_template", template_id="00" * 32)
            assert "no vertex" in unknown

        with_session(body, "--http", node.http, tmp_path=tmp_path)
    finally:
        stop_all([node])
