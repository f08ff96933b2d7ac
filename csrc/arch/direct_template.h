/* Direct-convolution micro-kernels for stride-1 layers with few filters, on the "wide" pixel grid.
 *
 * A zero-padded input channel is stored as a plane of hp x wp values. The output pixel (oy, ox) is numbered
 * q = oy * wp + ox on the same wide grid, so the tap (c, ki, kj) reads input q + off with one offset per tap,
 * off = c * plane + ki * dh * wp + kj * dw, for every pixel: the convolution becomes a sum of shifted rows and
 * vectorizes over q with plain unaligned loads. (Columns ox >= ow of the wide grid are computed and dropped.)
 *
 * Included by each ISA's micro-kernel file after the GEMM template's macros (T VEC VL VZERO VLOADU VSTOREU
 * VSET1 VFMA) plus
 *   VHSUM(x)            sum of the lanes of x
 *   DFB DNV             forward tile: DFB filters x v vectors of pixels, v = 1..DNV (DFB * DNV accumulators)
 *   WFB WTB             weight-gradient tile: WFB filters x WTB taps, one vector of pixels at a time
 *   DIRECT_NAME(v) WGRAD_NAME
 *
 * Forward: y[f * ldy + j] = sum_t w[t * DFB + f] * x[off[t] + j] for f < fb, j < v * VL. The packed weights
 * hold DFB values per tap (zero past fb), so a partial filter block costs no branch in the loop.
 * Weight gradient: out[f * ldo + t] += sum_img sum_{j < nq} dy[img * dy_img + f * lddy + j] *
 * x[img * x_img + off[t] + j] for f < fb, t < tb; nq is a multiple of VL and WFB rows of dy must be readable
 * (the caller pads the filter count; the sums of rows past fb are dropped). */

#define DT_CAT_(a, b) a##b
#define DT_CAT(a, b) DT_CAT_(a, b)
#define DIRECT_BODY DT_CAT(DIRECT_NAME(0), _body)

/* nf (a constant in each instantiation) of the DFB filters are computed: a partial last block of at most
 * DIRECT_SHORT filters (LeNet's 16 = 6 + 6 + 4) skips the multiply-adds of the padded ones, a ninth of that
 * layer's work. */
static inline __attribute__((always_inline)) void DIRECT_BODY(const int nv, const int nf, int64_t ntaps,
                                                              const int64_t *FC_RESTRICT off,
                                                              const T *FC_RESTRICT x, const T *FC_RESTRICT w,
                                                              T *FC_RESTRICT y, int64_t ldy, int fb) {
    VEC acc[DFB][DNV];
#pragma GCC unroll 16
    for (int f = 0; f < nf; f++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[f][v] = VZERO();
    for (int64_t t = 0; t < ntaps; t++) {
        const T *xt = x + off[t];
        VEC xv[DNV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) xv[v] = VLOADU(xt + v * VL);
#pragma GCC unroll 16
        for (int f = 0; f < nf; f++) {
            VEC wf = VSET1(w[f]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[f][v] = VFMA(wf, xv[v], acc[f][v]);
        }
        w += DFB;
    }
#pragma GCC unroll 16
    for (int f = 0; f < nf; f++)
        if (f < fb)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) VSTOREU(y + f * ldy + v * VL, acc[f][v]);
}

#if DFB > 4
#define DIRECT_SHORT 4
#define DIRECT_DEFINE(v)                                                                                         \
    void DIRECT_NAME(v)(int64_t ntaps, const int64_t *FC_RESTRICT off, const T *FC_RESTRICT x,                  \
                        const T *FC_RESTRICT w, T *FC_RESTRICT y, int64_t ldy, int fb) {                        \
        if (fb <= DIRECT_SHORT)                                                                                  \
            DIRECT_BODY(v, DIRECT_SHORT, ntaps, off, x, w, y, ldy, fb);                                          \
        else                                                                                                     \
            DIRECT_BODY(v, DFB, ntaps, off, x, w, y, ldy, fb);                                                   \
    }
#else
#define DIRECT_DEFINE(v)                                                                                         \
    void DIRECT_NAME(v)(int64_t ntaps, const int64_t *FC_RESTRICT off, const T *FC_RESTRICT x,                  \
                        const T *FC_RESTRICT w, T *FC_RESTRICT y, int64_t ldy, int fb) {                        \
        DIRECT_BODY(v, DFB, ntaps, off, x, w, y, ldy, fb);                                                       \
    }
#endif

DIRECT_DEFINE(1)
#if DNV >= 2
DIRECT_DEFINE(2)
#endif
#if DNV >= 3
DIRECT_DEFINE(3)
#endif
#if DNV >= 4
DIRECT_DEFINE(4)
#endif

void WGRAD_NAME(int64_t nimg, int64_t nq, const T *FC_RESTRICT dy, int64_t lddy, int64_t dy_img,
                const T *FC_RESTRICT x, int64_t x_img, const int64_t *FC_RESTRICT off, T *FC_RESTRICT out,
                int64_t ldo, int fb, int tb) {
    VEC acc[WFB][WTB];
    int64_t o[WTB];
#pragma GCC unroll 8
    for (int t = 0; t < WTB; t++) o[t] = off[t < tb ? t : 0];
#pragma GCC unroll 16
    for (int f = 0; f < WFB; f++)
#pragma GCC unroll 8
        for (int t = 0; t < WTB; t++) acc[f][t] = VZERO();
    for (int64_t img = 0; img < nimg; img++) {
        const T *d = dy + img * dy_img, *xi = x + img * x_img;
        for (int64_t j = 0; j < nq; j += VL) {
            VEC dv[WFB];
#pragma GCC unroll 16
            for (int f = 0; f < WFB; f++) dv[f] = VLOADU(d + f * lddy + j);
#pragma GCC unroll 8
            for (int t = 0; t < WTB; t++) {
                VEC xv = VLOADU(xi + o[t] + j);
#pragma GCC unroll 16
                for (int f = 0; f < WFB; f++) acc[f][t] = VFMA(dv[f], xv, acc[f][t]);
            }
        }
    }
#pragma GCC unroll 16
    for (int f = 0; f < WFB; f++)
#pragma GCC unroll 8
        for (int t = 0; t < WTB; t++)
            if (f < fb && t < tb) out[f * ldo + t] += VHSUM(acc[f][t]);
}

#undef DIRECT_DEFINE
#undef DIRECT_SHORT
#undef DIRECT_BODY
#undef DT_CAT
#undef DT_CAT_
