# Softmax and cross-entropy bindings (included by _C.pyx). Arrays arrive checked and C-contiguous from
# fastconv.functional: rows of (N, K), labels int64 (N,) in [0, K).

cdef extern from "fastconv/loss.h" nogil:
    ctypedef struct fc_softmax_desc:
        int64_t n, k
    int fc_ssoftmax(const fc_context *ctx, const float *x, float *y, const fc_softmax_desc *d)
    int fc_dsoftmax(const fc_context *ctx, const double *x, double *y, const fc_softmax_desc *d)
    int fc_slog_softmax(const fc_context *ctx, const float *x, float *y, const fc_softmax_desc *d)
    int fc_dlog_softmax(const fc_context *ctx, const double *x, double *y, const fc_softmax_desc *d)
    int fc_ssoftmax_cross_entropy(const fc_context *ctx, const float *logits, const int64_t *labels,
                                  float *probs, double *loss, const fc_softmax_desc *d)
    int fc_dsoftmax_cross_entropy(const fc_context *ctx, const double *logits, const int64_t *labels,
                                  double *probs, double *loss, const fc_softmax_desc *d)
    int fc_ssoftmax_cross_entropy_backward(const fc_context *ctx, const float *probs, const int64_t *labels,
                                           float *dlogits, double scale, const fc_softmax_desc *d)
    int fc_dsoftmax_cross_entropy_backward(const fc_context *ctx, const double *probs, const int64_t *labels,
                                           double *dlogits, double scale, const fc_softmax_desc *d)


def softmax(const real[:, ::1] x, real[:, ::1] y, bint log):
    """y = softmax(x) (or log_softmax when `log`) over the rows of x (N, K)."""
    cdef fc_softmax_desc d
    d.n = x.shape[0]
    d.k = x.shape[1]
    if d.n == 0 or d.k == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_slog_softmax(&ctx, &x[0, 0], &y[0, 0], &d) if log else fc_ssoftmax(&ctx, &x[0, 0], &y[0, 0], &d)
        else:
            err = fc_dlog_softmax(&ctx, &x[0, 0], &y[0, 0], &d) if log else fc_dsoftmax(&ctx, &x[0, 0], &y[0, 0], &d)
    check(err)


def softmax_cross_entropy(const real[:, ::1] logits, const int64_t[::1] labels, real[:, ::1] probs):
    """Writes probs = softmax(logits) (N, K), N >= 1, K >= 1; returns the mean cross-entropy as a float."""
    cdef fc_softmax_desc d
    d.n = logits.shape[0]
    d.k = logits.shape[1]
    cdef fc_context ctx = fc_context_default()
    cdef double loss = 0
    cdef int err
    with nogil:
        if real is float:
            err = fc_ssoftmax_cross_entropy(&ctx, &logits[0, 0], &labels[0], &probs[0, 0], &loss, &d)
        else:
            err = fc_dsoftmax_cross_entropy(&ctx, &logits[0, 0], &labels[0], &probs[0, 0], &loss, &d)
    check(err)
    return loss


def softmax_cross_entropy_backward(const real[:, ::1] probs, const int64_t[::1] labels, real[:, ::1] dlogits,
                                   double scale):
    """dlogits = (probs - onehot(labels)) * scale, all (N, K)."""
    cdef fc_softmax_desc d
    d.n = probs.shape[0]
    d.k = probs.shape[1]
    if d.n == 0 or d.k == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_ssoftmax_cross_entropy_backward(&ctx, &probs[0, 0], &labels[0], &dlogits[0, 0], scale, &d)
        else:
            err = fc_dsoftmax_cross_entropy_backward(&ctx, &probs[0, 0], &labels[0], &dlogits[0, 0], scale, &d)
    check(err)
