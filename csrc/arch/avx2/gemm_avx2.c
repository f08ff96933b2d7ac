/* AVX2+FMA micro-kernels (the only file built with -mavx2 -mfma).
 * float: 6 rows x 2 ymm (16 columns): 12 accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers.
 * double: 6 rows x 2 ymm (8 columns). */
#include <immintrin.h>

#include "fastconv/dispatch.h"

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
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define UKR_NAME(v) fc_sgemm_ukr_avx2_##v
#include "../ukernel_template.h"
#undef T
#undef VEC
#undef VL
#undef MR
#undef NV
#undef VZERO
#undef VLOAD
#undef VLOADU
#undef VSTOREU
#undef VSET1
#undef VFMA
#undef VMUL
#undef UKR_NAME

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
#define VMUL(a, b) _mm256_mul_pd(a, b)
#define UKR_NAME(v) fc_dgemm_ukr_avx2_##v
#include "../ukernel_template.h"

const fc_arch fc_arch_avx2 = {
    "avx2",
    "AVX2 + FMA3 (256-bit)",
    {6, 8, 2, 144, 256, 4096, {0, fc_sgemm_ukr_avx2_1, fc_sgemm_ukr_avx2_2, 0, 0}},
    {6, 4, 2, 144, 256, 2048, {0, fc_dgemm_ukr_avx2_1, fc_dgemm_ukr_avx2_2, 0, 0}},
};
