/* Batch normalization over the channels of an (N, C, HW) array, float32 (s) and float64 (d).
 *
 * x is C-contiguous and viewed as (N, C, HW): NCHW images have HW = H*W, an (N, C) batch has HW = 1. Per channel c,
 * over its m = N*HW values:
 *   mean_c = sum x / m,   var_c = sum (x - mean_c)^2 / m (biased),   invstd_c = 1 / sqrt(var_c + eps)
 *   y = (x - mean_c) * invstd_c * gamma_c + beta_c
 * Training uses the batch statistics and, when running_mean/running_var are not NULL, updates them in place:
 *   running_mean = (1 - momentum) * running_mean + momentum * mean_c
 *   running_var  = (1 - momentum) * running_var  + momentum * var_c * m / (m - 1)     (unbiased, as torch)
 * Inference uses the running statistics instead, and still writes the mean and invstd it used.
 *
 * Statistics are accumulated in double (partial sums of T over short runs, flushed into double) around a shift
 * close to the mean, with a second pass centred on the mean whenever the first would lose more than one bit to
 * cancellation, so a channel mean far larger than its spread does not lose the variance (see batchnorm.inc).
 * Channels run in parallel; each channel's sums are accumulated by one thread in a fixed order, so results do not
 * depend on the thread count. */
#ifndef FASTCONV_BATCHNORM_H
#define FASTCONV_BATCHNORM_H

#include "fastconv/base.h"

typedef struct fc_batch_norm_desc {
    int64_t n;       /* batch size */
    int64_t c;       /* channels */
    int64_t hw;      /* values per channel and sample: H*W (1 for an (N, C) batch) */
    double eps;      /* added to the variance before the square root */
    double momentum; /* weight of the batch statistics in the running averages */
} fc_batch_norm_desc;

/* Training forward. Writes y (N, C, HW) and the batch mean and invstd (C,); updates running_mean and running_var
 * (C,) in place when they are not NULL. Needs m = N*HW >= 2 (FC_ERR_ARG otherwise). */
int fc_sbatch_norm_forward_train(const fc_context *ctx, const float *x, float *y, const float *gamma,
                                 const float *beta, float *mean, float *invstd, float *running_mean,
                                 float *running_var, const fc_batch_norm_desc *d);
int fc_dbatch_norm_forward_train(const fc_context *ctx, const double *x, double *y, const double *gamma,
                                 const double *beta, double *mean, double *invstd, double *running_mean,
                                 double *running_var, const fc_batch_norm_desc *d);

/* Inference forward with the running statistics. Writes y, and mean (a copy of running_mean) and
 * invstd = 1 / sqrt(running_var + eps), the `saved` pair the backward takes. */
int fc_sbatch_norm_forward_infer(const fc_context *ctx, const float *x, float *y, const float *gamma,
                                 const float *beta, const float *running_mean, const float *running_var, float *mean,
                                 float *invstd, const fc_batch_norm_desc *d);
int fc_dbatch_norm_forward_infer(const fc_context *ctx, const double *x, double *y, const double *gamma,
                                 const double *beta, const double *running_mean, const double *running_var,
                                 double *mean, double *invstd, const fc_batch_norm_desc *d);

/* Training backward (the statistics depend on x), with xhat = (x - mean) * invstd:
 *   dbeta_c  = sum dy,   dgamma_c = sum dy * xhat
 *   dx = gamma_c * invstd_c * (dy - dbeta_c / m - xhat * dgamma_c / m)
 * `mean` and `invstd` are those the training forward returned. */
int fc_sbatch_norm_backward_train(const fc_context *ctx, const float *dy, const float *x, float *dx,
                                  const float *gamma, float *dgamma, float *dbeta, const float *mean,
                                  const float *invstd, const fc_batch_norm_desc *d);
int fc_dbatch_norm_backward_train(const fc_context *ctx, const double *dy, const double *x, double *dx,
                                  const double *gamma, double *dgamma, double *dbeta, const double *mean,
                                  const double *invstd, const fc_batch_norm_desc *d);

/* Inference backward (the statistics are constants): dx = dy * gamma_c * invstd_c, dgamma and dbeta as above. */
int fc_sbatch_norm_backward_infer(const fc_context *ctx, const float *dy, const float *x, float *dx,
                                  const float *gamma, float *dgamma, float *dbeta, const float *mean,
                                  const float *invstd, const fc_batch_norm_desc *d);
int fc_dbatch_norm_backward_infer(const fc_context *ctx, const double *dy, const double *x, double *dx,
                                  const double *gamma, double *dgamma, double *dbeta, const double *mean,
                                  const double *invstd, const fc_batch_norm_desc *d);

#endif
