/* General matrix multiply C = alpha * A * B + beta * C for float32 (s) and float64 (d).
 *
 * Every matrix is given by a pointer and two element strides (row stride rs, column stride cs), so row-major,
 * column-major, transposed and sliced operands are all the same call: a transpose swaps rs and cs.
 * BLAS semantics: beta == 0 means C is overwritten and never read (it may hold NaN).
 *
 * fc_gemm_*_b_packed lets a caller supply its own B packing routine (convolution packs B straight from the image,
 * without materializing the im2col matrix). */
#ifndef FASTCONV_GEMM_H
#define FASTCONV_GEMM_H

#include "fastconv/base.h"

/* Pack rows [k0, k0+kc) and columns [j0, j0+nc) of an implicit K x N matrix B into `dst` in the micro-panel
 * layout described in gemm_pack.c: panels of `nr` columns, each panel k-major (nr values per k), the last panel
 * `nr_last` wide (a multiple of the vector length, zero-padded past N). */
typedef void (*fc_spack_b_fn)(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                              float *FC_RESTRICT dst);
typedef void (*fc_dpack_b_fn)(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                              double *FC_RESTRICT dst);

/* A strided matrix, the `src` of the packing routines below. */
typedef struct fc_strided_matrix {
    const void *data;
    int64_t rs, cs; /* element strides */
} fc_strided_matrix;

/* Packing of strided operands (gemm_pack.c): B panels as above; A into micro-panels of `mr` rows, each k-major
 * (mr values per k), rows past `mc` zero-padded. */
void fc_spack_b_strided(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                        float *FC_RESTRICT dst);
void fc_dpack_b_strided(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                        double *FC_RESTRICT dst);
void fc_spack_a(const fc_strided_matrix *a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr,
                float *FC_RESTRICT dst);
void fc_dpack_a(const fc_strided_matrix *a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr,
                double *FC_RESTRICT dst);

/* dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (the two blocks must not overlap): the current arch's
 * transpose (fc_arch_current()), or the portable one (SSE2 where there is SSE2). */
void fc_stranspose(const float *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds, float *FC_RESTRICT dst,
                   int64_t ldd);
void fc_dtranspose(const double *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                   double *FC_RESTRICT dst, int64_t ldd);
void fc_stranspose_portable(const float *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                            float *FC_RESTRICT dst, int64_t ldd);
void fc_dtranspose_portable(const double *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                            double *FC_RESTRICT dst, int64_t ldd);

/* Per-thread scratch buffers reused across calls (grow-only), so small GEMMs do not pay for page faults.
 * slot 0: packed A, 1: packed B, 2..3: convolution workspaces (im2col tiles, Winograd blocks), 4: the transformed
 * Winograd weights (on the calling thread, shared with its team). */
void *fc_thread_buffer(int slot, int64_t bytes);

int fc_sgemm(const fc_context *ctx, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t rs_a,
             int64_t cs_a, const float *b, int64_t rs_b, int64_t cs_b, float beta, float *c, int64_t rs_c,
             int64_t cs_c);
int fc_dgemm(const fc_context *ctx, int64_t m, int64_t n, int64_t k, double alpha, const double *a, int64_t rs_a,
             int64_t cs_a, const double *b, int64_t rs_b, int64_t cs_b, double beta, double *c, int64_t rs_c,
             int64_t cs_c);

/* The same with B given as an opaque source and its packing routine. */
int fc_sgemm_b_packed(const fc_context *ctx, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                      int64_t rs_a, int64_t cs_a, const void *b_src, fc_spack_b_fn pack_b, float beta, float *c,
                      int64_t rs_c, int64_t cs_c);
int fc_dgemm_b_packed(const fc_context *ctx, int64_t m, int64_t n, int64_t k, double alpha, const double *a,
                      int64_t rs_a, int64_t cs_a, const void *b_src, fc_dpack_b_fn pack_b, double beta, double *c,
                      int64_t rs_c, int64_t cs_c);

/* What the convolution's forward does to C after the product, tile by tile while the tile is still in L1 (so the
 * output is written once instead of once per elementwise pass): C[i][j] = C[i][j] * scale[i] + bias[i] (either
 * may be NULL: 1, 0), then C[i][j] += add[i * rs_add + j] (add may be NULL), then, when relu, max(C, 0) with NaN
 * kept. Row and column indices are those of the whole C given to the call. Requires cs_c == 1.
 * With nsplit > 0, C's rows are cut into nsplit blocks that live apart: rows [split_row[s], split_row[s + 1])
 * (the last to m) go to split_c[s], row i at split_c[s] + (i - split_row[s]) * rs_c, and the c argument is unused.
 * split_row[0] is 0 and the rows increase; add must be NULL. Several layers reading one input (an inception
 * block's 1x1 convolutions) so run as one GEMM that packs their shared B once, each writing its own output. */
#define FC_GEMM_MAX_SPLIT 4
typedef struct fc_sgemm_epilogue {
    const float *scale;
    const float *bias;
    const float *add;
    int64_t rs_add;
    int relu;
    int nsplit;
    int64_t split_row[FC_GEMM_MAX_SPLIT];
    float *split_c[FC_GEMM_MAX_SPLIT];
} fc_sgemm_epilogue;
typedef struct fc_dgemm_epilogue {
    const double *scale;
    const double *bias;
    const double *add;
    int64_t rs_add;
    int relu;
    int nsplit;
    int64_t split_row[FC_GEMM_MAX_SPLIT];
    double *split_c[FC_GEMM_MAX_SPLIT];
} fc_dgemm_epilogue;

/* fc_Xgemm_b_packed with an epilogue (NULL for none); FC_ERR_ARG when one is given and cs_c != 1. */
int fc_sgemm_b_packed_epilogue(const fc_context *ctx, int64_t m, int64_t n, int64_t k, const float *a, int64_t rs_a,
                               int64_t cs_a, const void *b_src, fc_spack_b_fn pack_b, float *c, int64_t rs_c,
                               const fc_sgemm_epilogue *ep);
int fc_dgemm_b_packed_epilogue(const fc_context *ctx, int64_t m, int64_t n, int64_t k, const double *a,
                               int64_t rs_a, int64_t cs_a, const void *b_src, fc_dpack_b_fn pack_b, double *c,
                               int64_t rs_c, const fc_dgemm_epilogue *ep);

/* A packed once for many GEMMs with the same A (a convolution's weights, image after image): the number of
 * elements fc_Xgemm_pack_a writes for an m x k A (-1 on overflow), the packing, and the GEMM with the epilogue
 * that takes it. The packing is the kernel set's of ctx: it must be the same in both calls. */
int64_t fc_sgemm_packed_a_elems(const fc_context *ctx, int64_t m, int64_t k);
int64_t fc_dgemm_packed_a_elems(const fc_context *ctx, int64_t m, int64_t k);
void fc_sgemm_pack_a(const fc_context *ctx, int64_t m, int64_t k, const float *a, int64_t rs_a, int64_t cs_a,
                     float *dst);
void fc_dgemm_pack_a(const fc_context *ctx, int64_t m, int64_t k, const double *a, int64_t rs_a, int64_t cs_a,
                     double *dst);
int fc_sgemm_prepacked_epilogue(const fc_context *ctx, int64_t m, int64_t n, int64_t k, const float *a_packed,
                                const void *b_src, fc_spack_b_fn pack_b, float *c, int64_t rs_c,
                                const fc_sgemm_epilogue *ep);
int fc_dgemm_prepacked_epilogue(const fc_context *ctx, int64_t m, int64_t n, int64_t k, const double *a_packed,
                                const void *b_src, fc_dpack_b_fn pack_b, double *c, int64_t rs_c,
                                const fc_dgemm_epilogue *ep);

/* Naive triple loop, the oracle the tests and the packed driver's edge handling can be checked against. */
void fc_sgemm_naive(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t rs_a, int64_t cs_a,
                    const float *b, int64_t rs_b, int64_t cs_b, float beta, float *c, int64_t rs_c, int64_t cs_c);
void fc_dgemm_naive(int64_t m, int64_t n, int64_t k, double alpha, const double *a, int64_t rs_a, int64_t cs_a,
                    const double *b, int64_t rs_b, int64_t cs_b, double beta, double *c, int64_t rs_c,
                    int64_t cs_c);

#endif
