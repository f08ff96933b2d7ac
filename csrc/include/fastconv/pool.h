/* Pooling over NCHW planes: max pooling with argmax, average pooling, global average pooling; forward and backward.
 *
 * Conventions (PyTorch's, so results and indices can be compared one to one):
 * - Output size along an axis: floor((in + 2*pad - kernel) / stride) + 1, or with ceil_mode the ceiling of the
 *   division, minus one when that last window would start past the input and its left padding
 *   ((out - 1) * stride >= in + pad). With pad <= kernel / 2 every window then overlaps the input.
 * - Max pooling pads with -inf. argmax is the flat index h * in_w + w of the chosen element in its input plane.
 *   Within a window (scanned row-major) the first maximum wins; a NaN always wins over a number and a later NaN
 *   over an earlier one, so NaN propagates to y and argmax points at a NaN; a window of -inf yields -inf and the
 *   index of its first in-range element (never a padded position).
 * - Average pooling divides by the window size clipped to the padded input when count_include_pad (so a
 *   ceil_mode window hanging past the padding counts only up to it), else by the number of input elements it
 *   covers.
 *
 * Every function checks the descriptor fields it reads (fc_pool2d_check for the windowed ones) and returns
 * FC_ERR_ARG or FC_ERR_OVERFLOW when they are invalid, FC_OK otherwise; max pooling backward also returns FC_ERR_ARG
 * when an argmax entry lies outside its plane (dx is then partly written). Work is split over the N * C planes, so
 * the backward scatters never race. */
#ifndef FASTCONV_POOL_H
#define FASTCONV_POOL_H

#include "fastconv/base.h"

/* Geometry of a 2-D pooling; out_h and out_w must be what fc_pool2d_output_size gives. */
typedef struct fc_pool2d_desc {
    int64_t batch, channels;    /* N, C */
    int64_t in_h, in_w;         /* H, W (>= 1) */
    int64_t out_h, out_w;       /* Ho, Wo */
    int64_t kernel_h, kernel_w; /* >= 1, at most the padded input */
    int64_t stride_h, stride_w; /* >= 1 */
    int64_t pad_h, pad_w;       /* 0 <= pad <= kernel / 2, on both sides of the axis */
    int ceil_mode;
    int count_include_pad; /* average pooling only */
} fc_pool2d_desc;

/* Output length of one axis (convention above); FC_ERR_ARG when the geometry is invalid. */
int fc_pool2d_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int ceil_mode, int64_t *out);
/* FC_OK when every field is valid and consistent, FC_ERR_OVERFLOW when a tensor size overflows int64. */
int fc_pool2d_check(const fc_pool2d_desc *d);

/* The per-thread workspace of the values-only max-pool kernels (arch/pool_template.h): a ring of
 * R = kernel_h + FC_POOL_BATCH - 1 rows of ldh = out_w rounded up to FC_POOL_LANES (every arch's vector length
 * divides it) holding the horizontal maxima of the input rows in reach, computed FC_POOL_BATCH rows at a time;
 * total = R * ldh elements. FC_OK, or FC_ERR_OVERFLOW when a size overflows int64 (d is otherwise assumed valid). */
#define FC_POOL_LANES 16
#define FC_POOL_BATCH 8
static inline int fc_max_pool2d_values_layout(const fc_pool2d_desc *d, int64_t *ldh, int64_t *rows, int64_t *total) {
    int64_t l, r;
    if (fc_add_overflow(d->out_w, FC_POOL_LANES - 1, &l)) return FC_ERR_OVERFLOW;
    l = l / FC_POOL_LANES * FC_POOL_LANES;
    if (fc_add_overflow(d->kernel_h, FC_POOL_BATCH - 1, &r) || fc_mul_overflow(r, l, total)) return FC_ERR_OVERFLOW;
    *ldh = l;
    *rows = r;
    return FC_OK;
}

/* The workspace per thread of the max-pool kernels with argmax (max_pool_argmax in fastconv/dispatch.h): the ring
 * of fc_max_pool2d_values_layout and a ring of indices as large (total = 2 R ldh elements). */
static inline int fc_max_pool2d_argmax_layout(const fc_pool2d_desc *d, int64_t *ldh, int64_t *rows, int64_t *total) {
    int64_t t;
    if (fc_max_pool2d_values_layout(d, ldh, rows, &t) || fc_mul_overflow(t, 2, total)) return FC_ERR_OVERFLOW;
    return FC_OK;
}

/* Which kernel max pooling with argmax runs, process-wide (for tests and benchmarks):
 *   FC_POOL_ARGMAX_AUTO     the selected arch's separable kernel for horizontal strides 1 and 2 (the default),
 *                           the window-by-window kernel for the other strides
 *   FC_POOL_ARGMAX_WINDOWS  the window-by-window kernel always
 * Both give the same y and argmax bit for bit. set returns FC_ERR_ARG for another mode. */
enum { FC_POOL_ARGMAX_AUTO = 0, FC_POOL_ARGMAX_WINDOWS = 1 };
int fc_max_pool2d_set_argmax_mode(int mode);
int fc_max_pool2d_argmax_mode(void);
/* Whether max pooling with argmax of elements of elem_size bytes runs the separable kernel for d (valid) under the
 * current mode. */
int fc_max_pool2d_argmax_separable(const fc_pool2d_desc *d, int64_t elem_size);

/* x (N, C, H, W) -> y, argmax (N, C, Ho, Wo). Workspace per thread on the separable kernel:
 * fc_max_pool2d_argmax_layout's total (FC_ERR_NOMEM when it cannot be allocated). */
int fc_smax_pool2d_forward(const fc_context *ctx, const float *x, float *y, int64_t *argmax,
                           const fc_pool2d_desc *d);
int fc_dmax_pool2d_forward(const fc_context *ctx, const double *x, double *y, int64_t *argmax,
                           const fc_pool2d_desc *d);
/* dx = 0, then dx[n, c].flat[argmax[n, c, i, j]] += dy[n, c, i, j]. Reads only the sizes (N, C, H, W, Ho, Wo)
 * of d: the windows are in argmax. */
/* y only (no argmax), for inference: the same values by a separable kernel of the selected arch (max_pool_values in
 * fastconv/dispatch.h). Workspace per thread: fc_max_pool2d_values_layout's total. */
int fc_smax_pool2d_forward_values(const fc_context *ctx, const float *x, float *y, const fc_pool2d_desc *d);
int fc_dmax_pool2d_forward_values(const fc_context *ctx, const double *x, double *y, const fc_pool2d_desc *d);
int fc_smax_pool2d_backward(const fc_context *ctx, const float *dy, const int64_t *argmax, float *dx,
                            const fc_pool2d_desc *d);
int fc_dmax_pool2d_backward(const fc_context *ctx, const double *dy, const int64_t *argmax, double *dx,
                            const fc_pool2d_desc *d);

/* x (N, C, H, W) -> y (N, C, Ho, Wo). */
int fc_savg_pool2d_forward(const fc_context *ctx, const float *x, float *y, const fc_pool2d_desc *d);
int fc_davg_pool2d_forward(const fc_context *ctx, const double *x, double *y, const fc_pool2d_desc *d);
/* dx = 0, then every window's elements get dy / divisor. */
int fc_savg_pool2d_backward(const fc_context *ctx, const float *dy, float *dx, const fc_pool2d_desc *d);
int fc_davg_pool2d_backward(const fc_context *ctx, const double *dy, double *dx, const fc_pool2d_desc *d);

/* Mean of each plane: x (N, C, H, W) -> y (N, C) (batch, channels, in_h, in_w of d are used; sums in double). */
int fc_sglobal_avg_pool2d_forward(const fc_context *ctx, const float *x, float *y, const fc_pool2d_desc *d);
int fc_dglobal_avg_pool2d_forward(const fc_context *ctx, const double *x, double *y, const fc_pool2d_desc *d);
/* dx[n, c, :, :] = dy[n, c] / (H * W). */
int fc_sglobal_avg_pool2d_backward(const fc_context *ctx, const float *dy, float *dx, const fc_pool2d_desc *d);
int fc_dglobal_avg_pool2d_backward(const fc_context *ctx, const double *dy, double *dx, const fc_pool2d_desc *d);

#endif
