/* Values-only max pooling (inference), written once with vector macros and instantiated per ISA (the AVX2 and
 * AVX-512 files, and gemm_ref.c with GNU C 16-byte vectors). Needs
 *   T, VEC, VL          element type, vector type, lanes (VL divides FC_POOL_LANES)
 *   VLOADU(p) VSTOREU(p, v) VSET1(s)
 *   VMAXN(m, v)         the running maximum m updated by a later element v of the window:
 *                       (v > m) | (v != v) ? v : m lane by lane, so a NaN wins and a later NaN wins over an earlier
 *                       one, and ties keep m (the earlier element)
 *   VEVEN(a, b) VODD(a, b)  the even / odd lanes of the 2 VL values a, b (a first)
 *   VLOADX(p, lead, n)  lanes [lead, lead + n) from p[0], ..., p[n - 1] (nothing else read), the others -inf;
 *                       n >= 1, lead + n <= VL
 *   VSTOREN(p, v, n)    store the first n < VL lanes
 *   POOL_NAME           the kernel's name
 *
 * Separable: the maximum over a kh x kw window is the maximum over its kh rows of the maxima over its kw columns.
 * The horizontal maxima of each input row in reach, at the output stride, fill one row of a ring of kh rows; each
 * output row is then the vertical maximum of its in-range ring rows. kw - 1 + kh - 1 max operations per output
 * instead of kh kw - 1, and every input row is read from memory once whatever the vertical stride.
 * Nothing is staged: the taps are loaded straight from the input row, the vectors that reach past either end of it
 * (the padding, a ceil_mode window hanging past the edge, the lanes past Wo) by a load of only the lanes inside
 * with -inf in the others; rows outside the input are simply not taken. (A -inf padded copy of each row, read back
 * by shifted loads, was 2x slower on small planes: loads that straddle the copy's just-written stores cannot be
 * forwarded and wait for the stores to retire, once per row.)
 *
 * Taking the rows in order and, within a row, the columns in order visits the window's elements in an order that
 * agrees with the row-major one on what matters to the values: the first of tied values and the last NaN of the
 * window in row-major order are the ones kept (the first row holding the maximum, then its first column holding it;
 * the last row holding a NaN, then its last NaN), so even the sign of a zero and the payload of a NaN are those of
 * max_pool2d's argmax path.
 *
 * Horizontal strides: 1 (taps are shifted loads), 2 (two loads per pair of taps, split into their even and odd
 * lanes), any other in scalar code. Ring rows hold whole vectors (ldh = Wo rounded up to FC_POOL_LANES; the
 * horizontal pass fills them up to nv = Wo rounded up to VL, the columns past Wo with whatever the loads gave), so
 * the vertical pass has no remainder loop, only a partial store at the end of each output row. */

#include <math.h>

#include "fastconv/pool.h"

#define PT_CAT_(a, b) a##b
#define PT_CAT(a, b) PT_CAT_(a, b)
#define PT_HELPER(x) PT_CAT(POOL_NAME, PT_CAT(_, x))
#define PT_INLINE static inline __attribute__((always_inline))

/* The vector xr[e], ..., xr[e + VL - 1] of an input row of W values, -inf where the index is outside [0, W). */
PT_INLINE VEC PT_HELPER(load)(const T *FC_RESTRICT xr, int64_t W, int64_t e, VEC ninf) {
    if (e >= 0 && e + VL <= W) return VLOADU(xr + e);
    const int64_t lead = e < 0 ? -e : 0, start = e < 0 ? 0 : e;
    int64_t n = W - start;
    if (n > VL - lead) n = VL - lead;
    if (n <= 0) return ninf;
    return VLOADX(xr + start, lead, n);
}

/* out[o] = max_j<kw xr[o - pw + j] for o < n (n a multiple of VL). */
PT_INLINE void PT_HELPER(row_s1)(const T *FC_RESTRICT xr, int64_t W, int64_t pw, T *FC_RESTRICT out, int64_t n,
                                 int64_t kw, VEC ninf) {
    for (int64_t o = 0; o < n; o += VL) {
        const int64_t e = o - pw;
        VEC m = PT_HELPER(load)(xr, W, e, ninf);
        for (int64_t j = 1; j < kw; j++) m = VMAXN(m, PT_HELPER(load)(xr, W, e + j, ninf));
        VSTOREU(out + o, m);
    }
}

/* out[o] = max_j<kw xr[2 o - pw + j] for o < n (n a multiple of VL): taps j and j + 1 are the even and odd lanes
 * of the same two loads. */
PT_INLINE void PT_HELPER(row_s2)(const T *FC_RESTRICT xr, int64_t W, int64_t pw, T *FC_RESTRICT out, int64_t n,
                                 int64_t kw, VEC ninf) {
    for (int64_t o = 0; o < n; o += VL) {
        const int64_t e = 2 * o - pw;
        VEC a = PT_HELPER(load)(xr, W, e, ninf), b = PT_HELPER(load)(xr, W, e + VL, ninf);
        VEC m = VEVEN(a, b);
        if (kw > 1) m = VMAXN(m, VODD(a, b));
        for (int64_t j = 2; j < kw; j += 2) {
            a = PT_HELPER(load)(xr, W, e + j, ninf);
            b = PT_HELPER(load)(xr, W, e + j + VL, ninf);
            m = VMAXN(m, VEVEN(a, b));
            if (j + 1 < kw) m = VMAXN(m, VODD(a, b));
        }
        VSTOREU(out + o, m);
    }
}

/* Any stride, one output at a time over the window clipped to the row (never empty: every window overlaps the
 * input). */
static void PT_HELPER(row_any)(const T *FC_RESTRICT xr, int64_t W, int64_t pw, T *FC_RESTRICT out, int64_t n,
                               int64_t kw, int64_t sw) {
    for (int64_t o = 0; o < n; o++) {
        const int64_t ws = o * sw - pw;
        const int64_t w0 = ws > 0 ? ws : 0, w1 = ws + kw < W ? ws + kw : W;
        T m = xr[w0];
        for (int64_t w = w0 + 1; w < w1; w++) {
            const T v = xr[w];
            m = (v > m) | (v != v) ? v : m;
        }
        out[o] = m;
    }
}

/* Planes [0, planes) with the horizontal kernel width and stride KW, SW, compile-time constants at the calls of
 * the common kernels. */
PT_INLINE void PT_HELPER(planes)(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y, const fc_pool2d_desc *d,
                                 T *FC_RESTRICT ring, const int64_t KW, const int64_t SW) {
    const int64_t H = d->in_h, W = d->in_w, Ho = d->out_h, Wo = d->out_w;
    const int64_t kh = d->kernel_h, sh = d->stride_h, ph = d->pad_h, pw = d->pad_w;
    int64_t ldh = 0, total = 0;
    fc_max_pool2d_values_layout(d, &ldh, &total); /* the caller checked it for overflow */
    const int64_t nv = (Wo + VL - 1) / VL * VL;   /* the ring columns the vertical pass reads */
    const VEC ninf = VSET1(-INFINITY);
    if (SW > 2) /* the scalar row path writes Wo values: the ring's columns up to nv must hold something defined */
        for (int64_t i = 0; i < total; i++) ring[i] = -INFINITY;

    for (int64_t pl = 0; pl < planes; pl++) {
        const T *xp = x + pl * H * W;
        T *yp = y + pl * Ho * Wo;
        /* Input rows below `next` have their horizontal maxima in the ring, row `next` goes to slot `slot`: rows
         * take the slots in turn, so a window's kh or fewer consecutive rows are in distinct slots, in order from
         * its first row's slot on (tracked without a division per row). */
        int64_t next = 0, slot = 0;
        for (int64_t oy = 0; oy < Ho; oy++) {
            const int64_t hs = oy * sh - ph;
            const int64_t h0 = hs > 0 ? hs : 0, h1 = hs + kh < H ? hs + kh : H;
            if (next < h0) { /* stride above the kernel: the rows between windows are never read */
                slot = (slot + (h0 - next)) % kh;
                next = h0;
            }
            for (; next < h1; next++) {
                const T *xr = xp + next * W;
                T *out = ring + slot * ldh;
                if (SW == 1)
                    PT_HELPER(row_s1)(xr, W, pw, out, nv, KW, ninf);
                else if (SW == 2)
                    PT_HELPER(row_s2)(xr, W, pw, out, nv, KW, ninf);
                else
                    PT_HELPER(row_any)(xr, W, pw, out, Wo, KW, SW);
                slot = slot + 1 == kh ? 0 : slot + 1;
            }
            int64_t first = slot - (h1 - h0); /* the window's h1 - h0 <= kh rows end just before `slot` */
            if (first < 0) first += kh;
            T *yr = yp + oy * Wo;
            for (int64_t o = 0; o < Wo; o += VL) {
                VEC m = VLOADU(ring + first * ldh + o);
                int64_t s = first;
                for (int64_t h = h0 + 1; h < h1; h++) {
                    s = s + 1 == kh ? 0 : s + 1;
                    m = VMAXN(m, VLOADU(ring + s * ldh + o));
                }
                if (o + VL <= Wo)
                    VSTOREU(yr + o, m);
                else
                    VSTOREN(yr + o, m, Wo - o);
            }
        }
    }
}

void POOL_NAME(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y, const fc_pool2d_desc *d,
               T *FC_RESTRICT work) {
    const int64_t kw = d->kernel_w, sw = d->stride_w;
    if (kw == 3 && sw == 1)
        PT_HELPER(planes)(planes, x, y, d, work, 3, 1);
    else if (kw == 3 && sw == 2)
        PT_HELPER(planes)(planes, x, y, d, work, 3, 2);
    else if (kw == 2 && sw == 2)
        PT_HELPER(planes)(planes, x, y, d, work, 2, 2);
    else if (sw == 1)
        PT_HELPER(planes)(planes, x, y, d, work, kw, 1);
    else if (sw == 2)
        PT_HELPER(planes)(planes, x, y, d, work, kw, 2);
    else
        PT_HELPER(planes)(planes, x, y, d, work, kw, sw);
}

#undef PT_INLINE
#undef PT_HELPER
#undef PT_CAT
#undef PT_CAT_
