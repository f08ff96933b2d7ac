/* AVX2+FMA micro-kernels (the only file built with -mavx2 -mfma).
 * float: 6 rows x 2 ymm (16 columns): 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers.
 * double: 6 rows x 2 ymm (8 columns).
 * Direct convolution: 6 filters x up to 2 vectors of pixels; weight gradient 3 filters x 4 taps (12 + 3 + 1). */
#include <immintrin.h>
#include <math.h>

#include "fastconv/dispatch.h"

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline double hsum_pd(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* Max pooling's running maximum: v where v > m or v is NaN, else m (max_ps(v, m) is v > m ? v : m). */
static inline __m256 maxn_ps(__m256 m, __m256 v) {
    return _mm256_blendv_ps(_mm256_max_ps(v, m), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}
static inline __m256d maxn_pd(__m256d m, __m256d v) {
    return _mm256_blendv_pd(_mm256_max_pd(v, m), v, _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
}

/* Even and odd lanes of (a, b): shuffle within the 128-bit halves, then put the 64-bit pairs in order. */
static inline __m256 even_ps(__m256 a, __m256 b) {
    __m256 t = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* a0 a2 b0 b2 | a4 a6 b4 b6 */
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
}
static inline __m256 odd_ps(__m256 a, __m256 b) {
    __m256 t = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
}
static inline __m256d even_pd(__m256d a, __m256d b) { /* a0 b0 | a2 b2 -> a0 a2 b0 b2 */
    return _mm256_permute4x64_pd(_mm256_unpacklo_pd(a, b), _MM_SHUFFLE(3, 1, 2, 0));
}
static inline __m256d odd_pd(__m256d a, __m256d b) {
    return _mm256_permute4x64_pd(_mm256_unpackhi_pd(a, b), _MM_SHUFFLE(3, 1, 2, 0));
}
static inline __m256i first_lanes_32(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline __m256i first_lanes_64(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
/* Max pooling with argmax: the lanes where v replaces the running maximum m ((v > m) | (v != v)), and the
 * winners' indices widened to int64 (all lanes, or the first n). */
static inline __m256 take_ps(__m256 m, __m256 v) {
    return _mm256_or_ps(_mm256_cmp_ps(v, m, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}
static inline __m256d take_pd(__m256d m, __m256d v) {
    return _mm256_or_pd(_mm256_cmp_pd(v, m, _CMP_GT_OQ), _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
}
static inline __m256i sel_epi32(__m256 k, __m256i a, __m256i b) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), k));
}
static inline __m256i sel_epi64(__m256d k, __m256i a, __m256i b) {
    return _mm256_castpd_si256(_mm256_blendv_pd(_mm256_castsi256_pd(a), _mm256_castsi256_pd(b), k));
}
static inline void store_wide_epi32(int64_t *p, __m256i v) {
    _mm256_storeu_si256((__m256i *)p, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)));
    _mm256_storeu_si256((__m256i *)(p + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
}
static inline void store_wide_n_epi32(int64_t *p, __m256i v, int64_t n) {
    _mm256_maskstore_epi64((long long *)p, first_lanes_64(n), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)));
    _mm256_maskstore_epi64((long long *)(p + 4), first_lanes_64(n - 4),
                           _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
}
/* The lanes of k from p (a masked load: the others are not accessed), -inf in the others. */
static inline __m256 load_masked_ps(const float *p, __m256i k) {
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(p, k), _mm256_castsi256_ps(k));
}
static inline __m256d load_masked_pd(const double *p, __m256i k) {
    return _mm256_blendv_pd(_mm256_set1_pd(-INFINITY), _mm256_maskload_pd(p, k), _mm256_castsi256_pd(k));
}

#define T float
#define VEC __m256
#define VL 8
#define MR 6
#define NV 2
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_load_ps(p)
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTOREU(p, x) _mm256_storeu_ps(p, x)
#define VSET1(s) _mm256_set1_ps(s)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SFMA(a, b, c) fmaf(a, b, c) /* the epilogue's scalar twin of VFMA: the same rounding */
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VADD(a, b) _mm256_add_ps(a, b)
#define VRELU(x) _mm256_max_ps(_mm256_setzero_ps(), x) /* NaN in x is returned: kept */
#define UKR_NAME(v) fc_sgemm_ukr_avx2_##v
#define VHSUM(x) hsum_ps(x)
#include "../ukernel_template.h"
#define DFB 6
#define DNV 2
#define WFB 3
#define WTB 4
#define DIRECT_NAME(v) fc_sdirect_ukr_avx2_##v
#define WGRAD_NAME fc_swgrad_ukr_avx2
#include "../direct_template.h"
#define VSTORE_FIRST(d, s, n)                                                                                \
    _mm256_maskstore_ps(d, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), \
                        _mm256_load_ps(s))
#define WINO_NAME(x) fc_swinograd_##x##_avx2
#include "../winograd_template.h"
#define VMAXN(m, v) maxn_ps(m, v)
#define VEVEN(a, b) even_ps(a, b)
#define VODD(a, b) odd_ps(a, b)
#define VMASK_T __m256i
#define VMASK(lo, hi) _mm256_andnot_si256(first_lanes_32(lo), first_lanes_32(hi))
#define VLOADM(xr, e, k) load_masked_ps(PT_ADDR(xr, e), k)
#define VSTOREN(p, v, n) _mm256_maskstore_ps(p, first_lanes_32(n), v)
#define POOL_NAME fc_smax_pool_values_avx2
#define POOL_ARGMAX_NAME fc_smax_pool_argmax_avx2
#define ITYPE int32_t
#define IVEC __m256i
#define VTAKE_T __m256
#define VTAKE(m, v) take_ps(m, v)
#define VSEL(k, m, v) _mm256_blendv_ps(m, v, k)
#define VSELI(k, a, b) sel_epi32(k, a, b)
#define VSET1I(s) _mm256_set1_epi32(s)
#define VADDI(a, b) _mm256_add_epi32(a, b)
#define VLOADUI(p) _mm256_loadu_si256((const __m256i *)(p))
#define VSTOREUI(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define VIOTAI() _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#define VSTOREL(p, v) store_wide_epi32(p, v)
#define VSTORELN(p, v, n) store_wide_n_epi32(p, v, n)
#include "../pool_template.h"
#include "../template_undef.h"

#define T double
#define VEC __m256d
#define VL 4
#define MR 6
#define NV 2
#define VZERO() _mm256_setzero_pd()
#define VLOAD(p) _mm256_load_pd(p)
#define VLOADU(p) _mm256_loadu_pd(p)
#define VSTOREU(p, x) _mm256_storeu_pd(p, x)
#define VSET1(s) _mm256_set1_pd(s)
#define VFMA(a, b, c) _mm256_fmadd_pd(a, b, c)
#define SFMA(a, b, c) fma(a, b, c) /* the epilogue's scalar twin of VFMA: the same rounding */
#define VMUL(a, b) _mm256_mul_pd(a, b)
#define VADD(a, b) _mm256_add_pd(a, b)
#define VRELU(x) _mm256_max_pd(_mm256_setzero_pd(), x)
#define UKR_NAME(v) fc_dgemm_ukr_avx2_##v
#define VHSUM(x) hsum_pd(x)
#include "../ukernel_template.h"
#define DIRECT_NAME(v) fc_ddirect_ukr_avx2_##v
#define WGRAD_NAME fc_dwgrad_ukr_avx2
#include "../direct_template.h"
#define VSTORE_FIRST(d, s, n) \
    _mm256_maskstore_pd(d, _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)), _mm256_load_pd(s))
#define WINO_NAME(x) fc_dwinograd_##x##_avx2
#include "../winograd_template.h"
#define VMAXN(m, v) maxn_pd(m, v)
#define VEVEN(a, b) even_pd(a, b)
#define VODD(a, b) odd_pd(a, b)
#define VMASK_T __m256i
#define VMASK(lo, hi) _mm256_andnot_si256(first_lanes_64(lo), first_lanes_64(hi))
#define VLOADM(xr, e, k) load_masked_pd(PT_ADDR(xr, e), k)
#define VSTOREN(p, v, n) _mm256_maskstore_pd(p, first_lanes_64(n), v)
#define POOL_NAME fc_dmax_pool_values_avx2
#define POOL_ARGMAX_NAME fc_dmax_pool_argmax_avx2
#define ITYPE int64_t
#define IVEC __m256i
#define VTAKE_T __m256d
#define VTAKE(m, v) take_pd(m, v)
#define VSEL(k, m, v) _mm256_blendv_pd(m, v, k)
#define VSELI(k, a, b) sel_epi64(k, a, b)
#define VSET1I(s) _mm256_set1_epi64x(s)
#define VADDI(a, b) _mm256_add_epi64(a, b)
#define VLOADUI(p) _mm256_loadu_si256((const __m256i *)(p))
#define VSTOREUI(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define VIOTAI() _mm256_setr_epi64x(0, 1, 2, 3)
#define VSTOREL(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define VSTORELN(p, v, n) _mm256_maskstore_epi64((long long *)(p), first_lanes_64(n), v)
#include "../pool_template.h"

#define TRANSPOSE_NAME(PFX) fc_##PFX##transpose_avx2
#include "../transpose_avx.h"

const fc_arch fc_arch_avx2 = {
    "avx2",
    "AVX2 + FMA3 (256-bit)",
    {6, 8, 2, 144, 256, 4096, {0, fc_sgemm_ukr_avx2_1, fc_sgemm_ukr_avx2_2, 0, 0},
     6, 2, 3, 4, {0, fc_sdirect_ukr_avx2_1, fc_sdirect_ukr_avx2_2, 0, 0}, fc_swgrad_ukr_avx2,
     fc_swinograd_input_avx2, fc_swinograd_weights_avx2, fc_swinograd_grad_avx2, fc_swinograd_output_avx2,
     fc_sgemm_ukr_avx2_epilogue,
     fc_smax_pool_values_avx2,
     {0, fc_sgemm_ukr_avx2_1_ep, fc_sgemm_ukr_avx2_2_ep, 0, 0},
     fc_smax_pool_argmax_avx2,
     fc_stranspose_avx2,
     fc_swinograd_input4_avx2, fc_swinograd_weights4_avx2, fc_swinograd_output4_avx2,
     fc_swinograd_grad4_avx2,
     fc_sgemm_ukr_avx2_dot, fc_sgemm_ukr_avx2_rows, NULL},
    {6, 4, 2, 144, 256, 2048, {0, fc_dgemm_ukr_avx2_1, fc_dgemm_ukr_avx2_2, 0, 0},
     6, 2, 3, 4, {0, fc_ddirect_ukr_avx2_1, fc_ddirect_ukr_avx2_2, 0, 0}, fc_dwgrad_ukr_avx2,
     fc_dwinograd_input_avx2, fc_dwinograd_weights_avx2, fc_dwinograd_grad_avx2, fc_dwinograd_output_avx2,
     fc_dgemm_ukr_avx2_epilogue,
     fc_dmax_pool_values_avx2,
     {0, fc_dgemm_ukr_avx2_1_ep, fc_dgemm_ukr_avx2_2_ep, 0, 0},
     fc_dmax_pool_argmax_avx2,
     fc_dtranspose_avx2,
     fc_dwinograd_input4_avx2, fc_dwinograd_weights4_avx2, fc_dwinograd_output4_avx2,
     fc_dwinograd_grad4_avx2,
     fc_dgemm_ukr_avx2_dot, fc_dgemm_ukr_avx2_rows, NULL},
};
