"""Single-thread kernel benchmark: smallmind's Cython kernels beside NumPy and the C# engine.

    python benchmarks/kernels.py [--quick] [--json PATH]

Every row times one smallmind kernel through its Python wrapper (inputs checked once
per call, output buffers reused) and the equivalent NumPy code in the same run, as
the best of several samples (``_report.best_time``; the machine may be shared, and
the 1-minute load average is recorded in the JSON). Rows:

* GELU tanh / erf / fast, SwiGLU and add on 1M floats: GB/s = bytes read + written / s.
* LayerNorm, LayerNorm + residual, RMSNorm, RMSNorm + residual, several row shapes (µs).
* softmax over 1000 rows of 1000 (ms).
* dot product (1M), matmul 512x512x512 and matvecs 128->384, 576->1536 (GFLOPS), via
  ``smallmind._core._matmul.Weight`` with F32 storage.
* attention decode: one query over 64 / 512 cached positions, 4 heads x 32 dims (µs).

The matmul and attention rows import their modules lazily and are skipped, with the
import error as a note, when those extensions are not built.

NumPy is pinned to one thread: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and
MKL_NUM_THREADS are set to 1 before numpy is imported (overriding the environment),
and every smallmind kernel here runs on the calling thread. The "C#" column repeats
the C# engine's figures from the seed document (not measured here).

--quick: fewer, shorter samples (finishes in well under 30 s). Results go to
benchmarks/results/kernels.json unless --json names another path.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"          # before numpy loads its BLAS

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # the checkout's smallmind

from _report import best_time, machine_info, write_report  # noqa: E402

import smallmind  # noqa: E402,F401  (CPU check before the kernels load)
from smallmind._core import _elementwise, _gelu, _norm  # noqa: E402

# The C# engine's figures, from the seed document.
CSHARP = {
    "gelu": "1.25 GB/s (target 3)",
    "add": "24.03 GB/s",
    "softmax": "5.7 ms",
    "dot": "7.58 GFLOPS",
    "matmul": "29.86 GFLOPS",
}
COLUMNS = ["kernel", "shape", "unit", "smallmind", "numpy", "speedup", "C#", "max_abs_diff", "note"]
THROUGHPUT_UNITS = {"GB/s", "GFLOPS"}


class Bench:
    def __init__(self, quick: bool):
        # Many short samples: on a shared machine the best one is the least disturbed.
        self.repeat = 5 if quick else 25
        self.min_sample_s = 0.001 if quick else 0.002
        self.rows: list[dict] = []

    def seconds(self, fn) -> float:
        return best_time(fn, repeat=self.repeat, min_sample_s=self.min_sample_s)

    def row(self, kernel, shape, unit, ours, theirs=None, *, work=1.0, csharp=None,
            diff=None, note=None):
        """Time `ours` (and `theirs`) and add a row. work: bytes (GB/s) or flops (GFLOPS)."""
        def figure(fn):
            if fn is None:
                return None
            t = self.seconds(fn)
            return {"GB/s": work / t / 1e9, "GFLOPS": work / t / 1e9,
                    "ms": t * 1e3, "µs": t * 1e6}[unit]
        a, b = figure(ours), figure(theirs)
        speedup = None
        if a is not None and b is not None:
            speedup = a / b if unit in THROUGHPUT_UNITS else b / a
        self.rows.append({"kernel": kernel, "shape": shape, "unit": unit, "smallmind": a,
                          "numpy": b, "speedup": speedup, "C#": csharp,
                          "max_abs_diff": diff, "note": note})

    def skip(self, kernel, shape, unit, note, csharp=None):
        self.rows.append({"kernel": kernel, "shape": shape, "unit": unit, "smallmind": None,
                          "numpy": None, "speedup": None, "C#": csharp,
                          "max_abs_diff": None, "note": note})


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- NumPy equivalents (float32, preallocated buffers where NumPy allows) -------------

_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))


def numpy_gelu_tanh(x, out, tmp):
    np.multiply(x, x, out=tmp)
    tmp *= np.float32(0.044715)
    tmp += np.float32(1.0)
    tmp *= x
    tmp *= _SQRT_2_OVER_PI
    np.tanh(tmp, out=tmp)
    tmp += np.float32(1.0)
    np.multiply(x, tmp, out=out)
    out *= np.float32(0.5)
    return out


def numpy_swiglu(gate, up, out):
    np.negative(gate, out=out)
    np.exp(out, out=out)
    out += np.float32(1.0)
    np.divide(gate, out, out=out)
    out *= up
    return out


def numpy_softmax(x, out):
    np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


def numpy_layernorm(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(var + np.float32(eps)) * w + b


def numpy_rmsnorm(x, w, eps=1e-5):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * w


def numpy_attention(q, k, v, length, n_head, head_dim):
    qh = q.reshape(n_head, head_dim, 1)
    scores = (k[:, :length] @ qh)[:, :, 0] * np.float32(1.0 / math.sqrt(head_dim))
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return (scores[:, None, :] @ v[:, :length])[:, 0].reshape(1, n_head * head_dim)


# --- benchmarks -----------------------------------------------------------------------

def bench_activations(b: Bench, rng):
    n = 1 << 20
    x = rng.standard_normal(n, dtype=np.float32) * np.float32(3)
    y = rng.standard_normal(n, dtype=np.float32)
    out, ref, tmp = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    shape = "1M floats"

    diff = _max_diff(_gelu.gelu(x, out), numpy_gelu_tanh(x, ref, tmp))
    b.row("GELU tanh", shape, "GB/s", lambda: _gelu.gelu(x, out),
          lambda: numpy_gelu_tanh(x, ref, tmp), work=8 * n, csharp=CSHARP["gelu"], diff=diff,
          note=f"{_gelu._simd()} path")
    if _gelu._simd() == "avx512":
        _gelu._set_simd("avx2")
        try:
            b.row("GELU tanh", shape, "GB/s", lambda: _gelu.gelu(x, out),
                  lambda: numpy_gelu_tanh(x, ref, tmp), work=8 * n, csharp=CSHARP["gelu"],
                  diff=_max_diff(_gelu.gelu(x, out), ref), note="avx2 path (forced)")
        finally:
            _gelu._set_simd("avx512")
    b.row("GELU erf (approximate='none')", shape, "GB/s", lambda: _gelu.gelu(x, out, "none"),
          work=8 * n, note="NumPy has no erf")
    b.row("GELU fast", shape, "GB/s", lambda: _gelu.gelu(x, out, "fast"),
          lambda: numpy_gelu_tanh(x, ref, tmp), work=8 * n,
          note=f"vs NumPy tanh GELU; max err vs erf GELU {_gelu.FAST_MAX_ABS_ERROR:g}")
    diff = _max_diff(_elementwise.swiglu(x, y, out), numpy_swiglu(x, y, ref))
    b.row("SwiGLU", shape, "GB/s", lambda: _elementwise.swiglu(x, y, out),
          lambda: numpy_swiglu(x, y, ref), work=12 * n, diff=diff)
    diff = _max_diff(_elementwise.add(x, y, out), np.add(x, y, out=ref))
    b.row("add", shape, "GB/s", lambda: _elementwise.add(x, y, out),
          lambda: np.add(x, y, out=ref), work=12 * n, csharp=CSHARP["add"], diff=diff)


def bench_softmax(b: Bench, rng):
    x = rng.standard_normal((1000, 1000), dtype=np.float32) * np.float32(4)
    out, ref = np.empty_like(x), np.empty_like(x)
    diff = _max_diff(_elementwise.softmax(x, out), numpy_softmax(x, ref))
    b.row("softmax", "1000 x 1000", "ms", lambda: _elementwise.softmax(x, out),
          lambda: numpy_softmax(x, ref), csharp=CSHARP["softmax"], diff=diff)


def bench_norms(b: Bench, rng, quick: bool):
    shapes = [(64, 128), (1, 4096)] if quick else [(64, 128), (1, 576), (1, 4096), (16, 4096)]
    for rows, n in shapes:
        shape = f"{rows} x {n}"
        x = rng.standard_normal((rows, n), dtype=np.float32)
        delta = rng.standard_normal((rows, n), dtype=np.float32) * np.float32(1e-3)
        w = rng.standard_normal(n, dtype=np.float32)
        bias = rng.standard_normal(n, dtype=np.float32)
        out = np.empty_like(x)

        diff = _max_diff(_norm.layernorm(x, w, bias, out=out), numpy_layernorm(x, w, bias))
        b.row("LayerNorm", shape, "µs", lambda: _norm.layernorm(x, w, bias, out=out),
              lambda: numpy_layernorm(x, w, bias), diff=diff)

        # The residual stream grows by delta (1e-3 scale) per call; harmless for timing.
        xs, xn = x.copy(), x.copy()
        diff = _max_diff(_norm.residual_layernorm(xs, delta, w, bias, out=out),
                         numpy_layernorm(np.add(xn, delta, out=xn), w, bias))

        def numpy_residual_layernorm():
            np.add(xn, delta, out=xn)
            return numpy_layernorm(xn, w, bias)
        b.row("LayerNorm + residual", shape, "µs",
              lambda: _norm.residual_layernorm(xs, delta, w, bias, out=out),
              numpy_residual_layernorm, diff=diff, note="x += delta; LayerNorm(x)")

        diff = _max_diff(_norm.rmsnorm(x, w, out=out), numpy_rmsnorm(x, w))
        b.row("RMSNorm", shape, "µs", lambda: _norm.rmsnorm(x, w, out=out),
              lambda: numpy_rmsnorm(x, w), diff=diff)

        xs, xn = x.copy(), x.copy()
        diff = _max_diff(_norm.residual_rmsnorm(xs, delta, w, out=out),
                         numpy_rmsnorm(np.add(xn, delta, out=xn), w))

        def numpy_residual_rmsnorm():
            np.add(xn, delta, out=xn)
            return numpy_rmsnorm(xn, w)
        b.row("RMSNorm + residual", shape, "µs",
              lambda: _norm.residual_rmsnorm(xs, delta, w, out=out),
              numpy_residual_rmsnorm, diff=diff, note="x += delta; RMSNorm(x)")


def bench_matmul(b: Bench, rng):
    try:
        from smallmind._core import _matmul
        weight_class = _matmul.Weight
    except (ImportError, AttributeError) as exc:
        note = f"skipped: smallmind._core._matmul unavailable ({exc})"
        b.skip("dot", "1M", "GFLOPS", note, CSHARP["dot"])
        b.skip("matmul", "512 x 512 x 512", "GFLOPS", note, CSHARP["matmul"])
        b.skip("matvec", "128 -> 384", "GFLOPS", note)
        b.skip("matvec", "576 -> 1536", "GFLOPS", note)
        return

    n = 1 << 20
    a = rng.standard_normal(n, dtype=np.float32)
    v = rng.standard_normal(n, dtype=np.float32)
    dot_weight = weight_class(0, (1, n), a.reshape(1, n))
    dot_out = np.empty(1, np.float32)
    diff = _max_diff(dot_weight.matmul(v, out=dot_out), [np.dot(a, v)])
    b.row("dot", "1M", "GFLOPS", lambda: dot_weight.matmul(v, out=dot_out),
          lambda: np.dot(a, v), work=2 * n, csharp=CSHARP["dot"], diff=diff,
          note="Weight (1 x N) . x")

    m = 512
    w = rng.standard_normal((m, m), dtype=np.float32)
    x = rng.standard_normal((m, m), dtype=np.float32)
    weight = weight_class(0, (m, m), w)
    out, ref = np.empty((m, m), np.float32), np.empty((m, m), np.float32)
    diff = _max_diff(weight.matmul(x, out=out), np.matmul(x, w.T, out=ref))
    b.row("matmul", "512 x 512 x 512", "GFLOPS", lambda: weight.matmul(x, out=out),
          lambda: np.matmul(x, w.T, out=ref), work=2 * m**3, csharp=CSHARP["matmul"],
          diff=diff, note="y = x W^T, F32 weight")

    for cols, rows in ((128, 384), (576, 1536)):
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        x = rng.standard_normal(cols, dtype=np.float32)
        weight = weight_class(0, (rows, cols), w)
        out, ref = np.empty(rows, np.float32), np.empty(rows, np.float32)
        diff = _max_diff(weight.matmul(x, out=out), np.matmul(w, x, out=ref))
        b.row("matvec", f"{cols} -> {rows}", "GFLOPS", lambda: weight.matmul(x, out=out),
              lambda: np.matmul(w, x, out=ref), work=2 * rows * cols, diff=diff,
              note="F32 weight")


def bench_attention(b: Bench, rng):
    n_head, head_dim, capacity = 4, 32, 512
    try:
        from smallmind._core import _attention
        attention = _attention.attention
    except (ImportError, AttributeError) as exc:
        for length in (64, 512):
            b.skip("attention decode", f"1 q over {length}, 4 x 32", "µs",
                   f"skipped: smallmind._core._attention unavailable ({exc})")
        return
    k = rng.standard_normal((n_head, capacity, head_dim), dtype=np.float32)
    v = rng.standard_normal((n_head, capacity, head_dim), dtype=np.float32)
    q = rng.standard_normal((1, n_head * head_dim), dtype=np.float32)
    out = np.empty_like(q)
    for length in (64, 512):
        pos0 = length - 1      # the query sits at position length - 1 and sees slots 0..pos0
        diff = _max_diff(attention(q, k, v, pos0, n_head, n_head, out=out),
                         numpy_attention(q, k, v, length, n_head, head_dim))
        b.row("attention decode", f"1 q over {length}, {n_head} x {head_dim}", "µs",
              lambda: attention(q, k, v, pos0, n_head, n_head, out=out),
              lambda: numpy_attention(q, k, v, length, n_head, head_dim), diff=diff)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter samples (< 30 s)")
    parser.add_argument("--json", help="JSON output path (default benchmarks/results/kernels.json)")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    bench = Bench(args.quick)
    bench_activations(bench, rng)
    bench_softmax(bench, rng)
    bench_norms(bench, rng, args.quick)
    bench_matmul(bench, rng)
    bench_attention(bench, rng)

    meta = machine_info()
    meta.update({"quick": args.quick, "repeat": bench.repeat, "min_sample_s": bench.min_sample_s,
                 "gelu_simd": _gelu._simd(), "elementwise_simd": _elementwise._simd(),
                 "speedup": "smallmind / numpy for GB/s and GFLOPS, numpy / smallmind for times",
                 "csharp": "C# engine figures from the seed document, not measured here"})
    write_report("kernels", bench.rows, COLUMNS, meta, args.json)


if __name__ == "__main__":
    main()
