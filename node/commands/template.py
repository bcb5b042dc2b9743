"""`qudag-node template show|export` and `qudag-node synthesize`: use a template file directly.

A template file is what `qudag-node evolve` writes (and what a peer publishes): these commands let
a user inspect it, convert it for other runtimes (ONNX, libfann, WebAssembly, C), or run it on raw
features without writing any code. Every problem with the user's files or values is one clear line
(`UserError`, exit status 2).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from qudag.crypto.files import write_file_atomic
from qudag.evolution.export import ExportError, export_fann, export_onnx
from qudag.evolution.export_native import export_c, export_wasm
from qudag.evolution.synthesis import synthesize
from qudag.evolution.tasks import CsvTable, TaskError, read_csv_table
from qudag.evolution.template import Template, TemplateError, load_template
from qudag.node.errors import UserError

MAX_CSV_BYTES = 256 * 1024 * 1024
FLOAT32_MAX = float(np.finfo(np.float32).max)


def read_template(path: str) -> Template:
    """A template file, strictly decoded; a bad file is one `UserError` line, not a traceback
    (used by these commands and by the MCP server's `run_template`)."""
    try:
        return load_template(path)
    except TemplateError as exc:
        raise UserError(str(exc)) from None


def _show(args: argparse.Namespace) -> int:
    template = read_template(args.file)
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


EXPORT_SUFFIXES = {".onnx": "onnx", ".net": "fann", ".wasm": "wasm", ".c": "c"}


def _export(args: argparse.Namespace) -> int:
    if args.format is None:
        args.format = EXPORT_SUFFIXES.get(Path(args.out).suffix.lower())
        if args.format is None:
            raise UserError(
                f"cannot tell the format from -o {args.out}: name it .onnx, .net, .wasm or .c, "
                "or give --format onnx|fann|wasm|c"
            )
    template = read_template(args.file)
    try:
        if args.format == "onnx":
            data = export_onnx(template)
        elif args.format == "wasm":
            data = export_wasm(template)
        elif args.format == "c":
            data = export_c(template).encode("ascii")
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
            if abs(v) > FLOAT32_MAX:  # the nets compute in float32
                raise UserError(
                    f"{where}: row {i + 1}: {v:g} overflows float32 (largest {FLOAT32_MAX:.4g})"
                )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), n_inputs)


def _parse_json_input(text: str, n_inputs: int) -> np.ndarray:
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--input: not valid JSON ({exc.msg})") from None
    return input_rows(value, n_inputs, "--input")


def input_rows(value: Any, n_inputs: int, where: str) -> np.ndarray:
    """Rows of raw features from decoded JSON: one sample (an array of numbers) or several (an
    array of arrays), each checked for length, finiteness and float32 range. Shared by
    `synthesize --input` and the MCP server's `run_template`, so both refuse the same inputs
    with the same words."""

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise UserError(f"{where}: expected numbers, e.g. [0.5, 1, 2] or [[...], [...]]")
        return float(v)

    if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
        rows = [[number(v) for v in r] for r in value]
    elif isinstance(value, list) and value:
        rows = [[number(v) for v in value]]
    else:
        raise UserError(f"{where}: expected a non-empty JSON array of numbers or of rows")
    return _finite_matrix(rows, n_inputs, where)


def _read_table(path: str) -> CsvTable:
    """The file as the tasks read it: separator sniffed, header detected."""
    if not Path(path).exists():
        raise UserError(f"--csv {path}: cannot read: no such file")
    try:
        if Path(path).is_file() and Path(path).stat().st_size > MAX_CSV_BYTES:
            raise UserError(f"--csv {path}: larger than {MAX_CSV_BYTES} bytes")
        return read_csv_table(path)
    except TaskError as exc:
        raise UserError(f"--csv {path}: {exc}") from None


def csv_input(path: str, template: Template) -> tuple[np.ndarray, list[str] | None]:
    """(raw feature rows, target cells or None) of a csv file for `template`.

    A template that records its feature names takes its columns *by name*, in any order, with
    other columns ignored; its target column, if present, is returned for scoring. An older
    template without names takes the first n_inputs columns by position.
    """
    table = _read_table(path)
    n_inputs = template.genome.n_inputs
    where = f"--csv {path}"
    if not table.rows:
        raise UserError(f"{where}: no data rows after the header")
    target: list[str] | None = None
    if template.feature_names:
        if not table.has_header:
            raise UserError(
                f"{where}: no header row; the template reads columns by name: "
                + ", ".join(template.feature_names)
            )
        missing = [n for n in template.feature_names if n not in table.header]
        if missing:
            raise UserError(
                f"{where}: no column {missing[0]!r} (the template takes "
                + ", ".join(template.feature_names)
                + f"; the file has {', '.join(table.header)})"
            )
        cols = [table.header.index(n) for n in template.feature_names]
        t_col = (
            table.header.index(template.target_name)
            if template.target_name in table.header
            else None
        )
    else:
        cols = list(range(n_inputs))
        t_col = None
    first = 2 if table.has_header else 1
    rows: list[list[float]] = []
    for i, r in enumerate(table.rows):
        if len(r) != len(table.header):
            raise UserError(
                f"{where}: line {i + first} has {len(r)} fields, "
                f"the first row has {len(table.header)}"
            )
        if len(r) < n_inputs:
            raise UserError(
                f"{where}: line {i + first} has {len(r)} values, the template takes {n_inputs}"
            )
        try:
            rows.append([float(r[c]) for c in cols])
        except ValueError:
            raise UserError(f"{where}: line {i + first} has a non-numeric value") from None
    if t_col is not None:
        target = [r[t_col].strip() for r in table.rows]
    return _finite_matrix(rows, n_inputs, where), target


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _class_index(label: str, names: tuple[str, ...]) -> int | None:
    """The class a target cell names ('1.0' is class '1', as the tasks number them)."""
    if label in names:
        return names.index(label)
    try:
        value = float(label)
    except ValueError:
        return None
    text = str(int(value)) if value == round(value) else repr(value)
    return names.index(text) if text in names else None


def score_predictions(
    template: Template, out: np.ndarray, target: list[str], where: str
) -> dict[str, Any]:
    """What scikit-learn's `score` reports: accuracy (and the confusion matrix) or R^2."""
    if template.output == "logits":
        names = template.class_names or tuple(str(i) for i in range(out.shape[1]))
        truth = []
        for i, label in enumerate(target):
            k = _class_index(label, names)
            if k is None:
                raise UserError(
                    f"{where}: row {i + 1}: {template.target_name or 'target'} {label!r} is not "
                    f"a class of the template ({', '.join(names)})"
                )
            truth.append(k)
        y = np.array(truth)
        pred = np.argmax(out, axis=1)
        matrix = np.zeros((len(names), len(names)), dtype=np.int64)
        np.add.at(matrix, (y, pred), 1)
        return {
            "rows": len(y),
            "accuracy": float(np.mean(pred == y)),
            "classes": list(names),
            "confusion_matrix": matrix.tolist(),  # rows: true class, columns: predicted
        }
    try:
        y_true = np.array([float(v) for v in target], dtype=np.float64)
    except ValueError:
        raise UserError(f"{where}: the target column has a non-numeric value") from None
    pred_v = out[:, 0].astype(np.float64)
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    ss_res = float(np.sum((y_true - pred_v) ** 2))
    return {
        "rows": len(y_true),
        "r2": (1.0 - ss_res / ss_tot) if ss_tot > 0 else None,
        "mae": float(np.mean(np.abs(y_true - pred_v))),
    }


def _records(template: Template, out: np.ndarray) -> tuple[list[str], list[list[Any]]]:
    """CSV header and rows of predictions: the class and its probabilities, or the value."""
    if template.output == "logits":
        names = template.class_names or tuple(str(i) for i in range(out.shape[1]))
        probs = _softmax(out)
        header = ["prediction", *(f"p_{n}" for n in names)]
        rows = [[names[int(np.argmax(p))], *(round(float(v), 6) for v in p)] for p in probs]
        return header, rows
    return ["prediction"], [
        [float(row[0]) if len(row) == 1 else list(map(float, row))] for row in out
    ]


def json_record(template: Template, out_row: np.ndarray) -> dict[str, Any]:
    if template.output == "logits":
        names = template.class_names or tuple(str(i) for i in range(len(out_row)))
        probs = _softmax(out_row[None, :])[0]
        k = int(np.argmax(out_row))
        return {
            "class": names[k] if template.class_names else k,
            "probabilities": {n: round(float(p), 6) for n, p in zip(names, probs, strict=True)},
        }
    values = [float(v) for v in out_row]
    record: dict[str, Any] = {"value": values[0] if len(values) == 1 else values}
    if template.target_name:
        record["target"] = template.target_name
    return record


def run_net(net: Any, x: np.ndarray, where: str) -> np.ndarray:
    """The net's outputs for rows `x`; an output that is not finite is the user's input far
    outside the training range (a net in float32 overflows), said as such, not returned."""
    with np.errstate(all="ignore"):
        out = np.asarray(net(x), dtype=np.float32)
    bad = np.flatnonzero(~np.all(np.isfinite(out), axis=1))
    if bad.size:
        raise UserError(
            f"{where}: row {int(bad[0]) + 1}: the net's outputs overflow (not finite); "
            "are the inputs far outside the range of the training data?"
        )
    return out


def predict(template: Template, x: np.ndarray, where: str) -> np.ndarray:
    """Synthesize `template` and run it on `x` (what `synthesize` does, for one batch)."""
    net = synthesize(template)
    try:
        return run_net(net, x, where)
    finally:
        net.close()


def _synthesize(args: argparse.Namespace) -> int:
    template = read_template(args.file)
    n_inputs = template.genome.n_inputs
    target: list[str] | None = None
    if args.input is not None:
        x = _parse_json_input(args.input, n_inputs)
        where = "--input"
    else:
        x, target = csv_input(args.csv, template)
        where = f"--csv {args.csv}"
    net = synthesize(template)
    try:
        out = run_net(net, x, where)
        if args.csv is None and args.out is None:
            for row in out:
                print(json.dumps(json_record(template, row)))
        else:
            header, rows = _records(template, out)
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            if args.out is not None:
                _write_output(args.out, buf.getvalue().encode())
            else:
                sys.stdout.write(buf.getvalue())
        if target is not None:
            score = score_predictions(template, out, target, where)
            print(json.dumps({"score": score}), file=sys.stdout if args.out else sys.stderr)
        elif args.out is not None:
            print(f"wrote {args.out} ({len(out)} predictions)")
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
        help="export a template to ONNX, libfann's .net, WebAssembly or C",
        description=(
            "Export a template. Every format takes raw features: the template's input "
            "standardisation is folded into the first layer. FANN cannot express ReLU exactly, "
            "so such templates are refused (use ONNX). wasm: a self-contained module (no "
            "imports) exporting predict(in_ptr, out_ptr, n) over its memory; c: one C99 file "
            "with void qudag_predict(const float *in, float *out) and the weights as "
            "constants, no #include (ABI: docs/export-formats.md)."
        ),
    )
    export.add_argument("file", help="template file")
    export.add_argument(
        "--format",
        choices=("onnx", "fann", "wasm", "c"),
        default=None,
        help="output format (default: from the -o extension, .onnx, .net, .wasm or .c)",
    )
    export.add_argument("-o", "--out", required=True, help="output file (see --force)")
    export.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    export.set_defaults(handler=_export)

    synth = subparsers.add_parser(
        "synthesize",
        help="run a template on raw features",
        description=(
            "Synthesize a template into a network and run it on raw feature rows. --input "
            'prints one JSON object per row: {"class": NAME, "probabilities": {NAME: P, ...}} '
            'for classifiers, {"value": V} (in the target\'s units) for regression. --csv reads '
            "the template's feature columns by name (any order, other columns ignored) and "
            "writes predictions as CSV (stdout, or -o FILE); when the file also has the target "
            'column it reports {"score": {...}} (accuracy and confusion matrix, or R^2) on '
            "stderr (stdout with -o)."
        ),
    )
    synth.add_argument("file", help="template file")
    source = synth.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="JSON array of one sample, or an array of samples")
    source.add_argument("--csv", help="CSV file of samples, with a header row naming columns")
    synth.add_argument("-o", "--out", help="write the predictions to this CSV file")
    synth.add_argument(
        "--telemetry", action="store_true", help="print the network's telemetry on stderr"
    )
    synth.set_defaults(handler=_synthesize)
