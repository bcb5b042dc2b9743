"""Issue 13, "sharp edges a new user hits": each test tries a command the wrong way, as a new
user would, and checks that nothing of the user's is lost and the error is one line (exit 2)."""

from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qudag.evolution.engine import Evolution
from qudag.evolution.template import load_template
from qudag.node.cli import main
from qudag.node.errors import UserError
from qudag.node.ops.outdir import MARKER, OutDir
from qudag.node.ops.preflight import DataDirLock


def _no_nodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stop `testnet` where it would start its first node (after it prepared --out)."""
    started: list[Path] = []

    def fake_start(launches: list[tuple[str, Path, object, object]]) -> None:
        started.extend(data_dir for _, data_dir, _, _ in launches)
        raise UserError("no nodes in this test")

    monkeypatch.setattr("qudag.node.commands.testnet.start_nodes", fake_start)
    return started


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# --- item 1: --out never deletes what the command did not create -------------------------


def test_testnet_out_refuses_a_users_directory_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = _no_nodes(monkeypatch)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years of work")
    assert main(["testnet", "--nodes", "1", "--out", str(precious)]) == 2
    _one_line_error(capsys, "not written by qudag-node testnet", "nothing was deleted")
    assert (precious / "thesis.txt").read_text() == "four years of work"
    assert main(["testnet", "--nodes", "1", "--out", str(precious), "--force"]) == 2
    _one_line_error(capsys, "nothing was deleted")
    assert (precious / "thesis.txt").exists()
    monkeypatch.chdir(precious)
    assert main(["testnet", "--nodes", "1", "--out", "."]) == 2
    _one_line_error(capsys, "--out .")
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    assert started == []


def test_testnet_force_replaces_only_its_own_earlier_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = _no_nodes(monkeypatch)
    out = tmp_path / "net"
    earlier = OutDir(out, "testnet")
    earlier.prepare(["node0", "summary.json"])
    earlier.record("node0", "summary.json")
    (out / "node0").mkdir()
    (out / "node0" / "ledger.sqlite3").write_text("old")
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("mine")  # the user's, added later
    assert main(["testnet", "--nodes", "1", "--out", str(out)]) == 2
    _one_line_error(capsys, "earlier run", "--force", "--keep")
    assert (out / "node0" / "ledger.sqlite3").exists() and started == []
    assert main(["testnet", "--nodes", "1", "--out", str(out), "--force"]) == 2  # fake start
    assert not (out / "node0" / "ledger.sqlite3").exists()
    assert not (out / "summary.json").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert started == [out / "node0"]
    # a file the user named like one of ours, in our directory, is not ours either
    (out / "best_fitness.png").write_text("the user's plot")
    assert main(["testnet", "--nodes", "1", "--out", str(out), "--force"]) == 2
    assert (out / "best_fitness.png").read_text() == "the user's plot"


def test_evolve_out_asks_for_force_and_keeps_the_users_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.template").write_text("not a template: the user's file")
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(mine)]) == 2
    assert (
        main(["evolve", "--task", "xor", "--generations", "2", "--out", str(mine), "--force"]) == 2
    )
    assert (mine / "best.template").read_text() == "not a template: the user's file"
    out = tmp_path / "run"
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out)]) == 2
    _one_line_error(capsys, "earlier run", "--force", "--resume")
    assert (
        main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out), "--force"]) == 0
    )
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["evolve", "--resume", str(out), "--generations", "3"]) == 0
    assert (out / MARKER).exists()


def test_template_export_asks_before_overwriting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["evolve", "--task", "xor", "--generations", "2", "--out", str(out)]) == 0
    target = tmp_path / "model.onnx"
    target.write_text("the user's model")
    tpl = str(out / "best.template")
    capsys.readouterr()
    assert main(["template", "export", tpl, "--format", "onnx", "-o", str(target)]) == 2
    _one_line_error(capsys, "exists", "--force")
    assert target.read_text() == "the user's model"
    assert main(["template", "export", tpl, "--format", "onnx", "-o", str(target), "--force"]) == 0
    assert target.stat().st_size > 100


# --- items 5 and 6: evolve stops where asked, and Ctrl-C keeps the best net -------------


def test_ctrl_c_during_evolve_saves_the_best_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = Evolution.step
    calls = {"n": 0}

    def interrupted_step(self: Evolution) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self)  # type: ignore[no-any-return]

    monkeypatch.setattr(Evolution, "step", interrupted_step)
    out = tmp_path / "run"
    argv = ["evolve", "--task", "digits", "--population", "8", "--generations", "50"]
    assert main([*argv, "--out", str(out)]) == 130
    template = load_template(out / "best.template")
    assert template.task == "digits"
    assert (out / "checkpoint.qcp").exists() and (out / "logbook.csv").exists()


def test_evolve_until_fitness_and_max_seconds(tmp_path: Path) -> None:
    import json

    from qudag.node.commands.evolve import stop_reason

    args = argparse.Namespace(until_fitness=0.5, max_seconds=None)
    assert stop_reason(0.6, 0.0, args) == "reached --until-fitness 0.5"
    assert stop_reason(0.4, 0.0, args) is None
    out = tmp_path / "run"
    argv = ["evolve", "--task", "xor", "--no-early-stop", "--generations", "500", "--json"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*argv, "--out", str(out), "--until-fitness=-1e9"]) == 0
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert summary["generations"] == 0 and summary["stopped_by"].startswith("reached")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([*argv, "--out", str(out), "--force", "--max-seconds", "0.001"]) == 0
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert summary["generations"] == 0 and summary["stopped_by"].startswith("spent")


# --- items 2-4: one node per data directory and port; check before creating anything -----

RUN = [sys.executable, "-m", "qudag.node", "run", "--task", "xor"]
HOLD_LOCK = (
    "import sys, time; from pathlib import Path; from qudag.node.ops.preflight import "
    "DataDirLock; DataDirLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); "
    "time.sleep(60)"
)


def _run_node(*args: str) -> subprocess.CompletedProcess[str]:
    """`qudag-node run` that must refuse to start: bounded, so a node that starts fails."""
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.multiprocess
def test_a_second_node_on_one_data_directory_is_refused_and_a_stale_lock_is_not(
    tmp_path: Path,
) -> None:
    data = tmp_path / "state"
    data.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(data)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = _run_node("--data-dir", str(data), "--http", "127.0.0.1:0")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and f"pid {holder.pid}" in result.stderr
        assert not (data / "node.key").exists()
        (tmp_path / "empty.bin").write_bytes(b"")
        imported = subprocess.run(
            [sys.executable, "-m", "qudag.node", "dag", "import", "--data-dir", str(data)]
            + ["--in", str(tmp_path / "empty.bin")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert imported.returncode == 2 and "in use" in imported.stderr, imported.stderr
    finally:
        holder.kill()  # kill -9: the lock file stays, the lock does not
        holder.wait()
    assert (data / "node.lock").exists()
    lock = DataDirLock(data)
    lock.acquire()
    lock.release()


def _listening(reuseport: bool) -> socket.socket:
    """A listener as py-libp2p opens it (SO_REUSEPORT), or as trio does."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.multiprocess
def test_taken_ports_are_refused_in_one_line_before_anything_is_created(tmp_path: Path) -> None:
    with _listening(reuseport=True) as p2p, _listening(reuseport=False) as http:
        p2p_port, http_port = p2p.getsockname()[1], http.getsockname()[1]
        data = tmp_path / "a"
        listen = f"/ip4/127.0.0.1/tcp/{p2p_port}"
        result = _run_node("--data-dir", str(data), "--http", "127.0.0.1:0", "--listen", listen)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "--listen" in result.stderr, result.stderr
        result = _run_node("--data-dir", str(data), "--http", f"127.0.0.1:{http_port}")
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "already in use" in result.stderr
        assert not data.exists()


def test_a_port_lost_after_the_check_is_still_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bind itself failing inside the daemon's nurseries (exception groups) is one line."""
    monkeypatch.setattr("qudag.node.daemon.check_port_free", lambda *a: None)
    with _listening(reuseport=False) as http:
        port = http.getsockname()[1]
        argv = ["run", "--task", "xor", "--data-dir", str(tmp_path / "a")]
        try:
            assert main([*argv, "--http", f"127.0.0.1:{port}"]) == 2
        finally:  # `run` installed its log handler on this test's captured stderr
            from qudag.node.ops import logs

            if logs._installed is not None:
                logging.getLogger().removeHandler(logs._installed)
                logs._installed = None
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and "ExceptionGroup" not in "\n".join(err), err
    assert err[-1].startswith("qudag-node run: error: cannot listen for HTTP"), err
    assert [line for line in err if "error" in line.lower()] == err[-1:], err


def test_a_failed_dag_import_leaves_no_data_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"garbage")
    assert main(["dag", "import", "--data-dir", str(tmp_path / "new"), "--in", str(bad)]) == 2
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "notes.txt").write_text("mine")
    assert main(["dag", "import", "--data-dir", str(old), "--in", str(bad)]) == 2
    assert sorted(p.name for p in old.iterdir()) == ["notes.txt"]


# --- item 5: `run` stops by itself where asked ---------------------------------------------


@pytest.mark.parametrize(
    ("limit", "reason"),
    [(["--generations", "2"], "reached --generations 2"), (["--max-seconds", "1"], "spent")],
)
@pytest.mark.multiprocess
def test_run_exits_by_itself_once_every_task_is_done(
    tmp_path: Path, limit: list[str], reason: str
) -> None:
    result = subprocess.run(
        [*RUN, "--population", "8", "--data-dir", str(tmp_path / "a"), "--http", "127.0.0.1:0"]
        + limit,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert reason in result.stderr and "exiting" in result.stderr.splitlines()[-1]
    assert "INFO qudag.node: progress: xor gen" in result.stderr  # item 8: it says what it did


# --- item 8: every log line has a time and a level; repeats do not flood ------------------


def test_libp2p_lines_are_timestamped_and_repeated_warnings_rate_limited() -> None:
    import io
    import logging
    import re

    import qudag.node.net.transport  # noqa: F401 - libp2p configures its loggers on import
    from qudag.node.ops.logs import RepeatFilter, setup_logging

    libp2p = logging.getLogger("libp2p")
    propagate, level = libp2p.propagate, logging.getLogger().level
    buf = io.StringIO()
    handler = setup_logging("INFO", stream=buf)
    try:
        tcp = logging.getLogger("libp2p.transport.tcp.tcp")
        for i in range(96):  # a minute of redials to a peer that moved
            tcp.error("Failed to open TCP stream: %s", f"attempt {i} refused")
        lines = buf.getvalue().splitlines()
        assert len(lines) == 1, lines
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR libp2p\.", lines[0])
        logging.getLogger("libp2p.network.auto_connector").info("chatter")
        assert len(buf.getvalue().splitlines()) == 1
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
        libp2p.propagate = propagate

    now = [0.0]
    repeats = RepeatFilter(window_s=60, clock=lambda: now[0])

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 1, msg, ("arg",), None)

    assert repeats.filter(record("peer %s gone"))
    assert not any(repeats.filter(record("peer %s gone")) for _ in range(95))
    assert repeats.filter(record("other %s"))  # another kind is news
    assert repeats.filter(record("progress %s", logging.INFO))  # INFO always passes
    assert repeats.filter(record("progress %s", logging.INFO))
    now[0] = 61.0
    again = record("peer %s gone")
    assert repeats.filter(again) and "95 more like this" in again.getMessage()
