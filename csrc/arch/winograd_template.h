/* Winograd F(2x2, 3x3) transforms (winograd_impl.inc) in plain C that the compiler vectorizes for the including
 * ISA: every loop over tiles runs in whole vectors of VL tiles, the last one shifted back to end at the run's
 * end (it recomputes a few tiles rather than running a scalar tail); runs shorter than a vector compute a whole
 * one and keep part of it. Needs T, VL, WINO_NAME(x) and VSTORE_FIRST(dst, src, n): store the first n < VL
 * values of the aligned vector at src to dst (a masked store).
 *
 * input:   rows[i] (i < 4) are the input rows under a run of cnt tiles, max(2 cnt, 2 VL) + 2 readable values
 *          each (the values past 2 cnt + 2 only feed discarded tiles); tile k covers columns 2k .. 2k+3. Writes
 *          B^T d B of tile k to dst[xi * xi_stride + k], xi = 4 i + j.
 * weights: g[t * ldg + k] holds tap t (row-major 3x3) of filter k; writes G g G^T of filter k to
 *          dst[xi * xi_stride + k].
 * grad:    rows[0], rows[1] are the two rows of the output gradient under a run of cnt tiles, 2 max(cnt, VL)
 *          readable values each; writes A e A^T of tile k's 2x2 window e (the weight gradient's transform, A =
 *          the forward's A^T transposed) to dst[xi * xi_stride + k].
 * output:  m[xi * xi_stride + k] holds tile k's 16 products (max(cnt, VL) readable, the rest discarded);
 *          writes A^T m A + b, the 2x2 outputs of tile k, to out[2k], out[2k+1] (first row) and out[ldo + 2k],
 *          out[ldo + 2k + 1] (second row). */

#define WT_CAT_(a, b) a##b
#define WT_CAT(a, b) WT_CAT_(a, b)
#define WT_INPUT_VEC WT_CAT(WINO_NAME(input), _vector)
#define WT_OUTPUT_VEC WT_CAT(WINO_NAME(output), _vector)
#ifndef WT_EPILOGUE
/* The output's epilogue on one value v (its bias already added): * s + sb rounded once as the GEMM's fused epilogue
 * (SFMA) when scaled, then the ReLU, which keeps NaN (v < 0 is false for it). */
#define WT_EPILOGUE(v, s, sb, scaled, relu)                                                                    \
    do {                                                                                                       \
        if (scaled) (v) = SFMA((v), (s), (sb));                                                                \
        if ((relu) && (v) < (T)0) (v) = (T)0;                                                                  \
    } while (0)
/* fn specialised for each of the epilogue's four forms, so the vector loops carry no branches */
#define WT_EPILOGUE_DISPATCH(fn, cnt, m, xi_stride, ep, out, ldo)                                              \
    do {                                                                                                       \
        if ((ep)->scaled && (ep)->relu) fn(cnt, m, xi_stride, ep, 1, 1, out, ldo);                             \
        else if ((ep)->scaled) fn(cnt, m, xi_stride, ep, 1, 0, out, ldo);                                      \
        else if ((ep)->relu) fn(cnt, m, xi_stride, ep, 0, 1, out, ldo);                                        \
        else fn(cnt, m, xi_stride, ep, 0, 0, out, ldo);                                                        \
    } while (0)
#endif
#define WT_GRAD_VEC WT_CAT(WINO_NAME(grad), _vector)

/* VL tiles starting at tile k. */
static inline __attribute__((always_inline)) void WT_INPUT_VEC(const T *FC_RESTRICT r0, const T *FC_RESTRICT r1,
                                                               const T *FC_RESTRICT r2, const T *FC_RESTRICT r3,
                                                               T *FC_RESTRICT dst, int64_t xi_stride) {
#pragma GCC ivdep
    for (int k = 0; k < VL; k++) {
        T s[4][4];
        for (int j = 0; j < 4; j++) { /* down the columns: B^T d */
            T a0 = r0[2 * k + j], a1 = r1[2 * k + j], a2 = r2[2 * k + j], a3 = r3[2 * k + j];
            s[0][j] = a0 - a2;
            s[1][j] = a1 + a2;
            s[2][j] = a2 - a1;
            s[3][j] = a1 - a3;
        }
        for (int i = 0; i < 4; i++) { /* across: (B^T d) B */
            dst[(4 * i) * xi_stride + k] = s[i][0] - s[i][2];
            dst[(4 * i + 1) * xi_stride + k] = s[i][1] + s[i][2];
            dst[(4 * i + 2) * xi_stride + k] = s[i][2] - s[i][1];
            dst[(4 * i + 3) * xi_stride + k] = s[i][1] - s[i][3];
        }
    }
}

void WINO_NAME(input)(int64_t cnt, const T *const *rows, T *FC_RESTRICT dst, int64_t xi_stride) {
    const T *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3];
    if (cnt < VL) { /* a whole vector (the rows hold 2 VL + 2 readable values), cnt of its tiles kept */
        T tmp[16 * VL] __attribute__((aligned(64)));
        WT_INPUT_VEC(r0, r1, r2, r3, tmp, VL);
        for (int xi = 0; xi < 16; xi++) VSTORE_FIRST(dst + xi * xi_stride, tmp + xi * VL, (int)cnt);
        return;
    }
    for (int64_t k0 = 0; k0 < cnt; k0 += VL) {
        int64_t k = k0 + VL <= cnt ? k0 : cnt - VL;
        WT_INPUT_VEC(r0 + 2 * k, r1 + 2 * k, r2 + 2 * k, r3 + 2 * k, dst + k, xi_stride);
    }
}

/* VL tiles starting at tile k. */
static inline __attribute__((always_inline)) void WT_GRAD_VEC(const T *FC_RESTRICT r0, const T *FC_RESTRICT r1,
                                                              T *FC_RESTRICT dst, int64_t xi_stride) {
#pragma GCC ivdep
    for (int k = 0; k < VL; k++) {
        T e00 = r0[2 * k], e01 = r0[2 * k + 1], e10 = r1[2 * k], e11 = r1[2 * k + 1];
        T t[4][2] = {{e00, e01}, {e00 + e10, e01 + e11}, {e00 - e10, e01 - e11}, {-e10, -e11}};
        for (int i = 0; i < 4; i++) {
            dst[(4 * i) * xi_stride + k] = t[i][0];
            dst[(4 * i + 1) * xi_stride + k] = t[i][0] + t[i][1];
            dst[(4 * i + 2) * xi_stride + k] = t[i][0] - t[i][1];
            dst[(4 * i + 3) * xi_stride + k] = -t[i][1];
        }
    }
}

void WINO_NAME(grad)(int64_t cnt, const T *const *rows, T *FC_RESTRICT dst, int64_t xi_stride) {
    const T *r0 = rows[0], *r1 = rows[1];
    if (cnt < VL) {
        T tmp[16 * VL] __attribute__((aligned(64)));
        WT_GRAD_VEC(r0, r1, tmp, VL);
        for (int xi = 0; xi < 16; xi++) VSTORE_FIRST(dst + xi * xi_stride, tmp + xi * VL, (int)cnt);
        return;
    }
    for (int64_t k0 = 0; k0 < cnt; k0 += VL) {
        int64_t k = k0 + VL <= cnt ? k0 : cnt - VL;
        WT_GRAD_VEC(r0 + 2 * k, r1 + 2 * k, dst + k, xi_stride);
    }
}

void WINO_NAME(weights)(int64_t cnt, const T *FC_RESTRICT g, int64_t ldg, T *FC_RESTRICT dst,
                        int64_t xi_stride) {
#pragma GCC ivdep
    for (int64_t k = 0; k < cnt; k++) {
        T s[4][3];
        for (int j = 0; j < 3; j++) {
            T g0 = g[j * ldg + k], g1 = g[(3 + j) * ldg + k], g2 = g[(6 + j) * ldg + k];
            s[0][j] = g0;
            s[1][j] = (T)0.5 * (g0 + g1 + g2);
            s[2][j] = (T)0.5 * (g0 - g1 + g2);
            s[3][j] = g2;
        }
        for (int i = 0; i < 4; i++) {
            dst[(4 * i) * xi_stride + k] = s[i][0];
            dst[(4 * i + 1) * xi_stride + k] = (T)0.5 * (s[i][0] + s[i][1] + s[i][2]);
            dst[(4 * i + 2) * xi_stride + k] = (T)0.5 * (s[i][0] - s[i][1] + s[i][2]);
            dst[(4 * i + 3) * xi_stride + k] = s[i][2];
        }
    }
}

/* VL tiles starting at tile k. */
static inline __attribute__((always_inline)) void WT_OUTPUT_VEC(const T *FC_RESTRICT m, int64_t xi_stride,
                                                                const fc_wino_epilogue *ep, const int scaled,
                                                                const int relu, T *FC_RESTRICT out, int64_t ldo) {
    const T b = ep->b, s = ep->s, sb = ep->sb;
#pragma GCC ivdep
    for (int k = 0; k < VL; k++) {
        T r[2][4], o[4];
        for (int j = 0; j < 4; j++) {
            T t0 = m[j * xi_stride + k], t1 = m[(4 + j) * xi_stride + k];
            T t2 = m[(8 + j) * xi_stride + k], t3 = m[(12 + j) * xi_stride + k];
            r[0][j] = t0 + t1 + t2;
            r[1][j] = t1 - t2 - t3;
        }
        o[0] = r[0][0] + r[0][1] + r[0][2] + b;
        o[1] = r[0][1] - r[0][2] - r[0][3] + b;
        o[2] = r[1][0] + r[1][1] + r[1][2] + b;
        o[3] = r[1][1] - r[1][2] - r[1][3] + b;
        for (int j = 0; j < 4; j++) WT_EPILOGUE(o[j], s, sb, scaled, relu);
        out[2 * k] = o[0];
        out[2 * k + 1] = o[1];
        out[ldo + 2 * k] = o[2];
        out[ldo + 2 * k + 1] = o[3];
    }
}

static inline __attribute__((always_inline)) void WT_CAT(WINO_NAME(output), _run)(
    int64_t cnt, const T *FC_RESTRICT m, int64_t xi_stride, const fc_wino_epilogue *ep, const int scaled,
    const int relu, T *FC_RESTRICT out, int64_t ldo) {
    if (cnt < VL) { /* a whole vector (m is readable VL values on), cnt of its tiles kept */
        T tmp[4 * VL] __attribute__((aligned(64)));
        WT_OUTPUT_VEC(m, xi_stride, ep, scaled, relu, tmp, 2 * VL);
        for (int j = 0; j < 2 * VL; j++)
            if (j < 2 * cnt) {
                out[j] = tmp[j];
                out[ldo + j] = tmp[2 * VL + j];
            }
        return;
    }
    for (int64_t k0 = 0; k0 < cnt; k0 += VL) {
        int64_t k = k0 + VL <= cnt ? k0 : cnt - VL;
        WT_OUTPUT_VEC(m + k, xi_stride, ep, scaled, relu, out + 2 * k, ldo);
    }
}

void WINO_NAME(output)(int64_t cnt, const T *FC_RESTRICT m, int64_t xi_stride, const fc_wino_epilogue *ep,
                       T *FC_RESTRICT out, int64_t ldo) {
    WT_EPILOGUE_DISPATCH(WT_CAT(WINO_NAME(output), _run), cnt, m, xi_stride, ep, out, ldo);
}

/* ---------------------------------------------------------------- F(4x4, 3x3)
 * The same four transforms for 4x4 output tiles (6x6 input tiles, 36 points), with Lavin and Gray's matrices
 * (interpolation points 0, +-1, +-2):
 *     B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
 *     G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
 *     A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
 * input4:   rows[i] (i < 6), max(4 cnt, 4 VL) + 2 readable values each; tile k covers columns 4k .. 4k+5; writes
 *           B^T d B to dst[xi * xi_stride + k], xi = 6 i + j.
 * weights4: as weights, 36 points.
 * grad4:    as grad, on 4x4 windows of the output gradient (see below).
 * output4:  m[xi * xi_stride + k], 36 points; writes the 4x4 outputs of tile k to out[i * ldo + 4k + j]. */

#define WT_INPUT4_VEC WT_CAT(WINO_NAME(input4), _vector)
#define WT_OUTPUT4_VEC WT_CAT(WINO_NAME(output4), _vector)

/* B^T applied to six values (a column or a row of a tile). */
#define WT_BT6(o0, o1, o2, o3, o4, o5, b0, b1, b2, b3, b4, b5)                                                \
    do {                                                                                                       \
        T p_ = (b4) - (T)4 * (b2), q_ = (b3) - (T)4 * (b1), r_ = (b4) - (b2), t_ = (T)2 * ((b3) - (b1));       \
        o0 = (T)4 * (b0) - (T)5 * (b2) + (b4);                                                                 \
        o1 = p_ + q_;                                                                                          \
        o2 = p_ - q_;                                                                                          \
        o3 = r_ + t_;                                                                                          \
        o4 = r_ - t_;                                                                                          \
        o5 = (T)4 * (b1) - (T)5 * (b3) + (b5);                                                                 \
    } while (0)

/* The six columns of VL tiles of one input row: ph[j][l] = row[4 l + j]. An arch may define WT_PHASES4(row, ph)
 * with its own shuffles (the compiler's stride-4 gathers cost more than the transform). */
#ifndef WT_PHASES4
#define WT_PHASES4(row, ph)                                                                                    \
    do {                                                                                                       \
        for (int j_ = 0; j_ < 6; j_++)                                                                         \
            for (int l_ = 0; l_ < VL; l_++) (ph)[j_][l_] = (row)[4 * l_ + j_];                                 \
    } while (0)
#define WT_PHASES4_GENERIC
#endif

/* VL tiles starting at tile k. */
static inline __attribute__((always_inline)) void WT_INPUT4_VEC(const T *const *rows, int64_t k, T *FC_RESTRICT dst,
                                                                int64_t xi_stride) {
    T ph[6][6][VL] __attribute__((aligned(64)));
    for (int r = 0; r < 6; r++) WT_PHASES4(rows[r] + 4 * k, ph[r]);
#pragma GCC ivdep
    for (int l = 0; l < VL; l++) {
        T s[6][6];
#pragma GCC unroll 6
        for (int j = 0; j < 6; j++) /* down the columns: B^T d */
            WT_BT6(s[0][j], s[1][j], s[2][j], s[3][j], s[4][j], s[5][j], ph[0][j][l], ph[1][j][l], ph[2][j][l],
                   ph[3][j][l], ph[4][j][l], ph[5][j][l]);
#pragma GCC unroll 6
        for (int i = 0; i < 6; i++) { /* across: (B^T d) B */
            T *o = dst + 6 * i * xi_stride + l;
            WT_BT6(o[0], o[xi_stride], o[2 * xi_stride], o[3 * xi_stride], o[4 * xi_stride], o[5 * xi_stride],
                   s[i][0], s[i][1], s[i][2], s[i][3], s[i][4], s[i][5]);
        }
    }
}

void WINO_NAME(input4)(int64_t cnt, const T *const *rows, T *FC_RESTRICT dst, int64_t xi_stride) {
    if (cnt < VL) { /* a whole vector (the rows hold 4 VL + 2 readable values), cnt of its tiles kept */
        T tmp[36 * VL] __attribute__((aligned(64)));
        WT_INPUT4_VEC(rows, 0, tmp, VL);
        for (int xi = 0; xi < 36; xi++) VSTORE_FIRST(dst + xi * xi_stride, tmp + xi * VL, (int)cnt);
        return;
    }
    for (int64_t k0 = 0; k0 < cnt; k0 += VL) {
        int64_t k = k0 + VL <= cnt ? k0 : cnt - VL;
        WT_INPUT4_VEC(rows, k, dst + k, xi_stride);
    }
}

#ifdef WT_PHASES4_GENERIC
#undef WT_PHASES4
#undef WT_PHASES4_GENERIC
#endif

/* G applied to three values. */
#define WT_G6(o, g0, g1, g2)                                                                                   \
    do {                                                                                                       \
        T e_ = (g0) + (g2), h_ = (T)0.25 * (g0) + (g2);                                                        \
        o[0] = (T)0.25 * (g0);                                                                                 \
        o[1] = (T)(-1.0 / 6) * (e_ + (g1));                                                                    \
        o[2] = (T)(-1.0 / 6) * (e_ - (g1));                                                                    \
        o[3] = (T)(1.0 / 6) * (h_ + (T)0.5 * (g1));                                                            \
        o[4] = (T)(1.0 / 6) * (h_ - (T)0.5 * (g1));                                                            \
        o[5] = (g2);                                                                                           \
    } while (0)

void WINO_NAME(weights4)(int64_t cnt, const T *FC_RESTRICT g, int64_t ldg, T *FC_RESTRICT dst,
                         int64_t xi_stride) {
#pragma GCC ivdep
    for (int64_t k = 0; k < cnt; k++) {
        T s[6][3], out[6];
        #pragma GCC unroll 3
        for (int j = 0; j < 3; j++) { /* down the columns: G g */
            WT_G6(out, g[j * ldg + k], g[(3 + j) * ldg + k], g[(6 + j) * ldg + k]);
            #pragma GCC unroll 6
            for (int i = 0; i < 6; i++) s[i][j] = out[i];
        }
        #pragma GCC unroll 6
        for (int i = 0; i < 6; i++) { /* across: (G g) G^T */
            WT_G6(out, s[i][0], s[i][1], s[i][2]);
            #pragma GCC unroll 6
            for (int j = 0; j < 6; j++) dst[(6 * i + j) * xi_stride + k] = out[j];
        }
    }
}

/* A^T applied to six values. */
#define WT_AT6(o, a)                                                                                           \
    do {                                                                                                       \
        T p_ = (a)[1] + (a)[2], q_ = (a)[1] - (a)[2], u_ = (a)[3] + (a)[4], v_ = (a)[3] - (a)[4];              \
        o[0] = (a)[0] + p_ + u_;                                                                               \
        o[1] = q_ + (T)2 * v_;                                                                                 \
        o[2] = p_ + (T)4 * u_;                                                                                 \
        o[3] = q_ + (T)8 * v_ + (a)[5];                                                                        \
    } while (0)

/* VL tiles starting at tile k. */
static inline __attribute__((always_inline)) void WT_OUTPUT4_VEC(const T *FC_RESTRICT m, int64_t xi_stride,
                                                                 const fc_wino_epilogue *ep, const int scaled,
                                                                 const int relu, T *FC_RESTRICT out, int64_t ldo) {
    const T b = ep->b, s = ep->s, sb = ep->sb;
#pragma GCC ivdep
    for (int k = 0; k < VL; k++) {
        T r[4][6], col[6], o[4];
        #pragma GCC unroll 6
        for (int j = 0; j < 6; j++) { /* down the columns: A^T m */
            #pragma GCC unroll 6
            for (int i = 0; i < 6; i++) col[i] = m[(6 * i + j) * xi_stride + k];
            WT_AT6(o, col);
            #pragma GCC unroll 4
            for (int i = 0; i < 4; i++) r[i][j] = o[i];
        }
        #pragma GCC unroll 4
        for (int i = 0; i < 4; i++) { /* across: (A^T m) A */
            WT_AT6(o, r[i]);
            #pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                T v = o[j] + b;
                WT_EPILOGUE(v, s, sb, scaled, relu);
                out[i * ldo + 4 * k + j] = v;
            }
        }
    }
}

static inline __attribute__((always_inline)) void WT_CAT(WINO_NAME(output4), _run)(
    int64_t cnt, const T *FC_RESTRICT m, int64_t xi_stride, const fc_wino_epilogue *ep, const int scaled,
    const int relu, T *FC_RESTRICT out, int64_t ldo) {
    if (cnt < VL) { /* a whole vector (m is readable VL values on), cnt of its tiles kept */
        T tmp[16 * VL] __attribute__((aligned(64)));
        WT_OUTPUT4_VEC(m, xi_stride, ep, scaled, relu, tmp, 4 * VL);
        #pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4 * VL; j++)
                if (j < 4 * cnt) out[i * ldo + j] = tmp[i * 4 * VL + j];
        return;
    }
    for (int64_t k0 = 0; k0 < cnt; k0 += VL) {
        int64_t k = k0 + VL <= cnt ? k0 : cnt - VL;
        WT_OUTPUT4_VEC(m + k, xi_stride, ep, scaled, relu, out + 4 * k, ldo);
    }
}

void WINO_NAME(output4)(int64_t cnt, const T *FC_RESTRICT m, int64_t xi_stride, const fc_wino_epilogue *ep,
                        T *FC_RESTRICT out, int64_t ldo) {
    WT_EPILOGUE_DISPATCH(WT_CAT(WINO_NAME(output4), _run), cnt, m, xi_stride, ep, out, ldo);
}

/* grad4: rows[0..3] are the four rows of the output gradient under a run of cnt tiles, 4 max(cnt, VL) readable
 * values each; writes A e A^T of tile k's 4x4 window e (A = the forward's A^T transposed, 6x4) to
 * dst[xi * xi_stride + k], xi = 6 i + j. */
#define WT_A6(o0, o1, o2, o3, o4, o5, e0, e1, e2, e3)                                                           \
    do {                                                                                                       \
        T p_ = (e0) + (e2), q_ = (e1) + (e3), u_ = (e0) + (T)4 * (e2), v_ = (T)2 * (e1) + (T)8 * (e3);         \
        o0 = (e0);                                                                                             \
        o1 = p_ + q_;                                                                                          \
        o2 = p_ - q_;                                                                                          \
        o3 = u_ + v_;                                                                                          \
        o4 = u_ - v_;                                                                                          \
        o5 = (e3);                                                                                             \
    } while (0)

/* VL tiles starting at tile k. */
static inline __attribute__((always_inline)) void WT_CAT(WINO_NAME(grad4), _vector)(
    const T *FC_RESTRICT r0, const T *FC_RESTRICT r1, const T *FC_RESTRICT r2, const T *FC_RESTRICT r3,
    T *FC_RESTRICT dst, int64_t xi_stride) {
#pragma GCC ivdep
    for (int k = 0; k < VL; k++) {
        T s[6][4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) /* down the columns: A e */
            WT_A6(s[0][j], s[1][j], s[2][j], s[3][j], s[4][j], s[5][j], r0[4 * k + j], r1[4 * k + j],
                  r2[4 * k + j], r3[4 * k + j]);
#pragma GCC unroll 6
        for (int i = 0; i < 6; i++) { /* across: (A e) A^T */
            T *o = dst + 6 * i * xi_stride + k;
            WT_A6(o[0], o[xi_stride], o[2 * xi_stride], o[3 * xi_stride], o[4 * xi_stride], o[5 * xi_stride],
                  s[i][0], s[i][1], s[i][2], s[i][3]);
        }
    }
}

void WINO_NAME(grad4)(int64_t cnt, const T *const *rows, T *FC_RESTRICT dst, int64_t xi_stride) {
    if (cnt < VL) {
        T tmp[36 * VL] __attribute__((aligned(64)));
        WT_CAT(WINO_NAME(grad4), _vector)(rows[0], rows[1], rows[2], rows[3], tmp, VL);
        for (int xi = 0; xi < 36; xi++) VSTORE_FIRST(dst + xi * xi_stride, tmp + xi * VL, (int)cnt);
        return;
    }
    for (int64_t k0 = 0; k0 < cnt; k0 += VL) {
        int64_t k = k0 + VL <= cnt ? k0 : cnt - VL;
        WT_CAT(WINO_NAME(grad4), _vector)(rows[0] + 4 * k, rows[1] + 4 * k, rows[2] + 4 * k, rows[3] + 4 * k,
                                          dst + k, xi_stride);
    }
}

#undef WT_A6
#undef WT_BT6
#undef WT_G6
#undef WT_AT6
#undef WT_INPUT4_VEC
#undef WT_OUTPUT4_VEC
#undef WT_INPUT_VEC
#undef WT_OUTPUT_VEC
#undef WT_GRAD_VEC
#undef WT_CAT_
#undef WT_CAT
