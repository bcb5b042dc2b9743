"""The MCP server's tools called in-process (no MCP transport, no child process): what each
refuses and what `run_template` computes. tests/test_mcp_stdio.py drives the same tools
through the SDK's client over stdio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_evolution_template import make_template

from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import save_template
from qudag.node.errors import UserError
from qudag.node.ops.evolve_jobs import JobLimits, JobManager
from qudag.node.ops.mcp_server import McpSettings, Tools


def make_tools(tmp_path: Path, allow_remote: bool = False) -> Tools:
    settings = McpSettings("127.0.0.1:1", "--http", 1.0, allow_remote, tmp_path)
    return Tools(settings, JobManager(tmp_path / "jobs", JobLimits(max_seconds=30)))


def test_run_template_gives_the_runtime_s_outputs(tmp_path: Path) -> None:
    template = make_template(seed=3)  # iris-like: 3 inputs, 2 classes
    path = save_template(template, tmp_path / "t.template")
    rows = [[0.1, -2.0, 3.5], [1.0, 0.0, -1.0], [5.0, 5.0, 5.0]]
    result = make_tools(tmp_path).run_template(inputs=rows, path=str(path))
    net = synthesize(template)
    try:
        expected = np.asarray(net(np.asarray(rows, dtype=np.float32)))
    finally:
        net.close()
    assert result["rows"] == 3 and result["template"]["task"] == template.task
    names = template.class_names or tuple(str(i) for i in range(expected.shape[1]))
    for record, logits in zip(result["predictions"], expected, strict=True):
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        assert record["class"] in (names[int(np.argmax(logits))], int(np.argmax(logits)))
        got = [record["probabilities"][n] for n in names]
        assert np.allclose(got, probs, atol=1e-5)
    one = make_tools(tmp_path).run_template(inputs=rows[0], path=str(path))
    assert one["predictions"] == result["predictions"][:1]  # one row or a list of rows


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": [[1.0, 2.0]]}, "row 1 has 2 values, the template takes 3"),
        ({"inputs": []}, "non-empty"),
        ({"inputs": [[1.0, 2.0, 1e39]]}, "overflows float32"),
        ({}, "exactly one of inputs"),
        ({"inputs": [[1.0, 2.0, 3.0]], "csv_path": "x.csv"}, "exactly one of inputs"),
    ],
)
def test_run_template_refuses_bad_inputs(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = save_template(make_template(seed=3), tmp_path / "t.template")
    with pytest.raises(UserError, match=message):
        make_tools(tmp_path).run_template(path=str(path), **kwargs)


def test_run_template_needs_exactly_one_template(tmp_path: Path) -> None:
    tools = make_tools(tmp_path)
    with pytest.raises(UserError, match="exactly one of template_id, job_id or path"):
        tools.run_template(inputs=[1.0])
    with pytest.raises(UserError, match="exactly one of template_id, job_id or path"):
        tools.run_template(inputs=[1.0], path="a", job_id="b")
    with pytest.raises(UserError, match="no evolution job"):
        tools.run_template(inputs=[1.0], job_id="0123")
    with pytest.raises(UserError, match="cannot read template"):
        tools.run_template(inputs=[1.0], path=str(tmp_path / "missing.template"))


def test_node_addresses_from_callers_are_loopback_only(tmp_path: Path) -> None:
    tools = make_tools(tmp_path)
    for address in ("10.0.0.1:8700", "example.org:8700", "http://192.168.1.2:80"):
        with pytest.raises(UserError, match="only loopback"):
            tools.node_status(address)
    with pytest.raises(UserError, match="connection refused"):  # allowed, nothing there
        tools.node_status("127.0.0.1:1")
    with pytest.raises(UserError, match="connection refused"):
        make_tools(tmp_path).leaderboard(task="xor", http="localhost:1")
    with pytest.raises(UserError, match="cannot connect|no answer|refused"):
        make_tools(tmp_path, allow_remote=True).node_status("192.0.2.1:9")  # TEST-NET: allowed
    with pytest.raises(UserError, match="limit must be between 1 and 100"):
        tools.leaderboard(task="xor", limit=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "no-such-task"}, "unknown task"),
        ({}, "exactly one of task"),
        ({"task": "xor", "csv_path": "a.csv"}, "exactly one of task"),
        ({"task": "xor", "target": "y"}, "target and kind go with csv_path"),
        ({"csv_path": "/nonexistent/a.csv"}, "no such file"),
        ({"task": "xor", "max_seconds": 31}, "at most 30"),
        ({"task": "xor", "max_seconds": 0}, "max_seconds must be > 0"),
        ({"task": "xor", "generations": 0}, "generations must be between"),
        ({"task": "xor", "population": 1}, "population must be between"),
        ({"task": "xor", "seed": -1}, "seed must be between"),
    ],
)
def test_start_evolution_refuses_bad_requests_before_starting_anything(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    tools = make_tools(tmp_path)
    with pytest.raises(UserError, match=message):
        tools.start_evolution(**kwargs)
    assert tools.list_evolutions() == {"jobs": []}
    assert not (tmp_path / "jobs").exists()


def test_help_names_every_tool_the_server_registers(tmp_path: Path, capsys) -> None:
    """`qudag-node mcp --help` is where a person learns the tools: it must not fall behind."""
    import anyio

    from qudag.node.cli import main
    from qudag.node.ops.mcp_server import build_server

    registered = anyio.run(build_server(make_tools(tmp_path)).list_tools)
    with pytest.raises(SystemExit) as exited:
        main(["mcp", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    names = {tool.name for tool in registered}
    assert len(names) == 9
    for name in names:
        assert name in text, f"--help does not mention {name}"
    for option in ("--http", "--work-dir", "--max-jobs", "--max-job-seconds", "mcpServers"):
        assert option in text
