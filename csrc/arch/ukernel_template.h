/* Micro-kernel template: C(MR x v*VL) = alpha * sum_p a[p] (x) b[p] + beta * C, for v = 1..NV.
 *
 * Included by each ISA's micro-kernel file after it defines
 *   T VEC VL MR NV        element type, vector type, elements per vector, rows, max vectors per row
 *   VZERO() VLOAD(p) VLOADU(p) VSTOREU(p, x) VSET1(s) VFMA(a, b, c) (= a*b + c) VMUL(a, b) VADD(a, b)
 *   VHSUM(x)              the sum of the lanes of x
 *   UKR_NAME(v)           the exported name of the v-vector variant
 *
 * The accumulators form an MR x v array of vectors; with MR and v compile-time constants and the loops fully
 * unrolled, the compiler keeps them all in registers (MR * v <= 24 of the 32 zmm/16 ymm registers for the
 * kernel shapes chosen in dispatch.c). Each k step loads v vectors of B and broadcasts MR scalars of A.
 * beta == 0 stores without reading C, as BLAS requires. */

#define UKR_CAT_(a, b) a##b
#define UKR_CAT(a, b) UKR_CAT_(a, b)
#define UKR_BODY UKR_CAT(UKR_NAME(0), _body)

static inline __attribute__((always_inline)) void UKR_BODY(const int nv, int64_t k, const T *FC_RESTRICT a,
                                                           const T *FC_RESTRICT b, T *FC_RESTRICT c, int64_t rs_c,
                                                           T alpha, T beta, const int with_ep, const T *scale,
                                                           const T *bias, const T *FC_RESTRICT add, int64_t rs_add,
                                                           int relu, const int unpacked, int64_t ldb) {
    VEC acc[MR][NV];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[r][v] = VZERO();
    for (int64_t p = 0; p < k; p++) {
        VEC bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = unpacked ? VLOADU(b + v * VL) : VLOAD(b + v * VL);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            VEC ar = VSET1(a[r]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[r][v] = VFMA(ar, bv[v], acc[r][v]);
        }
        a += MR;
        b += unpacked ? ldb : nv * VL;
    }

    if (with_ep) {
        /* the convolution's epilogue (dispatch.h) on the registers: C is only written, never read back (a cold
         * output read right after its stores waited on every line: 27 % of a 1x1 layer's time) */
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++) {
            const VEC vs = VSET1(scale ? scale[r] : (T)1), vb = VSET1(bias ? bias[r] : (T)0);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                T *cp = c + r * rs_c + v * VL;
                VEC x = acc[r][v];
                if (beta != (T)0) x = VFMA(VLOADU(cp), VSET1(beta), x);
                x = VFMA(x, vs, vb);
                if (add) x = VADD(x, VLOADU(add + r * rs_add + v * VL));
                if (relu) x = VRELU(x);
                VSTOREU(cp, x);
            }
        }
        return;
    }
    VEC va = VSET1(alpha);
    if (beta == (T)0) {
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) VSTOREU(c + r * rs_c + v * VL, VMUL(acc[r][v], va));
    } else {
        VEC vb = VSET1(beta);
#pragma GCC unroll 16
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                T *cp = c + r * rs_c + v * VL;
                VSTOREU(cp, VFMA(acc[r][v], va, VMUL(VLOADU(cp), vb)));
            }
    }
}

#define UKR_DEFINE(v)                                                                                            \
    void UKR_NAME(v)(int64_t k, const T *FC_RESTRICT a, const T *FC_RESTRICT b, T *FC_RESTRICT c, int64_t rs_c, \
                     T alpha, T beta) {                                                                          \
        UKR_BODY(v, k, a, b, c, rs_c, alpha, beta, 0, NULL, NULL, NULL, 0, 0, 0, 0);                             \
    }                                                                                                            \
    void UKR_CAT(UKR_NAME(v), _ep)(int64_t k, const T *FC_RESTRICT a, const T *FC_RESTRICT b, T *FC_RESTRICT c,   \
                                   int64_t rs_c, T beta, const T *scale, const T *bias, const T *FC_RESTRICT add, \
                                   int64_t rs_add, int relu) {                                                   \
        UKR_BODY(v, k, a, b, c, rs_c, (T)1, beta, 1, scale, bias, add, rs_add, relu, 0, 0);                      \
    }

UKR_DEFINE(1)
#if NV >= 2
UKR_DEFINE(2)
#endif
#if NV >= 3
UKR_DEFINE(3)
#endif
#if NV >= 4
UKR_DEFINE(4)
#endif

/* The micro-kernel on a B read in place: nv vectors of each of k rows ldb apart (a row-major B that a few rows of A
 * multiply: each of its elements is used mr times at most, so packing it would only copy it). C(MR x nv*VL) =
 * A * B + beta * C, unaligned loads. */
void UKR_NAME(rows)(int64_t k, const T *FC_RESTRICT a, const T *FC_RESTRICT b, int64_t ldb, int nv, T *FC_RESTRICT c,
                    int64_t rs_c, T beta) {
    switch (nv) {
    case 1: UKR_BODY(1, k, a, b, c, rs_c, (T)1, beta, 0, NULL, NULL, NULL, 0, 0, 1, ldb); break;
#if NV >= 2
    case 2: UKR_BODY(2, k, a, b, c, rs_c, (T)1, beta, 0, NULL, NULL, NULL, 0, 0, 1, ldb); break;
#endif
#if NV >= 3
    case 3: UKR_BODY(3, k, a, b, c, rs_c, (T)1, beta, 0, NULL, NULL, NULL, 0, 0, 1, ldb); break;
#endif
#if NV >= 4
    case 4: UKR_BODY(4, k, a, b, c, rs_c, (T)1, beta, 0, NULL, NULL, NULL, 0, 0, 1, ldb); break;
#endif
    default: break;
    }
}

/* The convolution's epilogue on a tile just written (dispatch.h): plain loops the compiler vectorizes with this
 * file's ISA flags. relu keeps NaN (v < 0 is false for it), as max(x, 0) does in NumPy and PyTorch. */
void UKR_NAME(epilogue)(int64_t rows, int64_t cols, T *FC_RESTRICT c, int64_t rs_c, const T *scale,
                        const T *bias, const T *FC_RESTRICT add, int64_t rs_add, int relu) {
    for (int64_t i = 0; i < rows; i++) {
        T *FC_RESTRICT ci = c + i * rs_c;
        const T b = bias ? bias[i] : (T)0;
        if (scale) { /* a batch-norm folded into the output rather than into a copy of the weights */
            const T s = scale[i];
            const T *FC_RESTRICT ai = add ? add + i * rs_add : NULL;
            for (int64_t j = 0; j < cols; j++) {
                T v = SFMA(ci[j], s, b); /* rounded as the micro-kernel's fused epilogue does */
                if (ai) v += ai[j];
                ci[j] = relu && v < (T)0 ? (T)0 : v;
            }
        } else if (add) {
            const T *FC_RESTRICT ai = add + i * rs_add;
            if (relu)
                for (int64_t j = 0; j < cols; j++) {
                    T v = ci[j] + b + ai[j];
                    ci[j] = v < (T)0 ? (T)0 : v;
                }
            else
                for (int64_t j = 0; j < cols; j++) ci[j] = ci[j] + b + ai[j];
        } else if (relu) {
            for (int64_t j = 0; j < cols; j++) {
                T v = ci[j] + b;
                ci[j] = v < (T)0 ? (T)0 : v;
            }
        } else if (bias) {
            for (int64_t j = 0; j < cols; j++) ci[j] += b;
        }
    }
}

#undef UKR_DEFINE
#undef UKR_BODY
#undef UKR_CAT
#undef UKR_CAT_

/* Few rows of A against up to four columns of B whose elements are contiguous (x W^T at a small batch: a fully
 * connected layer at inference): out[4 i + j] = sum_p a[i rs_a + p] b[j cs_b + p] for i < m <= FC_DOT_ROWS,
 * j < ncols <= FC_DOT_COLS. Each vector of B is loaded once for all the rows (columns past ncols repeat the last
 * column, their sums not written); four columns stream at once, for the memory parallelism a single stream
 * lacks. `rows` is a constant in each instantiation: with fewer rows than FC_DOT_ROWS the spare accumulators
 * take the next vectors of k, so that 16 independent sums hide the FMA latency (one row against four columns
 * had 4 chains; LeNet-5's 120 -> 84 layer at batch 1 ran 3.6 us). */
static inline __attribute__((always_inline)) void UKR_NAME(dot_rows)(const int rows, int64_t k,
                                                                     const T *FC_RESTRICT a, int64_t rs_a,
                                                                     const T *FC_RESTRICT b, int64_t cs_b,
                                                                     int64_t ncols, T *FC_RESTRICT out) {
    const int chains = FC_DOT_ROWS / rows; /* vectors of k per step, each into its own accumulators */
    const T *ar[FC_DOT_ROWS], *bc[FC_DOT_COLS];
    for (int i = 0; i < rows; i++) ar[i] = a + i * rs_a;
    for (int j = 0; j < FC_DOT_COLS; j++) bc[j] = b + (j < ncols ? j : ncols - 1) * cs_b;
    VEC acc[FC_DOT_ROWS][FC_DOT_COLS];
#pragma GCC unroll 4
    for (int i = 0; i < FC_DOT_ROWS; i++)
#pragma GCC unroll 4
        for (int j = 0; j < FC_DOT_COLS; j++) acc[i][j] = VZERO();
    /* the next block of columns (past the last one: a prefetch never faults), fetched as this one streams, so that
     * twice as many rows are in flight: each is its own page-long stream, which the hardware prefetcher restarts
     * at every page */
#if VL >= 8
    const T *nb[FC_DOT_COLS];
    for (int j = 0; j < FC_DOT_COLS; j++) nb[j] = bc[j] + FC_DOT_COLS * cs_b;
#endif
    int64_t p = 0;
    for (; p + chains * VL <= k; p += chains * VL) {
#pragma GCC unroll 4
        for (int h = 0; h < chains; h++) {
#if VL >= 8
#pragma GCC unroll 4
            for (int j = 0; j < FC_DOT_COLS; j++) __builtin_prefetch(nb[j] + p + h * VL, 0, 1);
#endif
            VEC x[FC_DOT_COLS];
#pragma GCC unroll 4
            for (int j = 0; j < FC_DOT_COLS; j++) x[j] = VLOADU(bc[j] + p + h * VL);
#pragma GCC unroll 4
            for (int i = 0; i < rows; i++) {
                const VEC av = VLOADU(ar[i] + p + h * VL);
#pragma GCC unroll 4
                for (int j = 0; j < FC_DOT_COLS; j++) acc[h * rows + i][j] = VFMA(av, x[j], acc[h * rows + i][j]);
            }
        }
    }
    for (; p + VL <= k; p += VL) { /* the last whole vectors, fewer than chains of them */
#pragma GCC unroll 4
        for (int i = 0; i < rows; i++) {
            const VEC av = VLOADU(ar[i] + p);
#pragma GCC unroll 4
            for (int j = 0; j < FC_DOT_COLS; j++) acc[i][j] = VFMA(av, VLOADU(bc[j] + p), acc[i][j]);
        }
    }
#pragma GCC unroll 4
    for (int h = 1; h < chains; h++)
#pragma GCC unroll 4
        for (int i = 0; i < rows; i++)
#pragma GCC unroll 4
            for (int j = 0; j < FC_DOT_COLS; j++) acc[i][j] = VADD(acc[i][j], acc[h * rows + i][j]);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < ncols; j++) {
            T s = VHSUM(acc[i][j]);
            for (int64_t q = p; q < k; q++) s += ar[i][q] * bc[j][q];
            out[FC_DOT_COLS * i + j] = s;
        }
}

void UKR_NAME(dot)(int64_t m, int64_t k, const T *FC_RESTRICT a, int64_t rs_a, const T *FC_RESTRICT b,
                   int64_t cs_b, int64_t ncols, T *FC_RESTRICT out) {
    if (m == 1)
        UKR_NAME(dot_rows)(1, k, a, rs_a, b, cs_b, ncols, out);
    else if (m == 2)
        UKR_NAME(dot_rows)(2, k, a, rs_a, b, cs_b, ncols, out);
    else if (m == 3)
        UKR_NAME(dot_rows)(3, k, a, rs_a, b, cs_b, ncols, out);
    else
        UKR_NAME(dot_rows)(4, k, a, rs_a, b, cs_b, ncols, out);
}
