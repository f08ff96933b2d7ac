# Element-wise activation bindings (included by _C.pyx): flat C-contiguous arrays of equal length.

cdef extern from "fastconv/activation.h" nogil:
    enum:
        FC_RELU_PLAIN
        FC_RELU_GUIDED
        FC_RELU_DECONVNET
    int fc_srelu_forward(const fc_context *ctx, const float *x, float *y, int64_t n)
    int fc_drelu_forward(const fc_context *ctx, const double *x, double *y, int64_t n)
    int fc_srelu_backward(const fc_context *ctx, const float *dy, const float *x, float *dx, int64_t n, int rule)
    int fc_drelu_backward(const fc_context *ctx, const double *dy, const double *x, double *dx, int64_t n,
                          int rule)
    int fc_sdropout_apply(const fc_context *ctx, const float *x, const unsigned char *mask, float *y, int64_t n,
                          float scale)
    int fc_ddropout_apply(const fc_context *ctx, const double *x, const unsigned char *mask, double *y, int64_t n,
                          double scale)

RELU_RULES = {"plain": FC_RELU_PLAIN, "guided": FC_RELU_GUIDED, "deconvnet": FC_RELU_DECONVNET}


def relu_forward(const real[::1] x, real[::1] y):
    cdef int64_t n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError("relu_forward: x and y differ in length")
    if n == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_srelu_forward(&ctx, &x[0], &y[0], n)
        else:
            err = fc_drelu_forward(&ctx, &x[0], &y[0], n)
    check(err)
    if _plan_recorder is not None:
        _record_relu(real is double, &x[0], &y[0], n, (x.base, y.base), (y.base,))


def relu_backward(const real[::1] dy, const real[::1] x, real[::1] dx, int rule):
    """rule: a value of RELU_RULES."""
    cdef int64_t n = dy.shape[0]
    if x.shape[0] != n or dx.shape[0] != n:
        raise ValueError("relu_backward: dy, x and dx differ in length")
    if n == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_srelu_backward(&ctx, &dy[0], &x[0], &dx[0], n, rule)
        else:
            err = fc_drelu_backward(&ctx, &dy[0], &x[0], &dx[0], n, rule)
    check(err)


def dropout_apply(const real[::1] x, const unsigned char[::1] mask, real[::1] y, real scale):
    """y = x * mask * scale; mask is a bool array viewed as uint8."""
    cdef int64_t n = x.shape[0]
    if mask.shape[0] != n or y.shape[0] != n:
        raise ValueError("dropout_apply: x, mask and y differ in length")
    if n == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_sdropout_apply(&ctx, &x[0], &mask[0], &y[0], n, scale)
        else:
            err = fc_ddropout_apply(&ctx, &x[0], &mask[0], &y[0], n, scale)
    check(err)
