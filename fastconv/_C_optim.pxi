# Optimizer update bindings (included by _C.pyx): flat C-contiguous arrays of equal length.

cdef extern from "fastconv/optim.h" nogil:
    int fc_ssgd_update(const fc_context *ctx, float *p, const float *g, float *v, int64_t n, float lr,
                       float momentum, float damp, float weight_decay, int nesterov, int first)
    int fc_dsgd_update(const fc_context *ctx, double *p, const double *g, double *v, int64_t n, double lr,
                       double momentum, double damp, double weight_decay, int nesterov, int first)
    int fc_zero_fill(const fc_context *ctx, void *p, int64_t bytes)


def sgd_update(real[::1] p, const real[::1] g, real[::1] v, double lr, double momentum, double dampening,
               double weight_decay, bint nesterov, bint first):
    """One SGD step on p in place (and on the momentum buffer v, or None for none), in one pass over memory; the
    same values as fastconv.optim.SGD's NumPy expressions. first: v takes the step's gradient (no history yet)."""
    cdef int64_t n = p.shape[0]
    if g.shape[0] != n or (v is not None and v.shape[0] != n):
        raise ValueError(f"sgd_update: p, g and v differ in length ({n}, {g.shape[0]}, "
                         f"{None if v is None else v.shape[0]})")
    if n == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef real *pv = &v[0] if v is not None else NULL
    cdef int err
    with nogil:
        if real is float:
            err = fc_ssgd_update(&ctx, &p[0], &g[0], pv, n, <float>lr, <float>momentum, <float>(1 - dampening),
                                 <float>weight_decay, nesterov, first)
        else:
            err = fc_dsgd_update(&ctx, &p[0], &g[0], pv, n, lr, momentum, 1 - dampening, weight_decay, nesterov,
                                 first)
    check(err)


def zero_fill(a):
    """a[...] = 0 for a C-contiguous writable NumPy array, memset over the threads."""
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous or not a.flags.writeable:
        raise ValueError("zero_fill needs a writable C-contiguous array")
    cdef char *p = <char *><size_t>a.ctypes.data
    cdef int64_t nbytes = a.nbytes
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        err = fc_zero_fill(&ctx, p, nbytes)
    check(err)
