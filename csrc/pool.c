/* Pooling kernels: geometry checks here, the kernels in pool_kernels.inc instantiated for float32 and float64. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastconv/dispatch.h"
#include "fastconv/gemm.h" /* fc_thread_buffer */
#include "fastconv/pool.h"
#include "fastconv/threads.h"

int fc_pool2d_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int ceil_mode, int64_t *out) {
    /* The bounds keep every sum below int64's range. */
    const int64_t big = (int64_t)1 << 60;
    if (in < 1 || kernel < 1 || stride < 1 || pad < 0 || in > big || kernel > big || stride > big || pad > big)
        return FC_ERR_ARG;
    if (pad > kernel / 2 || kernel > in + 2 * pad) return FC_ERR_ARG;
    int64_t span = in + 2 * pad - kernel; /* >= 0 */
    int64_t n = (span + (ceil_mode ? stride - 1 : 0)) / stride + 1;
    if (ceil_mode && (n - 1) * stride >= in + pad) n--;
    *out = n;
    return FC_OK;
}

int fc_pool2d_check(const fc_pool2d_desc *d) {
    int64_t oh, ow, size;
    if (d->batch < 0 || d->channels < 0) return FC_ERR_ARG;
    if (fc_pool2d_output_size(d->in_h, d->kernel_h, d->stride_h, d->pad_h, d->ceil_mode, &oh) ||
        fc_pool2d_output_size(d->in_w, d->kernel_w, d->stride_w, d->pad_w, d->ceil_mode, &ow))
        return FC_ERR_ARG;
    if (oh != d->out_h || ow != d->out_w) return FC_ERR_ARG;
    if (fc_mul_overflow(d->kernel_h, d->kernel_w, &size)) return FC_ERR_OVERFLOW; /* average pooling's divisor */
    if (fc_mul_overflow(d->batch, d->channels, &size) || fc_mul_overflow(size, d->in_h, &size) ||
        fc_mul_overflow(size, d->in_w, &size))
        return FC_ERR_OVERFLOW;
    if (fc_mul_overflow(d->batch, d->channels, &size) || fc_mul_overflow(size, oh, &size) ||
        fc_mul_overflow(size, ow, &size))
        return FC_ERR_OVERFLOW;
    return FC_OK;
}

static int argmax_mode = FC_POOL_ARGMAX_AUTO;

int fc_max_pool2d_set_argmax_mode(int mode) {
    if (mode < FC_POOL_ARGMAX_AUTO || mode > FC_POOL_ARGMAX_WINDOWS) return FC_ERR_ARG;
    argmax_mode = mode;
    return FC_OK;
}

int fc_max_pool2d_argmax_mode(void) { return argmax_mode; }

/* Whether max pooling with argmax takes the separable kernel: horizontal strides 1 and 2 (the vector loads of
 * arch/pool_template.h), a workspace whose size counts in int64, and for float planes and kernel widths small
 * enough for its int32 index lanes: every index it forms (flat indices of the plane, the taps' columns in the
 * padding, the lanes past the row end it never stores) then lies within (-2^29, 2^31). */
int fc_max_pool2d_argmax_separable(const fc_pool2d_desc *d, int64_t elem_size) {
    if (argmax_mode != FC_POOL_ARGMAX_AUTO || (d->stride_w != 1 && d->stride_w != 2)) return 0;
    int64_t ldh, rows, total, plane;
    /* A workspace too large to count in int64 (a kernel some 2^60 rows tall over the padding) runs as before. */
    if (fc_max_pool2d_argmax_layout(d, &ldh, &rows, &total) || fc_mul_overflow(total, elem_size, &total)) return 0;
    if (elem_size == 8) return 1;
    return !fc_mul_overflow(d->in_h, d->in_w, &plane) && plane <= ((int64_t)1 << 30) &&
           d->kernel_w <= ((int64_t)1 << 28);
}

/* The checks of the kernels that read only the sizes: max pooling backward (N, C, H, W, Ho, Wo: the windows are in
 * argmax) and global pooling (N, C, H, W). */
static int check_sizes(const fc_pool2d_desc *d, int with_output) {
    int64_t size;
    if (d->batch < 0 || d->channels < 0 || d->in_h < 1 || d->in_w < 1) return FC_ERR_ARG;
    if (fc_mul_overflow(d->batch, d->channels, &size) || fc_mul_overflow(size, d->in_h, &size) ||
        fc_mul_overflow(size, d->in_w, &size))
        return FC_ERR_OVERFLOW;
    if (!with_output) return FC_OK;
    if (d->out_h < 0 || d->out_w < 0) return FC_ERR_ARG;
    if (fc_mul_overflow(d->batch, d->channels, &size) || fc_mul_overflow(size, d->out_h, &size) ||
        fc_mul_overflow(size, d->out_w, &size))
        return FC_ERR_OVERFLOW;
    return FC_OK;
}

/* Marks a variable that only OpenMP pragmas read (unused in a serial build). */
#define FC_OMP_ONLY __attribute__((unused))


/* Whether the window offsets i * W + j (i < kernel_h) are exact in float, as the vectorized max pooling keeps
 * them: kernel_h * W < 2^24, tested without overflowing. */
static int window_offsets_exact(int64_t kernel_h, int64_t W) { return kernel_h < ((int64_t)1 << 24) / W; }

/* Output columns [lo, hi) whose windows lie entirely inside the input along one axis:
 * o * stride - pad >= 0 and o * stride - pad + kernel <= in. */
static void interior_range(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t *lo,
                           int64_t *hi) {
    int64_t a = (pad + stride - 1) / stride;
    int64_t b = in + pad - kernel >= 0 ? (in + pad - kernel) / stride + 1 : 0;
    if (a > out) a = out;
    if (b > out) b = out;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

/* 16-byte vectors in GNU C's generic vector extension (GCC, Clang): no intrinsics and no ISA flags, the compiler
 * lowers them to SSE2 on x86-64, NEON on ARM, scalar code elsewhere. The max-pool fast path is written with them
 * because the auto-vectorizer leaves a branchy scalar remainder on every row (it peels the last iterations for the
 * gaps of stride-2 loads), which costs a third of the time on the 27-column rows of AlexNet's pooling. */
typedef float fc_vs __attribute__((vector_size(16)));
typedef int32_t fc_vs_mask __attribute__((vector_size(16)));
typedef double fc_vd __attribute__((vector_size(16)));
typedef int64_t fc_vd_mask __attribute__((vector_size(16)));
typedef int64_t fc_v4l __attribute__((vector_size(32))); /* argmax of a float vector (the compiler splits it) */

#if defined(__clang__) || __GNUC__ >= 12
#define FC_SHUFFLE(a, b, mask_t, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define FC_SHUFFLE(a, b, mask_t, ...) __builtin_shuffle(a, b, (mask_t){__VA_ARGS__})
#endif

/* tap[j] = the vector p[j], p[j + S], p[j + 2S], ... for j < kw, with S = 1 (kw <= 4) or S = 2 (kw = 2 or 3),
 * reading no element past the last one used. With stride 2 a tap is the even or odd lanes of two loads: taps 0
 * and 1 share theirs, tap 2 takes two more. */
static inline void row_taps_s(const float *p, int64_t S, int kw, fc_vs *tap) {
    fc_vs a, b;
    if (S == 1) {
        for (int j = 0; j < kw; j++) memcpy(&tap[j], p + j, sizeof a);
        return;
    }
    memcpy(&a, p, sizeof a);     /* p0 p1 p2 p3 */
    memcpy(&b, p + 4, sizeof b); /* p4 p5 p6 p7 */
    tap[0] = FC_SHUFFLE(a, b, fc_vs_mask, 0, 2, 4, 6);
    tap[1] = FC_SHUFFLE(a, b, fc_vs_mask, 1, 3, 5, 7);
    if (kw == 3) {
        memcpy(&a, p + 2, sizeof a); /* p2 p3 p4 p5 */
        memcpy(&b, p + 5, sizeof b); /* p5 p6 p7 p8 */
        tap[2] = FC_SHUFFLE(a, b, fc_vs_mask, 0, 2, 5, 7);
    }
}

static inline void row_taps_d(const double *p, int64_t S, int kw, fc_vd *tap) {
    fc_vd a, b;
    if (S == 1) {
        for (int j = 0; j < kw; j++) memcpy(&tap[j], p + j, sizeof a);
        return;
    }
    memcpy(&a, p, sizeof a);     /* p0 p1 */
    memcpy(&b, p + 2, sizeof b); /* p2 p3 */
    tap[0] = FC_SHUFFLE(a, b, fc_vd_mask, 0, 2);
    tap[1] = FC_SHUFFLE(a, b, fc_vd_mask, 1, 3);
    if (kw == 3) {
        memcpy(&a, p + 3, sizeof a); /* p3 p4 */
        tap[2] = FC_SHUFFLE(b, a, fc_vd_mask, 0, 3);
    }
}

/* am[c] = first + c * S + r[c] for the lanes c of r, small non-negative integers held in floating point (converted
 * through int32: SSE2 has no float to int64 conversion). */
static inline void store_index_s(int64_t *am, int64_t first, int64_t S, fc_vs r) {
    const fc_v4l index = (fc_v4l){first, first + S, first + 2 * S, first + 3 * S} +
                         __builtin_convertvector(__builtin_convertvector(r, fc_vs_mask), fc_v4l);
    memcpy(am, &index, sizeof index);
}
static inline void store_index_d(int64_t *am, int64_t first, int64_t S, fc_vd r) {
    am[0] = first + (int64_t)r[0];
    am[1] = first + S + (int64_t)r[1];
}

#define T float
#define PFX s
#define VEC fc_vs
#define VMASK fc_vs_mask
#define ROW_TAPS row_taps_s
#define STORE_INDEX store_index_s
#include "pool_kernels.inc"
#undef T
#undef PFX
#undef VEC
#undef VMASK
#undef ROW_TAPS
#undef STORE_INDEX

#define T double
#define PFX d
#define VEC fc_vd
#define VMASK fc_vd_mask
#define ROW_TAPS row_taps_d
#define STORE_INDEX store_index_d
#include "pool_kernels.inc"
#undef T
#undef PFX
#undef VEC
#undef VMASK
#undef ROW_TAPS
#undef STORE_INDEX
