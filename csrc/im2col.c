/* im2col / col2im for a range of output pixels, and the implicit-im2col GEMM packing built on them. */
#include <string.h>

#include "fastconv/im2col.h"

/* Range [lo, hi) of output columns ox whose input column ox*sw + off lies inside [0, w). */
static inline void valid_ox(int64_t off, int64_t sw, int64_t w, int64_t ow, int64_t *lo, int64_t *hi) {
    int64_t l = off >= 0 ? 0 : (-off + sw - 1) / sw;
    int64_t h = w - 1 - off < 0 ? 0 : (w - 1 - off) / sw + 1;
    if (h > ow) h = ow;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

#define FC_DEFINE_IM2COL(T, PFX)                                                                                 \
    /* dst[i * ds] = column-matrix row (ki, kj) of channel plane xc at pixels p0 .. p0+cnt-1 */                   \
    static void PFX##im2col_row(const T *xc, const fc_conv2d_desc *d, int64_t ki, int64_t kj, int64_t p0,         \
                                int64_t cnt, T *FC_RESTRICT dst, int64_t ds) {                                    \
        int64_t oy = p0 / d->ow, ox = p0 % d->ow;                                                                 \
        int64_t off = kj * d->dw - d->pw, lo, hi;                                                                 \
        if (ds == 1 && d->sw == 1 && d->sh == 1 && off == 0 && d->ow == d->w) {                                    \
            /* output rows map onto whole input rows (1x1 kernels, unpadded columns): one run across rows */     \
            int64_t dy_ = ki * d->dh - d->ph, iy0 = oy + dy_, iy1 = (p0 + cnt - 1) / d->ow + dy_;                 \
            if (iy0 >= 0 && iy1 < d->h) {                                                                         \
                memcpy(dst, xc + p0 + dy_ * d->w, (size_t)cnt * sizeof(T));                                       \
                return;                                                                                           \
            }                                                                                                     \
        }                                                                                                         \
        valid_ox(off, d->sw, d->w, d->ow, &lo, &hi);                                                              \
        for (int64_t i = 0; i < cnt;) {                                                                           \
            int64_t run = d->ow - ox < cnt - i ? d->ow - ox : cnt - i;                                            \
            int64_t iy = oy * d->sh - d->ph + ki * d->dh;                                                         \
            T *o = dst + i * ds;                                                                                  \
            int64_t a = ox, b = ox + run;                                                                         \
            if (iy < 0 || iy >= d->h) {                                                                           \
                for (int64_t q = 0; q < run; q++) o[q * ds] = 0;                                                  \
            } else {                                                                                              \
                const T *row = xc + iy * d->w + off;                                                              \
                int64_t qs = a > lo ? a : lo, qe = b < hi ? b : hi;                                               \
                for (int64_t q = a; q < (b < lo ? b : lo); q++) o[(q - a) * ds] = 0;                              \
                if (qs < qe) {                                                                                    \
                    if (ds == 1 && d->sw == 1)                                                                    \
                        memcpy(o + (qs - a), row + qs, (size_t)(qe - qs) * sizeof(T));                            \
                    else                                                                                          \
                        for (int64_t q = qs; q < qe; q++) o[(q - a) * ds] = row[q * d->sw];                       \
                }                                                                                                 \
                for (int64_t q = a > hi ? a : hi; q < b; q++) o[(q - a) * ds] = 0;                                \
            }                                                                                                     \
            i += run;                                                                                             \
            ox = 0;                                                                                               \
            oy++;                                                                                                 \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    /* the same for columns j .. j+cnt-1 running over images */                                                   \
    static void PFX##im2col_cols(const fc_im2col_src *s, int64_t ci, int64_t ki, int64_t kj, int64_t j,           \
                                 int64_t cnt, T *FC_RESTRICT dst, int64_t ds) {                                   \
        const fc_conv2d_desc *d = s->d;                                                                           \
        int64_t p = d->oh * d->ow;                                                                                \
        while (cnt > 0) {                                                                                         \
            int64_t img = j / p, q = j % p, run = p - q < cnt ? p - q : cnt;                                      \
            PFX##im2col_row((const T *)s->x + img * s->img_stride + ci * d->h * d->w, d, ki, kj, q, run, dst, ds); \
            dst += run * ds;                                                                                      \
            j += run;                                                                                             \
            cnt -= run;                                                                                           \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    void fc_##PFX##pack_b_im2col(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl, \
                                 T *FC_RESTRICT dst) {                                                            \
        const fc_im2col_src *s = (const fc_im2col_src *)src;                                                      \
        const fc_conv2d_desc *d = s->d;                                                                           \
        int64_t khw = d->kh * d->kw;                                                                              \
        for (int64_t jp = 0; jp < nc; jp += nr) {                                                                 \
            int64_t wd = nc - jp < nr ? nc - jp : nr, wpad = (wd + vl - 1) / vl * vl;                              \
            T *pd = dst + jp * kc;                                                                                \
            for (int64_t p = 0; p < kc; p++) {                                                                    \
                int64_t r = k0 + p, ci = r / khw, ki = (r % khw) / d->kw, kj = r % d->kw;                          \
                PFX##im2col_cols(s, ci, ki, kj, j0 + jp, wd, pd + p * wpad, 1);                                   \
                for (int64_t j = wd; j < wpad; j++) pd[p * wpad + j] = 0;                                         \
            }                                                                                                     \
        }                                                                                                         \
    }                                                                                                             \
                                                                                                                  \
    void fc_##PFX##pack_b_im2col_t(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr,       \
                                   int vl, T *FC_RESTRICT dst) {                                                  \
        const fc_im2col_src *s = (const fc_im2col_src *)src;                                                     \
        const fc_conv2d_desc *d = s->d;                                                                           \
        int64_t khw = d->kh * d->kw;                                                                              \
        for (int64_t jp = 0; jp < nc; jp += nr) {                                                                 \
            int64_t wd = nc - jp < nr ? nc - jp : nr, wpad = (wd + vl - 1) / vl * vl;                              \
            T *pd = dst + jp * kc;                                                                                \
            for (int64_t j = 0; j < wd; j++) {                                                                    \
                int64_t r = j0 + jp + j, ci = r / khw, ki = (r % khw) / d->kw, kj = r % d->kw;                     \
                PFX##im2col_cols(s, ci, ki, kj, k0, kc, pd + j, wpad);                                            \
            }                                                                                                     \
            for (int64_t p = 0; p < kc; p++)                                                                      \
                for (int64_t j = wd; j < wpad; j++) pd[p * wpad + j] = 0;                                         \
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
