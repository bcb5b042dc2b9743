"""The command line answers --help and rejects unknown commands without a traceback."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.multiprocess  # every test runs the `qudag-node` console script


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qudag.node", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_usage() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "qudag-node" in result.stdout


def test_unknown_command_is_a_clean_error() -> None:
    result = run("no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
