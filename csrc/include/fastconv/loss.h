/* Softmax, log-softmax and softmax cross-entropy over the rows of an (N, K) C-contiguous array, float32 (s) and
 * float64 (d).
 *
 * Every row is shifted by its maximum before exponentiation, so no exp overflows; sums of exponentials and the
 * loss are accumulated in double. The cross-entropy of row i is logsumexp(x_i) - x_i[label_i], computed as
 * max + log(sum exp(x - max)) - x[label] rather than -log(softmax), so it stays finite (and exact) when the
 * probability of the label underflows. Rows run in parallel; the batch loss is summed in row order, so it does
 * not depend on the thread count. */
#ifndef FASTCONV_LOSS_H
#define FASTCONV_LOSS_H

#include "fastconv/base.h"

typedef struct fc_softmax_desc {
    int64_t n; /* rows (batch) */
    int64_t k; /* classes: the axis normalized over, >= 1 when n > 0 */
} fc_softmax_desc;

/* y = softmax(x) row by row. */
int fc_ssoftmax(const fc_context *ctx, const float *x, float *y, const fc_softmax_desc *d);
int fc_dsoftmax(const fc_context *ctx, const double *x, double *y, const fc_softmax_desc *d);

/* y = log_softmax(x) = x - max - log(sum exp(x - max)) row by row. */
int fc_slog_softmax(const fc_context *ctx, const float *x, float *y, const fc_softmax_desc *d);
int fc_dlog_softmax(const fc_context *ctx, const double *x, double *y, const fc_softmax_desc *d);

/* probs = softmax(logits); *loss = mean over rows of -log softmax(logits)[i, labels[i]].
 * labels (N,) in [0, K) (FC_ERR_ARG otherwise); N >= 1. */
int fc_ssoftmax_cross_entropy(const fc_context *ctx, const float *logits, const int64_t *labels, float *probs,
                              double *loss, const fc_softmax_desc *d);
int fc_dsoftmax_cross_entropy(const fc_context *ctx, const double *logits, const int64_t *labels, double *probs,
                              double *loss, const fc_softmax_desc *d);

/* dlogits = (probs - onehot(labels)) * scale; scale = dloss / N gives the gradient of the mean loss. */
int fc_ssoftmax_cross_entropy_backward(const fc_context *ctx, const float *probs, const int64_t *labels,
                                       float *dlogits, double scale, const fc_softmax_desc *d);
int fc_dsoftmax_cross_entropy_backward(const fc_context *ctx, const double *probs, const int64_t *labels,
                                       double *dlogits, double scale, const fc_softmax_desc *d);

#endif
