# Batch normalization and local response normalization bindings (included by _C.pyx). Arrays arrive checked and
# C-contiguous from fastconv.functional: x as (N, C, HW), per-channel vectors as (C,).

cdef extern from "fastconv/batchnorm.h" nogil:
    ctypedef struct fc_batch_norm_desc:
        int64_t n, c, hw
        double eps, momentum
    int fc_sbatch_norm_forward_train(const fc_context *ctx, const float *x, float *y, const float *gamma,
                                     const float *beta, float *mean, float *invstd, float *running_mean,
                                     float *running_var, const fc_batch_norm_desc *d)
    int fc_dbatch_norm_forward_train(const fc_context *ctx, const double *x, double *y, const double *gamma,
                                     const double *beta, double *mean, double *invstd, double *running_mean,
                                     double *running_var, const fc_batch_norm_desc *d)
    int fc_sbatch_norm_forward_infer(const fc_context *ctx, const float *x, float *y, const float *gamma,
                                     const float *beta, const float *running_mean, const float *running_var,
                                     float *mean, float *invstd, const fc_batch_norm_desc *d)
    int fc_dbatch_norm_forward_infer(const fc_context *ctx, const double *x, double *y, const double *gamma,
                                     const double *beta, const double *running_mean, const double *running_var,
                                     double *mean, double *invstd, const fc_batch_norm_desc *d)
    int fc_sbatch_norm_backward_train(const fc_context *ctx, const float *dy, const float *x, float *dx,
                                      const float *gamma, float *dgamma, float *dbeta, const float *mean,
                                      const float *invstd, const fc_batch_norm_desc *d)
    int fc_dbatch_norm_backward_train(const fc_context *ctx, const double *dy, const double *x, double *dx,
                                      const double *gamma, double *dgamma, double *dbeta, const double *mean,
                                      const double *invstd, const fc_batch_norm_desc *d)
    int fc_sbatch_norm_backward_infer(const fc_context *ctx, const float *dy, const float *x, float *dx,
                                      const float *gamma, float *dgamma, float *dbeta, const float *mean,
                                      const float *invstd, const fc_batch_norm_desc *d)
    int fc_dbatch_norm_backward_infer(const fc_context *ctx, const double *dy, const double *x, double *dx,
                                      const double *gamma, double *dgamma, double *dbeta, const double *mean,
                                      const double *invstd, const fc_batch_norm_desc *d)

cdef extern from "fastconv/lrn.h" nogil:
    ctypedef struct fc_lrn_desc:
        int64_t n, c, hw, size
        double alpha, beta, k
    int fc_slrn_forward(const fc_context *ctx, const float *x, float *y, float *scale, const fc_lrn_desc *d)
    int fc_dlrn_forward(const fc_context *ctx, const double *x, double *y, double *scale, const fc_lrn_desc *d)
    int fc_slrn_backward(const fc_context *ctx, const float *dy, const float *x, const float *y,
                         const float *scale, float *dx, const fc_lrn_desc *d)
    int fc_dlrn_backward(const fc_context *ctx, const double *dy, const double *x, const double *y,
                         const double *scale, double *dx, const fc_lrn_desc *d)


def batch_norm_forward(const real[:, :, ::1] x, real[:, :, ::1] y, const real[::1] gamma, const real[::1] beta,
                       real[::1] mean, real[::1] invstd, real[::1] running_mean, real[::1] running_var,
                       bint training, double momentum, double eps):
    """Training (batch statistics; running arrays, which may be None, updated in place) or inference (running
    statistics) forward of x (N, C, HW) into y; writes the (mean, invstd) used. N*HW >= 2 in training."""
    cdef fc_batch_norm_desc d
    d.n = x.shape[0]
    d.c = x.shape[1]
    d.hw = x.shape[2]
    d.eps = eps
    d.momentum = momentum
    if d.c == 0:
        return
    cdef bint empty = d.n == 0 or d.hw == 0
    cdef const real *px = NULL
    cdef real *py = NULL
    if not empty:
        px = &x[0, 0, 0]
        py = &y[0, 0, 0]
    cdef real *prm = NULL if running_mean is None else &running_mean[0]
    cdef real *prv = NULL if running_var is None else &running_var[0]
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if training:
            if real is float:
                err = fc_sbatch_norm_forward_train(&ctx, px, py, &gamma[0], &beta[0], &mean[0], &invstd[0], prm,
                                                   prv, &d)
            else:
                err = fc_dbatch_norm_forward_train(&ctx, px, py, &gamma[0], &beta[0], &mean[0], &invstd[0], prm,
                                                   prv, &d)
        else:
            if real is float:
                err = fc_sbatch_norm_forward_infer(&ctx, px, py, &gamma[0], &beta[0], prm, prv, &mean[0],
                                                   &invstd[0], &d)
            else:
                err = fc_dbatch_norm_forward_infer(&ctx, px, py, &gamma[0], &beta[0], prm, prv, &mean[0],
                                                   &invstd[0], &d)
    check(err)


def batch_norm_backward(const real[:, :, ::1] dy, const real[:, :, ::1] x, real[:, :, ::1] dx,
                        const real[::1] gamma, real[::1] dgamma, real[::1] dbeta, const real[::1] mean,
                        const real[::1] invstd, bint training):
    """dx (N, C, HW), dgamma and dbeta (C,) from dy and the forward's x and saved (mean, invstd)."""
    cdef fc_batch_norm_desc d
    d.n = x.shape[0]
    d.c = x.shape[1]
    d.hw = x.shape[2]
    d.eps = 0
    d.momentum = 0
    if d.c == 0:
        return
    cdef bint empty = d.n == 0 or d.hw == 0
    cdef const real *pdy = NULL
    cdef const real *px = NULL
    cdef real *pdx = NULL
    if not empty:
        pdy = &dy[0, 0, 0]
        px = &x[0, 0, 0]
        pdx = &dx[0, 0, 0]
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if training:
            if real is float:
                err = fc_sbatch_norm_backward_train(&ctx, pdy, px, pdx, &gamma[0], &dgamma[0], &dbeta[0],
                                                    &mean[0], &invstd[0], &d)
            else:
                err = fc_dbatch_norm_backward_train(&ctx, pdy, px, pdx, &gamma[0], &dgamma[0], &dbeta[0],
                                                    &mean[0], &invstd[0], &d)
        else:
            if real is float:
                err = fc_sbatch_norm_backward_infer(&ctx, pdy, px, pdx, &gamma[0], &dgamma[0], &dbeta[0],
                                                    &mean[0], &invstd[0], &d)
            else:
                err = fc_dbatch_norm_backward_infer(&ctx, pdy, px, pdx, &gamma[0], &dgamma[0], &dbeta[0],
                                                    &mean[0], &invstd[0], &d)
    check(err)


def lrn_forward(const real[:, :, ::1] x, real[:, :, ::1] y, real[:, :, ::1] scale, int64_t size, double alpha,
                double beta, double k):
    """Cross-channel LRN of x (N, C, HW): writes y and scale (same shape)."""
    cdef fc_lrn_desc d
    d.n = x.shape[0]
    d.c = x.shape[1]
    d.hw = x.shape[2]
    d.size = size
    d.alpha = alpha
    d.beta = beta
    d.k = k
    if d.n == 0 or d.c == 0 or d.hw == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_slrn_forward(&ctx, &x[0, 0, 0], &y[0, 0, 0], &scale[0, 0, 0], &d)
        else:
            err = fc_dlrn_forward(&ctx, &x[0, 0, 0], &y[0, 0, 0], &scale[0, 0, 0], &d)
    check(err)
    if _plan_recorder is not None:
        _record_lrn(real is double, &x[0, 0, 0], &y[0, 0, 0], &scale[0, 0, 0], &d, (x.base, y.base, scale.base),
                    (y.base, scale.base))


def lrn_backward(const real[:, :, ::1] dy, const real[:, :, ::1] x, const real[:, :, ::1] y,
                 const real[:, :, ::1] scale, real[:, :, ::1] dx, int64_t size, double alpha, double beta):
    """dx (N, C, HW) of cross-channel LRN from dy and the forward's x, y and scale."""
    cdef fc_lrn_desc d
    d.n = x.shape[0]
    d.c = x.shape[1]
    d.hw = x.shape[2]
    d.size = size
    d.alpha = alpha
    d.beta = beta
    d.k = 0
    if d.n == 0 or d.c == 0 or d.hw == 0:
        return
    cdef fc_context ctx = fc_context_default()
    cdef int err
    with nogil:
        if real is float:
            err = fc_slrn_backward(&ctx, &dy[0, 0, 0], &x[0, 0, 0], &y[0, 0, 0], &scale[0, 0, 0], &dx[0, 0, 0],
                                   &d)
        else:
            err = fc_dlrn_backward(&ctx, &dy[0, 0, 0], &x[0, 0, 0], &y[0, 0, 0], &scale[0, 0, 0], &dx[0, 0, 0],
                                   &d)
    check(err)
