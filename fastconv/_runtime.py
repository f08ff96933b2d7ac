"""Process-wide engine state: which micro-kernels run and on how many threads.

The kernel set is chosen once at import (the best the CPU supports, or FASTCONV_ARCH=ref|avx2|avx512) and can be
switched with set_arch (tests run every kernel in one process). The thread count starts from OMP_NUM_THREADS or
the CPUs available, and is changed by set_num_threads, the threads() context manager, or threadpoolctl.
"""
import contextlib
import numbers
import os
import sys

# GNU OpenMP lets idle team threads spin for a while before sleeping, which on the 2-core machine we measure on
# made LeNet-5's 2-thread training step 1.5x slower (7.3 ms against 4.5-5.0 ms with a short spin): a network of
# small layers runs many short parallel regions with Python in between. A short spin keeps wake-ups cheap for
# back-to-back regions. It must be in the environment before the OpenMP runtime loads (with _C below); a user's
# GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
DEFAULT_GOMP_SPINCOUNT = "10000"
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = DEFAULT_GOMP_SPINCOUNT

from . import _C  # noqa: E402


def available_archs():
    """Names of the kernel sets this build contains and this CPU can run, portable first."""
    return [a["name"] for a in _C.archs() if a["supported"]]


def get_arch():
    """Name of the kernel set in use."""
    return _C.current_arch()


def set_arch(name):
    """Use kernel set `name` ("ref", "avx2" or "avx512") from now on; returns the previous name.

    Raises ValueError naming the choices when `name` is unknown or this CPU cannot run it.
    """
    if not isinstance(name, str):
        raise TypeError(f"arch must be a str, got {type(name).__name__}")
    built = [a["name"] for a in _C.archs()]
    if name not in built:
        raise ValueError(f"unknown fastconv arch {name!r}: this build has {built}")
    previous = _C.current_arch()
    if not _C.select_arch(name):
        raise ValueError(f"fastconv arch {name!r} is not supported by this CPU; usable: {available_archs()}")
    return previous


def get_num_threads():
    """Number of threads fastconv's kernels use."""
    return _C.get_num_threads()


def set_num_threads(n):
    """Use `n` threads (n >= 1) in fastconv's kernels; returns the previous count."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):  # numbers.Integral admits numpy integers
        raise TypeError(f"number of threads must be an int, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    return _C.set_num_threads(n)


def array_cache_info():
    """The array cache's state: bytes and blocks it keeps, large allocations it served (hits) or passed to malloc
    (misses), and its limit in bytes.

    fastconv.nn's containers (Sequential, and so every model) allocate their arrays through a NumPy allocator
    that keeps freed blocks of 1 MiB and more, up to the limit, for the next request of the same size: a
    network's activations then reuse the previous call's memory instead of faulting in and zeroing fresh pages
    each time (ResNet-50's forward at batch 8 ran 6 % faster). Arrays allocated anywhere else are untouched."""
    return _C.array_cache_stats()


def empty_array_cache():
    """Free every block the array cache keeps (see array_cache_info); returns the bytes released."""
    return _C.array_cache_clear()


def set_array_cache_limit(nbytes):
    """Keep at most `nbytes` of freed blocks in the array cache (default 512 MiB; 0 keeps none, as plain malloc
    would); returns the previous limit."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral):
        raise TypeError(f"nbytes must be an int, got {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return _C.array_cache_set_limit(int(nbytes))


@contextlib.contextmanager
def threads(n):
    """Context manager: run the enclosed code with `n` threads, then restore the previous count."""
    previous = set_num_threads(n)
    try:
        yield
    finally:
        _C.set_num_threads(previous)


def config():
    """The configuration as a dict (what show_config prints)."""
    from . import __version__
    return {
        "version": __version__,
        "archs": _C.archs(),
        "arch": _C.current_arch(),
        "arch_source": _arch_source,
        "cpu": _C.cpu_features(),
        "openmp": _C.have_openmp(),
        "num_threads": _C.get_num_threads(),
        "num_threads_source": _C.num_threads_source(),
        "cpu_count": _C.cpu_count(),
    }


def show_config(file=None):
    """Print version, kernels available and chosen, CPU features, OpenMP and threads."""
    c = config()
    out = file or sys.stdout
    cpu = c["cpu"]
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"fastconv {c['version']}")
    p(f"  CPU:       {cpu['brand'] or 'unknown'} ({cpu['vendor'] or 'non-x86'})")
    feats = [k for k in ("avx2_fma", "avx512f", "avx512dq", "avx512bw", "avx512vl") if cpu.get(k)]
    p(f"  features:  {', '.join(feats) if feats else 'baseline only'}")
    p("  kernels:")
    for a in c["archs"]:
        mark = "*" if a["name"] == c["arch"] else " "
        ok = "available" if a["supported"] else "not supported by this CPU"
        p(f"   {mark} {a['name']:<7} {a['isa']:<24} sgemm tile {a['sgemm_tile'][0]}x{a['sgemm_tile'][1]}, "
          f"dgemm tile {a['dgemm_tile'][0]}x{a['dgemm_tile'][1]}  ({ok})")
    p(f"  chosen:    {c['arch']} ({c['arch_source']})")
    p(f"  OpenMP:    {'on' if c['openmp'] else 'off (built without OpenMP: kernels run serially)'}")
    p(f"  threads:   {c['num_threads']} (from {c['num_threads_source']}; {c['cpu_count']} CPUs available)")


def _select_arch_from_env():
    name = os.environ.get("FASTCONV_ARCH", "").strip()
    if not name:
        return "best supported by this CPU"
    try:
        set_arch(name)
    except ValueError as e:
        raise ImportError(f"FASTCONV_ARCH={name!r}: {e}") from None
    return "FASTCONV_ARCH"


_arch_source = _select_arch_from_env()


def _register_threadpoolctl():
    """Let threadpoolctl see and limit fastconv's pool, so code that caps BLAS threads caps ours too.

    fastconv registers under user_api "blas" (its GEMM is a BLAS-like provider) and internal_api "fastconv".
    """
    try:
        import threadpoolctl
    except ImportError:
        return

    class FastconvController(threadpoolctl.LibController):
        user_api = "blas"
        internal_api = "fastconv"
        filename_prefixes = ("_c.",)  # threadpoolctl lower-cases file names
        check_symbols = ("fastconv_get_num_threads", "fastconv_set_num_threads")

        def get_num_threads(self):
            return self.dynlib.fastconv_get_num_threads()

        def set_num_threads(self, num_threads):
            self.dynlib.fastconv_set_num_threads(int(num_threads))

        def get_version(self):
            from . import __version__
            return __version__

    threadpoolctl.register(FastconvController)


_register_threadpoolctl()
