/* Values-only max pooling (inference), and at the end of the file the same scheme with the argmax (training),
 * written once with vector macros and instantiated per ISA (the AVX2 and AVX-512 files, and gemm_ref.c with GNU C
 * 16-byte vectors). Needs
 *   T, VEC, VL          element type, vector type, lanes (VL divides FC_POOL_LANES)
 *   VLOADU(p) VSTOREU(p, v) VSET1(s)
 *   VMAXN(m, v)         the running maximum m updated by a later element v of the window:
 *                       (v > m) | (v != v) ? v : m lane by lane, so a NaN wins and a later NaN wins over an earlier
 *                       one, and ties keep m (the earlier element)
 *   VEVEN(a, b) VODD(a, b)  the even / odd lanes of the 2 VL values a, b (a first)
 *   VMASK_T, VMASK(lo, hi)  a set of lanes: those in [lo, hi) (0 <= lo, hi <= VL; empty when hi <= lo)
 *   VLOADM(xr, e, k)    lanes i in k from xr[e + i], the others -inf, reading only the lanes in k (the others may
 *                       lie outside the row and outside the array: AVX masked loads suppress their faults)
 *   VSTOREN(p, v, n)    store the first n < VL lanes
 *   POOL_NAME           the kernel's name
 *
 * Separable: the maximum over a kh x kw window is the maximum over its kh rows of the maxima over its kw columns.
 * The horizontal maxima of each input row in reach, at the output stride, fill one row of a ring of kh rows; each
 * output row is then the vertical maximum of its in-range ring rows. kw - 1 + kh - 1 max operations per output
 * instead of kh kw - 1, and every input row is read from memory once whatever the vertical stride.
 * Nothing is staged: the taps are loaded straight from the input row, the vectors that reach past either end of it
 * (the padding, a ceil_mode window hanging past the edge, the lanes past Wo) by masked loads of only the lanes
 * inside with -inf in the others; rows outside the input are simply not taken. (A -inf padded copy of each row,
 * read back by shifted loads, was 2x slower on small planes: loads that straddle the copy's just-written stores
 * cannot be forwarded and wait for the stores to retire, once per row.) The horizontal pass runs on batches of
 * FC_POOL_BATCH rows with the column vectors outermost, so that the edge masks are worked out once per batch: on
 * GoogLeNet's 14x14 and 7x7 planes every vector is an edge vector.
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
#include <stdint.h>

#include "fastconv/pool.h"

#define PT_CAT_(a, b) a##b
#define PT_CAT(a, b) PT_CAT_(a, b)
#define PT_HELPER(x) PT_CAT(POOL_NAME, PT_CAT(_, x))
#define PT_INLINE static inline __attribute__((always_inline))

/* Pointer arithmetic in integers: the masked loads below may start before the row (the lanes there are masked
 * off and never accessed), an address C pointer arithmetic may not form. */
#define PT_ADDR(p, e) ((const T *)((uintptr_t)(p) + (uintptr_t)((e) * (int64_t)sizeof(T))))

/* Which lanes of the vector xr[e], ..., xr[e + VL - 1] lie inside a row of W values. */
PT_INLINE VMASK_T PT_HELPER(lanes)(int64_t e, int64_t W) {
    const int64_t lo = e >= 0 ? 0 : -e < VL ? -e : VL, hi = W - e < 0 ? 0 : W - e < VL ? W - e : VL;
    return VMASK(lo, hi);
}
#define PT_TAP(xr, e, W) VLOADM(xr, e, PT_HELPER(lanes)(e, W))

/* max_j<KW xr[o SW - pw + j] for the VL outputs o of a vector whose first tap starts at xr[e]: stride 1 takes
 * shifted loads, stride 2 takes taps j and j + 1 as the even and odd lanes of the same two loads. `edge`: some
 * loads reach past an end of the row (masked loads, -inf in the lanes outside); else plain loads. */
PT_INLINE VEC PT_HELPER(hmax)(const T *FC_RESTRICT xr, int64_t e, int64_t W, const int64_t KW, const int64_t SW,
                              const int edge) {
#define PT_LOAD(f) (edge ? PT_TAP(xr, f, W) : VLOADU(xr + (f)))
    VEC m;
    if (SW == 1) {
        m = PT_LOAD(e);
        for (int64_t j = 1; j < KW; j++) m = VMAXN(m, PT_LOAD(e + j));
    } else {
        VEC a = PT_LOAD(e), b = PT_LOAD(e + VL);
        m = VEVEN(a, b);
        if (KW > 1) m = VMAXN(m, VODD(a, b));
        for (int64_t j = 2; j < KW; j += 2) {
            a = PT_LOAD(e + j);
            b = PT_LOAD(e + j + VL);
            m = VMAXN(m, VEVEN(a, b));
            if (j + 1 < KW) m = VMAXN(m, VODD(a, b));
        }
    }
    return m;
#undef PT_LOAD
}

/* The horizontal maxima (stride 1 or 2) of the input rows first, ..., first + nr - 1 of plane xp into ring slots
 * slot, slot + 1, ... (wrapping at R), nv columns each. Column vectors outermost: which lanes of each tap lie
 * inside the row is the same for every row, so the masks are worked out once per vector, not once per row. */
PT_INLINE void PT_HELPER(hrows)(const T *FC_RESTRICT xp, int64_t W, int64_t pw, int64_t first, int64_t nr,
                                T *FC_RESTRICT ring, int64_t ldh, int64_t R, int64_t slot, int64_t nv,
                                const int64_t KW, const int64_t SW) {
    for (int64_t o = 0; o < nv; o += VL) {
        const int64_t e = o * SW - pw; /* where the first tap starts; the loads end before `reach` */
        const int64_t reach = e + (SW == 1 ? KW - 1 + VL : ((KW - 1) & ~(int64_t)1) + 2 * VL);
        const T *xr = xp + first * W;
        T *out = ring + slot * ldh + o;
        int64_t s = slot;
        if (e >= 0 && reach <= W) {
            for (int64_t r = 0; r < nr; r++, xr += W) {
                VSTOREU(out, PT_HELPER(hmax)(xr, e, W, KW, SW, 0));
                out = ++s == R ? (s = 0, ring + o) : out + ldh;
            }
        } else {
            for (int64_t r = 0; r < nr; r++, xr += W) {
                VSTOREU(out, PT_HELPER(hmax)(xr, e, W, KW, SW, 1));
                out = ++s == R ? (s = 0, ring + o) : out + ldh;
            }
        }
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

/* yr[o] = the maximum of ring rows s0, s0 + 1, ... (nrow of them, modulo R) at column o, for o < Wo. The rows of
 * a full 3- or 2-row window get their own loops. */
PT_INLINE void PT_HELPER(vstore)(T *FC_RESTRICT yr, int64_t o, int64_t Wo, VEC m) {
    if (o + VL <= Wo)
        VSTOREU(yr + o, m);
    else
        VSTOREN(yr + o, m, Wo - o);
}

PT_INLINE void PT_HELPER(vmax)(const T *FC_RESTRICT ring, int64_t ldh, int64_t R, int64_t s0, int64_t nrow,
                               T *FC_RESTRICT yr, int64_t Wo) {
    const T *r0 = ring + s0 * ldh;
    const int64_t s1 = s0 + 1 == R ? 0 : s0 + 1, s2 = s1 + 1 == R ? 0 : s1 + 1;
    const T *r1 = ring + s1 * ldh, *r2 = ring + s2 * ldh;
    if (nrow == 3) {
        for (int64_t o = 0; o < Wo; o += VL)
            PT_HELPER(vstore)(yr, o, Wo, VMAXN(VMAXN(VLOADU(r0 + o), VLOADU(r1 + o)), VLOADU(r2 + o)));
    } else if (nrow == 2) {
        for (int64_t o = 0; o < Wo; o += VL) PT_HELPER(vstore)(yr, o, Wo, VMAXN(VLOADU(r0 + o), VLOADU(r1 + o)));
    } else {
        for (int64_t o = 0; o < Wo; o += VL) {
            VEC m = VLOADU(r0 + o);
            for (int64_t h = 1, s = s0; h < nrow; h++) {
                s = s + 1 == R ? 0 : s + 1;
                m = VMAXN(m, VLOADU(ring + s * ldh + o));
            }
            PT_HELPER(vstore)(yr, o, Wo, m);
        }
    }
}

/* Planes [0, planes) with the horizontal kernel width and stride KW, SW, compile-time constants at the calls of
 * the common kernels. */
PT_INLINE void PT_HELPER(planes)(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y, const fc_pool2d_desc *d,
                                 T *FC_RESTRICT ring, const int64_t KW, const int64_t SW) {
    const int64_t H = d->in_h, W = d->in_w, Ho = d->out_h, Wo = d->out_w;
    const int64_t kh = d->kernel_h, sh = d->stride_h, ph = d->pad_h, pw = d->pad_w;
    int64_t ldh = 0, R = 0, total = 0;
    fc_max_pool2d_values_layout(d, &ldh, &R, &total); /* the caller checked it for overflow */
    const int64_t nv = (Wo + VL - 1) / VL * VL;       /* the ring columns the vertical pass reads */
    if (SW > 2) /* the scalar row path writes Wo values: the ring's columns up to nv must hold something defined */
        for (int64_t i = 0; i < total; i++) ring[i] = -INFINITY;

    for (int64_t pl = 0; pl < planes; pl++) {
        const T *xp = x + pl * H * W;
        T *yp = y + pl * Ho * Wo;
        /* Input rows below `next` have their horizontal maxima in the ring, row `next` goes to slot `slot`. Rows
         * take the slots in turn, FC_POOL_BATCH rows at a time, and only when the window needs one more: the rows
         * still needed then ([h0, next), at most kh - 1) and the batch fit in the ring's R = kh + FC_POOL_BATCH - 1
         * slots, so no needed row is overwritten, and a window's rows sit in consecutive slots (modulo R). */
        int64_t next = 0, slot = 0;
        for (int64_t oy = 0; oy < Ho; oy++) {
            const int64_t hs = oy * sh - ph;
            const int64_t h0 = hs > 0 ? hs : 0, h1 = hs + kh < H ? hs + kh : H;
            if (next < h0) next = h0; /* stride above the kernel: the rows between windows are never read */
            while (next < h1) {
                const int64_t nr = H - next < FC_POOL_BATCH ? H - next : FC_POOL_BATCH;
                if (SW <= 2)
                    PT_HELPER(hrows)(xp, W, pw, next, nr, ring, ldh, R, slot, nv, KW, SW);
                else
                    for (int64_t r = 0, s = slot; r < nr; r++, s = s + 1 == R ? 0 : s + 1)
                        PT_HELPER(row_any)(xp + (next + r) * W, W, pw, ring + s * ldh, Wo, KW, SW);
                next += nr;
                slot = (slot + nr) % R;
            }
            int64_t s0 = slot - (next - h0); /* next - h0 <= R */
            if (s0 < 0) s0 += R;
            PT_HELPER(vmax)(ring, ldh, R, s0, h1 - h0, yp + oy * Wo, Wo);
        }
    }
}

#ifdef VLOADK
/* Small planes (arches with lane bit masks: VLOADK(p, k) loads the lanes of bit mask k, -inf in the others, without
 * touching them; VSTOREK(p, v, k) stores the lanes of k). GoogLeNet's 3x3 pools on 7x7 and 14x14 planes left the
 * row kernel above with one edge vector per row and its bookkeeping per row (130 ns per 7x7 plane). Here a plane is
 * one flat run of H W values: S = the 3x3 maximum around every position, clipped to the plane (horizontal pass:
 * the left and right neighbours, masked off in the first and last column; vertical pass: the rows above and
 * below, masked off in the first and last row), in the row kernel's order (columns, then rows, each in order), so
 * ties and NaN resolve alike. A 3x3 window at stride 1 or 2 whose centre (o s - p + 1, both axes) lies inside the
 * plane is exactly its centre's clipped neighbourhood: y is S sampled at the centres (S itself when s = p = 1). */
#define PT_SMALL_MAX 1024 /* H W; also W <= 32 (stride 1) or 16 (stride 2) */
#define PT_SMALL_VECS ((PT_SMALL_MAX + VL - 1) / VL)

static int PT_HELPER(small_fits)(const fc_pool2d_desc *d) {
    const int64_t s = d->stride_h, p = d->pad_h;
    if (d->kernel_h != 3 || d->kernel_w != 3 || d->stride_w != s || s > 2 || d->pad_w != p || p > 1) return 0;
    /* wider rows: the row kernel does well (stride 2 on 27x27 and 28x28 planes: 0.8x here, S being 4x the output) */
    if (d->in_w > (s == 1 ? 32 : 16) || d->in_h * d->in_w > PT_SMALL_MAX) return 0;
    return (d->out_h - 1) * s - p + 1 <= d->in_h - 1 && (d->out_w - 1) * s - p + 1 <= d->in_w - 1;
}

static void PT_HELPER(small_planes)(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y,
                                    const fc_pool2d_desc *d) {
    const int64_t H = d->in_h, W = d->in_w, Ho = d->out_h, Wo = d->out_w, hw = H * W;
    const int64_t s = d->stride_h, c0 = 1 - d->pad_h, nvec = (hw + VL - 1) / VL;
    const int direct = s == 1 && c0 == 0; /* y is S */
    uint32_t in[PT_SMALL_VECS], left[PT_SMALL_VECS], right[PT_SMALL_VECS], up[PT_SMALL_VECS], down[PT_SMALL_VECS];
    for (int64_t v = 0; v < nvec; v++) {
        in[v] = left[v] = right[v] = up[v] = down[v] = 0;
        for (int64_t l = 0; l < VL && v * VL + l < hw; l++) {
            const int64_t i = v * VL + l, col = i % W, row = i / W;
            in[v] |= 1u << l;
            left[v] |= (uint32_t)(col > 0) << l;
            right[v] |= (uint32_t)(col < W - 1) << l;
            up[v] |= (uint32_t)(row > 0) << l;
            down[v] |= (uint32_t)(row < H - 1) << l;
        }
    }
    T hbuf[PT_SMALL_VECS * VL], sbuf[PT_SMALL_VECS * VL + 2 * VL + 2];
    for (int64_t v = nvec * VL; v < PT_SMALL_VECS * VL + 2 * VL + 2; v++) sbuf[v] = (T)0; /* read past S, unused */
    for (int64_t pl = 0; pl < planes; pl++) {
        const T *xp = x + pl * hw;
        T *yp = y + pl * Ho * Wo;
        for (int64_t v = 0; v < nvec; v++) {
            const int64_t e = v * VL;
            VEC m = VLOADK(PT_ADDR(xp, e - 1), left[v]);
            m = VMAXN(m, VLOADK(PT_ADDR(xp, e), in[v]));
            VSTOREU(hbuf + e, VMAXN(m, VLOADK(PT_ADDR(xp, e + 1), right[v])));
        }
        T *sp = direct ? yp : sbuf;
        for (int64_t v = 0; v < nvec; v++) {
            const int64_t e = v * VL;
            VEC m = VLOADK(PT_ADDR(hbuf, e - W), up[v]);
            m = VMAXN(m, VLOADK(hbuf + e, in[v]));
            m = VMAXN(m, VLOADK(PT_ADDR(hbuf, e + W), down[v]));
            if (direct)
                VSTOREK(sp + e, m, in[v]);
            else
                VSTOREU(sp + e, m);
        }
        if (direct) continue;
        for (int64_t oy = 0; oy < Ho; oy++) {
            const T *sr = sbuf + (oy * s + c0) * W + c0;
            T *yr = yp + oy * Wo;
            for (int64_t o = 0; o < Wo; o += VL) {
                VEC m = s == 1 ? VLOADU(sr + o) : VEVEN(VLOADU(sr + 2 * o), VLOADU(sr + 2 * o + VL));
                PT_HELPER(vstore)(yr, o, Wo, m);
            }
        }
    }
}
#endif

void POOL_NAME(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y, const fc_pool2d_desc *d,
               T *FC_RESTRICT work) {
    const int64_t kw = d->kernel_w, sw = d->stride_w;
#ifdef VLOADK
    if (PT_HELPER(small_fits)(d)) {
        PT_HELPER(small_planes)(planes, x, y, d);
        return;
    }
#endif
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

/* ---------------------------------------------------------------- with argmax (training)
 *
 * The same separable scheme carrying the index of each maximum, for the instantiations that also define
 *   POOL_ARGMAX_NAME    the kernel's name
 *   ITYPE, IVEC         an integer of T's width (int32 for float, int64 for double) and a vector of VL of them
 *   VTAKE_T, VTAKE(m, v)  the lanes where VMAXN(m, v) takes v: (v > m) | (v != v)
 *   VSEL(k, m, v) VSELI(k, a, b)  v (b) in the lanes of k, m (a) in the others, for values and for indices
 *   VSET1I(s) VADDI(a, b) VLOADUI(p) VSTOREUI(p, v) VIOTAI()  ({0, 1, ..., VL - 1})
 *   VSTOREL(p, v) VSTORELN(p, v, n)  the VL (the first n < VL) lanes of an IVEC widened to int64 at p
 * The horizontal pass keeps, per output column and input row h, the winner of the row's kw taps (strict > so the
 * first tie stays, and a NaN or a later NaN wins: VTAKE) and its flat index h W + w in a second ring of ITYPE; the
 * vertical pass takes the ring rows in order with the same rule and carries the flat index. As for the values
 * (header comment), the first maximum and the last NaN in row-major order are the ones kept, so y and argmax are
 * those of the window-by-window kernel (pool_kernels.inc's max_window) bit for bit. One more rule to keep: a
 * window of -inf points at its first element inside the input, never at the padding. The masked loads give -inf
 * in the padding, which no later -inf replaces, so the edge vectors start each lane's winner at its first tap
 * inside the row (j0) instead of tap 0; rows outside the input are not taken, as for the values.
 * The caller keeps every index formed (the plane's flat indices, taps in the padding, the lanes past Wo at most a
 * few vectors past the row) inside ITYPE: H W <= 2^30 and kw <= 2^28 for float (fc_max_pool2d_argmax_separable). */
#ifdef POOL_ARGMAX_NAME

/* One tap v (tap number j) into the running maximum m and its winning tap number k. */
#define PT_STEP(m, k, v, j)                                                                                       \
    do {                                                                                                          \
        const VEC v_ = (v);                                                                                       \
        const VTAKE_T t_ = VTAKE(m, v_);                                                                          \
        m = VSEL(t_, m, v_);                                                                                      \
        k = VSELI(t_, k, VSET1I((ITYPE)(j)));                                                                     \
    } while (0)

/* hmax with the tap number of each lane's winner in *kout, starting from k0 (tap 0, or the first tap inside the
 * row at the edges). */
PT_INLINE VEC PT_HELPER(hmax_arg)(const T *FC_RESTRICT xr, int64_t e, int64_t W, const int64_t KW, const int64_t SW,
                                  const int edge, IVEC k0, IVEC *kout) {
#define PT_LOAD(f) (edge ? PT_TAP(xr, f, W) : VLOADU(xr + (f)))
    VEC m;
    IVEC k = k0;
    if (SW == 1) {
        m = PT_LOAD(e);
        for (int64_t j = 1; j < KW; j++) PT_STEP(m, k, PT_LOAD(e + j), j);
    } else {
        VEC a = PT_LOAD(e), b = PT_LOAD(e + VL);
        m = VEVEN(a, b);
        if (KW > 1) PT_STEP(m, k, VODD(a, b), 1);
        for (int64_t j = 2; j < KW; j += 2) {
            a = PT_LOAD(e + j);
            b = PT_LOAD(e + j + VL);
            PT_STEP(m, k, VEVEN(a, b), j);
            if (j + 1 < KW) PT_STEP(m, k, VODD(a, b), j + 1);
        }
    }
    *kout = k;
    return m;
#undef PT_LOAD
}

/* One vector of outputs (columns o ..) of the nr input rows from xr on, into the rings from `slot` on: the maxima
 * in ring and the flat indices of the winners in iring. `edge` is a constant at each call (the interior call then
 * compiles without the masks); k0 as for hmax_arg; base: the flat index of each lane's tap 0 in the first row. */
PT_INLINE void PT_HELPER(hrows_arg_vector)(const T *FC_RESTRICT xr, int64_t nr, int64_t e, int64_t W, const int64_t KW,
                                           const int64_t SW, const int edge, IVEC k0, IVEC base,
                                           T *FC_RESTRICT ring, ITYPE *FC_RESTRICT iring, int64_t ldh, int64_t R,
                                           int64_t slot, int64_t o) {
    const IVEC step = VSET1I((ITYPE)W); /* a row further down adds W */
    T *out = ring + slot * ldh + o;
    ITYPE *iout = iring + slot * ldh + o;
    for (int64_t r = 0, s = slot; r < nr; r++, xr += W) {
        IVEC k;
        VSTOREU(out, PT_HELPER(hmax_arg)(xr, e, W, KW, SW, edge, k0, &k));
        VSTOREUI(iout, VADDI(base, k));
        base = VADDI(base, step);
        if (++s == R) {
            s = 0;
            out = ring + o;
            iout = iring + o;
        } else {
            out += ldh;
            iout += ldh;
        }
    }
}

/* hrows with the flat indices h W + w of the winners in the ring iring (same layout as ring). */
PT_INLINE void PT_HELPER(hrows_arg)(const T *FC_RESTRICT xp, int64_t W, int64_t pw, int64_t first, int64_t nr,
                                    T *FC_RESTRICT ring, ITYPE *FC_RESTRICT iring, int64_t ldh, int64_t R,
                                    int64_t slot, int64_t nv, const int64_t KW, const int64_t SW) {
    const IVEC iota = SW == 1 ? VIOTAI() : VADDI(VIOTAI(), VIOTAI());
    for (int64_t o = 0; o < nv; o += VL) {
        const int64_t e = o * SW - pw;
        const int64_t reach = e + (SW == 1 ? KW - 1 + VL : ((KW - 1) & ~(int64_t)1) + 2 * VL);
        const T *xr = xp + first * W;
        const IVEC base = VADDI(iota, VSET1I((ITYPE)(first * W + e)));
        if (e >= 0 && reach <= W) {
            PT_HELPER(hrows_arg_vector)(xr, nr, e, W, KW, SW, 0, VSET1I(0), base, ring, iring, ldh, R, slot, o);
        } else {
            ITYPE j0[VL]; /* lane i's first tap inside the row: taps before it lie in the left padding */
            for (int64_t i = 0; i < VL; i++) j0[i] = (ITYPE)(e + i * SW < 0 ? -(e + i * SW) : 0);
            PT_HELPER(hrows_arg_vector)(xr, nr, e, W, KW, SW, 1, VLOADUI(j0), base, ring, iring, ldh, R, slot, o);
        }
    }
}

PT_INLINE void PT_HELPER(vstore_arg)(T *FC_RESTRICT yr, int64_t *FC_RESTRICT ar, int64_t o, int64_t Wo, VEC m,
                                     IVEC k) {
    if (o + VL <= Wo) {
        VSTOREU(yr + o, m);
        VSTOREL(ar + o, k);
    } else {
        VSTOREN(yr + o, m, Wo - o);
        VSTORELN(ar + o, k, Wo - o);
    }
}

/* vmax with the indices: ring rows s0, s0 + 1, ... in order, so a tie keeps the upper row. */
PT_INLINE void PT_HELPER(vmax_arg)(const T *FC_RESTRICT ring, const ITYPE *FC_RESTRICT iring, int64_t ldh,
                                   int64_t R, int64_t s0, int64_t nrow, T *FC_RESTRICT yr, int64_t *FC_RESTRICT ar,
                                   int64_t Wo) {
    const int64_t s1 = s0 + 1 == R ? 0 : s0 + 1, s2 = s1 + 1 == R ? 0 : s1 + 1;
    const T *r0 = ring + s0 * ldh, *r1 = ring + s1 * ldh, *r2 = ring + s2 * ldh;
    const ITYPE *i0 = iring + s0 * ldh, *i1 = iring + s1 * ldh, *i2 = iring + s2 * ldh;
    if (nrow == 3) {
        for (int64_t o = 0; o < Wo; o += VL) {
            VEC m = VLOADU(r0 + o);
            IVEC k = VLOADUI(i0 + o);
            VEC v = VLOADU(r1 + o);
            VTAKE_T t = VTAKE(m, v);
            m = VSEL(t, m, v);
            k = VSELI(t, k, VLOADUI(i1 + o));
            v = VLOADU(r2 + o);
            t = VTAKE(m, v);
            PT_HELPER(vstore_arg)(yr, ar, o, Wo, VSEL(t, m, v), VSELI(t, k, VLOADUI(i2 + o)));
        }
    } else if (nrow == 2) {
        for (int64_t o = 0; o < Wo; o += VL) {
            const VEC m = VLOADU(r0 + o), v = VLOADU(r1 + o);
            const VTAKE_T t = VTAKE(m, v);
            PT_HELPER(vstore_arg)(yr, ar, o, Wo, VSEL(t, m, v), VSELI(t, VLOADUI(i0 + o), VLOADUI(i1 + o)));
        }
    } else {
        for (int64_t o = 0; o < Wo; o += VL) {
            VEC m = VLOADU(r0 + o);
            IVEC k = VLOADUI(i0 + o);
            for (int64_t h = 1, s = s0; h < nrow; h++) {
                s = s + 1 == R ? 0 : s + 1;
                const VEC v = VLOADU(ring + s * ldh + o);
                const VTAKE_T t = VTAKE(m, v);
                m = VSEL(t, m, v);
                k = VSELI(t, k, VLOADUI(iring + s * ldh + o));
            }
            PT_HELPER(vstore_arg)(yr, ar, o, Wo, m, k);
        }
    }
}

/* planes with the argmax; the ring walk is the values kernel's (see there). */
PT_INLINE void PT_HELPER(planes_arg)(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y,
                                     int64_t *FC_RESTRICT argmax, const fc_pool2d_desc *d, T *FC_RESTRICT ring,
                                     const int64_t KW, const int64_t SW) {
    const int64_t H = d->in_h, W = d->in_w, Ho = d->out_h, Wo = d->out_w;
    const int64_t kh = d->kernel_h, sh = d->stride_h, ph = d->pad_h, pw = d->pad_w;
    int64_t ldh = 0, R = 0, total = 0;
    fc_max_pool2d_values_layout(d, &ldh, &R, &total); /* the caller checked it for overflow, and 2 total */
    ITYPE *iring = (ITYPE *)(ring + total);           /* ITYPE has T's size */
    const int64_t nv = (Wo + VL - 1) / VL * VL;

    for (int64_t pl = 0; pl < planes; pl++) {
        const T *xp = x + pl * H * W;
        T *yp = y + pl * Ho * Wo;
        int64_t *ap = argmax + pl * Ho * Wo;
        int64_t next = 0, slot = 0;
        for (int64_t oy = 0; oy < Ho; oy++) {
            const int64_t hs = oy * sh - ph;
            const int64_t h0 = hs > 0 ? hs : 0, h1 = hs + kh < H ? hs + kh : H;
            if (next < h0) next = h0;
            while (next < h1) {
                const int64_t nr = H - next < FC_POOL_BATCH ? H - next : FC_POOL_BATCH;
                PT_HELPER(hrows_arg)(xp, W, pw, next, nr, ring, iring, ldh, R, slot, nv, KW, SW);
                next += nr;
                slot = (slot + nr) % R;
            }
            int64_t s0 = slot - (next - h0);
            if (s0 < 0) s0 += R;
            PT_HELPER(vmax_arg)(ring, iring, ldh, R, s0, h1 - h0, yp + oy * Wo, ap + oy * Wo, Wo);
        }
    }
}

/* Horizontal strides 1 and 2 only (the caller sends the others to the window-by-window kernel). work: 2 total
 * elements of fc_max_pool2d_values_layout, the values' ring then the indices'. */
void POOL_ARGMAX_NAME(int64_t planes, const T *FC_RESTRICT x, T *FC_RESTRICT y, int64_t *FC_RESTRICT argmax,
                      const fc_pool2d_desc *d, T *FC_RESTRICT work) {
    const int64_t kw = d->kernel_w, sw = d->stride_w;
    if (kw == 3 && sw == 1)
        PT_HELPER(planes_arg)(planes, x, y, argmax, d, work, 3, 1);
    else if (kw == 3 && sw == 2)
        PT_HELPER(planes_arg)(planes, x, y, argmax, d, work, 3, 2);
    else if (kw == 2 && sw == 2)
        PT_HELPER(planes_arg)(planes, x, y, argmax, d, work, 2, 2);
    else if (sw == 1)
        PT_HELPER(planes_arg)(planes, x, y, argmax, d, work, kw, 1);
    else
        PT_HELPER(planes_arg)(planes, x, y, argmax, d, work, kw, 2);
}

#undef PT_STEP
#endif /* POOL_ARGMAX_NAME */

#undef PT_TAP
#undef PT_ADDR
#undef PT_INLINE
#undef PT_HELPER
#undef PT_CAT
#undef PT_CAT_
#undef PT_SMALL_MAX
#undef PT_SMALL_VECS
