"""`qudag-node keygen` / `id` as a user runs them: real subprocesses, exit codes, no tracebacks."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qudag.crypto.keystore import load_identity

HEX_ID = re.compile(r"^[0-9a-f]{64}$")


pytestmark = pytest.mark.multiprocess  # every test runs the `qudag-node` console script


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("QUDAG_TEST_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "qudag.node", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    for word in words:
        assert word in line, line


def test_keygen_then_id_without_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    made = run("keygen", "--out", str(path), "--backend", "pqcrypto")
    assert made.returncode == 0, made.stderr
    key_id = made.stdout.strip()
    assert HEX_ID.match(key_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_identity(path)
    assert loaded.backend == "pqcrypto" and loaded.key_id.hex() == key_id

    shown = run("id", "--key", str(path))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == key_id

    before = path.read_bytes()
    again = run("keygen", "--out", str(path))
    assert_clean_error(again, "already exists", "--force")
    assert path.read_bytes() == before

    forced = run("keygen", "--out", str(path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert HEX_ID.match(forced.stdout.strip()) and forced.stdout.strip() != key_id
    assert load_identity(path).backend == "cryptography"  # the default backend
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passphrase_protected_key(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    env = {"QUDAG_TEST_PASS": "hunter2 but longer"}
    made = run("keygen", "--out", str(path), "--passphrase-env", "QUDAG_TEST_PASS", env=env)
    assert made.returncode == 0, made.stderr
    key_id = made.stdout.strip()

    shown = run("id", "--key", str(path), "--passphrase-env", "QUDAG_TEST_PASS", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == key_id

    assert_clean_error(run("id", "--key", str(path)), "encrypted", "--passphrase-env")
    assert_clean_error(
        run("id", "--key", str(path), "--passphrase-env", "QUDAG_TEST_UNSET"),
        "QUDAG_TEST_UNSET",
        "not set",
    )
    wrong = run(
        "id",
        "--key",
        str(path),
        "--passphrase-env",
        "QUDAG_TEST_PASS",
        env={"QUDAG_TEST_PASS": "x"},
    )
    assert_clean_error(wrong, "wrong passphrase")
    for result in (made, shown, wrong):
        assert "hunter2" not in result.stdout + result.stderr


def test_bad_input_is_a_clean_error_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    assert_clean_error(
        run("keygen", "--out", str(path), "--passphrase-env", "QUDAG_TEST_UNSET"), "not set"
    )
    assert_clean_error(
        run(
            "keygen",
            "--out",
            str(path),
            "--passphrase-env",
            "QUDAG_TEST_EMPTY",
            env={"QUDAG_TEST_EMPTY": ""},
        ),
        "empty",
    )
    assert_clean_error(
        run("keygen", "--out", str(tmp_path / "missing-dir" / "node.key")), "does not exist"
    )
    assert list(tmp_path.iterdir()) == []

    assert_clean_error(run("id", "--key", str(tmp_path / "nope.key")), "not found")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key at all")
    assert_clean_error(run("id", "--key", str(garbage)), "not a QuDAG-Evo key file")

    usage = run("keygen")  # argparse: missing --out
    assert usage.returncode == 2 and "Traceback" not in usage.stderr and "--out" in usage.stderr
