/* The table of GEMM micro-kernels and their blocking sizes, one row per instruction set.
 *
 * A micro-kernel computes one mr x (v*vl) tile of C from a packed A micro-panel (mr values per k) and a packed
 * B micro-panel (v*vl values per k), for v = 1..nv vectors: the narrower variants serve the right edge of C so
 * that little work is wasted on zero padding. Adding an ISA = one micro-kernel file + one row in dispatch.c. */
#ifndef FASTCONV_DISPATCH_H
#define FASTCONV_DISPATCH_H

#include "fastconv/base.h"

#define FC_MAX_NV 4

typedef void (*fc_sgemm_ukr)(int64_t k, const float *FC_RESTRICT a, const float *FC_RESTRICT b,
                             float *FC_RESTRICT c, int64_t rs_c, float alpha, float beta);
typedef void (*fc_dgemm_ukr)(int64_t k, const double *FC_RESTRICT a, const double *FC_RESTRICT b,
                             double *FC_RESTRICT c, int64_t rs_c, double alpha, double beta);
/* The same tile with the convolution's epilogue (gemm.h's fc_Xgemm_epilogue) applied in registers before C is
 * stored (alpha 1): C = relu?((A B + beta C) * scale[r] + bias[r] + add[r][j]); scale, bias, add may be NULL. */
typedef void (*fc_sgemm_ukr_ep)(int64_t k, const float *FC_RESTRICT a, const float *FC_RESTRICT b,
                                float *FC_RESTRICT c, int64_t rs_c, float beta, const float *scale, const float *bias,
                                const float *FC_RESTRICT add, int64_t rs_add, int relu);
typedef void (*fc_dgemm_ukr_ep)(int64_t k, const double *FC_RESTRICT a, const double *FC_RESTRICT b,
                                double *FC_RESTRICT c, int64_t rs_c, double beta, const double *scale,
                                const double *bias, const double *FC_RESTRICT add, int64_t rs_add, int relu);

/* Direct-convolution kernels (arch/direct_template.h): forward tile of dfb filters x v vectors of pixels, and
 * the weight gradient's tile of wfb filters x wtb taps. */
typedef void (*fc_sdirect_ukr)(int64_t ntaps, const int64_t *FC_RESTRICT off, const float *FC_RESTRICT x,
                               const float *FC_RESTRICT w, float *FC_RESTRICT y, int64_t ldy, int fb);
typedef void (*fc_ddirect_ukr)(int64_t ntaps, const int64_t *FC_RESTRICT off, const double *FC_RESTRICT x,
                               const double *FC_RESTRICT w, double *FC_RESTRICT y, int64_t ldy, int fb);
typedef void (*fc_swgrad_ukr)(int64_t nimg, int64_t nq, const float *FC_RESTRICT dy, int64_t lddy, int64_t dy_img,
                              const float *FC_RESTRICT x, int64_t x_img, const int64_t *FC_RESTRICT off,
                              float *FC_RESTRICT out, int64_t ldo, int fb, int tb);
typedef void (*fc_dwgrad_ukr)(int64_t nimg, int64_t nq, const double *FC_RESTRICT dy, int64_t lddy,
                              int64_t dy_img, const double *FC_RESTRICT x, int64_t x_img,
                              const int64_t *FC_RESTRICT off, double *FC_RESTRICT out, int64_t ldo, int fb, int tb);

/* Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms of a run of at most FC_WINOGRAD_RUN tiles
 * (arch/winograd_template.h). */
#define FC_WINOGRAD_RUN 64
typedef void (*fc_swino_input_ukr)(int64_t cnt, const float *const *rows, float *FC_RESTRICT dst,
                                   int64_t xi_stride);
typedef void (*fc_dwino_input_ukr)(int64_t cnt, const double *const *rows, double *FC_RESTRICT dst,
                                   int64_t xi_stride);
typedef void (*fc_swino_grad_ukr)(int64_t cnt, const float *const *rows, float *FC_RESTRICT dst, int64_t xi_stride);
typedef void (*fc_dwino_grad_ukr)(int64_t cnt, const double *const *rows, double *FC_RESTRICT dst,
                                  int64_t xi_stride);
typedef void (*fc_swino_weights_ukr)(int64_t cnt, const float *FC_RESTRICT g, int64_t ldg, float *FC_RESTRICT dst,
                                     int64_t xi_stride);
typedef void (*fc_dwino_weights_ukr)(int64_t cnt, const double *FC_RESTRICT g, int64_t ldg,
                                     double *FC_RESTRICT dst, int64_t xi_stride);
/* The inverse transform's epilogue: v + b, then (scaled) v * s + sb in one rounding, then (relu) max(v, 0). Values
 * in double for both element types (each converts exactly to float where float is the type). */
typedef struct fc_wino_epilogue {
    double b, s, sb;
    int scaled, relu;
} fc_wino_epilogue;
typedef void (*fc_swino_output_ukr)(int64_t cnt, const float *FC_RESTRICT m, int64_t xi_stride,
                                    const fc_wino_epilogue *ep, float *FC_RESTRICT out, int64_t ldo);
typedef void (*fc_dwino_output_ukr)(int64_t cnt, const double *FC_RESTRICT m, int64_t xi_stride,
                                    const fc_wino_epilogue *ep, double *FC_RESTRICT out, int64_t ldo);

/* The epilogue of a tile of C the micro-kernel wrote (gemm.h's fc_Xgemm_epilogue, rows x cols at c): compiled
 * with the ISA's flags so it runs at vector width. scale, bias and add may be NULL. */
typedef void (*fc_sepilogue_ukr)(int64_t rows, int64_t cols, float *FC_RESTRICT c, int64_t rs_c, const float *scale,
                                 const float *bias, const float *FC_RESTRICT add, int64_t rs_add, int relu);
typedef void (*fc_depilogue_ukr)(int64_t rows, int64_t cols, double *FC_RESTRICT c, int64_t rs_c,
                                 const double *scale, const double *bias, const double *FC_RESTRICT add,
                                 int64_t rs_add, int relu);

/* Values-only max pooling of `planes` consecutive NCHW planes (arch/pool_template.h); work holds the elements
 * fc_max_pool2d_values_layout (fastconv/pool.h) gives for d. */
struct fc_pool2d_desc;
typedef void (*fc_smax_pool_values_ukr)(int64_t planes, const float *FC_RESTRICT x, float *FC_RESTRICT y,
                                        const struct fc_pool2d_desc *d, float *FC_RESTRICT work);
typedef void (*fc_dmax_pool_values_ukr)(int64_t planes, const double *FC_RESTRICT x, double *FC_RESTRICT y,
                                        const struct fc_pool2d_desc *d, double *FC_RESTRICT work);
/* The same with the argmax (the training path), horizontal strides 1 and 2: work holds twice those elements. */
typedef void (*fc_smax_pool_argmax_ukr)(int64_t planes, const float *FC_RESTRICT x, float *FC_RESTRICT y,
                                        int64_t *FC_RESTRICT argmax, const struct fc_pool2d_desc *d,
                                        float *FC_RESTRICT work);
typedef void (*fc_dmax_pool_argmax_ukr)(int64_t planes, const double *FC_RESTRICT x, double *FC_RESTRICT y,
                                        int64_t *FC_RESTRICT argmax, const struct fc_pool2d_desc *d,
                                        double *FC_RESTRICT work);

/* At most FC_DOT_ROWS rows of A against FC_DOT_COLS contiguous columns of B (arch/ukernel_template.h): the
 * small-M GEMM of gemm.c. */
#define FC_DOT_ROWS 4
#define FC_DOT_COLS 4
typedef void (*fc_sgemm_dot_ukr)(int64_t m, int64_t k, const float *FC_RESTRICT a, int64_t rs_a,
                                 const float *FC_RESTRICT b, int64_t cs_b, int64_t ncols, float *FC_RESTRICT out);
typedef void (*fc_dgemm_dot_ukr)(int64_t m, int64_t k, const double *FC_RESTRICT a, int64_t rs_a,
                                 const double *FC_RESTRICT b, int64_t cs_b, int64_t ncols, double *FC_RESTRICT out);

/* The micro-kernel reading nv vectors of B in place from rows ldb apart (arch/ukernel_template.h): the small-M
 * GEMM of gemm.c with a row-major B. */
typedef void (*fc_sgemm_rows_ukr)(int64_t k, const float *FC_RESTRICT a, const float *FC_RESTRICT b, int64_t ldb,
                                  int nv, float *FC_RESTRICT c, int64_t rs_c, float beta);
typedef void (*fc_dgemm_rows_ukr)(int64_t k, const double *FC_RESTRICT a, const double *FC_RESTRICT b, int64_t ldb,
                                  int nv, double *FC_RESTRICT c, int64_t rs_c, double beta);

/* At most FC_NARROW_COLS columns of a packed B micro-panel (fewer than a vector: the last of an image of 49 or 196
 * pixels) against ntr packed A micro-panels (arch/ukernel_template.h): out[r * ldo + j] = alpha * (A B)[r, j],
 * each sum in the micro-kernels' order and rounding. NULL where the arch has none (the driver then runs ukr[1]). */
#define FC_NARROW_COLS 4
typedef void (*fc_sgemm_narrow_ukr)(int64_t k, const float *FC_RESTRICT a, int64_t ntr, const float *FC_RESTRICT b,
                                    int64_t ldb, int ncols, float alpha, float *FC_RESTRICT out, int64_t ldo);
typedef void (*fc_dgemm_narrow_ukr)(int64_t k, const double *FC_RESTRICT a, int64_t ntr, const double *FC_RESTRICT b,
                                    int64_t ldb, int ncols, double alpha, double *FC_RESTRICT out, int64_t ldo);

/* fc_Xtranspose (gemm.h) at the ISA's vector width. */
typedef void (*fc_stranspose_ukr)(const float *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                                  float *FC_RESTRICT dst, int64_t ldd);
typedef void (*fc_dtranspose_ukr)(const double *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                                  double *FC_RESTRICT dst, int64_t ldd);

typedef struct fc_sgemm_kernel {
    int mr, vl, nv;     /* tile: mr rows x (nv * vl) columns */
    int mc, kc, nc;     /* cache blocking: A block mc x kc (L2), B panel kc x nc (L3), B micro-panel in L1 */
    fc_sgemm_ukr ukr[FC_MAX_NV + 1]; /* ukr[v] handles v vectors of columns */
    int dfb, dnv, wfb, wtb;
    fc_sdirect_ukr direct[FC_MAX_NV + 1]; /* direct[v]: v vectors of pixels */
    fc_swgrad_ukr wgrad;
    /* Winograd F(2x2, 3x3) transforms: input tiles, weights, output-gradient tiles, inverse of the products */
    fc_swino_input_ukr winograd_input;
    fc_swino_weights_ukr winograd_weights;
    fc_swino_grad_ukr winograd_grad;
    fc_swino_output_ukr winograd_output;
    fc_sepilogue_ukr epilogue;
    fc_smax_pool_values_ukr max_pool_values;
    fc_sgemm_ukr_ep ukr_ep[FC_MAX_NV + 1]; /* ukr[v] with the epilogue */
    fc_smax_pool_argmax_ukr max_pool_argmax;
    fc_stranspose_ukr transpose;
    /* Winograd F(4x4, 3x3): input tiles, weights, inverse of the products, output-gradient tiles */
    fc_swino_input_ukr winograd4_input;
    fc_swino_weights_ukr winograd4_weights;
    fc_swino_output_ukr winograd4_output;
    fc_swino_grad_ukr winograd4_grad;
    fc_sgemm_dot_ukr dot;
    fc_sgemm_rows_ukr rows;
    fc_sgemm_narrow_ukr narrow;
} fc_sgemm_kernel;

typedef struct fc_dgemm_kernel {
    int mr, vl, nv;
    int mc, kc, nc;
    fc_dgemm_ukr ukr[FC_MAX_NV + 1];
    int dfb, dnv, wfb, wtb;
    fc_ddirect_ukr direct[FC_MAX_NV + 1];
    fc_dwgrad_ukr wgrad;
    fc_dwino_input_ukr winograd_input;
    fc_dwino_weights_ukr winograd_weights;
    fc_dwino_grad_ukr winograd_grad;
    fc_dwino_output_ukr winograd_output;
    fc_depilogue_ukr epilogue;
    fc_dmax_pool_values_ukr max_pool_values;
    fc_dgemm_ukr_ep ukr_ep[FC_MAX_NV + 1];
    fc_dmax_pool_argmax_ukr max_pool_argmax;
    fc_dtranspose_ukr transpose;
    fc_dwino_input_ukr winograd4_input;
    fc_dwino_weights_ukr winograd4_weights;
    fc_dwino_output_ukr winograd4_output;
    fc_dwino_grad_ukr winograd4_grad;
    fc_dgemm_dot_ukr dot;
    fc_dgemm_rows_ukr rows;
    fc_dgemm_narrow_ukr narrow;
} fc_dgemm_kernel;

typedef struct fc_arch {
    const char *name;     /* "ref", "avx2", "avx512" */
    const char *isa;      /* human description */
    fc_sgemm_kernel s;
    fc_dgemm_kernel d;
} fc_arch;

/* Every arch compiled into this build, best last. */
int fc_arch_count(void);
const fc_arch *fc_arch_at(int i);
/* Whether this CPU can run arch `a`. */
int fc_arch_supported(const fc_arch *a);
/* The best arch this CPU supports. */
const fc_arch *fc_arch_best(void);
const fc_arch *fc_arch_find(const char *name);

/* The process-wide selection (chosen once at import; tests switch it). */
const fc_arch *fc_arch_current(void);
void fc_arch_select(const fc_arch *a);

/* The default context: current arch and thread count. */
fc_context fc_context_default(void);

#endif
