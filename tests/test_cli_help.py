"""Issue 13 item 16: what a new user types first (`--version`, `--help`) says what it should,
and an HTTP API bound beyond loopback is called out."""

from __future__ import annotations

import pytest

from qudag.node.cli import main
from qudag.node.ops.http import exposure_warning
from qudag.simulations.studies import STUDIES, STUDY_HELP


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("qudag-node ") and out.split()[1][0].isdigit()


def test_testnet_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["testnet", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("(default: 4)", "(default: digits)", "(default: 25)", "(default: 32)"):
        assert text in out


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_simulate_study_help_describes_the_study(
    study: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert STUDY_HELP[study]
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", study, "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"study {study}:" in out and "--peers" in out


@pytest.mark.parametrize(
    ("host", "warned"),
    [
        ("127.0.0.1", False),
        ("localhost", False),
        ("::1", False),
        ("[::1]", False),
        ("0.0.0.0", True),
        ("192.168.1.5", True),
        ("node.example", True),
    ],
)
def test_http_beyond_loopback_is_warned(host: str, warned: bool) -> None:
    warning = exposure_warning(host)
    assert (warning is not None) == warned
    if warning:
        assert "no authentication" in warning
