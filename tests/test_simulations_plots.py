"""Issue 13 item 15: plots of a `--quick` study (one x point, nearly equal y values) stay
readable: the point is drawn, and the y axis has no offset like '1e-11+9.999999999e-1'."""

from __future__ import annotations

from pathlib import Path

from qudag.simulations.report import new_figure, save_figure


def test_quick_plot_shows_its_point_without_an_axis_offset(tmp_path: Path) -> None:
    fig, axes = new_figure(2)
    axes[0].plot([1], [0.9999999999], label="sharing")
    axes[0].plot([1], [1.0], label="isolated")
    axes[1].plot([0, 1, 2], [0.9999999999, 1.0, 0.99999999995])
    save_figure(fig, tmp_path / "quick.png")
    assert (tmp_path / "quick.png").stat().st_size > 0
    for ax in axes:
        assert ax.yaxis.get_major_formatter().get_offset() == ""
        low, high = ax.get_ylim()
        assert high - low > 0.01  # a visible span, not 1e-10
    assert all(line.get_marker() == "o" for line in axes[0].get_lines())
    assert any("one point" in t.get_text() for t in axes[0].texts)
