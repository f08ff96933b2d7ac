/* Portable C: the naive GEMM (test oracle) and the fallback micro-kernel that builds on any CPU. */
#include "fastconv/dispatch.h"
#include "fastconv/gemm.h"

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
#define VMUL(a, b) ((a) * (b))
#define UKR_NAME(v) fc_sgemm_ukr_ref_##v
#include "arch/ukernel_template.h"
#define VHSUM(x) (x)
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

const fc_arch fc_arch_ref = {
    "ref",
    "portable C",
    {4, 1, 4, 128, 256, 2048,
     {0, fc_sgemm_ukr_ref_1, fc_sgemm_ukr_ref_2, fc_sgemm_ukr_ref_3, fc_sgemm_ukr_ref_4},
     4, 4, 4, 4, {0, fc_sdirect_ukr_ref_1, fc_sdirect_ukr_ref_2, fc_sdirect_ukr_ref_3, fc_sdirect_ukr_ref_4},
     fc_swgrad_ukr_ref,
     fc_swinograd_input_ref, fc_swinograd_weights_ref, fc_swinograd_grad_ref, fc_swinograd_output_ref,
     fc_sgemm_ukr_ref_epilogue},
    {4, 1, 4, 128, 256, 2048,
     {0, fc_dgemm_ukr_ref_1, fc_dgemm_ukr_ref_2, fc_dgemm_ukr_ref_3, fc_dgemm_ukr_ref_4},
     4, 4, 4, 4, {0, fc_ddirect_ukr_ref_1, fc_ddirect_ukr_ref_2, fc_ddirect_ukr_ref_3, fc_ddirect_ukr_ref_4},
     fc_dwgrad_ukr_ref,
     fc_dwinograd_input_ref, fc_dwinograd_weights_ref, fc_dwinograd_grad_ref, fc_dwinograd_output_ref,
     fc_dgemm_ukr_ref_epilogue},
};
