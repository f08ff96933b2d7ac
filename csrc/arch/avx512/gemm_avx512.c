/* AVX-512F micro-kernels (the only file built with -mavx512f).
 * float: 8 rows x 3 zmm (48 columns): 24 accumulators + 3 B vectors + 1 broadcast fit in 32 zmm registers.
 * double: 8 rows x 3 zmm (24 columns).
 * Direct convolution (both types): 6 filters x up to 4 vectors of pixels; weight gradient 6 filters x 4 taps.
 * Values-only max pooling: stride 2 splits even and odd lanes with vpermt2ps / vpermt2pd. */
#include <immintrin.h>
#include <math.h>

#include "fastconv/dispatch.h"

/* Max pooling's running maximum: v where v > m or v is NaN, else m (max_ps(v, m) is v > m ? v : m). */
static inline __m512 maxn_ps(__m512 m, __m512 v) {
    return _mm512_mask_max_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v, m);
}
static inline __m512d maxn_pd(__m512d m, __m512d v) {
    return _mm512_mask_max_pd(v, _mm512_cmp_pd_mask(v, v, _CMP_ORD_Q), v, m);
}
/* Max pooling with argmax: the lanes where v replaces the running maximum m ((v > m) | (v != v)), and the
 * winners' indices widened to int64 (all lanes, or the first n). */
static inline __mmask16 take_ps(__m512 m, __m512 v) {
    return _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
}
static inline __mmask8 take_pd(__m512d m, __m512d v) {
    return _mm512_cmp_pd_mask(v, m, _CMP_GT_OQ) | _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q);
}
static inline __mmask8 first_lanes_8(int64_t n) { return (__mmask8)(n <= 0 ? 0 : n >= 8 ? 0xff : (1u << n) - 1); }
static inline void store_wide_epi32(int64_t *p, __m512i v) {
    _mm512_storeu_si512(p, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)));
    _mm512_storeu_si512(p + 8, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
}
static inline void store_wide_n_epi32(int64_t *p, __m512i v, int64_t n) {
    _mm512_mask_storeu_epi64(p, first_lanes_8(n), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)));
    _mm512_mask_storeu_epi64(p + 8, first_lanes_8(n - 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
}

#define T float
#define VEC __m512
#define VL 16
#define MR 8
#define NV 3
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_load_ps(p)
#define VLOADU(p) _mm512_loadu_ps(p)
#define VSTOREU(p, x) _mm512_storeu_ps(p, x)
#define VSET1(s) _mm512_set1_ps(s)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SFMA(a, b, c) fmaf(a, b, c) /* the epilogue's scalar twin of VFMA: the same rounding */
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VADD(a, b) _mm512_add_ps(a, b)
#define VRELU(x) _mm512_max_ps(_mm512_setzero_ps(), x) /* NaN in x is returned: kept */
#define UKR_NAME(v) fc_sgemm_ukr_avx512_##v
#define VHSUM(x) _mm512_reduce_add_ps(x)
#include "../ukernel_template.h"
#define DFB 6
#define DNV 4
#define WFB 6
#define WTB 4
#define DIRECT_NAME(v) fc_sdirect_ukr_avx512_##v
#define WGRAD_NAME fc_swgrad_ukr_avx512
#include "../direct_template.h"
#define VSTORE_FIRST(d, s, n) _mm512_mask_storeu_ps(d, (__mmask16)((1u << (n)) - 1), _mm512_load_ps(s))
/* ph[j] = row[4 l + j] over 16 lanes: two rounds of even/odd splits give columns 0-3; columns 4 and 5 are 0 and
 * 1 moved one tile on (the 65th and 66th values, loaded alone: a row holds only 4 VL + 2). */
#define WT_PHASES4(row, ph)                                                                                    \
    do {                                                                                                       \
        const __m512i ev_ = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);      \
        const __m512i od_ = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);      \
        __m512 a0_ = _mm512_loadu_ps(row), a1_ = _mm512_loadu_ps((row) + 16);                                  \
        __m512 a2_ = _mm512_loadu_ps((row) + 32), a3_ = _mm512_loadu_ps((row) + 48);                           \
        __m512 e01_ = _mm512_permutex2var_ps(a0_, ev_, a1_), o01_ = _mm512_permutex2var_ps(a0_, od_, a1_);     \
        __m512 e23_ = _mm512_permutex2var_ps(a2_, ev_, a3_), o23_ = _mm512_permutex2var_ps(a2_, od_, a3_);     \
        __m512 c0_ = _mm512_permutex2var_ps(e01_, ev_, e23_), c1_ = _mm512_permutex2var_ps(o01_, ev_, o23_);   \
        __m512i n0_ = _mm512_castps_si512(_mm512_maskz_loadu_ps(1, (row) + 64));                             \
        __m512i n1_ = _mm512_castps_si512(_mm512_maskz_loadu_ps(1, (row) + 65));                             \
        _mm512_store_ps((ph)[0], c0_);                                                                         \
        _mm512_store_ps((ph)[1], c1_);                                                                         \
        _mm512_store_ps((ph)[2], _mm512_permutex2var_ps(e01_, od_, e23_));                                     \
        _mm512_store_ps((ph)[3], _mm512_permutex2var_ps(o01_, od_, o23_));                                     \
        _mm512_store_ps((ph)[4], _mm512_castsi512_ps(_mm512_alignr_epi32(n0_, _mm512_castps_si512(c0_), 1)));  \
        _mm512_store_ps((ph)[5], _mm512_castsi512_ps(_mm512_alignr_epi32(n1_, _mm512_castps_si512(c1_), 1)));  \
    } while (0)
#define WINO_NAME(x) fc_swinograd_##x##_avx512
#include "../winograd_template.h"
#undef WT_PHASES4
#define VMAXN(m, v) maxn_ps(m, v)
#define VEVEN(a, b) \
    _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b)
#define VODD(a, b) \
    _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b)
#define VMASK_T __mmask16
#define VMASK(lo, hi) ((__mmask16)(((1u << (hi)) - 1) & ~((1u << (lo)) - 1)))
#define VLOADM(xr, e, k) _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, PT_ADDR(xr, e))
#define VSTOREN(p, v, n) _mm512_mask_storeu_ps(p, (__mmask16)((1u << (n)) - 1), v)
#define VLOADK(p, k) _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), (__mmask16)(k), p)
#define VSTOREK(p, v, k) _mm512_mask_storeu_ps(p, (__mmask16)(k), v)
#define POOL_NAME fc_smax_pool_values_avx512
#define POOL_ARGMAX_NAME fc_smax_pool_argmax_avx512
#define ITYPE int32_t
#define IVEC __m512i
#define VTAKE_T __mmask16
#define VTAKE(m, v) take_ps(m, v)
#define VSEL(k, m, v) _mm512_mask_blend_ps(k, m, v)
#define VSELI(k, a, b) _mm512_mask_blend_epi32(k, a, b)
#define VSET1I(s) _mm512_set1_epi32(s)
#define VADDI(a, b) _mm512_add_epi32(a, b)
#define VLOADUI(p) _mm512_loadu_si512(p)
#define VSTOREUI(p, v) _mm512_storeu_si512(p, v)
#define VIOTAI() _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define VSTOREL(p, v) store_wide_epi32(p, v)
#define VSTORELN(p, v, n) store_wide_n_epi32(p, v, n)
#include "../pool_template.h"
#include "../template_undef.h"

#define T double
#define VEC __m512d
#define VL 8
#define MR 8
#define NV 3
#define VZERO() _mm512_setzero_pd()
#define VLOAD(p) _mm512_load_pd(p)
#define VLOADU(p) _mm512_loadu_pd(p)
#define VSTOREU(p, x) _mm512_storeu_pd(p, x)
#define VSET1(s) _mm512_set1_pd(s)
#define VFMA(a, b, c) _mm512_fmadd_pd(a, b, c)
#define SFMA(a, b, c) fma(a, b, c) /* the epilogue's scalar twin of VFMA: the same rounding */
#define VMUL(a, b) _mm512_mul_pd(a, b)
#define VADD(a, b) _mm512_add_pd(a, b)
#define VRELU(x) _mm512_max_pd(_mm512_setzero_pd(), x)
#define UKR_NAME(v) fc_dgemm_ukr_avx512_##v
#define VHSUM(x) _mm512_reduce_add_pd(x)
#include "../ukernel_template.h"
#define DIRECT_NAME(v) fc_ddirect_ukr_avx512_##v
#define WGRAD_NAME fc_dwgrad_ukr_avx512
#include "../direct_template.h"
#define VSTORE_FIRST(d, s, n) _mm512_mask_storeu_pd(d, (__mmask8)((1u << (n)) - 1), _mm512_load_pd(s))
#define WT_PHASES4(row, ph)                                                                                    \
    do {                                                                                                       \
        const __m512i ev_ = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);                                      \
        const __m512i od_ = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);                                      \
        __m512d a0_ = _mm512_loadu_pd(row), a1_ = _mm512_loadu_pd((row) + 8);                                  \
        __m512d a2_ = _mm512_loadu_pd((row) + 16), a3_ = _mm512_loadu_pd((row) + 24);                          \
        __m512d e01_ = _mm512_permutex2var_pd(a0_, ev_, a1_), o01_ = _mm512_permutex2var_pd(a0_, od_, a1_);    \
        __m512d e23_ = _mm512_permutex2var_pd(a2_, ev_, a3_), o23_ = _mm512_permutex2var_pd(a2_, od_, a3_);    \
        __m512d c0_ = _mm512_permutex2var_pd(e01_, ev_, e23_), c1_ = _mm512_permutex2var_pd(o01_, ev_, o23_);  \
        __m512i n0_ = _mm512_castpd_si512(_mm512_maskz_loadu_pd(1, (row) + 32));                             \
        __m512i n1_ = _mm512_castpd_si512(_mm512_maskz_loadu_pd(1, (row) + 33));                             \
        _mm512_store_pd((ph)[0], c0_);                                                                         \
        _mm512_store_pd((ph)[1], c1_);                                                                         \
        _mm512_store_pd((ph)[2], _mm512_permutex2var_pd(e01_, od_, e23_));                                     \
        _mm512_store_pd((ph)[3], _mm512_permutex2var_pd(o01_, od_, o23_));                                     \
        _mm512_store_pd((ph)[4], _mm512_castsi512_pd(_mm512_alignr_epi64(n0_, _mm512_castpd_si512(c0_), 1)));  \
        _mm512_store_pd((ph)[5], _mm512_castsi512_pd(_mm512_alignr_epi64(n1_, _mm512_castpd_si512(c1_), 1)));  \
    } while (0)
#define WINO_NAME(x) fc_dwinograd_##x##_avx512
#include "../winograd_template.h"
#undef WT_PHASES4
#define VMAXN(m, v) maxn_pd(m, v)
#define VEVEN(a, b) _mm512_permutex2var_pd(a, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), b)
#define VODD(a, b) _mm512_permutex2var_pd(a, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), b)
#define VMASK_T __mmask8
#define VMASK(lo, hi) ((__mmask8)(((1u << (hi)) - 1) & ~((1u << (lo)) - 1)))
#define VLOADM(xr, e, k) _mm512_mask_loadu_pd(_mm512_set1_pd(-INFINITY), k, PT_ADDR(xr, e))
#define VSTOREN(p, v, n) _mm512_mask_storeu_pd(p, (__mmask8)((1u << (n)) - 1), v)
#define VLOADK(p, k) _mm512_mask_loadu_pd(_mm512_set1_pd(-INFINITY), (__mmask8)(k), p)
#define VSTOREK(p, v, k) _mm512_mask_storeu_pd(p, (__mmask8)(k), v)
#define POOL_NAME fc_dmax_pool_values_avx512
#define POOL_ARGMAX_NAME fc_dmax_pool_argmax_avx512
#define ITYPE int64_t
#define IVEC __m512i
#define VTAKE_T __mmask8
#define VTAKE(m, v) take_pd(m, v)
#define VSEL(k, m, v) _mm512_mask_blend_pd(k, m, v)
#define VSELI(k, a, b) _mm512_mask_blend_epi64(k, a, b)
#define VSET1I(s) _mm512_set1_epi64(s)
#define VADDI(a, b) _mm512_add_epi64(a, b)
#define VLOADUI(p) _mm512_loadu_si512(p)
#define VSTOREUI(p, v) _mm512_storeu_si512(p, v)
#define VIOTAI() _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7)
#define VSTOREL(p, v) _mm512_storeu_si512(p, v)
#define VSTORELN(p, v, n) _mm512_mask_storeu_epi64(p, first_lanes_8(n), v)
#include "../pool_template.h"

#define TRANSPOSE_NAME(PFX) fc_##PFX##transpose_avx512
#include "../transpose_avx.h"

/* Few columns of B (dispatch.h, fc_Xgemm_narrow_ukr): with fewer than a vector of them the one-vector kernel
 * spends a whole vector, 8 broadcasts and 8 multiply-adds per step on one to four columns (a 7x7 image's 49th
 * pixel). Here a vector holds one A micro-panel's 8 rows (8 floats: a ymm; 8 doubles: a zmm), NARROW_G micro-panels
 * at once, one broadcast of B per column and step. Each sum is the micro-kernel's: one fused multiply-add of the
 * same product per step, from zero, in the same order, so a column's values do not depend on which kernel ran. */
#define NARROW_G 8 /* micro-panels at once: up to 8 for one or two columns, 4 for three or four (16 sums) */
#define NARROW_CASE(PFX, nc, ng)                                                                                 \
    case ((nc) - 1) * NARROW_G + (ng) - 1: PFX##narrow_body(nc, ng, k, a, b, ldb, alpha, out, ldo); break;
#define NARROW_CASES_8(PFX, nc)                                                                                  \
    NARROW_CASE(PFX, nc, 1) NARROW_CASE(PFX, nc, 2) NARROW_CASE(PFX, nc, 3) NARROW_CASE(PFX, nc, 4)            \
    NARROW_CASE(PFX, nc, 5) NARROW_CASE(PFX, nc, 6) NARROW_CASE(PFX, nc, 7) NARROW_CASE(PFX, nc, 8)
#define NARROW_CASES_4(PFX, nc)                                                                                  \
    NARROW_CASE(PFX, nc, 1) NARROW_CASE(PFX, nc, 2) NARROW_CASE(PFX, nc, 3) NARROW_CASE(PFX, nc, 4)
#define DEFINE_NARROW(T, PFX, V, SETZERO, SET1, LOADU, STOREU, FMADD, MUL)                                        \
    static inline __attribute__((always_inline)) void PFX##narrow_body(                                         \
        const int nc, const int ng, int64_t k, const T *FC_RESTRICT a, const T *FC_RESTRICT b, int64_t ldb,       \
        T alpha, T *FC_RESTRICT out, int64_t ldo) {                                                              \
        V acc[NARROW_G][FC_NARROW_COLS];                                                                          \
        _Pragma("GCC unroll 8") for (int g = 0; g < ng; g++)                                                      \
            _Pragma("GCC unroll 4") for (int j = 0; j < nc; j++) acc[g][j] = SETZERO();                          \
        for (int64_t p = 0; p < k; p++) {                                                                         \
            _Pragma("GCC unroll 4") for (int j = 0; j < nc; j++) {                                                \
                const V bj = SET1(b[p * ldb + j]);                                                                \
                _Pragma("GCC unroll 8") for (int g = 0; g < ng; g++)                                              \
                    acc[g][j] = FMADD(LOADU(a + (int64_t)g * 8 * k + p * 8), bj, acc[g][j]);                      \
            }                                                                                                     \
        }                                                                                                         \
        T lanes[8];                                                                                               \
        for (int g = 0; g < ng; g++)                                                                              \
            for (int j = 0; j < nc; j++) {                                                                        \
                STOREU(lanes, MUL(acc[g][j], SET1(alpha)));                                                       \
                for (int r = 0; r < 8; r++) out[(g * 8 + r) * ldo + j] = lanes[r];                                \
            }                                                                                                     \
    }                                                                                                             \
    void fc_##PFX##gemm_ukr_avx512_narrow(int64_t k, const T *FC_RESTRICT a, int64_t ntr, const T *FC_RESTRICT b, \
                                          int64_t ldb, int ncols, T alpha, T *FC_RESTRICT out, int64_t ldo) {     \
        if (ncols < 1 || ncols > FC_NARROW_COLS) return;                                                          \
        const int g_max = ncols <= 2 ? NARROW_G : 4; /* 16 accumulators at most */                               \
        for (int64_t t = 0; t < ntr; t += g_max, a += g_max * 8 * k, out += g_max * 8 * ldo) {                    \
            const int ng = ntr - t < g_max ? (int)(ntr - t) : g_max;                                              \
            switch ((ncols - 1) * NARROW_G + ng - 1) {                                                            \
                NARROW_CASES_8(PFX, 1)                                                                            \
                NARROW_CASES_8(PFX, 2)                                                                            \
                NARROW_CASES_4(PFX, 3)                                                                            \
                NARROW_CASES_4(PFX, 4)                                                                            \
            default: break;                                                                                       \
            }                                                                                                     \
        }                                                                                                         \
    }
/* the A micro-panels these read are 8 rows tall: the MR of both kernel sets below */
DEFINE_NARROW(float, s, __m256, _mm256_setzero_ps, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps,
              _mm256_mul_ps)
DEFINE_NARROW(double, d, __m512d, _mm512_setzero_pd, _mm512_set1_pd, _mm512_loadu_pd, _mm512_storeu_pd,
              _mm512_fmadd_pd, _mm512_mul_pd)
#undef DEFINE_NARROW
#undef NARROW_CASES_4
#undef NARROW_CASES_8
#undef NARROW_CASE
#undef NARROW_G

const fc_arch fc_arch_avx512 = {
    "avx512",
    "AVX-512F (512-bit FMA)",
    {8, 16, 3, 192, 384, 4096, {0, fc_sgemm_ukr_avx512_1, fc_sgemm_ukr_avx512_2, fc_sgemm_ukr_avx512_3, 0},
     6, 4, 6, 4,
     {0, fc_sdirect_ukr_avx512_1, fc_sdirect_ukr_avx512_2, fc_sdirect_ukr_avx512_3, fc_sdirect_ukr_avx512_4},
     fc_swgrad_ukr_avx512,
     fc_swinograd_input_avx512, fc_swinograd_weights_avx512, fc_swinograd_grad_avx512, fc_swinograd_output_avx512,
     fc_sgemm_ukr_avx512_epilogue,
     fc_smax_pool_values_avx512,
     {0, fc_sgemm_ukr_avx512_1_ep, fc_sgemm_ukr_avx512_2_ep, fc_sgemm_ukr_avx512_3_ep, 0},
     fc_smax_pool_argmax_avx512,
     fc_stranspose_avx512,
     fc_swinograd_input4_avx512, fc_swinograd_weights4_avx512, fc_swinograd_output4_avx512,
     fc_swinograd_grad4_avx512,
     fc_sgemm_ukr_avx512_dot, fc_sgemm_ukr_avx512_rows, fc_sgemm_ukr_avx512_narrow},
    {8, 8, 3, 192, 256, 2048, {0, fc_dgemm_ukr_avx512_1, fc_dgemm_ukr_avx512_2, fc_dgemm_ukr_avx512_3, 0},
     6, 4, 6, 4,
     {0, fc_ddirect_ukr_avx512_1, fc_ddirect_ukr_avx512_2, fc_ddirect_ukr_avx512_3, fc_ddirect_ukr_avx512_4},
     fc_dwgrad_ukr_avx512,
     fc_dwinograd_input_avx512, fc_dwinograd_weights_avx512, fc_dwinograd_grad_avx512, fc_dwinograd_output_avx512,
     fc_dgemm_ukr_avx512_epilogue,
     fc_dmax_pool_values_avx512,
     {0, fc_dgemm_ukr_avx512_1_ep, fc_dgemm_ukr_avx512_2_ep, fc_dgemm_ukr_avx512_3_ep, 0},
     fc_dmax_pool_argmax_avx512,
     fc_dtranspose_avx512,
     fc_dwinograd_input4_avx512, fc_dwinograd_weights4_avx512, fc_dwinograd_output4_avx512,
     fc_dwinograd_grad4_avx512,
     fc_dgemm_ukr_avx512_dot, fc_dgemm_ukr_avx512_rows, fc_dgemm_ukr_avx512_narrow},
};
