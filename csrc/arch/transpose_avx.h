/* Out-of-place transposes with 256-bit AVX shuffles: dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols,
 * in 8x8 float / 4x4 double blocks held in registers (8 loads, 24 shuffles, 8 stores per 64 floats; the SSE2
 * 4x4 blocks of the portable version take twice the stores and a third more shuffles per element). Rows and
 * columns past the last whole block go to the portable version. Included by the AVX2 and AVX-512 files (both ISAs
 * have these instructions) with TRANSPOSE_NAME(PFX) naming the functions. */
#include <immintrin.h>

#include "fastconv/gemm.h"

void TRANSPOSE_NAME(s)(const float *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds, float *FC_RESTRICT dst,
                       int64_t ldd) {
    const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
    if (cols == 4 && lds == 4) {
        /* four interleaved streams into four rows (a stride-4 layer's input split into its column phases): 8
         * rows at a time, 32 contiguous floats; two rounds of unpacks leave each column's 8 values in the order
         * r0 r4 r2 r6 r1 r5 r3 r7, which one permute puts right */
        const __m256i order = _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7);
        for (int64_t r = 0; r < rows8; r += 8) {
            const float *s = src + r * 4;
            __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + 8);
            __m256 a2 = _mm256_loadu_ps(s + 16), a3 = _mm256_loadu_ps(s + 24);
            __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
            __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
            float *d = dst + r;
            _mm256_storeu_ps(d, _mm256_permutevar8x32_ps(_mm256_unpacklo_ps(t0, t2), order));
            _mm256_storeu_ps(d + ldd, _mm256_permutevar8x32_ps(_mm256_unpackhi_ps(t0, t2), order));
            _mm256_storeu_ps(d + 2 * ldd, _mm256_permutevar8x32_ps(_mm256_unpacklo_ps(t1, t3), order));
            _mm256_storeu_ps(d + 3 * ldd, _mm256_permutevar8x32_ps(_mm256_unpackhi_ps(t1, t3), order));
        }
        if (rows8 < rows) fc_stranspose_portable(src + rows8 * lds, rows - rows8, cols, lds, dst + rows8, ldd);
        return;
    }
    for (int64_t r = 0; r < rows8; r += 8) {
        const float *s = src + r * lds;
        for (int64_t c = 0; c < cols8; c += 8) {
            __m256 r0 = _mm256_loadu_ps(s + c), r1 = _mm256_loadu_ps(s + lds + c);
            __m256 r2 = _mm256_loadu_ps(s + 2 * lds + c), r3 = _mm256_loadu_ps(s + 3 * lds + c);
            __m256 r4 = _mm256_loadu_ps(s + 4 * lds + c), r5 = _mm256_loadu_ps(s + 5 * lds + c);
            __m256 r6 = _mm256_loadu_ps(s + 6 * lds + c), r7 = _mm256_loadu_ps(s + 7 * lds + c);
            /* pairs of rows interleaved, then quads, then the 128-bit halves: column j of the block */
            __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *d = dst + c * ldd + r;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
        if (cols8 < cols) fc_stranspose_portable(s + cols8, 8, cols - cols8, lds, dst + cols8 * ldd + r, ldd);
    }
    if (rows8 < rows) fc_stranspose_portable(src + rows8 * lds, rows - rows8, cols, lds, dst + rows8, ldd);
}

void TRANSPOSE_NAME(d)(const double *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                       double *FC_RESTRICT dst, int64_t ldd) {
    const int64_t rows4 = rows / 4 * 4, cols4 = cols / 4 * 4;
    for (int64_t r = 0; r < rows4; r += 4) {
        const double *s = src + r * lds;
        for (int64_t c = 0; c < cols4; c += 4) {
            __m256d r0 = _mm256_loadu_pd(s + c), r1 = _mm256_loadu_pd(s + lds + c);
            __m256d r2 = _mm256_loadu_pd(s + 2 * lds + c), r3 = _mm256_loadu_pd(s + 3 * lds + c);
            __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
            __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
            double *d = dst + c * ldd + r;
            _mm256_storeu_pd(d, _mm256_permute2f128_pd(t0, t2, 0x20));
            _mm256_storeu_pd(d + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
            _mm256_storeu_pd(d + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
            _mm256_storeu_pd(d + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
        }
        if (cols4 < cols) fc_dtranspose_portable(s + cols4, 4, cols - cols4, lds, dst + cols4 * ldd + r, ldd);
    }
    if (rows4 < rows) fc_dtranspose_portable(src + rows4 * lds, rows - rows4, cols, lds, dst + rows4, ldd);
}
