"""Export a template as a self-contained WebAssembly module or as one dependency-free C file.

Why: a template should run where Python does not (a browser page, a microcontroller, a C
program) without a runtime or a model loader. Both exports are generated here, byte by byte or
line by line, with no compiler or toolchain at export time; docs/export-formats.md is the
reference for their ABI.

Both compute exactly the net `synthesize` runs, from *raw* features: the weights are
`folded_layers` (the input standardisation folded into the first layer; the runtime
standardises each sample instead, the same function up to float32 rounding), stored as
float32. Arithmetic is in float64: every neuron accumulates its dot product and
bias in double, applies its activation in double and rounds to float32 only where the output is
written. Hidden activations stay double. So the result is the exact net rounded once, which
agrees with the float32 runtime (which rounds at every step) to within its own rounding error.

WebAssembly has no tanh or sin instruction, and the C file must not need libm, so both carry the
same small double-precision implementations (the "documented method" of the issue):

- expm1(a) for 0 <= a <= 40: a = k ln2 + r with k = nearest(a / ln2), |r| <= ln2/2 (Cody-Waite,
  ln2 split in two parts), expm1(r) by its Taylor series to r^13 (truncation < 5e-18),
  then 2^k (expm1(r) + 1) - 1 with 2^k built from the exponent bits; k = 0 returns expm1(r)
  itself, so small arguments keep full relative precision.
- tanh(x) = sign(x) t / (t + 2) with t = expm1(2 min(|x|, 20)) (at 20, tanh is 1 in double).
- sigmoid(x) = 0.5 tanh(0.5 x) + 0.5 (the genome's own definition).
- sin(x): k = nearest(x 2/pi), r = x - k pi/2 with pi/2 in three parts (fdlibm's pio2_1..3, good
  to ~1e-16 while |k| < 2^20, i.e. |x| < ~1.6e6), then the Taylor series of sin or cos of r
  (|r| <= pi/4, to r^17 / r^18) by the quadrant k mod 4. |x| >= 1e15, inf and NaN give NaN.
- relu(x) = max(x, 0); identity.

Relative error of all of these is ~1e-15 on their ranges, far below float32's 6e-8; the tests
check 1e-6 relative after rounding against `math` and 1e-5 against `synthesize` on task splits.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence

import numpy as np

from qudag.evolution.export import folded_layers
from qudag.evolution.template import Template

WASM_FUNCTION = "predict"
C_FUNCTION = "qudag_predict"
# Samples the preallocated input and output regions of the wasm memory hold; the caller may
# grow the memory and pass other pointers for larger batches.
WASM_BATCH_CAPACITY = 256
_PAGE = 65536

# --- the shared double-precision maths -------------------------------------------------
_LN2_HI = 6.93147180369123816490e-01  # fdlibm ln2_hi (k * ln2_hi exact for |k| < 2^20)
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_PIO2 = (1.57079632673412561417e00, 6.07710050630396597660e-11, 2.02226624871116645580e-21)
_TWO_OVER_PI = 6.36619772367581382433e-01
_SIN_LIMIT = 1e15
_EXPM1_TERMS = 13  # r^1 .. r^13
_SIN_TERMS = 9  # r^1, r^3, ..., r^17
_COS_TERMS = 10  # 1, r^2, ..., r^18


def _expm1_coeffs() -> list[float]:
    """1/1!, 1/2!, ..., 1/13!: expm1(r) = r (c1 + r (c2 + ...))."""
    return [1.0 / math.factorial(n) for n in range(1, _EXPM1_TERMS + 1)]


def _sin_coeffs() -> list[float]:
    """sin(r) = r (s0 + r^2 (s1 + ...)), s_i = (-1)^i / (2i+1)!."""
    return [(-1.0) ** i / math.factorial(2 * i + 1) for i in range(_SIN_TERMS)]


def _cos_coeffs() -> list[float]:
    """cos(r) = c0 + r^2 (c1 + ...), c_i = (-1)^i / (2i)!."""
    return [(-1.0) ** i / math.factorial(2 * i) for i in range(_COS_TERMS)]


# --- WebAssembly encoding --------------------------------------------------------------
def _u(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _s(n: int) -> bytes:
    """Signed LEB128."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _vec(items: Sequence[bytes]) -> bytes:
    return _u(len(items)) + b"".join(items)


def _name(s: str) -> bytes:
    raw = s.encode()
    return _u(len(raw)) + raw


def _section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _u(len(body)) + body


I32, I64, F32, F64 = 0x7F, 0x7E, 0x7D, 0x7C
VOID = 0x40
# opcodes (WebAssembly 1.0 core)
BLOCK, LOOP, IF, ELSE, END, BR, BR_IF, RETURN, CALL = (
    0x02,
    0x03,
    0x04,
    0x05,
    0x0B,
    0x0C,
    0x0D,
    0x0F,
    0x10,
)
SELECT = 0x1B
LGET, LSET, LTEE = 0x20, 0x21, 0x22
F32_LOAD, F64_LOAD, F32_STORE, F64_STORE = 0x2A, 0x2B, 0x38, 0x39
I32_CONST, I64_CONST, F64_CONST = 0x41, 0x42, 0x44
I32_EQZ, I32_NE, I32_LE_S = 0x45, 0x47, 0x4C
F64_EQ, F64_NE, F64_LT, F64_GE = 0x61, 0x62, 0x63, 0x66
I32_ADD, I32_SUB, I32_AND = 0x6A, 0x6B, 0x71
I64_ADD, I64_SHL = 0x7C, 0x86
F64_ABS, F64_NEG, F64_FLOOR, F64_NEAREST = 0x99, 0x9A, 0x9C, 0x9E
F64_ADD, F64_SUB, F64_MUL, F64_DIV, F64_MIN, F64_MAX, F64_COPYSIGN = (
    0xA0,
    0xA1,
    0xA2,
    0xA3,
    0xA4,
    0xA5,
    0xA6,
)
I32_TRUNC_F64_S, I64_TRUNC_F64_S = 0xAA, 0xB0
F32_DEMOTE_F64, F64_PROMOTE_F32, F64_REINTERPRET_I64 = 0xB6, 0xBB, 0xBF


def _f64(v: float) -> bytes:
    return bytes([F64_CONST]) + struct.pack("<d", v)


def _i32(v: int) -> bytes:
    return bytes([I32_CONST]) + _s(v)


def _op(*codes: int) -> bytes:
    return bytes(codes)


def _get(i: int) -> bytes:
    return bytes([LGET]) + _u(i)


def _set(i: int) -> bytes:
    return bytes([LSET]) + _u(i)


def _mem(op: int, align: int) -> bytes:
    return bytes([op]) + _u(align) + _u(0)


def _horner(var: bytes, coeffs: Sequence[float]) -> bytes:
    """Code leaving c0 + v (c1 + v (c2 + ...)) on the stack, v loaded by `var`."""
    code = _f64(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        code += var + _op(F64_MUL) + _f64(c) + _op(F64_ADD)
    return code


def _fn_expm1() -> bytes:
    """(a f64) -> f64, 0 <= a <= 40. Locals: 1 k, 2 r, 3 e."""
    k, r, e = 1, 2, 3
    code = (
        _get(0)
        + _f64(_INV_LN2)
        + _op(F64_MUL, F64_NEAREST)
        + _set(k)
        + _get(0)
        + _get(k)
        + _f64(_LN2_HI)
        + _op(F64_MUL, F64_SUB)
        + _get(k)
        + _f64(_LN2_LO)
        + _op(F64_MUL, F64_SUB)
        + _set(r)
        + _get(r)
        + _horner(_get(r), _expm1_coeffs())
        + _op(F64_MUL)
        + _set(e)
        # 2^k (e + 1) - 1, or e when k == 0
        + _get(e)
        + _f64(1.0)
        + _op(F64_ADD)
        + _get(k)
        + _op(I64_TRUNC_F64_S)
        + bytes([I64_CONST])
        + _s(1023)
        + _op(I64_ADD)
        + bytes([I64_CONST])
        + _s(52)
        + _op(I64_SHL, F64_REINTERPRET_I64, F64_MUL)
        + _f64(1.0)
        + _op(F64_SUB)
        + _get(e)
        + _get(k)
        + _f64(0.0)
        + _op(F64_NE)
        + _op(SELECT)
        + _op(END)
    )
    return _vec([_u(3) + bytes([F64])]) + code


def _fn_tanh(expm1_index: int) -> bytes:
    """(x f64) -> f64. Local 1: t."""
    code = (
        # NaN in, NaN out (expm1 would trap converting it to an integer)
        _get(0)
        + _get(0)
        + _op(F64_NE)
        + bytes([IF, VOID])
        + _get(0)
        + _op(RETURN, END)
        + _get(0)
        + _op(F64_ABS)
        + _f64(20.0)
        + _op(F64_MIN)
        + _f64(2.0)
        + _op(F64_MUL)
        + bytes([CALL])
        + _u(expm1_index)
        + bytes([LTEE])
        + _u(1)
        + _get(1)
        + _f64(2.0)
        + _op(F64_ADD, F64_DIV)
        + _get(0)
        + _op(F64_COPYSIGN, END)
    )
    return _vec([_u(1) + bytes([F64])]) + code


def _fn_sin() -> bytes:
    """(x f64) -> f64. Locals: 1 k, 2 r, 3 r2, 4 q (i32), 5 v."""
    k, r, r2, q, v = 1, 2, 3, 4, 5
    code = (
        # not (|x| < limit): NaN (covers inf and NaN)
        _get(0)
        + _op(F64_ABS)
        + _f64(_SIN_LIMIT)
        + _op(F64_LT, I32_EQZ)
        + bytes([IF, VOID])
        + _f64(math.nan)
        + _op(RETURN, END)
        + _get(0)
        + _f64(_TWO_OVER_PI)
        + _op(F64_MUL, F64_NEAREST)
        + _set(k)
        + _get(0)
        + _get(k)
        + _f64(_PIO2[0])
        + _op(F64_MUL, F64_SUB)
        + _get(k)
        + _f64(_PIO2[1])
        + _op(F64_MUL, F64_SUB)
        + _get(k)
        + _f64(_PIO2[2])
        + _op(F64_MUL, F64_SUB)
        + _set(r)
        + _get(r)
        + _get(r)
        + _op(F64_MUL)
        + _set(r2)
        # q = k - 4 floor(k / 4), in 0..3
        + _get(k)
        + _get(k)
        + _f64(0.25)
        + _op(F64_MUL, F64_FLOOR)
        + _f64(4.0)
        + _op(F64_MUL, F64_SUB, I32_TRUNC_F64_S)
        + _set(q)
        # v = q odd ? cos(r) : sin(r)
        + _horner(_get(r2), _cos_coeffs())
        + _get(r)
        + _horner(_get(r2), _sin_coeffs())
        + _op(F64_MUL)
        + _get(q)
        + _i32(1)
        + _op(I32_AND, SELECT)
        + _set(v)
        # q >= 2: negate
        + _get(v)
        + _op(F64_NEG)
        + _get(v)
        + _get(q)
        + _i32(2)
        + _op(I32_AND, SELECT, END)
    )
    return _vec([_u(3) + bytes([F64]), _u(1) + bytes([I32]), _u(1) + bytes([F64])]) + code


def _layout(template: Template) -> dict[str, int]:
    """Byte offsets of the module's memory regions (see docs/export-formats.md)."""
    g = template.genome
    weights = 4 * g.n_params
    scratch = (weights + 7) // 8 * 8
    width = max(g.layer_sizes)
    inputs = (scratch + 2 * 8 * width + 15) // 16 * 16
    outputs = (inputs + 4 * g.n_inputs * WASM_BATCH_CAPACITY + 15) // 16 * 16
    end = outputs + 4 * g.n_outputs * WASM_BATCH_CAPACITY
    return {
        "weights": 0,
        "scratch_a": scratch,
        "scratch_b": scratch + 8 * width,
        "input": inputs,
        "output": outputs,
        "pages": (end + _PAGE - 1) // _PAGE,
    }


def neuron_major_weights(template: Template) -> np.ndarray:
    """All folded parameters, neuron by neuron: for each layer, each output neuron's fan_in
    weights then its bias. Both exports store this order so a neuron reads one contiguous run."""
    parts = []
    for w, b in folded_layers(template):
        parts.append(np.concatenate([w.T, b[:, None]], axis=1).ravel())
    return np.concatenate(parts).astype("<f4")


def _fn_predict(template: Template, lay: dict[str, int], fn: dict[str, int]) -> bytes:
    """predict(in_ptr i32, out_ptr i32, n i32): n samples, f32 in, f32 out.

    Locals: 3 p (weight pointer), 4 x (source pointer), 5 i, 6 j, 7 acc (f64)."""
    g = template.genome
    IN, OUT, N, P, X, II, J, ACC = 0, 1, 2, 3, 4, 5, 6, 7
    n_layers = len(g.layer_sizes)
    body = _get(N) + _i32(0) + _op(I32_LE_S) + bytes([IF, VOID, RETURN, END])
    body += bytes([LOOP, VOID])  # one sample per iteration
    w_off = lay["weights"]
    fan_in = g.n_inputs
    for layer, (width, act) in enumerate(zip(g.layer_sizes, g.activations, strict=True)):
        first, last = layer == 0, layer == n_layers - 1
        src_scratch = lay["scratch_a"] if layer % 2 == 1 else lay["scratch_b"]
        dst_scratch = lay["scratch_b"] if layer % 2 == 1 else lay["scratch_a"]
        body += _i32(w_off) + _set(P) + _i32(0) + _set(J)
        body += bytes([LOOP, VOID])  # neuron j
        body += _f64(0.0) + _set(ACC)
        body += (_get(IN) if first else _i32(src_scratch)) + _set(X)
        body += _i32(0) + _set(II)
        body += bytes([LOOP, VOID])  # input i
        body += _get(ACC) + _get(X)
        body += _mem(F32_LOAD, 2) + _op(F64_PROMOTE_F32) if first else _mem(F64_LOAD, 3)
        body += _get(P) + _mem(F32_LOAD, 2) + _op(F64_PROMOTE_F32, F64_MUL, F64_ADD) + _set(ACC)
        body += _get(X) + _i32(4 if first else 8) + _op(I32_ADD) + _set(X)
        body += _get(P) + _i32(4) + _op(I32_ADD) + _set(P)
        body += _get(II) + _i32(1) + _op(I32_ADD) + bytes([LTEE]) + _u(II)
        body += _i32(fan_in) + _op(I32_NE, BR_IF) + _u(0) + _op(END)
        # address of the result, then the value: acc + bias, activated
        if last:
            body += _get(OUT) + _get(J) + _i32(2) + _op(0x74)  # i32.shl
            body += _op(I32_ADD)
        else:
            body += _i32(dst_scratch) + _get(J) + _i32(3) + _op(0x74, I32_ADD)
        body += _get(ACC) + _get(P) + _mem(F32_LOAD, 2) + _op(F64_PROMOTE_F32, F64_ADD)
        if act == "tanh":
            body += bytes([CALL]) + _u(fn["tanh"])
        elif act == "sigmoid":
            body += _f64(0.5) + _op(F64_MUL) + bytes([CALL]) + _u(fn["tanh"])
            body += _f64(0.5) + _op(F64_MUL) + _f64(0.5) + _op(F64_ADD)
        elif act == "sin":
            body += bytes([CALL]) + _u(fn["sin"])
        elif act == "relu":
            body += _f64(0.0) + _op(F64_MAX)
        body += _op(F32_DEMOTE_F64) + _mem(F32_STORE, 2) if last else _mem(F64_STORE, 3)
        body += _get(P) + _i32(4) + _op(I32_ADD) + _set(P)
        body += _get(J) + _i32(1) + _op(I32_ADD) + bytes([LTEE]) + _u(J)
        body += _i32(width) + _op(I32_NE, BR_IF) + _u(0) + _op(END)
        w_off += 4 * (fan_in + 1) * width
        fan_in = width
    body += _get(IN) + _i32(4 * g.n_inputs) + _op(I32_ADD) + _set(IN)
    body += _get(OUT) + _i32(4 * g.n_outputs) + _op(I32_ADD) + _set(OUT)
    body += _get(N) + _i32(1) + _op(I32_SUB) + bytes([LTEE]) + _u(N)
    body += _op(BR_IF) + _u(0) + _op(END, END)
    locals_ = _vec([_u(4) + bytes([I32]), _u(1) + bytes([F64])])
    return locals_ + body


def export_wasm(template: Template) -> bytes:
    """A WebAssembly 1.0 module computing the template's outputs from raw features.

    No imports. Exports: `memory`, the function `predict(in_ptr: i32, out_ptr: i32, n: i32)`
    and immutable i32 globals `n_inputs`, `n_outputs`, `input_ptr`, `output_ptr`,
    `batch_capacity` describing where a caller puts inputs and reads outputs.
    """
    g = template.genome
    lay = _layout(template)
    acts = set(g.activations)
    # functions: helpers first (only those used), predict last
    fn: dict[str, int] = {}
    bodies: list[bytes] = []
    type_idx: list[int] = []
    types = [
        bytes([0x60]) + _vec([bytes([I32])] * 3) + _vec([]),  # predict
        bytes([0x60]) + _vec([bytes([F64])]) + _vec([bytes([F64])]),  # f64 -> f64
    ]
    if acts & {"tanh", "sigmoid"}:
        fn["expm1"] = len(bodies)
        bodies.append(_fn_expm1())
        type_idx.append(1)
        fn["tanh"] = len(bodies)
        bodies.append(_fn_tanh(fn["expm1"]))
        type_idx.append(1)
    if "sin" in acts:
        fn["sin"] = len(bodies)
        bodies.append(_fn_sin())
        type_idx.append(1)
    fn["predict"] = len(bodies)
    bodies.append(_fn_predict(template, lay, fn))
    type_idx.append(0)

    def glob(v: int) -> bytes:
        return bytes([I32, 0]) + _i32(v) + _op(END)

    globals_ = {
        "n_inputs": g.n_inputs,
        "n_outputs": g.n_outputs,
        "input_ptr": lay["input"],
        "output_ptr": lay["output"],
        "batch_capacity": WASM_BATCH_CAPACITY,
    }
    exports = [_name("memory") + bytes([0x02]) + _u(0)]
    exports.append(_name(WASM_FUNCTION) + bytes([0x00]) + _u(fn["predict"]))
    exports += [_name(k) + bytes([0x03]) + _u(i) for i, k in enumerate(globals_)]
    weights = neuron_major_weights(template).tobytes()
    data = _vec([bytes([0]) + _i32(lay["weights"]) + _op(END) + _u(len(weights)) + weights])
    return (
        b"\0asm"
        + struct.pack("<I", 1)
        + _section(1, _vec(types))
        + _section(3, _vec([_u(t) for t in type_idx]))
        + _section(5, _vec([bytes([0]) + _u(lay["pages"])]))
        + _section(6, _vec([glob(v) for v in globals_.values()]))
        + _section(7, _vec(exports))
        + _section(10, _vec([_u(len(b)) + b for b in bodies]))
        + _section(11, data)
    )


# --- C ---------------------------------------------------------------------------------
def _c_float(v: float) -> str:
    """An exact C99 hexadecimal float literal of a float32 value."""
    return float(v).hex() + "f"


def _c_double(v: float) -> str:
    return float(v).hex()


def _c_horner(var: str, coeffs: Sequence[float]) -> str:
    expr = _c_double(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        expr = f"{_c_double(c)} + {var} * ({expr})"
    return expr


def export_c(template: Template) -> str:
    """One C99 file: `void qudag_predict(const float *in, float *out)` and the weights.

    No #include, no libm: tanh and sin are the module docstring's double-precision methods.
    """
    g = template.genome
    acts = set(g.activations)
    w = neuron_major_weights(template)
    prefix = "QUDAG"
    task = re.sub(r"[^ -~]|\*/", "?", template.task)
    lines = [
        "/* Generated by qudag-evo `template export --format c`: do not edit.",
        f" * Template of task {task} v{template.task_version}, output: {template.output}.",
        f" * {g.n_inputs} raw inputs -> {g.n_outputs} outputs; layers {list(g.layer_sizes)},"
        f" activations {list(g.activations)}.",
        " * Input standardisation is folded into the first layer: pass raw features.",
        " * Arithmetic in double, outputs rounded to float (see docs/export-formats.md). */",
        "",
        f"#define {prefix}_N_INPUTS {g.n_inputs}",
        f"#define {prefix}_N_OUTPUTS {g.n_outputs}",
        f"#define {prefix}_N_PARAMS {g.n_params}",
        "",
        "void qudag_predict(const float *in, float *out);",
        "",
        "/* Each layer, neuron by neuron: fan_in weights, then the bias. */",
        f"static const float qudag_weights[{w.size}] = {{",
    ]
    for start in range(0, w.size, 4):
        lines.append("    " + ", ".join(_c_float(v) for v in w[start : start + 4]) + ",")
    lines.append("};")
    lines.append("")
    if acts & {"tanh", "sigmoid"}:
        lines += [
            "static double qudag_expm1(double a) { /* 0 <= a <= 40 */",
            "    double k = (double)(long long)(a * "
            + _c_double(_INV_LN2)
            + " + 0.5); /* a >= 0: round half up */",
            f"    double r = (a - k * {_c_double(_LN2_HI)}) - k * {_c_double(_LN2_LO)};",
            f"    double e = r * ({_c_horner('r', _expm1_coeffs())});",
            "    union { unsigned long long u; double d; } s;",
            "    if (k == 0.0) return e;",
            "    s.u = (unsigned long long)((long long)k + 1023) << 52;",
            "    return s.d * (e + 1.0) - 1.0;",
            "}",
            "",
            "static double qudag_tanh(double x) {",
            "    double a = x < 0 ? -x : x;",
            "    double t;",
            "    if (a != a) return x;",
            "    t = qudag_expm1(2.0 * (a < 20.0 ? a : 20.0));",
            "    t = t / (t + 2.0);",
            "    return x < 0 ? -t : t;",
            "}",
            "",
        ]
    if "sin" in acts:
        lines += [
            "static double qudag_sin(double x) {",
            "    double a = x < 0 ? -x : x, k, r, r2, v;",
            "    long long q;",
            f"    if (!(a < {_c_double(_SIN_LIMIT)})) return (x - x) / (x - x); /* NaN */",
            f"    k = x * {_c_double(_TWO_OVER_PI)};",
            "    k = (double)(long long)(k < 0 ? k - 0.5 : k + 0.5);",
            f"    r = ((x - k * {_c_double(_PIO2[0])}) - k * {_c_double(_PIO2[1])})"
            f" - k * {_c_double(_PIO2[2])};",
            "    r2 = r * r;",
            "    q = (long long)k & 3;",
            f"    v = (q & 1) ? ({_c_horner('r2', _cos_coeffs())})"
            f" : r * ({_c_horner('r2', _sin_coeffs())});",
            "    return (q & 2) ? -v : v;",
            "}",
            "",
        ]
    width = max(g.layer_sizes)
    lines += [
        "void qudag_predict(const float *in, float *out) {",
        "    const float *p = qudag_weights;",
        "    int i, j;",
    ]
    fan_in = g.n_inputs
    n_layers = len(g.layer_sizes)
    if n_layers > 1:
        lines.append(f"    double h[2][{width}];")
    for layer, (size, act) in enumerate(zip(g.layer_sizes, g.activations, strict=True)):
        src = "(double)in[i]" if layer == 0 else f"h[{(layer - 1) % 2}][i]"
        act_expr = {
            "identity": "acc",
            "relu": "(acc > 0.0 ? acc : 0.0)",
            "tanh": "qudag_tanh(acc)",
            "sigmoid": "0.5 * qudag_tanh(0.5 * acc) + 0.5",
            "sin": "qudag_sin(acc)",
        }[act]
        dst = "out[j] = (float)" if layer == n_layers - 1 else f"h[{layer % 2}][j] = "
        lines += [
            f"    for (j = 0; j < {size}; j++) {{ /* layer {layer}: {fan_in} -> {size}, {act} */",
            "        double acc = 0.0;",
            f"        for (i = 0; i < {fan_in}; i++) acc += {src} * (double)p[i];",
            f"        acc += (double)p[{fan_in}];",
            f"        p += {fan_in + 1};",
            f"        {dst}({act_expr});",
            "    }",
        ]
        fan_in = size
    lines.append("}")
    return "\n".join(lines) + "\n"
