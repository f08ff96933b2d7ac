/* Optimizer updates (optim.h): one memory-bound pass, vectorized by the compiler and split over the threads in
 * static chunks for large arrays. The build's -std=c11 keeps a * b + c as two roundings (no contraction into an
 * FMA), as NumPy computes it. */
#include <stdint.h>
#include <string.h>

#include "fastconv/optim.h"
#include "fastconv/threads.h"

#define FC_SGD_BODY(T)                                                                                             \
    do {                                                                                                           \
        const int t = fc_team_size(ctx, n, n, (int64_t)1 << 18);                                                   \
        (void)t;                                                                                                   \
        if (!v) {                                                                                                  \
            _Pragma("omp parallel for simd num_threads(t) if (parallel : t > 1) schedule(static)")                \
            for (int64_t i = 0; i < n; i++) {                                                                      \
                T d = weight_decay != (T)0 ? g[i] + weight_decay * p[i] : g[i];                                    \
                p[i] = p[i] - lr * d;                                                                              \
            }                                                                                                      \
            return FC_OK;                                                                                          \
        }                                                                                                          \
        _Pragma("omp parallel for simd num_threads(t) if (parallel : t > 1) schedule(static)")                    \
        for (int64_t i = 0; i < n; i++) {                                                                          \
            T d = weight_decay != (T)0 ? g[i] + weight_decay * p[i] : g[i];                                        \
            T vi = first ? d : v[i] * momentum + (damp == (T)1 ? d : damp * d);                                    \
            v[i] = vi;                                                                                             \
            d = nesterov ? d + momentum * vi : vi;                                                                 \
            p[i] = p[i] - lr * d;                                                                                  \
        }                                                                                                          \
        return FC_OK;                                                                                              \
    } while (0)

int fc_ssgd_update(const fc_context *ctx, float *p, const float *g, float *v, int64_t n, float lr, float momentum,
                   float damp, float weight_decay, int nesterov, int first) {
    if (n < 0) return FC_ERR_ARG;
    FC_SGD_BODY(float);
}

int fc_dsgd_update(const fc_context *ctx, double *p, const double *g, double *v, int64_t n, double lr,
                   double momentum, double damp, double weight_decay, int nesterov, int first) {
    if (n < 0) return FC_ERR_ARG;
    FC_SGD_BODY(double);
}

int fc_zero_fill(const fc_context *ctx, void *p, int64_t bytes) {
    if (bytes < 0) return FC_ERR_ARG;
    const int64_t chunk = (int64_t)1 << 20;
    const int64_t chunks = (bytes + chunk - 1) / chunk;
    const int t = fc_team_size(ctx, chunks, bytes, (int64_t)1 << 22);
    (void)t;
#pragma omp parallel for num_threads(t) if (t > 1) schedule(static)
    for (int64_t i = 0; i < chunks; i++) {
        const int64_t lo = i * chunk, n = bytes - lo < chunk ? bytes - lo : chunk;
        memset((char *)p + lo, 0, (size_t)n);
    }
    return FC_OK;
}
