"""`qudag-node template show|export` and `qudag-node synthesize`: use a template file directly.

A template file is what `qudag-node evolve` writes (and what a peer publishes): these commands let
a user inspect it, convert it for other runtimes (ONNX, libfann), or run it on raw features
without writing any code. Every problem with the user's files or values is one clear line
(`UserError`, exit status 2).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from qudag.crypto.files import write_file_atomic
from qudag.evolution.export import ExportError, export_fann, export_onnx
from qudag.evolution.synthesis import synthesize
from qudag.evolution.template import Template, TemplateError, load_template
from qudag.node.errors import UserError

MAX_CSV_BYTES = 256 * 1024 * 1024


def _load(path: str) -> Template:
    try:
        return load_template(path)
    except TemplateError as exc:
        raise UserError(str(exc)) from None


def _show(args: argparse.Namespace) -> int:
    template = _load(args.file)
    print(json.dumps(template.summary(), indent=2))
    return 0


def _write_output(path: str, data: bytes, force: bool = False) -> None:
    """Write atomically; an existing file only with `force`, as keygen, dag export and
    templates pull do (issue 13, item 1: one rule for every output)."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"-o {path}: is a directory")
    if target.exists() and not force:
        raise UserError(f"-o {path}: exists (use --force to overwrite)")
    try:
        write_file_atomic(target, data)
    except OSError as exc:
        raise UserError(f"-o {path}: cannot write: {exc.strerror or exc}") from None


def _export(args: argparse.Namespace) -> int:
    template = _load(args.file)
    try:
        if args.format == "onnx":
            data = export_onnx(template)
        else:
            data = export_fann(template).encode("ascii")
    except ExportError as exc:
        raise UserError(f"cannot export {args.file} as {args.format}: {exc}") from None
    _write_output(args.out, data, args.force)
    print(f"wrote {args.out} ({len(data)} bytes, {args.format})")
    return 0


def _finite_matrix(rows: list[list[float]], n_inputs: int, where: str) -> np.ndarray:
    for i, row in enumerate(rows):
        if len(row) != n_inputs:
            raise UserError(
                f"{where}: row {i + 1} has {len(row)} values, the template takes {n_inputs}"
            )
        for v in row:
            if not math.isfinite(v):
                raise UserError(f"{where}: row {i + 1} has a non-finite value")
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), n_inputs)


def _parse_json_input(text: str, n_inputs: int) -> np.ndarray:
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--input: not valid JSON ({exc.msg})") from None

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise UserError("--input: expected numbers, e.g. '[0.5, 1, 2]' or '[[...], [...]]'")
        return float(v)

    if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
        rows = [[number(v) for v in r] for r in value]
    elif isinstance(value, list) and value:
        rows = [[number(v) for v in value]]
    else:
        raise UserError("--input: expected a non-empty JSON array of numbers or of rows")
    return _finite_matrix(rows, n_inputs, "--input")


def _parse_csv_input(path: str, n_inputs: int) -> np.ndarray:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CSV_BYTES:
            raise UserError(f"--csv {path}: larger than {MAX_CSV_BYTES} bytes")
        with open(p, newline="", encoding="utf-8") as fh:
            records = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except UserError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"--csv {path}: cannot read: {reason}") from None
    except csv.Error as exc:
        raise UserError(f"--csv {path}: malformed CSV: {exc}") from None
    if not records:
        raise UserError(f"--csv {path}: no rows")

    def parse_row(r: list[str]) -> list[float] | None:
        try:
            return [float(c) for c in r]
        except ValueError:
            return None

    def is_number(c: str) -> bool:
        try:
            float(c)
        except ValueError:
            return False
        return True

    # A first row with no numeric cell at all is a header; anything else is data.
    has_header = not any(is_number(c) for c in records[0])
    body = records[1:] if has_header else records
    if not body:
        raise UserError(f"--csv {path}: no data rows after the header")
    rows = []
    for i, r in enumerate(body):
        parsed = parse_row(r)
        if parsed is None:
            line = i + 1 + (1 if has_header else 0)
            raise UserError(f"--csv {path}: row {line} has a non-numeric value")
        rows.append(parsed)
    return _finite_matrix(rows, n_inputs, f"--csv {path}")


def _synthesize(args: argparse.Namespace) -> int:
    template = _load(args.file)
    n_inputs = template.genome.n_inputs
    if args.input is not None:
        x = _parse_json_input(args.input, n_inputs)
    else:
        x = _parse_csv_input(args.csv, n_inputs)
    net = synthesize(template)
    try:
        out = net(x)
        for row in out:
            record: dict[str, Any] = {"outputs": [float(v) for v in row]}
            if net.output == "logits":
                record["class"] = int(np.argmax(row))
            print(json.dumps(record))
        if args.telemetry:
            print(json.dumps(net.telemetry()), file=sys.stderr)
    finally:
        net.close()
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    template = subparsers.add_parser(
        "template",
        help="inspect a template file or export it to ONNX / FANN",
        description="Inspect a template file, or export it for other runtimes.",
    )
    actions = template.add_subparsers(dest="template_command", metavar="ACTION")
    actions.required = True

    show = actions.add_parser("show", help="print a JSON summary of a template file")
    show.add_argument("file", help="template file (as written by `qudag-node evolve`)")
    show.set_defaults(handler=_show)

    export = actions.add_parser(
        "export",
        help="export a template to ONNX or libfann's .net format",
        description=(
            "Export a template. Both formats take raw features: the template's input "
            "standardisation is folded into the first layer. FANN cannot express ReLU exactly, "
            "so such templates are refused (use ONNX)."
        ),
    )
    export.add_argument("file", help="template file")
    export.add_argument("--format", required=True, choices=("onnx", "fann"))
    export.add_argument("-o", "--out", required=True, help="output file (see --force)")
    export.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    export.set_defaults(handler=_export)

    synth = subparsers.add_parser(
        "synthesize",
        help="run a template on raw features",
        description=(
            "Synthesize a template into a network and run it on raw feature rows. Prints one "
            'JSON object per row: {"outputs": [...]} plus "class" for classifiers.'
        ),
    )
    synth.add_argument("file", help="template file")
    source = synth.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON array of one sample, or an array of samples")
    source.add_argument("--csv", help="CSV file of samples (an optional header row is skipped)")
    synth.add_argument(
        "--telemetry", action="store_true", help="print the network's telemetry on stderr"
    )
    synth.set_defaults(handler=_synthesize)
