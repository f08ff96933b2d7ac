/* Portable C: the naive GEMM (test oracle) and the fallback micro-kernel that builds on any CPU. */
#include "fastconv/dispatch.h"
#include "fastconv/gemm.h"

#include <math.h>
#include <string.h>

#define FC_DEFINE_NAIVE(T, PFX)                                                                                  \
    void fc_##PFX##gemm_naive(int64_t m, int64_t n, int64_t k, T alpha, const T *a, int64_t rs_a, int64_t cs_a, \
                              const T *b, int64_t rs_b, int64_t cs_b, T beta, T *c, int64_t rs_c, int64_t cs_c) { \
        for (int64_t i = 0; i < m; i++)                                                                          \
            for (int64_t j = 0; j < n; j++) {                                                                    \
                T s = 0;                                                                                         \
                for (int64_t p = 0; p < k; p++) s += a[i * rs_a + p * cs_a] * b[p * rs_b + j * cs_b];            \
                T *cp = c + i * rs_c + j * cs_c;                                                                 \
                *cp = beta == (T)0 ? alpha * s : alpha * s + beta * *cp;                                         \
            }                                                                                                    \
    }

FC_DEFINE_NAIVE(float, s)
FC_DEFINE_NAIVE(double, d)

/* The portable micro-kernel: the same template with one-element "vectors", 4 x 4 tiles. */
#define T float
#define VEC float
#define VL 1
#define MR 4
#define NV 4
#define VZERO() 0.0f
#define VLOAD(p) (*(p))
#define VLOADU(p) (*(p))
#define VSTOREU(p, x) (*(p) = (x))
#define VSET1(s) (s)
#define VFMA(a, b, c) ((a) * (b) + (c))
#define SFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
#define VADD(a, b) ((a) + (b))
#define VRELU(x) ((x) < 0 ? 0 : (x))
#define UKR_NAME(v) fc_sgemm_ukr_ref_##v
#define VHSUM(x) (x)
#include "arch/ukernel_template.h"
#define DFB 4
#define DNV 4
#define WFB 4
#define WTB 4
#define DIRECT_NAME(v) fc_sdirect_ukr_ref_##v
#define WGRAD_NAME fc_swgrad_ukr_ref
#include "arch/direct_template.h"
#define VSTORE_FIRST(d, s, n) /* VL = 1: n is always 0 */
#define WINO_NAME(x) fc_swinograd_##x##_ref
#include "arch/winograd_template.h"
#undef WINO_NAME
#undef DIRECT_NAME
#undef WGRAD_NAME
#undef T
#undef VEC
#undef VZERO
#undef VSET1
#undef UKR_NAME

#define T double
#define VEC double
#define VZERO() 0.0
#define VSET1(s) (s)
#define UKR_NAME(v) fc_dgemm_ukr_ref_##v
#include "arch/ukernel_template.h"
#define DIRECT_NAME(v) fc_ddirect_ukr_ref_##v
#define WGRAD_NAME fc_dwgrad_ukr_ref
#include "arch/direct_template.h"
#define WINO_NAME(x) fc_dwinograd_##x##_ref
#include "arch/winograd_template.h"

#undef T
#undef VEC
#undef VL
#undef VLOADU
#undef VSTOREU
#undef VSET1

/* Values-only max pooling in GNU C 16-byte vectors (no intrinsics, no ISA flags: SSE2 on x86-64, NEON on ARM,
 * scalar code elsewhere). */
typedef float fc_pool_vs __attribute__((vector_size(16)));
typedef int32_t fc_pool_vs_mask __attribute__((vector_size(16)));
typedef double fc_pool_vd __attribute__((vector_size(16)));
typedef int64_t fc_pool_vd_mask __attribute__((vector_size(16)));

#if defined(__clang__) || __GNUC__ >= 12
#define FC_POOL_SHUFFLE(a, b, mask_t, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define FC_POOL_SHUFFLE(a, b, mask_t, ...) __builtin_shuffle(a, b, (mask_t){__VA_ARGS__})
#endif

/* The lanes where a later element v replaces the running maximum m ((v > m) | (v != v)), the selection by those
 * lanes, and the two together: v where v > m or v is NaN, else m. */
static inline fc_pool_vs_mask take_vs(fc_pool_vs m, fc_pool_vs v) { return (v > m) | (v != v); }
static inline fc_pool_vd_mask take_vd(fc_pool_vd m, fc_pool_vd v) { return (v > m) | (v != v); }
static inline fc_pool_vs sel_vs(fc_pool_vs_mask k, fc_pool_vs m, fc_pool_vs v) {
    return (fc_pool_vs)((k & (fc_pool_vs_mask)v) | (~k & (fc_pool_vs_mask)m));
}
static inline fc_pool_vd sel_vd(fc_pool_vd_mask k, fc_pool_vd m, fc_pool_vd v) {
    return (fc_pool_vd)((k & (fc_pool_vd_mask)v) | (~k & (fc_pool_vd_mask)m));
}
static inline fc_pool_vs maxn_vs(fc_pool_vs m, fc_pool_vs v) { return sel_vs(take_vs(m, v), m, v); }
static inline fc_pool_vd maxn_vd(fc_pool_vd m, fc_pool_vd v) { return sel_vd(take_vd(m, v), m, v); }
static inline fc_pool_vs load_vs(const float *p) {
    fc_pool_vs v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline fc_pool_vd load_vd(const double *p) {
    fc_pool_vd v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store_vs(float *p, fc_pool_vs v) { memcpy(p, &v, sizeof v); }
static inline void store_vd(double *p, fc_pool_vd v) { memcpy(p, &v, sizeof v); }
static inline void store_first_vs(float *p, fc_pool_vs v, int64_t n) { memcpy(p, &v, (size_t)n * sizeof(float)); }
static inline void store_first_vd(double *p, fc_pool_vd v, int64_t n) { memcpy(p, &v, (size_t)n * sizeof(double)); }
/* A set of lanes [lo, hi), and the vector of xr[e + i] for its lanes i, -inf in the others. */
typedef struct fc_pool_lanes {
    int64_t lo, hi;
} fc_pool_lanes;
static inline fc_pool_vs load_lanes_vs(const float *xr, int64_t e, fc_pool_lanes k) {
    /* lane by lane into the vector: a staging array stored and then loaded whole would stall the load (store
     * forwarding fails on the partial stores) */
    fc_pool_vs v;
    for (int i = 0; i < 4; i++) v[i] = i >= k.lo && i < k.hi ? xr[e + i] : -INFINITY;
    return v;
}
static inline fc_pool_vd load_lanes_vd(const double *xr, int64_t e, fc_pool_lanes k) {
    fc_pool_vd v;
    for (int i = 0; i < 2; i++) v[i] = i >= k.lo && i < k.hi ? xr[e + i] : -INFINITY;
    return v;
}

/* Max pooling with argmax: indices widened to int64. */
typedef int64_t fc_pool_v4l __attribute__((vector_size(32)));
static inline fc_pool_vs_mask load_is(const int32_t *p) {
    fc_pool_vs_mask v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline fc_pool_vd_mask load_id(const int64_t *p) {
    fc_pool_vd_mask v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store_is(int32_t *p, fc_pool_vs_mask v) { memcpy(p, &v, sizeof v); }
static inline void store_id(int64_t *p, fc_pool_vd_mask v) { memcpy(p, &v, sizeof v); }
static inline void store_wide_is(int64_t *p, fc_pool_vs_mask v, int64_t n) {
    const fc_pool_v4l w = __builtin_convertvector(v, fc_pool_v4l);
    memcpy(p, &w, (size_t)n * sizeof(int64_t));
}
static inline void store_wide_id(int64_t *p, fc_pool_vd_mask v, int64_t n) { memcpy(p, &v, (size_t)n * sizeof(int64_t)); }

#define T float
#define VEC fc_pool_vs
#define VL 4
#define VLOADU(p) load_vs(p)
#define VSTOREU(p, v) store_vs(p, v)
#define VSET1(s) ((fc_pool_vs){0} + (s))
#define VMAXN(m, v) maxn_vs(m, v)
#define VEVEN(a, b) FC_POOL_SHUFFLE(a, b, fc_pool_vs_mask, 0, 2, 4, 6)
#define VODD(a, b) FC_POOL_SHUFFLE(a, b, fc_pool_vs_mask, 1, 3, 5, 7)
#define VMASK_T fc_pool_lanes
#define VMASK(lo, hi) ((fc_pool_lanes){lo, hi})
#define VLOADM(xr, e, k) load_lanes_vs(xr, e, k)
#define VSTOREN(p, v, n) store_first_vs(p, v, n)
#define POOL_NAME fc_smax_pool_values_ref
#define POOL_ARGMAX_NAME fc_smax_pool_argmax_ref
#define ITYPE int32_t
#define IVEC fc_pool_vs_mask
#define VTAKE_T fc_pool_vs_mask
#define VTAKE(m, v) take_vs(m, v)
#define VSEL(k, m, v) sel_vs(k, m, v)
#define VSELI(k, a, b) (((k) & (b)) | (~(k) & (a)))
#define VSET1I(s) ((fc_pool_vs_mask){0} + (s))
#define VADDI(a, b) ((a) + (b))
#define VLOADUI(p) load_is(p)
#define VSTOREUI(p, v) store_is(p, v)
#define VIOTAI() ((fc_pool_vs_mask){0, 1, 2, 3})
#define VSTOREL(p, v) store_wide_is(p, v, 4)
#define VSTORELN(p, v, n) store_wide_is(p, v, n)
#include "arch/pool_template.h"
#include "arch/template_undef.h"

#define T double
#define VEC fc_pool_vd
#define VL 2
#define VLOADU(p) load_vd(p)
#define VSTOREU(p, v) store_vd(p, v)
#define VSET1(s) ((fc_pool_vd){0} + (s))
#define VMAXN(m, v) maxn_vd(m, v)
#define VEVEN(a, b) FC_POOL_SHUFFLE(a, b, fc_pool_vd_mask, 0, 2)
#define VODD(a, b) FC_POOL_SHUFFLE(a, b, fc_pool_vd_mask, 1, 3)
#define VMASK_T fc_pool_lanes
#define VMASK(lo, hi) ((fc_pool_lanes){lo, hi})
#define VLOADM(xr, e, k) load_lanes_vd(xr, e, k)
#define VSTOREN(p, v, n) store_first_vd(p, v, n)
#define POOL_NAME fc_dmax_pool_values_ref
#define POOL_ARGMAX_NAME fc_dmax_pool_argmax_ref
#define ITYPE int64_t
#define IVEC fc_pool_vd_mask
#define VTAKE_T fc_pool_vd_mask
#define VTAKE(m, v) take_vd(m, v)
#define VSEL(k, m, v) sel_vd(k, m, v)
#define VSELI(k, a, b) (((k) & (b)) | (~(k) & (a)))
#define VSET1I(s) ((fc_pool_vd_mask){0} + (s))
#define VADDI(a, b) ((a) + (b))
#define VLOADUI(p) load_id(p)
#define VSTOREUI(p, v) store_id(p, v)
#define VIOTAI() ((fc_pool_vd_mask){0, 1})
#define VSTOREL(p, v) store_wide_id(p, v, 2)
#define VSTORELN(p, v, n) store_wide_id(p, v, n)
#include "arch/pool_template.h"

const fc_arch fc_arch_ref = {
    "ref",
    "portable C",
    {4, 1, 4, 128, 256, 2048,
     {0, fc_sgemm_ukr_ref_1, fc_sgemm_ukr_ref_2, fc_sgemm_ukr_ref_3, fc_sgemm_ukr_ref_4},
     4, 4, 4, 4, {0, fc_sdirect_ukr_ref_1, fc_sdirect_ukr_ref_2, fc_sdirect_ukr_ref_3, fc_sdirect_ukr_ref_4},
     fc_swgrad_ukr_ref,
     fc_swinograd_input_ref, fc_swinograd_weights_ref, fc_swinograd_grad_ref, fc_swinograd_output_ref,
     fc_sgemm_ukr_ref_epilogue,
     fc_smax_pool_values_ref,
     {0, fc_sgemm_ukr_ref_1_ep, fc_sgemm_ukr_ref_2_ep, fc_sgemm_ukr_ref_3_ep, fc_sgemm_ukr_ref_4_ep},
     fc_smax_pool_argmax_ref,
     fc_stranspose_portable,
     fc_swinograd_input4_ref, fc_swinograd_weights4_ref, fc_swinograd_output4_ref,
     fc_swinograd_grad4_ref,
     fc_sgemm_ukr_ref_dot, fc_sgemm_ukr_ref_rows, NULL},
    {4, 1, 4, 128, 256, 2048,
     {0, fc_dgemm_ukr_ref_1, fc_dgemm_ukr_ref_2, fc_dgemm_ukr_ref_3, fc_dgemm_ukr_ref_4},
     4, 4, 4, 4, {0, fc_ddirect_ukr_ref_1, fc_ddirect_ukr_ref_2, fc_ddirect_ukr_ref_3, fc_ddirect_ukr_ref_4},
     fc_dwgrad_ukr_ref,
     fc_dwinograd_input_ref, fc_dwinograd_weights_ref, fc_dwinograd_grad_ref, fc_dwinograd_output_ref,
     fc_dgemm_ukr_ref_epilogue,
     fc_dmax_pool_values_ref,
     {0, fc_dgemm_ukr_ref_1_ep, fc_dgemm_ukr_ref_2_ep, fc_dgemm_ukr_ref_3_ep, fc_dgemm_ukr_ref_4_ep},
     fc_dmax_pool_argmax_ref,
     fc_dtranspose_portable,
     fc_dwinograd_input4_ref, fc_dwinograd_weights4_ref, fc_dwinograd_output4_ref,
     fc_dwinograd_grad4_ref,
     fc_dgemm_ukr_ref_dot, fc_dgemm_ukr_ref_rows, NULL},
};
