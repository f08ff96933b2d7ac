/* Element-wise activations on contiguous arrays of n elements: ReLU (with the three backward rules used to
 * visualize networks) and dropout given its mask.
 *
 * The dropout mask is drawn by the caller (fastconv.functional draws it in Python with a numpy Generator,
 * keep = rng.random(shape) >= p), so results are reproducible from the caller's seed whatever the thread count. */
#ifndef FASTCONV_ACTIVATION_H
#define FASTCONV_ACTIVATION_H

#include "fastconv/base.h"

/* How relu backward lets a gradient through. A gate "v open" means !(v <= 0): v > 0 for numbers, and open for NaN,
 * so a NaN is propagated rather than silently dropped (as PyTorch's threshold_backward does). */
typedef enum fc_relu_rule {
    FC_RELU_PLAIN = 0,     /* dx = dy where x open, else 0: the true gradient */
    FC_RELU_GUIDED = 1,    /* dx = dy where x open and dy open, else 0: guided backpropagation */
    FC_RELU_DECONVNET = 2, /* dx = dy where dy open, else 0: relu of the gradient (deconvnet) */
} fc_relu_rule;

/* y = max(x, 0), with NaN kept (y = x unless x < 0). x and y may be the same array. */
int fc_srelu_forward(const fc_context *ctx, const float *x, float *y, int64_t n);
int fc_drelu_forward(const fc_context *ctx, const double *x, double *y, int64_t n);
/* dx from dy and the forward input x (rule above); FC_ERR_ARG for an unknown rule. */
int fc_srelu_backward(const fc_context *ctx, const float *dy, const float *x, float *dx, int64_t n, int rule);
int fc_drelu_backward(const fc_context *ctx, const double *dy, const double *x, double *dx, int64_t n, int rule);

/* y = x * mask * scale with mask 0 or 1 (uint8; NumPy bools), scale = 1 / (1 - p) for inverted dropout.
 * Dropout's backward is the same operation on dy. A product, not a select: x = inf or NaN where mask is 0 gives NaN,
 * as in PyTorch. */
int fc_sdropout_apply(const fc_context *ctx, const float *x, const uint8_t *mask, float *y, int64_t n, float scale);
int fc_ddropout_apply(const fc_context *ctx, const double *x, const uint8_t *mask, double *y, int64_t n,
                      double scale);

#endif
