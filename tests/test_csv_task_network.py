"""Issue 13 item 7: a csv task is one task on the network however its target was spelled, and
never the same task as another file at the same path.

Two daemons are built (not started: their cores are wired by hand, as tests/test_node_core.py
does) from the same file, one given `csv:PATH`, the other `csv:PATH:target=label`. Before the
fix the first node filed its own templates under the spec it was given while the templates said
`...:target=label`: it found none of its own, published every tick, and its peer never took
them as its task's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from qudag.evolution.genome import Genome
from qudag.evolution.tasks import TaskError, csv_task_identity, get_task
from qudag.evolution.template import from_genome
from qudag.node.daemon import Daemon
from qudag.node.ops.config import NodeConfig
from qudag.node.protocol.core import Publish, task_topic

NOW = 1_700_000_000_000


def write_data(path: Path, flip: bool = False) -> None:
    rng = np.random.default_rng(1)
    lines = ["x,y,label"]
    for _ in range(40):
        x, y = rng.uniform(-1, 1, 2)
        inside = (x * x + y * y < 0.5) != flip
        lines.append(f"{x:.4f},{y:.4f},{'inside' if inside else 'outside'}")
    path.write_text("\n".join(lines) + "\n")


def daemon(tmp_path: Path, name: str, spec: str) -> Daemon:
    config = NodeConfig(data_dir=tmp_path / name, tasks=(spec,), http="127.0.0.1:0")
    return Daemon(config)


def publish(node: Daemon) -> list[Publish]:
    task = get_task(node.config.tasks[0])
    genome = Genome.random(np.random.default_rng(0), task.n_inputs, [4], task.n_outputs)
    template = from_genome(genome, task, 0.5, latency_repeats=1)
    out = [a for a in node.core.start(NOW) if isinstance(a, Publish)]
    _, actions = node.core.publish_template(template, NOW + 1)
    return out + [a for a in actions if isinstance(a, Publish)]


def test_csv_task_spellings_are_one_task_on_two_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "data.csv")
    a = daemon(tmp_path, "a", "csv:data.csv")
    b = daemon(tmp_path, "b", "csv:data.csv:target=label")
    assert a.config.tasks == b.config.tasks
    task = a.config.tasks[0]
    assert ":target=label" in task and csv_task_identity(task) is not None
    pubs = publish(a)
    # The publisher finds its own template under its task: it does not publish again and again.
    assert len(a.core.own_templates(task)) == 1
    assert a.status()["tasks"][task]["published"] == 1
    assert not a.core.should_publish(task, 0, 0.5)
    # Its peer receives it on a topic it subscribes to and queues it for re-evaluation.
    assert {p.topic for p in pubs} >= {task_topic(t) for t in b.config.tasks}
    for p in pubs:
        b.core.on_gossip("a", p.topic, p.data, NOW + 2)
    assert b.core.reevaluation_backlog() == 1
    assert b.status()["task_mismatches"] == {}


def test_other_content_at_the_same_path_is_another_task_and_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    write_data(tmp_path / "one" / "data.csv")
    write_data(tmp_path / "two" / "data.csv", flip=True)
    monkeypatch.chdir(tmp_path / "one")
    a = daemon(tmp_path, "a", "csv:data.csv")
    pubs = publish(a)
    monkeypatch.chdir(tmp_path / "two")
    c = daemon(tmp_path, "c", "csv:data.csv")
    assert a.config.tasks != c.config.tasks  # same path and options, other content
    with caplog.at_level(logging.WARNING, logger="qudag.node"):
        for p in pubs:
            c.core.on_gossip("a", p.topic, p.data, NOW + 2)
    assert c.core.reevaluation_backlog() == 0  # not compared against other data
    assert c.status()["task_mismatches"] == {a.config.tasks[0]: 1}
    assert "other content" in caplog.text
    # The canonical name pins the content: it cannot be loaded over the other file.
    with pytest.raises(TaskError, match="different file at the same path"):
        get_task(a.config.tasks[0])
