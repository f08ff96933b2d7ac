# Pooling bindings (included by _C.pyx). Arrays arrive C-contiguous with shapes checked by fastconv.functional;
# the C side re-checks the geometry (fc_pool2d_check) so a bad call cannot read out of bounds.

cdef extern from "fastconv/pool.h" nogil:
    ctypedef struct fc_pool2d_desc:
        int64_t batch, channels, in_h, in_w, out_h, out_w
        int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w
        int ceil_mode, count_include_pad
    int fc_pool2d_check(const fc_pool2d_desc *d)
    int fc_pool2d_output_size(int64_t inp, int64_t kernel, int64_t stride, int64_t pad, int ceil_mode,
                              int64_t *out)
    int fc_max_pool2d_set_argmax_mode(int mode)
    int fc_max_pool2d_argmax_mode()
    int fc_max_pool2d_argmax_separable(const fc_pool2d_desc *d, int64_t elem_size)
    int fc_smax_pool2d_forward(const fc_context *ctx, const float *x, float *y, int64_t *argmax,
                               const fc_pool2d_desc *d)
    int fc_dmax_pool2d_forward(const fc_context *ctx, const double *x, double *y, int64_t *argmax,
                               const fc_pool2d_desc *d)
    int fc_smax_pool2d_forward_values(const fc_context *ctx, const float *x, float *y, const fc_pool2d_desc *d)
    int fc_dmax_pool2d_forward_values(const fc_context *ctx, const double *x, double *y, const fc_pool2d_desc *d)
    int fc_smax_pool2d_backward(const fc_context *ctx, const float *dy, const int64_t *argmax, float *dx,
                                const fc_pool2d_desc *d)
    int fc_dmax_pool2d_backward(const fc_context *ctx, const double *dy, const int64_t *argmax, double *dx,
                                const fc_pool2d_desc *d)
    int fc_savg_pool2d_forward(const fc_context *ctx, const float *x, float *y, const fc_pool2d_desc *d)
    int fc_davg_pool2d_forward(const fc_context *ctx, const double *x, double *y, const fc_pool2d_desc *d)
    int fc_savg_pool2d_backward(const fc_context *ctx, const float *dy, float *dx, const fc_pool2d_desc *d)
    int fc_davg_pool2d_backward(const fc_context *ctx, const double *dy, double *dx, const fc_pool2d_desc *d)
    int fc_sglobal_avg_pool2d_forward(const fc_context *ctx, const float *x, float *y, const fc_pool2d_desc *d)
    int fc_dglobal_avg_pool2d_forward(const fc_context *ctx, const double *x, double *y,
                                      const fc_pool2d_desc *d)
    int fc_sglobal_avg_pool2d_backward(const fc_context *ctx, const float *dy, float *dx,
                                       const fc_pool2d_desc *d)
    int fc_dglobal_avg_pool2d_backward(const fc_context *ctx, const double *dy, double *dx,
                                       const fc_pool2d_desc *d)


cdef fc_pool2d_desc _pool_desc(Py_ssize_t *in_shape, Py_ssize_t *out_shape, tuple kernel, tuple stride,
                               tuple padding, bint ceil_mode, bint count_include_pad):
    """The descriptor of a pooling from (N, C, H, W) to (N, C, Ho, Wo)."""
    cdef fc_pool2d_desc d
    d.batch, d.channels, d.in_h, d.in_w = in_shape[0], in_shape[1], in_shape[2], in_shape[3]
    d.out_h, d.out_w = out_shape[2], out_shape[3]
    d.kernel_h, d.kernel_w = kernel
    d.stride_h, d.stride_w = stride
    d.pad_h, d.pad_w = padding
    d.ceil_mode = ceil_mode
    d.count_include_pad = count_include_pad
    return d


cdef bint _same_shape(Py_ssize_t *a, Py_ssize_t *b, int ndim):
    for i in range(ndim):
        if a[i] != b[i]:
            return False
    return True


def pool2d_output_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, bint ceil_mode):
    """The C engine's output length of one axis (None when the geometry is invalid): lets tests check that
    fastconv.functional and C agree."""
    cdef int64_t out = 0
    if fc_pool2d_output_size(size, kernel, stride, pad, ceil_mode, &out) != FC_OK:
        return None
    return out


_ARGMAX_MODES = ("auto", "windows")


def max_pool2d_argmax_mode(mode=None):
    """The process-wide kernel of max pooling with argmax ("auto" or "windows"); sets it when given.

    "auto" runs the selected arch's separable kernel for horizontal strides 1 and 2, "windows" the window-by-window
    kernel always (both give the same values and indices: tests compare them). Returns the previous setting. Meant
    for tests and benchmarks."""
    previous = _ARGMAX_MODES[fc_max_pool2d_argmax_mode()]
    if mode is not None:
        if mode not in _ARGMAX_MODES:
            raise ValueError(f"mode must be one of {_ARGMAX_MODES}, got {mode!r}")
        check(fc_max_pool2d_set_argmax_mode(_ARGMAX_MODES.index(mode)))
    return previous


def max_pool2d_argmax_kernel(x_shape, y_shape, tuple kernel, tuple stride, tuple padding, bint ceil_mode,
                             int64_t itemsize):
    """Which kernel max_pool2d_forward runs for these shapes under the current mode: "separable" or "windows" (lets
    tests check that the separable kernel is the one they exercise)."""
    cdef Py_ssize_t xs[4]
    cdef Py_ssize_t ys[4]
    xs[:] = list(x_shape)
    ys[:] = list(y_shape)
    cdef fc_pool2d_desc d = _pool_desc(xs, ys, kernel, stride, padding, ceil_mode, False)
    check(fc_pool2d_check(&d))
    return "separable" if fc_max_pool2d_argmax_separable(&d, itemsize) else "windows"


def max_pool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, int64_t[:, :, :, ::1] argmax,
                       tuple kernel, tuple stride, tuple padding, bint ceil_mode):
    cdef fc_pool2d_desc d = _pool_desc(x.shape, y.shape, kernel, stride, padding,
                                       ceil_mode, False)
    if not _same_shape(x.shape, y.shape, 2) or not _same_shape(argmax.shape, y.shape, 4):
        raise ValueError("max_pool2d_forward: x, y and argmax disagree in shape")
    if x.shape[0] * x.shape[1] == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_smax_pool2d_forward(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0], &d)
        else:
            err = fc_dmax_pool2d_forward(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0], &d)
    check(err)


def max_pool2d_forward_values(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, tuple kernel, tuple stride,
                              tuple padding, bint ceil_mode):
    cdef fc_pool2d_desc d = _pool_desc(x.shape, y.shape, kernel, stride, padding, ceil_mode, False)
    if not _same_shape(x.shape, y.shape, 2):
        raise ValueError("max_pool2d_forward_values: x and y disagree in shape")
    if x.shape[0] * x.shape[1] == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_smax_pool2d_forward_values(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &d)
        else:
            err = fc_dmax_pool2d_forward_values(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &d)
    check(err)
    if _plan_recorder is not None:
        _record_pool(PLAN_MAX_POOL, real is double, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &d, (x.base, y.base), (y.base,))


def max_pool2d_backward(const real[:, :, :, ::1] dy, const int64_t[:, :, :, ::1] argmax, real[:, :, :, ::1] dx):
    """dx = scatter-add of dy through argmax; out-of-plane indices raise ValueError (dx then partly written)."""
    cdef fc_pool2d_desc d = _pool_desc(dx.shape, dy.shape, (1, 1), (1, 1), (0, 0),
                                       False, False)
    if not _same_shape(dx.shape, dy.shape, 2) or not _same_shape(argmax.shape, dy.shape, 4):
        raise ValueError("max_pool2d_backward: dy, argmax and dx disagree in shape")
    if dx.shape[0] * dx.shape[1] == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_smax_pool2d_backward(&ctx, &dy[0, 0, 0, 0], &argmax[0, 0, 0, 0], &dx[0, 0, 0, 0], &d)
        else:
            err = fc_dmax_pool2d_backward(&ctx, &dy[0, 0, 0, 0], &argmax[0, 0, 0, 0], &dx[0, 0, 0, 0], &d)
    check(err)


def avg_pool2d_forward(const real[:, :, :, ::1] x, real[:, :, :, ::1] y, tuple kernel, tuple stride,
                       tuple padding, bint ceil_mode, bint count_include_pad):
    cdef fc_pool2d_desc d = _pool_desc(x.shape, y.shape, kernel, stride, padding,
                                       ceil_mode, count_include_pad)
    if not _same_shape(x.shape, y.shape, 2):
        raise ValueError("avg_pool2d_forward: x and y disagree in shape")
    if x.shape[0] * x.shape[1] == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_savg_pool2d_forward(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &d)
        else:
            err = fc_davg_pool2d_forward(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &d)
    check(err)
    if _plan_recorder is not None:
        _record_pool(PLAN_AVG_POOL, real is double, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &d, (x.base, y.base), (y.base,))


def avg_pool2d_backward(const real[:, :, :, ::1] dy, real[:, :, :, ::1] dx, tuple kernel, tuple stride,
                        tuple padding, bint ceil_mode, bint count_include_pad):
    cdef fc_pool2d_desc d = _pool_desc(dx.shape, dy.shape, kernel, stride, padding,
                                       ceil_mode, count_include_pad)
    if not _same_shape(dx.shape, dy.shape, 2):
        raise ValueError("avg_pool2d_backward: dy and dx disagree in shape")
    if dx.shape[0] * dx.shape[1] == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_savg_pool2d_backward(&ctx, &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &d)
        else:
            err = fc_davg_pool2d_backward(&ctx, &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &d)
    check(err)


cdef fc_pool2d_desc _planes_desc(Py_ssize_t *in_shape):
    """Global pooling: the kernel is the plane, the output one value per plane."""
    cdef Py_ssize_t out_shape[4]
    out_shape[:] = [in_shape[0], in_shape[1], 1, 1]
    return _pool_desc(in_shape, out_shape, (in_shape[2], in_shape[3]), (1, 1), (0, 0), False, False)


def global_avg_pool2d_forward(const real[:, :, :, ::1] x, real[:, ::1] y):
    """y (N, C) = mean of each (H, W) plane of x."""
    cdef fc_pool2d_desc d = _planes_desc(x.shape)
    if not _same_shape(x.shape, y.shape, 2):
        raise ValueError("global_avg_pool2d_forward: x and y disagree in shape")
    if x.shape[0] * x.shape[1] == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_sglobal_avg_pool2d_forward(&ctx, &x[0, 0, 0, 0], &y[0, 0], &d)
        else:
            err = fc_dglobal_avg_pool2d_forward(&ctx, &x[0, 0, 0, 0], &y[0, 0], &d)
    check(err)
    if _plan_recorder is not None:
        _record_pool(PLAN_GLOBAL_AVG_POOL, real is double, &x[0, 0, 0, 0], &y[0, 0], &d, (x.base, y.base), (y.base,))


def global_avg_pool2d_backward(const real[:, ::1] dy, real[:, :, :, ::1] dx):
    cdef fc_pool2d_desc d = _planes_desc(dx.shape)
    if not _same_shape(dx.shape, dy.shape, 2):
        raise ValueError("global_avg_pool2d_backward: dy and dx disagree in shape")
    if dx.shape[0] * dx.shape[1] == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_sglobal_avg_pool2d_backward(&ctx, &dy[0, 0], &dx[0, 0, 0, 0], &d)
        else:
            err = fc_dglobal_avg_pool2d_backward(&ctx, &dy[0, 0], &dx[0, 0, 0, 0], &d)
    check(err)
