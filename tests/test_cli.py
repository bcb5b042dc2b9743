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


def test_collective_study_and_testnet_baseline_refuse_bad_settings_in_one_line(
    tmp_path: object,
) -> None:
    cases = [
        (("simulate", "collective", "--peers", "1,x"), "--peers"),
        (("simulate", "collective", "--peers", "2,2"), "distinct"),
        (
            ("simulate", "sharing", "--peers", "2,4"),
            "takes a list only in the collective and scale studies",
        ),
        (("simulate", "collective", "--latency-ms", "0"), "--latency-ms"),
        (("simulate", "sharing", "--target", "0.5"), "--target"),
        (("testnet", "--baseline", "--out", f"{tmp_path}/t"), "--target"),
        (("testnet", "--baseline", "--isolated", "--target", "0.5"), "--baseline"),
    ]
    for args, words in cases:
        result = run(*args)
        assert result.returncode == 2, args
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
