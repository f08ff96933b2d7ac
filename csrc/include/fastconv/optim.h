/* The optimizers' parameter update in one pass over memory (fastconv.optim.SGD): each parameter, its gradient and
 * its momentum buffer are read once and written once, instead of once per NumPy expression of the update (five
 * temporaries' worth of traffic; AlexNet's and VGG's fully connected weights are hundreds of MB). */
#ifndef FASTCONV_OPTIM_H
#define FASTCONV_OPTIM_H

#include "fastconv/base.h"

/* SGD on n contiguous values, rounded step by step as fastconv.optim.SGD writes it in NumPy:
 *   d = g + weight_decay * p                       (when weight_decay != 0)
 *   v = d (first step) or v = v * momentum + damp * d (damp: 1 - dampening; v NULL: no momentum)
 *   d = d + momentum * v (nesterov) or d = v        (with momentum)
 *   p = p - lr * d
 * g is not written. */
int fc_ssgd_update(const fc_context *ctx, float *p, const float *g, float *v, int64_t n, float lr, float momentum,
                   float damp, float weight_decay, int nesterov, int first);
int fc_dsgd_update(const fc_context *ctx, double *p, const double *g, double *v, int64_t n, double lr,
                   double momentum, double damp, double weight_decay, int nesterov, int first);

/* bytes of zeros from p: memset over the threads in contiguous chunks (zero_grad: NumPy's single-threaded fill
 * of AlexNet's 250 MB of gradients took longer than the weight gradients' GEMMs). */
int fc_zero_fill(const fc_context *ctx, void *p, int64_t bytes);

#endif
