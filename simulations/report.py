"""What every study writes: a CSV, a PNG and a markdown report that says how to regenerate it.

Why the header: a number without its command, seeds and code version cannot be checked, so the
report's first lines are the exact command, `git describe` of the tree that produced it, the
parameters and the seeds.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


@functools.cache
def code_version() -> str:
    """`git describe --always --dirty` of the source tree, or 'unknown' outside git.

    Read once per process: a study calls it when it starts (`qudag-node simulate`), so a
    report names the code that ran, not a commit made while it ran."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def command_line() -> str:
    """The command that is running, as a user would retype it."""
    argv = list(sys.argv)
    prog = Path(argv[0]).name if argv else "qudag-node"
    if prog in ("__main__.py", "-m"):
        prog = "python -m qudag.simulations"
    return shlex.join([prog, *argv[1:]])


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000 or value == int(value) and abs(value) >= 10:
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_report(
    out: Path,
    name: str,
    title: str,
    *,
    command: str,
    params: dict[str, Any],
    seeds: Sequence[int],
    wall_s: float,
    sections: Sequence[tuple[str, str]],
    figures: Sequence[str],
) -> Path:
    """`out/<name>.md`: header (command, version, parameters, seeds), sections, figures."""
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"- code version: `{code_version()}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        f"- seeds: {', '.join(str(s) for s in seeds)}",
        f"- wall time: {wall_s:.1f} s",
        "",
        "## Parameters",
        "",
    ]
    for k, v in params.items():
        lines.append(f"- `{k}`: {v}")
    for heading, body in sections:
        lines += ["", f"## {heading}", "", body]
    for fig in figures:
        lines += ["", f"![{fig}]({fig})"]
    path = out / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def new_figure(ncols: int = 1, width: float = 6.0, height: float = 4.0) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def _readable(ax: Any) -> None:
    """Keep a plot readable when a run is too short for curves (`--quick`): a series of one
    point gets a marker (a line of one point draws nothing), a flat y range gets a visible
    span, and tick labels are plain numbers (never "1e-11+9.999999999e-1")."""
    lines = ax.get_lines()
    if not lines:
        return
    one_point = False
    ys: list[float] = []
    for line in lines:
        xdata, ydata = line.get_xdata(), line.get_ydata()
        ys.extend(float(v) for v in ydata if v == v)
        if len(xdata) == 1:
            one_point = True
            if line.get_marker() in ("None", None, "", " "):
                line.set_marker("o")
    for axis in ("x", "y"):
        try:
            ax.ticklabel_format(axis=axis, useOffset=False, style="plain")
        except AttributeError:  # not a scalar axis (log, categories): nothing to do
            pass
    if ys:
        low, high = min(ys), max(ys)
        span = high - low
        if span <= 1e-6 * max(1.0, abs(high)):
            pad = max(0.05 * abs(high), 0.05)
            ax.set_ylim(low - pad, high + pad)
    if one_point:
        ax.annotate(
            "one point per series: a longer run draws curves",
            (0.5, 0.02),
            xycoords="axes fraction",
            ha="center",
            fontsize=8,
            color="gray",
        )


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    for ax in fig.get_axes():
        _readable(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
