"""The machine's measured float32 FMA peak, the yardstick for "% of peak" in the benchmark tables.

measure_peak() compiles bench/fma_peak.c with the system C compiler (once; the binary is cached in the temp
directory under a name derived from the source and flags) and returns
    {("avx2", 1): GFLOP/s, ("avx2", 2): ..., ("avx512", 1): ..., ("avx512", 2): ...}
(avx512 entries only when the CPU has AVX-512F; {} when no compiler or no AVX2). Run as a script to print it.
The probe times each thread in its own CPU time, so other jobs on a shared machine do not lower the peak (they
lower the benchmarked GEMMs, timed in wall time, so "% of peak" errs on the low side under load).
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "fma_peak.c")
CFLAGS = ["-O2", "-mavx2", "-mfma", "-mavx512f", "-fopenmp"]


def build_probe():
    """Path of the compiled probe (built on first use), or None with a message on stderr when that fails."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    binary = os.path.join(tempfile.gettempdir(), f"fastconv-fma-peak-{digest}")
    if os.path.exists(binary):
        return binary
    cc = os.environ.get("CC") or shutil.which("cc")
    if cc is None:
        print("peak: no C compiler (cc) found; % of peak is not reported", file=sys.stderr)
        return None
    partial = f"{binary}.{os.getpid()}.tmp"  # build aside, then rename: concurrent runs never see half a file
    proc = subprocess.run([cc, *CFLAGS, SOURCE, "-o", partial], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"peak: compiling {SOURCE} failed; % of peak is not reported\n{proc.stderr}", file=sys.stderr)
        return None
    os.replace(partial, binary)
    return binary


def measure_peak(seconds=0.1):
    """{(isa, threads): GFLOP/s} of float32 FMA chains; each figure is the best of 5 runs of `seconds`."""
    binary = build_probe()
    if binary is None:
        return {}
    proc = subprocess.run([binary, str(seconds)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"peak: {proc.stderr.strip()}; % of peak is not reported", file=sys.stderr)
        return {}
    peaks = {}
    for line in proc.stdout.splitlines():
        isa, threads, gflops = line.split()
        peaks[(isa, int(threads))] = float(gflops)
    return peaks


def best_peak(peaks, threads):
    """The higher of the avx2 and avx512 peaks for `threads` threads (None when not measured)."""
    values = [v for (isa, t), v in peaks.items() if t == threads]
    return max(values) if values else None


if __name__ == "__main__":
    for (isa, threads), gflops in sorted(measure_peak().items()):
        print(f"{isa:<7} {threads} thread{'s' if threads > 1 else ' '}  {gflops:8.1f} GFLOP/s float32")
