/* Element-wise activations (activation.h): memory-bound loops, vectorized by the compiler, split over threads in
 * static contiguous chunks when the array is large. */
#include <stdint.h>

#include "fastconv/activation.h"
#include "fastconv/threads.h"

/* Below ~256K values a thread team costs more than it saves on a streaming loop. */
static int team_size(const fc_context *ctx, int64_t n) {
    int t = ctx->num_threads < 1 ? 1 : ctx->num_threads;
    if (n < ((int64_t)1 << 18)) t = 1;
    if (t > 1) fc_note_parallel_region();
    return t;
}

/* The comparisons are written so that NaN takes the "open" side: x < 0 is false for NaN (y = NaN), v <= 0 is
 * false for NaN (the gradient passes). */
#define FC_DEFINE_ACTIVATIONS(T, PFX)                                                                            \
    int fc_##PFX##relu_forward(const fc_context *ctx, const T *x, T *y, int64_t n) {                            \
        const int t = team_size(ctx, n);                                                                       \
        _Pragma("omp parallel for simd num_threads(t) if (t > 1) schedule(static)")                           \
        for (int64_t i = 0; i < n; i++) y[i] = x[i] < (T)0 ? (T)0 : x[i];                                      \
        return FC_OK;                                                                                          \
    }                                                                                                          \
                                                                                                               \
    int fc_##PFX##relu_backward(const fc_context *ctx, const T *FC_RESTRICT dy, const T *FC_RESTRICT x,         \
                               T *FC_RESTRICT dx, int64_t n, int rule) {                                       \
        const int t = team_size(ctx, n);                                                                       \
        if (rule == FC_RELU_PLAIN) {                                                                           \
            _Pragma("omp parallel for simd num_threads(t) if (t > 1) schedule(static)")                       \
            for (int64_t i = 0; i < n; i++) dx[i] = x[i] <= (T)0 ? (T)0 : dy[i];                               \
        } else if (rule == FC_RELU_GUIDED) {                                                                   \
            _Pragma("omp parallel for simd num_threads(t) if (t > 1) schedule(static)")                       \
            for (int64_t i = 0; i < n; i++) dx[i] = (x[i] <= (T)0) | (dy[i] <= (T)0) ? (T)0 : dy[i];           \
        } else if (rule == FC_RELU_DECONVNET) {                                                                \
            _Pragma("omp parallel for simd num_threads(t) if (t > 1) schedule(static)")                       \
            for (int64_t i = 0; i < n; i++) dx[i] = dy[i] <= (T)0 ? (T)0 : dy[i];                              \
        } else {                                                                                               \
            return FC_ERR_ARG;                                                                                 \
        }                                                                                                      \
        return FC_OK;                                                                                          \
    }                                                                                                          \
                                                                                                               \
    int fc_##PFX##dropout_apply(const fc_context *ctx, const T *FC_RESTRICT x, const uint8_t *FC_RESTRICT mask, \
                               T *FC_RESTRICT y, int64_t n, T scale) {                                         \
        const int t = team_size(ctx, n);                                                                       \
        _Pragma("omp parallel for simd num_threads(t) if (t > 1) schedule(static)")                           \
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * ((T)mask[i] * scale);                                    \
        return FC_OK;                                                                                          \
    }

FC_DEFINE_ACTIVATIONS(float, s)
FC_DEFINE_ACTIVATIONS(double, d)
