/* Packing of GEMM operands into the micro-panel layout the micro-kernels stream through.
 *
 * Packed A (one mc x kc block), micro-panels of mr rows:       Packed B (one kc x nc panel), micro-panels of nr cols:
 *
 *   panel 0: a[0,0] a[1,0] .. a[mr-1,0]   <- k = 0              panel 0: b[0,0] b[0,1] .. b[0,nr-1]   <- k = 0
 *            a[0,1] a[1,1] .. a[mr-1,1]   <- k = 1                       b[1,0] b[1,1] .. b[1,nr-1]   <- k = 1
 *            ...                                                         ...
 *   panel 1: rows mr .. 2mr-1, same order                       panel 1: columns nr .. 2nr-1, same order
 *
 * so that the micro-kernel reads both operands strictly sequentially. The last A panel is zero-padded to mr rows.
 * The last B panel is only as wide as the columns it holds, rounded up to the vector length vl (zero-padded): the
 * driver then runs the narrower micro-kernel variant on it instead of wasting work on a full nr tile. Panel j of
 * B therefore starts at offset j * nr * kc whatever the width of the last one. */
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "fastconv/dispatch.h"
#include "fastconv/gemm.h"

/* Both packings that interleave rows (A's mr rows; the weight gradient's transposed im2col) come down to a
 * transpose, done 4x4 (float) or 2x2 (double) at a time with SSE2 shuffles, part of every x86-64, elsewhere
 * element by element. Against strided scalar stores this cut the ResNet 3x3 weight gradient's packing from
 * ~30 % of its time to ~17 % (perf, 1 thread). */
void fc_stranspose_portable(const float *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                            float *FC_RESTRICT dst, int64_t ldd) {
    int64_t r0 = 0;
#if defined(__SSE2__)
    for (; r0 + 4 <= rows; r0 += 4) {
        const float *s = src + r0 * lds;
        int64_t c = 0;
        for (; c + 4 <= cols; c += 4) {
            __m128 a = _mm_loadu_ps(s + c), b = _mm_loadu_ps(s + lds + c);
            __m128 e = _mm_loadu_ps(s + 2 * lds + c), f = _mm_loadu_ps(s + 3 * lds + c);
            _MM_TRANSPOSE4_PS(a, b, e, f);
            _mm_storeu_ps(dst + c * ldd + r0, a);
            _mm_storeu_ps(dst + (c + 1) * ldd + r0, b);
            _mm_storeu_ps(dst + (c + 2) * ldd + r0, e);
            _mm_storeu_ps(dst + (c + 3) * ldd + r0, f);
        }
        for (; c < cols; c++)
            for (int64_t r = 0; r < 4; r++) dst[c * ldd + r0 + r] = s[r * lds + c];
    }
#endif
    for (int64_t r = r0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

void fc_dtranspose_portable(const double *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                            double *FC_RESTRICT dst, int64_t ldd) {
    int64_t r0 = 0;
#if defined(__SSE2__)
    for (; r0 + 2 <= rows; r0 += 2) {
        const double *s = src + r0 * lds;
        int64_t c = 0;
        for (; c + 2 <= cols; c += 2) {
            __m128d a = _mm_loadu_pd(s + c), b = _mm_loadu_pd(s + lds + c);
            _mm_storeu_pd(dst + c * ldd + r0, _mm_unpacklo_pd(a, b));
            _mm_storeu_pd(dst + (c + 1) * ldd + r0, _mm_unpackhi_pd(a, b));
        }
        for (; c < cols; c++)
            for (int64_t r = 0; r < 2; r++) dst[c * ldd + r0 + r] = s[r * lds + c];
    }
#endif
    for (int64_t r = r0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

void fc_stranspose(const float *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds, float *FC_RESTRICT dst,
                   int64_t ldd) {
    fc_arch_current()->s.transpose(src, rows, cols, lds, dst, ldd);
}

void fc_dtranspose(const double *FC_RESTRICT src, int64_t rows, int64_t cols, int64_t lds,
                   double *FC_RESTRICT dst, int64_t ldd) {
    fc_arch_current()->d.transpose(src, rows, cols, lds, dst, ldd);
}

#ifndef FC_PACK_B_AHEAD
#define FC_PACK_B_AHEAD 16
#endif
#define FC_DEFINE_PACK(T, PFX)                                                                                     \
    void fc_##PFX##pack_b_strided(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl, \
                                  T *FC_RESTRICT dst) {                                                            \
        const fc_strided_matrix *b = (const fc_strided_matrix *)src;                                               \
        const T *base = (const T *)b->data;                                                                        \
        if (b->cs == 1 && nc >= b->rs) {                                                                           \
            /* A panel of whole rows (a 1x1 layer's images up to nc pixels) is one contiguous run of memory:      \
             * read it front to back, row after row, and deal each row to the micro-panels. Panel after panel    \
             * would walk kc rows at a time, too many streams for the hardware to prefetch. */                   \
            int64_t full = nc / nr * nr;                                                                           \
            int64_t w = nc - full, wpad = (w + vl - 1) / vl * vl;                                                  \
            for (int64_t p = 0; p < kc; p++) {                                                                     \
                const T *s = base + (k0 + p) * b->rs + j0;                                                         \
                T *d = dst + p * nr;                                                                               \
                int64_t jp = 0;                                                                                    \
                if (nr * (int64_t)sizeof(T) == 192) /* the AVX-512 panel: a copy of constant size, inlined */     \
                    for (; jp < full; jp += nr) memcpy(d + jp * kc, s + jp, 192);                                  \
                for (; jp < full; jp += nr) memcpy(d + jp * kc, s + jp, (size_t)nr * sizeof(T));                   \
                if (w) {                                                                                           \
                    T *dl = dst + full * kc + p * wpad;                                                            \
                    memcpy(dl, s + full, (size_t)w * sizeof(T));                                                   \
                    for (int64_t j = w; j < wpad; j++) dl[j] = 0;                                                  \
                }                                                                                                  \
            }                                                                                                      \
            return;                                                                                                \
        }                                                                                                          \
        for (int64_t jp = 0; jp < nc; jp += nr) {                                                                  \
            int64_t w = nc - jp < nr ? nc - jp : nr;                                                               \
            int64_t wpad = (w + vl - 1) / vl * vl;                                                                 \
            T *d = dst + jp * kc;                                                                                  \
            if (b->cs == 1) {                                                                                      \
                for (int64_t p = 0; p < kc; p++) {                                                                 \
                    const T *s = base + (k0 + p) * b->rs + (j0 + jp);                                              \
                    if (p + FC_PACK_B_AHEAD < kc) {                                                                \
                        const char *f = (const char *)(s + FC_PACK_B_AHEAD * b->rs);                               \
                        for (int64_t o = 0; o < w * (int64_t)sizeof(T); o += 64) __builtin_prefetch(f + o, 0, 3); \
                        __builtin_prefetch(f + w * (int64_t)sizeof(T) - 1, 0, 3);                                  \
                    }                                                                                              \
                    memcpy(d + p * wpad, s, (size_t)w * sizeof(T));                                                \
                    for (int64_t j = w; j < wpad; j++) d[p * wpad + j] = 0;                                        \
                }                                                                                                  \
            } else if (b->rs == 1) { /* column-major B (x^T in a weight gradient): a transpose of w columns */   \
                /* the padding first, in one call: row by row it was kc calls of memset (a dense layer's one       \
                 * image, w = 1: 0.5 of LeNet-5's C5 5.3 us at batch 1) */                                          \
                if (w < wpad) memset(d, 0, (size_t)(kc * wpad) * sizeof(T));                                       \
                fc_##PFX##transpose(base + k0 + (j0 + jp) * b->cs, w, kc, b->cs, d, wpad);                         \
            } else {                                                                                               \
                /* strided B: walk down each column */                                                             \
                for (int64_t j = 0; j < w; j++) {                                                                  \
                    const T *s = base + k0 * b->rs + (j0 + jp + j) * b->cs;                                        \
                    for (int64_t p = 0; p < kc; p++) d[p * wpad + j] = s[p * b->rs];                               \
                }                                                                                                  \
                for (int64_t p = 0; p < kc; p++)                                                                   \
                    for (int64_t j = w; j < wpad; j++) d[p * wpad + j] = 0;                                        \
            }                                                                                                      \
        }                                                                                                          \
    }                                                                                                              \
                                                                                                                   \
    void fc_##PFX##pack_a(const fc_strided_matrix *a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr,      \
                          T *FC_RESTRICT dst) {                                                                    \
        const T *base = (const T *)a->data;                                                                        \
        for (int64_t ip = 0; ip < mc; ip += mr) {                                                                  \
            int64_t h = mc - ip < mr ? mc - ip : mr;                                                               \
            T *d = dst + ip * kc;                                                                                  \
            if (a->rs == 1) { /* column-major A: each k is a contiguous run of rows */                             \
                for (int64_t p = 0; p < kc; p++) {                                                                 \
                    const T *s = base + (i0 + ip) + (k0 + p) * a->cs;                                              \
                    for (int64_t r = 0; r < h; r++) d[p * mr + r] = s[r];                                          \
                    for (int64_t r = h; r < mr; r++) d[p * mr + r] = 0;                                            \
                }                                                                                                  \
            } else if (h == mr && a->cs == 1) { /* row-major A, full panel: a transpose of mr rows */          \
                fc_##PFX##transpose(base + (i0 + ip) * a->rs + k0, mr, kc, a->rs, d, mr);                          \
            } else {                                                                                               \
                for (int64_t r = 0; r < h; r++) {                                                                  \
                    const T *s = base + (i0 + ip + r) * a->rs + k0 * a->cs;                                        \
                    for (int64_t p = 0; p < kc; p++) d[p * mr + r] = s[p * a->cs];                                 \
                }                                                                                                  \
                for (int64_t r = h; r < mr; r++)                                                                   \
                    for (int64_t p = 0; p < kc; p++) d[p * mr + r] = 0;                                            \
            }                                                                                                      \
        }                                                                                                          \
    }

FC_DEFINE_PACK(float, s)
FC_DEFINE_PACK(double, d)

/* Grow-only per-thread scratch. Threads of the OpenMP pool persist, so after the first call of a given size no
 * allocation (and no page fault) happens on the hot path. */
#define FC_THREAD_SLOTS 5
static _Thread_local void *slot_ptr[FC_THREAD_SLOTS];
static _Thread_local int64_t slot_cap[FC_THREAD_SLOTS];

void *fc_thread_buffer(int slot, int64_t bytes) {
    if (slot < 0 || slot >= FC_THREAD_SLOTS || bytes < 0) return NULL;
    if (bytes > slot_cap[slot]) {
        void *p = fc_aligned_alloc(bytes);
        if (!p) return NULL;
        fc_aligned_free(slot_ptr[slot]);
        slot_ptr[slot] = p;
        slot_cap[slot] = bytes;
    }
    if (!slot_ptr[slot]) { /* bytes == 0 on a fresh slot: still hand out a valid pointer */
        slot_ptr[slot] = fc_aligned_alloc(FC_ALIGN);
        if (!slot_ptr[slot]) return NULL;
        slot_cap[slot] = FC_ALIGN;
    }
    return slot_ptr[slot];
}
