/* Cross-channel local response normalization, float32 (s) and float64 (d), torch's convention.
 *
 * x is C-contiguous and viewed as (N, C, HW). For each sample and spatial position, with L = size / 2 channels
 * before and R = (size - 1) / 2 after (integer division; L = R for odd size, one more before for even size,
 * exactly the window of torch.nn.functional.local_response_norm):
 *   scale_c = k + alpha / size * sum_{j = c-L .. c+R, 0 <= j < C} x_j^2      (zero padding past the edges)
 *   y_c     = x_c * scale_c^(-beta)
 * Backward, summing over the channels c' whose window contains c, i.e. c' = c-R .. c+L:
 *   dx_c = dy_c * scale_c^(-beta) - (2 * alpha * beta / size) * x_c * sum_{c'} dy_c' * y_c' / scale_c'
 *
 * Alpha convention: alpha is divided by `size`, as in torch and in Caffe's ACROSS_CHANNELS mode (Caffe's
 * lrn_param also divides by local_size, accepts only odd sizes, and defaults to k = 1). The AlexNet paper writes
 * k + alpha * sum x^2 with no division (alpha = 1e-4, k = 2, n = 5, beta = 0.75): to reproduce the paper's
 * formula pass alpha = alpha_paper * size (5e-4 for size 5). Our defaults (size 5, alpha 1e-4, beta 0.75, k 2)
 * are the paper's numbers plugged into torch's formula, i.e. torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2).
 *
 * Both directions keep a running sum over the channel window (one add and one subtract per channel, O(C)
 * rather than O(C * size)), accumulated in double; sums that rounding leaves slightly negative are clamped to
 * zero. Work items are (sample, block of spatial positions) pairs, run in parallel. */
#ifndef FASTCONV_LRN_H
#define FASTCONV_LRN_H

#include "fastconv/base.h"

typedef struct fc_lrn_desc {
    int64_t n, c, hw; /* x viewed as (N, C, HW) */
    int64_t size;     /* channels in the window, >= 1 */
    double alpha, beta, k;
} fc_lrn_desc;

/* Writes y and scale, both (N, C, HW). */
int fc_slrn_forward(const fc_context *ctx, const float *x, float *y, float *scale, const fc_lrn_desc *d);
int fc_dlrn_forward(const fc_context *ctx, const double *x, double *y, double *scale, const fc_lrn_desc *d);

/* dx (N, C, HW) from dy and the forward's x, y and scale (d->k is not used: scale already contains it). */
int fc_slrn_backward(const fc_context *ctx, const float *dy, const float *x, const float *y, const float *scale,
                     float *dx, const fc_lrn_desc *d);
int fc_dlrn_backward(const fc_context *ctx, const double *dy, const double *x, const double *y,
                     const double *scale, double *dx, const fc_lrn_desc *d);

#endif
