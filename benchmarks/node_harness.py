"""The shared harness of the node benchmarks: bench_propagation.py, bench_catchup.py, bench_loop.py.

Why one harness: each of them prints the same header (CPUs, load average at start), works in a
temporary directory it removes whatever happens, and ends with one JSON object holding every
figure and the load average at start and end on the last stdout line, so a script reading the
results reads them the same way from each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_benchmark(
    part: str,
    description: str,
    body: Callable[[argparse.Namespace, Path], dict[str, Any]],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse the command line (`--quick` and the part's own options), run `body(args, tmp)`
    and print its figures under `part` in the last line's JSON object."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"bench_{part} ({'quick' if args.quick else 'full'}), {os.cpu_count()} CPUs, "
        f"load average at start {load}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_{part}-"))
    results: dict[str, Any] = {"quick": args.quick, "loadavg_start": os.getloadavg()}
    try:
        results[part] = body(args, tmp / part)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["loadavg_end"] = os.getloadavg()
    print(f"load average at end {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(json.dumps(results))
