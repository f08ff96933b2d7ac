"""GEMM throughput of fastconv (each kernel set) against NumPy (OpenBLAS) and torch.mm, as one markdown table.

    python bench/bench_gemm.py [--quick] [--dtype float64] [--threads 1,2] [--json results.json]

Shapes: squares; the GEMMs of convolution layers as im2col lowers them (M = output channels, K = C_in*kh*kw,
N = output pixels); the weight gradient dY @ cols^T (B given transposed, trans_b); a skinny layer on a large
image. Each cell is the median GFLOP/s (2*M*N*K / time) of at least 3 calls and ~0.3 s, every library writing
into a preallocated output. "% peak" compares fastconv's best kernel set with the machine's FMA peak measured by
bench/peak.py at the same thread count (the better of AVX2 and AVX-512; halved for float64). Benchmarks share the
machine with whatever else runs: read the figures as estimates.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import threadpoolctl

import fastconv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peak  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

MIN_REPEATS = 3
MIN_SECONDS = 0.3

# (name, M, K, N, trans_b): C (M x N) = A (M x K) @ B (K x N)
SQUARES = [(f"square {s}", s, s, s, False) for s in (256, 512, 1024, 2048)]
CONV = [
    ("VGG conv3_1", 256, 1152, 3136, False),
    ("ResNet 3x3", 64, 576, 3136, False),
    ("GoogLeNet 1x1", 64, 192, 784, False),
    ("AlexNet conv2", 256, 2400, 729, False),
    ("LeNet conv2", 16, 150, 100, False),
]
# dW = dY (64 x 3136*batch) @ cols^T, cols stored (576 x 3136*batch): B passed transposed
WEIGHT_GRAD = [("ResNet 3x3 dW, batch 4", 64, 3136 * 4, 576, True)]
SKINNY = [("skinny 16 filters, 224x224", 16, 150, 50176, False)]
ALL_SHAPES = SQUARES + CONV + WEIGHT_GRAD + SKINNY
QUICK_SHAPES = [SQUARES[0], SQUARES[1], CONV[1], CONV[2], CONV[4]] + WEIGHT_GRAD + SKINNY


def median_seconds(fn):
    """Median wall time of fn() over at least MIN_REPEATS calls and MIN_SECONDS, after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < MIN_REPEATS or time.perf_counter() - start < MIN_SECONDS:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def operands(m, k, n, trans_b, dtype, rng):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def bench_shape(shape, threads, dtype, rng):
    """GFLOP/s of every library for one shape and thread count: {"fastconv <arch>": .., "numpy": .., "torch": ..}."""
    name, m, k, n, trans_b = shape
    a, b = operands(m, k, n, trans_b, dtype, rng)
    b_op = b.T if trans_b else b
    flops = 2.0 * m * n * k
    out = np.empty((m, n), dtype)
    results = {}
    reference = np.matmul(a, b_op)
    previous_arch = fastconv.get_arch()
    try:
        with fastconv.threads(threads):
            for arch in fastconv.available_archs():
                fastconv.set_arch(arch)
                seconds = median_seconds(lambda: fastconv.gemm(a, b, out, trans_b=trans_b))
                results[f"fastconv {arch}"] = flops / seconds * 1e-9
                # a figure for a wrong answer means nothing: check it against NumPy (rounding-level agreement)
                tol = (1e-4 if dtype == np.float32 else 1e-12) * np.sqrt(k)
                if not np.allclose(out, reference, rtol=tol, atol=tol * np.abs(reference).max()):
                    print(f"WARNING: fastconv {arch} disagrees with NumPy on {name}", file=sys.stderr)
    finally:
        fastconv.set_arch(previous_arch)
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        results["numpy"] = flops / median_seconds(lambda: np.matmul(a, b_op, out=out)) * 1e-9
    if torch is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
            tb_op = tb.t() if trans_b else tb
            results["torch"] = flops / median_seconds(lambda: torch.mm(ta, tb_op, out=tout)) * 1e-9
        finally:
            torch.set_num_threads(previous)
    return results


def openblas_description():
    """Which OpenBLAS NumPy uses and which kernel it picked for this CPU (threadpoolctl's "architecture")."""
    infos = [i for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]
    if not infos:
        return "NumPy's BLAS is not OpenBLAS (threadpoolctl sees no openblas)"
    return "; ".join(f"OpenBLAS {i.get('version')} kernel {i.get('architecture')} "
                     f"({i.get('threading_layer')} threads, {os.path.basename(i['filepath'])})" for i in infos)


def environment_warnings():
    return [f"WARNING: {var}={os.environ[var]!r} is set: OpenBLAS then runs a kernel other than the one it picks "
            f"for this CPU, so the NumPy column is not representative (unset it for this command)"
            for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if var in os.environ]


def fmt(x, spec, suffix=""):
    return "n/a" if x is None else format(x, spec) + suffix


def markdown_table(rows, archs, have_torch):
    head = (["shape", "M×K×N", "threads"] + [f"fastconv {a}" for a in archs] + ["NumPy"] +
            (["torch"] if have_torch else []) + ["best/NumPy"] + (["best/torch"] if have_torch else []) +
            ["% peak"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|"]
    for r in rows:
        g = r["gflops"]
        cells = [r["shape"], r["mkn"], str(r["threads"])] + [fmt(g.get(f"fastconv {a}"), ".1f") for a in archs]
        cells += [fmt(g.get("numpy"), ".1f")] + ([fmt(g.get("torch"), ".1f")] if have_torch else [])
        cells += [fmt(r["best_over_numpy"], ".2f", "x")]
        if have_torch:
            cells += [fmt(r["best_over_torch"], ".2f", "x")]
        cells += [fmt(r["percent_of_peak"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast subset of the shapes")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--json", metavar="PATH", help="also write the results to PATH as JSON")
    args = parser.parse_args(argv)
    dtype = np.dtype(args.dtype)
    thread_counts = [int(t) for t in args.threads.split(",")]
    shapes = QUICK_SHAPES if args.quick else ALL_SHAPES
    archs = fastconv.available_archs()

    peaks = peak.measure_peak()
    per_fma_width = 1.0 if dtype == np.float32 else 0.5  # a float64 FMA does half the lanes
    cpu = fastconv._C.cpu_features()
    print(f"fastconv {fastconv.__version__} GEMM, {dtype}, on {cpu['brand'] or 'unknown CPU'} "
          f"({fastconv._C.cpu_count()} CPUs available)")
    print(f"NumPy {np.__version__}: {openblas_description()}")
    print(f"torch {torch.__version__}" if torch is not None else "torch: not installed (no torch column)")
    print("measured float32 FMA peak (GFLOP/s, bench/peak.py): " +
          (", ".join(f"{isa} {t}T {v:.0f}" for (isa, t), v in sorted(peaks.items())) or "not measured") +
          ("; float64 % peak uses half of it" if dtype == np.float64 else ""))
    for warning in environment_warnings():
        print(warning)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        print(f"NOTE: load average {load:.1f} on {fastconv._C.cpu_count()} CPUs before the run: other jobs compete "
              f"for the cores, multi-threaded figures above all")
    print()

    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        name, m, k, n, trans_b = shape
        for threads in thread_counts:
            gflops = bench_shape(shape, threads, dtype, rng)
            best = max(v for key, v in gflops.items() if key.startswith("fastconv"))
            peak_here = peak.best_peak(peaks, threads)
            rows.append({
                "shape": name, "m": m, "k": k, "n": n, "trans_b": trans_b, "mkn": f"{m}×{k}×{n}",
                "threads": threads, "gflops": gflops,
                "best_over_numpy": best / gflops["numpy"],
                "best_over_torch": best / gflops["torch"] if "torch" in gflops else None,
                "percent_of_peak": 100 * best / (peak_here * per_fma_width) if peak_here else None,
            })
    print(markdown_table(rows, archs, torch is not None))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dtype": str(dtype), "fastconv": fastconv.__version__, "numpy": np.__version__,
                       "torch": torch.__version__ if torch is not None else None,
                       "openblas": openblas_description(), "warnings": environment_warnings(),
                       "peak_gflops_float32": {f"{isa},{t}": v for (isa, t), v in peaks.items()},
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
