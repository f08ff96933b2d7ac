"""Shared benchmark plumbing: which fastconv is measured, thread control for all three libraries, timing,
the machine peak, the environment header and markdown tables.

Imported by the scripts in bench/ (run as `python bench/<script>.py`, so bench/ is on sys.path).
"""
import contextlib
import glob
import math
import os
import platform
import statistics
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Benchmark the checkout this file lives in when its extension is built in place; otherwise whatever
# fastconv is installed. Without this an installed copy elsewhere would silently be the one measured.
if glob.glob(os.path.join(_REPO, "fastconv", "_C*.so")) or glob.glob(os.path.join(_REPO, "fastconv", "_C*.pyd")):
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402

import fastconv  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None


# ------------------------------------------------------------------------------------------------- threads

@contextlib.contextmanager
def all_threads(n):
    """Run fastconv, torch and NumPy's BLAS with `n` threads inside the block; restore afterwards."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(fastconv.threads(n))
        if torch is not None:
            previous = torch.get_num_threads()
            torch.set_num_threads(n)
            stack.callback(torch.set_num_threads, previous)
        if threadpoolctl is not None:
            stack.enter_context(threadpoolctl.threadpool_limits(limits=n))
        yield


# -------------------------------------------------------------------------------------------------- timing

class Timing:
    """Wall-clock samples (seconds) of one benchmark cell; `result` is what the untimed warm-up call returned."""

    def __init__(self, samples, result):
        self.samples = samples
        self.result = result

    @property
    def median(self):
        return statistics.median(self.samples)

    @property
    def median_ms(self):
        return 1e3 * self.median


def measure(fn, budget=0.5, min_repeats=3, max_repeats=1000):
    """Time `fn()`: one untimed warm-up call, then repeats until about `budget` seconds are spent.

    At least `min_repeats` timed calls (so a slow cell costs min_repeats calls, not `budget`), at most
    `max_repeats`. Each call is timed on its own; report the median, which ignores the occasional
    interruption by other processes on a shared machine.
    """
    result = fn()
    samples = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= max_repeats:
            break
        if len(samples) >= min_repeats and time.perf_counter() - start >= budget:
            break
    return Timing(samples, result)


def measure_rounds(fns, budget=0.5, min_repeats=3, rounds=3, pause=0.05):
    """Time several callables of one cell ({name: fn} -> {name: Timing}) in `rounds` rounds, each library in turn.

    On a shared machine the load drifts within minutes (other jobs, the sibling hyperthread); timing one library
    after the other lets such a drift land on one library only and skew the ratio. Here every round gives each
    library about budget / rounds seconds (at least one call, and `min_repeats` over all rounds), so all of them
    sample the same stretch of time. Within a round one library runs its calls back to back, after an untimed
    call and a `pause`: the previous library's spinning OpenMP / thread-pool workers have gone idle by then and do
    not compete for the cores. The untimed call of the first round is each Timing's `result`.
    """
    samples = {name: [] for name in fns}
    results = {}
    per_round = budget / max(rounds, 1)
    for r in range(max(rounds, 1)):
        for name, fn in fns.items():
            time.sleep(pause)
            out = fn()
            if r == 0:
                results[name] = out
            start = time.perf_counter()
            need = max(1, -(-min_repeats // max(rounds, 1)))
            taken = 0
            while True:
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
                taken += 1
                if taken >= need and time.perf_counter() - start >= per_round:
                    break
    return {name: Timing(samples[name], results[name]) for name in fns}


# ---------------------------------------------------------------------------------------------------- peak

def machine_peak():
    """{(arch, threads): GFLOP/s} from bench/peak.py, or (None, reason) when it is missing or fails.

    The peak must come from an independent FMA loop, never from fastconv's own GEMM (that would make
    "% of peak" circular), so without peak.py the tables say "n/a".
    """
    try:
        from peak import measure_peak
    except ImportError as e:
        return None, f"bench/peak.py not importable ({e})"
    try:
        peak = measure_peak()
    except Exception as e:  # a broken peak probe must not stop the benchmark
        return None, f"measure_peak() failed: {type(e).__name__}: {e}"
    if not isinstance(peak, dict) or not peak:
        return None, f"measure_peak() returned {type(peak).__name__}, expected a non-empty dict"
    return peak, None


def peak_for(peak, arch, threads):
    """Peak GFLOP/s for fastconv's kernel set `arch` at `threads`, or None.

    The portable "ref" kernels have no vector peak of their own; the AVX2 figure is used for them.
    """
    if not peak:
        return None
    for key in ((arch, threads), ("avx2", threads)):
        if key in peak:
            return float(peak[key])
    return None


# ----------------------------------------------------------------------------------------------- environment

def openblas_notes():
    """Lines describing NumPy's OpenBLAS (kernel, version, threading) and any OPENBLAS_* variables set."""
    lines = []
    set_vars = sorted(k for k in os.environ if k.startswith("OPENBLAS_"))
    if set_vars:
        shown = ", ".join(f"{k}={os.environ[k]}" for k in set_vars)
        lines.append(f"NOTE: {shown} set in the environment; it changes NumPy's OpenBLAS kernel or threads, so "
                     "the NumPy column is not the default OpenBLAS. Unset it for this command to compare "
                     "against the stock library (this script never changes it).")
    if threadpoolctl is None:
        lines.append("OpenBLAS kernel: unknown (threadpoolctl not installed)")
        return lines
    found = [i for i in threadpoolctl.threadpool_info() if i.get("internal_api") == "openblas"]
    for info in found:
        lines.append(f"OpenBLAS {info.get('version')} kernel {info.get('architecture')}, "
                     f"threading {info.get('threading_layer')} ({os.path.basename(info.get('filepath', ''))})")
    if not found:
        lines.append("OpenBLAS: not loaded (NumPy uses another BLAS)")
    return lines


def environment():
    """A dict describing the run: versions, kernels, CPU, OpenBLAS and the fastconv path measured."""
    cfg = fastconv._runtime.config()
    return {
        "fastconv": fastconv.__version__,
        "fastconv_path": os.path.dirname(fastconv.__file__),
        "fastconv_arch": cfg["arch"],
        "cpu": cfg["cpu"].get("brand"),
        "cpu_count": cfg["cpu_count"],
        "openmp": cfg["openmp"],
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "python": platform.python_version(),
        "openblas": openblas_notes(),
        "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "KMP_", "MKL_"))},
    }


def print_environment(env, peak, peak_error):
    print(f"fastconv {env['fastconv']} from {env['fastconv_path']}, kernels {env['fastconv_arch']}, "
          f"OpenMP {'on' if env['openmp'] else 'off'}")
    print(f"CPU {env['cpu']} ({env['cpu_count']} CPUs available); numpy {env['numpy']}, torch {env['torch']}, "
          f"python {env['python']}")
    for line in env["openblas"]:
        print(line)
    if env["omp_env"]:
        print("threading variables: " + ", ".join(f"{k}={v}" for k, v in sorted(env["omp_env"].items())))
    if peak:
        shown = ", ".join(f"{a} {t}t {g:.1f}" for (a, t), g in sorted(peak.items()))
        print(f"peak GFLOP/s (bench/peak.py): {shown}")
    else:
        print(f"peak n/a: {peak_error}")
    print()


# ------------------------------------------------------------------------------------------------- tables

def fmt(value, digits=2):
    """A number for a table cell; '' for None (not measured), 'n/a' for NaN."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(header, rows):
    """Lines of a GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


# ------------------------------------------------------------------------------------- machine and versions

def cpu_brand():
    """The CPU's brand string as fastconv's CPUID probe reports it."""
    from fastconv import _C
    return _C.cpu_features().get("brand") or platform.processor() or "unknown"


def _module_version(name):
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def library_versions():
    """{library: version or None when not installed} for everything the network benchmark compares."""
    return {"fastconv": fastconv.__version__, "numpy": np.__version__,
            "torch": torch.__version__ if torch is not None else None,
            "onnxruntime": _module_version("onnxruntime"), "onnx": _module_version("onnx"),
            "python": platform.python_version()}


def memory_bytes():
    """(total, available) physical memory in bytes from /proc/meminfo, or (None, None) where it is missing."""
    info = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        return None, None
    return info.get("MemTotal"), info.get("MemAvailable")


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS does not give them."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def machine():
    """What the report states about the machine: CPU brand, CPUs usable by this process, memory, load, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    total, available = memory_bytes()
    return {"cpu": cpu_brand(), "cpu_count": os.cpu_count(), "cpus_usable": usable, "memory_total": total,
            "memory_available": available, "load_average": load_average(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ---------------------------------------------------------------------------------------------- onnxruntime

def onnxruntime_or_none():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def ort_session(path, threads):
    """An onnxruntime CPU session on the model file `path` with `threads` intra-op threads (one inter-op
    thread, sequential execution, all graph optimizations: its defaults otherwise)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
