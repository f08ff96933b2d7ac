/* im2col / col2im for a range of output pixels, and the implicit-im2col GEMM packing built on them. */
#include <string.h>

#include "fastconv/gemm.h"
#include "fastconv/im2col.h"

/* Pixel runs a packing call can hold: a B panel is at most 64 columns wide (forward). The transposed operand
 * (weight gradient) is written column by column down its rows, so its rows go in chunks of 128 pixels: the
 * chunk's slice of the panel (128 x at most 64 values) stays in L1 while every column is written into it
 * (LeNet conv1's weight gradient: 1.9 -> 1.4 ms against 512-pixel chunks). */
#define FC_MAX_NR_PACK 64
#define FC_MAX_KC_PACK 128

/* Range [lo, hi) of output columns ox whose input column ox*sw + off lies inside [0, w). */
static inline void valid_ox(int64_t off, int64_t sw, int64_t w, int64_t ow, int64_t *lo, int64_t *hi) {
    int64_t l = off >= 0 ? 0 : (-off + sw - 1) / sw;
    int64_t h = w - 1 - off < 0 ? 0 : (w - 1 - off) / sw + 1;
    if (h > ow) h = ow;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* A run of consecutive output pixels within one output row of one image: the unit the packing loops copy. */
typedef struct fc_pixel_run {
    int64_t img_off; /* x offset of the image */
    int64_t oy, ox0, len;
    int64_t pos;     /* index of the run's first pixel among the pixels being packed */
} fc_pixel_run;

/* 1x1, stride 1, no padding: output pixels of an image map onto consecutive input pixels. */
static int is_pointwise(const fc_conv2d_desc *d) {
    return d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 && d->ph == 0 && d->pw == 0;
}

/* Split the pixels [j, j + cnt) (numbered over images, as fc_im2col_src) into runs; at most `cap` runs. A run is
 * one output row, or for pointwise convolutions everything up to the end of its image (a single copy). */
static int64_t pixel_runs(const fc_im2col_src *s, int64_t j, int64_t cnt, fc_pixel_run *runs, int64_t cap) {
    const fc_conv2d_desc *d = s->d;
    int64_t p = d->oh * d->ow, img = j / p, q = j % p, oy = q / d->ow, ox = q % d->ow, n = 0;
    int pointwise = is_pointwise(d);
    for (int64_t done = 0; done < cnt && n < cap;) {
        int64_t left = pointwise ? p - (oy * d->ow + ox) : d->ow - ox;
        int64_t len = left < cnt - done ? left : cnt - done;
        runs[n].img_off = img * s->img_stride;
        runs[n].oy = oy;
        runs[n].ox0 = ox;
        runs[n].len = len;
        runs[n].pos = done;
        n++;
        done += len;
        ox = 0;
        if (pointwise || ++oy == d->oh) {
            oy = 0;
            img++;
        }
    }
    return n;
}

/* Valid output-column range of every kernel column kj (kw <= FC_MAX_KW), computed once per packing call. */
#define FC_MAX_KW 64
static void valid_ranges(const fc_conv2d_desc *d, int64_t *lo, int64_t *hi) {
    for (int64_t kj = 0; kj < d->kw && kj < FC_MAX_KW; kj++) valid_ox(kj * d->dw - d->pw, d->sw, d->w, d->ow, &lo[kj], &hi[kj]);
}

/* The valid output-column range of kernel column kj: from the table when it holds kj. */
static inline void tap_range(const fc_conv2d_desc *d, const int64_t *lo, const int64_t *hi, int64_t kj, int64_t *l,
                             int64_t *h) {
    if (kj < FC_MAX_KW) {
        *l = lo[kj];
        *h = hi[kj];
    } else {
        valid_ox(kj * d->dw - d->pw, d->sw, d->w, d->ow, l, h);
    }
}

/* The next column-matrix row: kj fastest, then ki, then the channel. */
static inline void next_tap(const fc_conv2d_desc *d, int64_t *ci, int64_t *ki, int64_t *kj) {
    if (++*kj == d->kw) {
        *kj = 0;
        if (++*ki == d->kh) {
            *ki = 0;
            ++*ci;
        }
    }
}

/* The column-matrix row (ci, ki, kj) over a list of pixel runs: dst[run.pos + i] (scaled by ds) for each run. */
#define FC_DEFINE_IM2COL(T, PFX)                                                                                 \
    static inline void PFX##copy_runs(const T *xc, const fc_conv2d_desc *d, int64_t ki, int64_t kj, int64_t lo,   \
                                      int64_t hi, const fc_pixel_run *runs, int64_t nruns, T *FC_RESTRICT dst,    \
                                      int64_t ds) {                                                               \
        int64_t off = kj * d->dw - d->pw, ky = ki * d->dh - d->ph;                                                \
        if (is_pointwise(d)) { /* each run is a contiguous stretch of the channel plane */                       \
            for (int64_t r = 0; r < nruns; r++) {                                                                 \
                const T *src = xc + runs[r].img_off + runs[r].oy * d->w + runs[r].ox0;                            \
                T *o = dst + runs[r].pos * ds;                                                                    \
                if (ds == 1)                                                                                      \
                    for (int64_t q = 0; q < runs[r].len; q++) o[q] = src[q];                                      \
                else                                                                                              \
                    for (int64_t q = 0; q < runs[r].len; q++) o[q * ds] = src[q];                                 \
            }                                                                                                     \
            return;                                                                                               \
        }                                                                                                         \
        for (int64_t r = 0; r < nruns; r++) {                                                                     \
            int64_t a = runs[r].ox0, b = a + runs[r].len, iy = runs[r].oy * d->sh + ky;                           \
            T *o = dst + runs[r].pos * ds - a * ds; /* o[q * ds] is output column q */                            \
            if (iy < 0 || iy >= d->h) {                                                                           \
                for (int64_t q = a; q < b; q++) o[q * ds] = 0;                                                    \
                continue;                                                                                         \
            }                                                                                                     \
            const T *row = xc + runs[r].img_off + iy * d->w + off;                                                \
            int64_t qs = a > lo ? a : lo, qe = b < hi ? b : hi;                                                   \
            for (int64_t q = a; q < (b < lo ? b : lo); q++) o[q * ds] = 0;                                        \
            if (ds == 1 && d->sw == 1) {                                                                          \
                for (int64_t q = qs; q < qe; q++) o[q] = row[q];                                                  \
            } else {                                                                                              \
                for (int64_t q = qs; q < qe; q++) o[q * ds] = row[q * d->sw];                                     \
            }                                                                                                     \
            for (int64_t q = a > hi ? a : hi; q < b; q++) o[q * ds] = 0;                                          \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    void fc_##PFX##pack_b_im2col(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl, \
                                 T *FC_RESTRICT dst) {                                                            \
        const fc_im2col_src *s = (const fc_im2col_src *)src;                                                      \
        const fc_conv2d_desc *d = s->d;                                                                           \
        const T *x = (const T *)s->x;                                                                             \
        int64_t khw = d->kh * d->kw, plane = d->h * d->w, lo[FC_MAX_KW], hi[FC_MAX_KW];                           \
        fc_pixel_run runs[FC_MAX_NR_PACK];                                                                        \
        valid_ranges(d, lo, hi);                                                                                  \
        for (int64_t jp = 0; jp < nc; jp += nr) {                                                                 \
            int64_t wd = nc - jp < nr ? nc - jp : nr, wpad = (wd + vl - 1) / vl * vl;                              \
            int64_t nruns = pixel_runs(s, j0 + jp, wd, runs, FC_MAX_NR_PACK);                                     \
            T *pd = dst + jp * kc;                                                                                \
            int64_t ci = k0 / khw, ki = (k0 % khw) / d->kw, kj = k0 % d->kw;                                      \
            for (int64_t p = 0; p < kc; p++) {                                                                    \
                int64_t l, h;                                                                                     \
                tap_range(d, lo, hi, kj, &l, &h);                                                                 \
                PFX##copy_runs(x + ci * plane, d, ki, kj, l, h, runs, nruns, pd + p * wpad, 1);                   \
                for (int64_t j = wd; j < wpad; j++) pd[p * wpad + j] = 0;                                         \
                next_tap(d, &ci, &ki, &kj);                                                                       \
            }                                                                                                     \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    void fc_##PFX##pack_b_im2col_t(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr,       \
                                   int vl, T *FC_RESTRICT dst) {                                                  \
        const fc_im2col_src *s = (const fc_im2col_src *)src;                                                      \
        const fc_conv2d_desc *d = s->d;                                                                           \
        const T *x = (const T *)s->x;                                                                             \
        int64_t khw = d->kh * d->kw, plane = d->h * d->w, lo[FC_MAX_KW], hi[FC_MAX_KW];                           \
        fc_pixel_run runs[FC_MAX_KC_PACK];                                                                        \
        /* one chunk of the panel's column-matrix rows, each contiguous over the chunk's pixels (<= 32 KiB) */    \
        T rowbuf[FC_MAX_NR_PACK * FC_MAX_KC_PACK] __attribute__((aligned(64)));                                   \
        valid_ranges(d, lo, hi);                                                                                  \
        for (int64_t p0 = 0; p0 < kc; p0 += FC_MAX_KC_PACK) { /* rows (pixels) in chunks the run table holds */  \
            int64_t pc = kc - p0 < FC_MAX_KC_PACK ? kc - p0 : FC_MAX_KC_PACK;                                     \
            int64_t nruns = pixel_runs(s, k0 + p0, pc, runs, FC_MAX_KC_PACK);                                     \
            for (int64_t jp = 0; jp < nc; jp += nr) {                                                             \
                int64_t wd = nc - jp < nr ? nc - jp : nr, wpad = (wd + vl - 1) / vl * vl;                          \
                int64_t r0 = j0 + jp, ci = r0 / khw, ki = (r0 % khw) / d->kw, kj = r0 % d->kw;                    \
                for (int64_t j = 0; j < wd; j++) {                                                                \
                    int64_t l, h;                                                                                 \
                    tap_range(d, lo, hi, kj, &l, &h);                                                             \
                    PFX##copy_runs(x + ci * plane, d, ki, kj, l, h, runs, nruns, rowbuf + j * pc, 1);             \
                    next_tap(d, &ci, &ki, &kj);                                                                   \
                }                                                                                                 \
                memset(rowbuf + wd * pc, 0, (size_t)((wpad - wd) * pc) * sizeof(T));                              \
                fc_##PFX##transpose(rowbuf, wpad, pc, pc, dst + jp * kc + p0 * wpad, wpad);                           \
            }                                                                                                     \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    void fc_##PFX##col2im_add(const T *cols, int64_t p0, int64_t np, int64_t c0, int64_t c1, T *dx,               \
                              int64_t img_stride, const fc_conv2d_desc *d) {                                      \
        int64_t plane = d->h * d->w, pimg = d->oh * d->ow;                                                        \
        for (int64_t ci = c0; ci < c1; ci++)                                                                      \
            for (int64_t ki = 0; ki < d->kh; ki++)                                                                \
                for (int64_t kj = 0; kj < d->kw; kj++) {                                                          \
                    const T *src = cols + ((ci * d->kh + ki) * d->kw + kj) * np;                                  \
                    int64_t off = kj * d->dw - d->pw, lo, hi;                                                     \
                    valid_ox(off, d->sw, d->w, d->ow, &lo, &hi);                                                  \
                    int64_t img = p0 / pimg, q0 = p0 % pimg;                                                      \
                    int64_t oy = q0 / d->ow, ox = q0 % d->ow;                                                     \
                    for (int64_t i = 0; i < np;) {                                                                \
                        int64_t run = d->ow - ox < np - i ? d->ow - ox : np - i;                                  \
                        int64_t iy = oy * d->sh - d->ph + ki * d->dh;                                             \
                        if (iy >= 0 && iy < d->h) {                                                               \
                            T *row = dx + img * img_stride + ci * plane + iy * d->w + off;                        \
                            const T *sp = src + i - ox;                                                           \
                            int64_t qs = ox > lo ? ox : lo, qe = ox + run < hi ? ox + run : hi;                   \
                            if (d->sw == 1) {                                                                     \
                                _Pragma("omp simd") for (int64_t q = qs; q < qe; q++) row[q] += sp[q];            \
                            } else {                                                                              \
                                for (int64_t q = qs; q < qe; q++) row[q * d->sw] += sp[q];                        \
                            }                                                                                     \
                        }                                                                                         \
                        i += run;                                                                                 \
                        ox = 0;                                                                                   \
                        if (++oy == d->oh) {                                                                      \
                            oy = 0;                                                                               \
                            img++;                                                                                \
                        }                                                                                         \
                    }                                                                                             \
                }                                                                                                 \
    }

FC_DEFINE_IM2COL(float, s)
FC_DEFINE_IM2COL(double, d)
