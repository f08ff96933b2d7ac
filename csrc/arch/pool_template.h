/* Values-only max pooling (inference), written once with vector macros and instantiated per ISA (the AVX2 and
 * AVX-512 files, and gemm_ref.c with GNU C 16-byte vectors). Needs
 *   T, VEC, VL          element type, vector type, lanes (VL divides FC_POOL_LANES)
 *   VLOADU(p) VSTOREU(p, v) VSET1(s)
 *   VMAXN(m, v)         the running maximum m updated by a later element v of the window:
 *                       (v > m) | (v != v) ? v : m lane by lane, so a NaN wins and a later NaN wins over an earlier
 *                       one, and ties keep m (the earlier element)
 *   VEVEN(a, b) VODD(a, b)  the even / odd lanes of the 2 VL values a, b (a first)
 *   VLOADN(p, n) VSTOREN(p, v, n)  the first n < VL lanes (a load fills the others with anything finite or not;
 *                       they never reach the output)
 *   POOL_NAME           the kernel's name
 *
 * Separable: the maximum over a kh x kw window is the maximum over its kh rows of the maxima over its kw columns.
 * Each input row in reach is copied once into a row buffer with -inf on both sides (the left padding, and the right
 * padding or ceil_mode overhang), from which the horizontal maxima at the output stride fill one row of a ring of kh
 * rows; each output row is then the vertical maximum of its in-range ring rows (rows outside the input are simply
 * not taken: no vertical padding is staged). kw - 1 + kh - 1 max operations per output instead of kh kw - 1, and
 * every input row is read once from memory whatever the vertical stride.
 *
 * Taking the rows in order and, within a row, the columns in order visits the window's elements in an order that
 * agrees with the row-major one on what matters to the values: the first of tied values and the last NaN of the
 * window in row-major order are the ones kept (the first row holding the maximum, then its first column holding it;
 * the last row holding a NaN, then its last NaN), so even the sign of a zero and the payload of a NaN are those of
 * max_pool2d's argmax path.
 *
 * Horizontal strides: 1 (taps are shifted loads), 2 (two loads per pair of taps, split into their even and odd
 * lanes), any other in scalar code. Ring rows hold whole vectors (ldh = Wo rounded up to FC_POOL_LANES), so the
 * vertical pass has no remainder loop, only a partial store at the end of each output row. */

#include <math.h>

#include "fastconv/pool.h"

#define PT_CAT_(a, b) a##b
#define PT_CAT(a, b) PT_CAT_(a, b)
#define PT_HELPER(x) PT_CAT(POOL_NAME, PT_CAT(_, x))
#define PT_INLINE static inline __attribute__((always_inline))

/* out[o] = max_j<kw buf[o + j] for o < n (n a multiple of VL). */
PT_INLINE void PT_HELPER(row_s1)(const T *FC_RESTRICT buf, T *FC_RESTRICT out, int64_t n, int64_t kw) {
    for (int64_t o = 0; o < n; o += VL) {
        VEC m = VLOADU(buf + o);
        for (int64_t j = 1; j < kw; j++) m = VMAXN(m, VLOADU(buf + o + j));
        VSTOREU(out + o, m);
    }
}

/* out[o] = max_j<kw buf[2 o + j] for o < n (n a multiple of VL): taps j and j + 1 are the even and odd lanes of
 * the same two loads. */
PT_INLINE void PT_HELPER(row_s2)(const T *FC_RESTRICT buf, T *FC_RESTRICT out, int64_t n, int64_t kw) {
    for (int64_t o = 0; o < n; o += VL) {
        const T *p = buf + 2 * o;
        VEC a = VLOADU(p), b = VLOADU(p + VL);
        VEC m = VEVEN(a, b);
        if (kw > 1) m = VMAXN(m, VODD(a, b));
        for (int64_t j = 2; j < kw; j += 2) {
            a = VLOADU(p + j);
            b = VLOADU(p + j + VL);
            m = VMAXN(m, VEVEN(a, b));
            if (j + 1 < kw) m = VMAXN(m, VODD(a, b));
        }
        VSTOREU(out + o, m);
    }
}

/* Any stride, one output at a time. */
static void PT_HELPER(row_any)(const T *FC_RESTRICT buf, T *FC_RESTRICT out, int64_t n, int64_t kw, int64_t sw) {
    for (int64_t o = 0; o < n; o++) {
        const T *p = buf + o * sw;
        T m = p[0];
        for (int64_t j = 1; j < kw; j++) {
            const T v = p[j];
            m = (v > m) | (v != v) ? v : m;
        }
        out[o] = m;
    }
}

/* The horizontal maxima of the padded row buf into out: ldh values at stride 1 and 2 (those past Wo come from the
 * -inf tail of buf), Wo otherwise (the rest of the ring row keeps its -inf). The kernels of CNNs get their own
 * copies with kw known. */
static void PT_HELPER(row)(const T *FC_RESTRICT buf, T *FC_RESTRICT out, int64_t wo, int64_t ldh, int64_t kw,
                           int64_t sw) {
    if (sw == 1) {
        if (kw == 3)
            PT_HELPER(row_s1)(buf, out, ldh, 3);
        else if (kw == 2)
            PT_HELPER(row_s1)(buf, out, ldh, 2);
        else
            PT_HELPER(row_s1)(buf, out, ldh, kw);
    } else if (sw == 2) {
        if (kw == 3)
            PT_HELPER(row_s2)(buf, out, ldh, 3);
        else if (kw == 2)
            PT_HELPER(row_s2)(buf, out, ldh, 2);
        else
            PT_HELPER(row_s2)(buf, out, ldh, kw);
    } else {
        PT_HELPER(row_any)(buf, out, wo, kw, sw);
    }
}

/* dst[c] = src[c] for c < n, by vectors. */
PT_INLINE void PT_HELPER(copy)(T *FC_RESTRICT dst, const T *FC_RESTRICT src, int64_t n) {
    int64_t c = 0;
    for (; c + VL <= n; c += VL) VSTOREU(dst + c, VLOADU(src + c));
    if (c < n) VSTOREN(dst + c, VLOADN(src + c, n - c), n - c);
}

void POOL_NAME(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y, const fc_pool2d_desc *d,
               T *FC_RESTRICT work) {
    const int64_t H = d->in_h, W = d->in_w, Ho = d->out_h, Wo = d->out_w;
    const int64_t kh = d->kernel_h, kw = d->kernel_w, sh = d->stride_h, sw = d->stride_w;
    const int64_t ph = d->pad_h, pw = d->pad_w;
    int64_t ldh = 0, rb = 0, total = 0;
    fc_max_pool2d_values_layout(d, &ldh, &rb, &total); /* the caller checked it for overflow */
    T *ring = work, *buf = work + kh * ldh;
    /* buf's columns [pw, pw + ncopy) take each input row; the rest, like the ring's columns past Wo that the
     * scalar row path leaves alone, stay -inf. Columns past the last window's reach are never read for an output
     * that is kept. */
    const int64_t wp = (Wo - 1) * sw + kw, ncopy = W < wp - pw ? W : wp - pw;
    const VEC ninf = VSET1(-INFINITY);
    for (int64_t i = 0; i + VL <= total; i += VL) VSTOREU(work + i, ninf);
    for (int64_t i = total / VL * VL; i < total; i++) work[i] = -INFINITY;

    for (int64_t pl = 0; pl < planes; pl++) {
        const T *xp = x + pl * H * W;
        T *yp = y + pl * Ho * Wo;
        int64_t next = 0; /* input rows below `next` have had their horizontal maxima computed */
        for (int64_t oy = 0; oy < Ho; oy++) {
            const int64_t hs = oy * sh - ph;
            const int64_t h0 = hs > 0 ? hs : 0, h1 = hs + kh < H ? hs + kh : H;
            /* Rows [h0, h1) are in the ring at h % kh: the rows computed so far are below h1 <= h0 + kh, so none
             * of them has overwritten another of the window. */
            for (int64_t h = next > h0 ? next : h0; h < h1; h++) {
                PT_HELPER(copy)(buf + pw, xp + h * W, ncopy);
                PT_HELPER(row)(buf, ring + (h % kh) * ldh, Wo, ldh, kw, sw);
            }
            next = h1;
            const int64_t first = h0 % kh;
            T *yr = yp + oy * Wo;
            for (int64_t o = 0; o < Wo; o += VL) {
                VEC m = VLOADU(ring + first * ldh + o);
                int64_t slot = first;
                for (int64_t h = h0 + 1; h < h1; h++) {
                    slot = slot + 1 == kh ? 0 : slot + 1;
                    m = VMAXN(m, VLOADU(ring + slot * ldh + o));
                }
                if (o + VL <= Wo)
                    VSTOREU(yr + o, m);
                else
                    VSTOREN(yr + o, m, Wo - o);
            }
        }
    }
}

#undef PT_INLINE
#undef PT_HELPER
#undef PT_CAT
#undef PT_CAT_
