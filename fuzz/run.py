"""Long fuzz runs of every decoder of outside bytes (outside CI): atheris or random mutation.

    python fuzz/run.py --engine atheris --runs 150000            # every target, one process each
    python fuzz/run.py --engine atheris --target vertex --runs 1000000
    python fuzz/run.py --engine random --runs 100000 --seed 1    # no atheris needed

The targets and their oracles are in fuzz/targets.py. With atheris (coverage-guided libFuzzer,
`pip install atheris`) each target runs in its own process, instrumented over the `qudag`
package only, seeded with the target's genuine inputs; a crash or an invalid input accepted
stops that process and leaves the input in OUT/<target>/crash-*. The random engine applies the
stacked byte mutations of `targets.mutate` to the seeds, records every failure in OUT and keeps
going. Both print one JSON line per target and a total: inputs run, accepted, crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_NAMES = (
    "vertex",
    "vertex-stream",
    "sync-message",
    "handshake-hello",
    "handshake-accept",
    "handshake-header",
    "sync-frame",
    "key-file",
    "template",
    "config-toml",
    "template-walk",  # last: the random engine seeds each target by its index here
)


def _atheris_child(target_name: str, libfuzzer_args: list[str]) -> None:
    """Inside the per-target process: instrument qudag, then hand control to libFuzzer."""
    import atheris

    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=["qudag"]):
        import targets
    target = {t.name: t for t in targets.build_targets()}[target_name]
    # The seeds are written here, by the process that judges them: keys, KEM keys and nonces
    # are fresh per process, and the oracles know this process's genuine inputs only.
    corpus = Path(libfuzzer_args[-1])
    for i, seed in enumerate(target.seeds):
        (corpus / f"seed-{i}").write_bytes(seed)

    def one_input(data: bytes) -> None:
        target.run(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one_input)
    atheris.Fuzz()


def _run_atheris(names: list[str], runs: int, out: Path, max_total_time: int) -> list[dict]:
    import shutil

    results = []
    for name in names:
        corpus = out / name / "corpus"
        shutil.rmtree(corpus, ignore_errors=True)  # a corpus of another run has other keys
        corpus.mkdir(parents=True)
        for old in (out / name).glob("crash-*"):
            old.unlink()
        args = [
            f"-runs={runs}",
            "-max_len=131072",
            f"-artifact_prefix={out / name}/",
            "-print_final_stats=1",
            f"-max_total_time={max_total_time}",
            str(corpus),
        ]
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", name, "--", *args],
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - t0
        log = proc.stderr
        (out / name / "libfuzzer.log").write_text(log)
        done = re.findall(r"Done (\d+) runs in (\d+) second", log)
        execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
        count = int(done[-1][0]) if done else int(execs[-1]) if execs else 0
        crashes = sorted(p.name for p in (out / name).glob("crash-*"))
        results.append(
            {
                "target": name,
                "engine": "atheris",
                "inputs": count,
                "seconds": round(elapsed, 1),
                "exit": proc.returncode,
                "crashes": len(crashes),
                "crash_files": crashes,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def _run_random(names: list[str], runs: int, out: Path, seed: int) -> list[dict]:
    import numpy as np

    sys.path.insert(0, str(HERE))
    import targets

    built = {t.name: t for t in targets.build_targets()}
    results = []
    for name in names:
        target = built[name]
        rng = np.random.default_rng([seed, TARGET_NAMES.index(name)])
        failures = 0
        t0 = time.monotonic()
        for i in range(runs):
            data = targets.mutate(rng, target.seeds)
            try:
                target.run(data)
            except Exception:
                failures += 1
                folder = out / name
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"crash-{i}").write_bytes(data)
                (folder / f"crash-{i}.txt").write_text(traceback.format_exc())
        results.append(
            {
                "target": name,
                "engine": "random",
                "inputs": runs,
                "seconds": round(time.monotonic() - t0, 1),
                "accepted": target.stats["accepted"],
                "crashes": failures,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    targets.cleanup()
    return results


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        _atheris_child(sys.argv[2], sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    parser.add_argument("--target", action="append", choices=TARGET_NAMES, default=None)
    parser.add_argument("--runs", type=int, default=100_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1, help="random engine seed")
    parser.add_argument("--max-time", type=int, default=3600, help="atheris: seconds per target")
    parser.add_argument("--out", default="/tmp/qudag-fuzz", help="corpora, logs, crash inputs")
    args = parser.parse_args()
    names = args.target or list(TARGET_NAMES)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.engine == "atheris":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install atheris); use --engine random")
            return 2
        results = _run_atheris(names, args.runs, out, args.max_time)
    else:
        results = _run_random(names, args.runs, out, args.seed)
    total = {
        "total_inputs": sum(r["inputs"] for r in results),
        "total_crashes": sum(r["crashes"] for r in results),
        "engine": args.engine,
        "pid": os.getpid(),
    }
    print(json.dumps(total), flush=True)
    (out / f"summary-{args.engine}.json").write_text(json.dumps([*results, total], indent=1))
    return 1 if total["total_crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
