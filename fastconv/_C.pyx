# cython: language_level=3
"""fastconv._C: thin bindings to the C engine. No policy and no argument checking here: fastconv.functional
validates and converts; these functions release the GIL and call C on the buffers they are given."""
from libc.stdint cimport int64_t

import numpy as np

ctypedef fused real:
    float
    double


cdef int check(int err) except -1:
    """Turn a C error code into a Python exception."""
    if err == FC_OK:
        return 0
    if err == FC_ERR_NOMEM:
        raise MemoryError("fastconv: could not allocate a kernel workspace")
    if err == FC_ERR_OVERFLOW:
        raise ValueError("fastconv: a size computation overflowed 64-bit integers")
    raise ValueError(f"fastconv: invalid argument reached the C engine (error {err})")


cdef object _mv_base(object view):
    """The array a typed memoryview argument was taken from (None for None)."""
    return None if view is None else view.base


# ---------------------------------------------------------------- runtime: CPU, kernels, threads

def cpu_features():
    cdef const fc_cpu_features *f = fc_cpu()
    return {"x86_64": bool(f.x86), "avx2_fma": bool(f.avx2), "avx512f": bool(f.avx512f),
            "avx512dq": bool(f.avx512dq), "avx512bw": bool(f.avx512bw), "avx512vl": bool(f.avx512vl),
            "vendor": (<const char *>f.vendor).decode("ascii", "replace"),
            "brand": (<const char *>f.brand).decode("ascii", "replace").strip()}


cdef dict _arch_info(const fc_arch_row *a):
    return {"name": a.name.decode(), "isa": a.isa.decode(), "supported": bool(fc_arch_supported(a)),
            "sgemm_tile": (a.s.mr, a.s.vl * a.s.nv), "dgemm_tile": (a.d.mr, a.d.vl * a.d.nv),
            "sgemm_blocking": {"mc": a.s.mc, "kc": a.s.kc, "nc": a.s.nc},
            "dgemm_blocking": {"mc": a.d.mc, "kc": a.d.kc, "nc": a.d.nc}}


def archs():
    """Every kernel set compiled into this build, portable first."""
    return [_arch_info(fc_arch_at(i)) for i in range(fc_arch_count())]


def best_arch():
    return fc_arch_best().name.decode()


def current_arch():
    return fc_arch_current().name.decode()


def select_arch(str name):
    """Select a kernel set by name; returns False when unknown or unsupported on this CPU."""
    cdef bytes bname = name.encode()
    cdef const fc_arch_row *a = fc_arch_find(bname)
    if a == NULL or not fc_arch_supported(a):
        return False
    fc_arch_select(a)
    return True


def have_openmp():
    return bool(fc_have_openmp())


def get_num_threads():
    return fc_get_num_threads()


def set_num_threads(int n):
    return fc_set_num_threads(n)


def set_this_thread_num_threads(int n):
    """n >= 1: the kernels called from this thread use n threads, whatever the process-wide count; 0: back to the
    process-wide count. Returns the previous setting (0: none)."""
    return fc_set_this_thread_num_threads(n)


def num_threads_source():
    return fc_num_threads_source().decode()


def cpu_count():
    return fc_cpu_count()


# ---------------------------------------------------------------- kernel families
include "_C_gemm.pxi"
include "_C_conv.pxi"
include "_C_norm.pxi"
include "_C_loss.pxi"
include "_C_pool.pxi"
include "_C_activation.pxi"
include "_C_optim.pxi"
include "_C_array_cache.pxi"
include "_C_plan.pxi"
