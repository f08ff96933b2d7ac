/* Convolution entry points: geometry checks, then the drivers of conv_impl.inc for float32 and float64. */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastconv/conv.h"
#include "fastconv/dispatch.h"
#include "fastconv/gemm.h"
#include "fastconv/im2col.h"
#include "fastconv/pool.h"
#include "fastconv/threads.h"

/* 1x1, stride 1, no padding, no dilation: the image is its own column matrix. */
static int fc_conv2d_is_pointwise(const fc_conv2d_desc *d) {
    return d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 && d->ph == 0 && d->pw == 0;
}

/* A kernel that covers the whole unpadded input (LeNet's C5: 16 x 5x5 -> 120 at 1x1) makes the layer a fully
 * connected one: y[n, f] = W[f, :] . x[n, :], each image's input one row of a matrix already. */
static int fc_conv2d_is_dense(const fc_conv2d_desc *d) {
    if (fc_conv2d_winograd_mode() == FC_CONV_WINOGRAD_ALWAYS) return 0; /* forced: every 3x3 layer on Winograd */
    return d->groups == 1 && d->oh == 1 && d->ow == 1 && d->ph == 0 && d->pw == 0 && d->kh == d->h &&
           d->kw == d->w && (d->kh == 1 || d->dh == 1) && (d->kw == 1 || d->dw == 1);
}

static int input_grad_method = FC_CONV_DX_AUTO;

int fc_conv2d_set_input_grad_method(int method) {
    if (method < FC_CONV_DX_AUTO || method > FC_CONV_DX_FLIPPED) return FC_ERR_ARG;
    input_grad_method = method;
    return FC_OK;
}

int fc_conv2d_input_grad_method(void) { return input_grad_method; }

int fc_conv2d_prepare(fc_conv2d_desc *d) {
    if (d->n < 0 || d->c < 1 || d->h < 1 || d->w < 1 || d->f < 1 || d->kh < 1 || d->kw < 1 || d->sh < 1 ||
        d->sw < 1 || d->ph < 0 || d->pw < 0 || d->dh < 1 || d->dw < 1 || d->groups < 1 || d->c % d->groups ||
        d->f % d->groups)
        return FC_ERR_ARG;
    int64_t ext_h, ext_w, span_h, span_w, t;
    if (fc_mul_overflow(d->dh, d->kh - 1, &ext_h) || fc_mul_overflow(d->dw, d->kw - 1, &ext_w) ||
        fc_mul_overflow(d->ph, 2, &span_h) || fc_mul_overflow(d->pw, 2, &span_w) ||
        fc_add_overflow(span_h, d->h, &span_h) || fc_add_overflow(span_w, d->w, &span_w))
        return FC_ERR_OVERFLOW;
    if (span_h - ext_h < 1 || span_w - ext_w < 1) return FC_ERR_ARG; /* kernel larger than the padded input */
    d->oh = (span_h - ext_h - 1) / d->sh + 1;
    d->ow = (span_w - ext_w - 1) / d->sw + 1;
    /* every product the drivers form, checked once here */
    if (fc_mul_overflow(d->n, d->c, &t) || fc_mul_overflow(t, d->h, &t) || fc_mul_overflow(t, d->w, &t) ||
        fc_mul_overflow(d->n, d->f, &t) || fc_mul_overflow(t, d->oh, &t) || fc_mul_overflow(t, d->ow, &t) ||
        fc_mul_overflow(d->f, d->c, &t) || fc_mul_overflow(t, d->kh, &t) || fc_mul_overflow(t, d->kw, &t) ||
        fc_mul_overflow(t, 8 * 64, &t))
        return FC_ERR_OVERFLOW;
    return FC_OK;
}

/* Images per GEMM: small images side by side give the GEMM about FC_CONV_BATCH_COLS columns, as long as the
 * (f/groups x nb*oh*ow) staging buffer stays within FC_CONV_TILE_ELEMS * 4 elements. Larger images run one per
 * GEMM, writing y in place (the staging copy costs more than a wider GEMM gains). */
static int64_t fc_conv2d_images_per_gemm(const fc_conv2d_desc *d, int threads) {
    int64_t p = d->oh * d->ow, fg = d->f / d->groups;
    if (p >= FC_CONV_SMALL_IMAGE || d->n <= 1) return 1;
    int64_t nb = (FC_CONV_BATCH_COLS + p - 1) / p;
    int64_t cap = 4 * FC_CONV_TILE_ELEMS / (fg * p);
    if (nb > cap) nb = cap;
    if (nb > d->n) nb = d->n;
    /* at least one batch per thread: one GEMM shared by the threads ran slower than on one (GoogLeNet's 1x1
     * layers at 14x14, batch 8: 8 images in one 64 x 1568 x 512 GEMM took 1.7 ms on 2 threads, 1.1 ms on one) */
    if (threads > 1 && d->n >= threads && nb * threads > d->n) nb = (d->n + threads - 1) / threads;
    if (nb < 1) return 1;
    /* equal batches: 16 images of 13x13 run as 8 + 8, not 13 + 3 (whose small GEMM runs slowly) */
    int64_t chunks = (d->n + nb - 1) / nb;
    return (d->n + chunks - 1) / chunks;
}

/* Columns per col2im tile of the input gradient: the kdim x tile matrix stays within FC_CONV_TILE_ELEMS. */
static int64_t fc_conv2d_tile_columns(const fc_conv2d_desc *d, int64_t nb) {
    int64_t kdim = d->c / d->groups * d->kh * d->kw, cols = nb * d->oh * d->ow;
    int64_t tp = FC_CONV_TILE_ELEMS / kdim;
    if (tp < 16) tp = 16; /* a very deep kernel still gets a GEMM worth running */
    return tp < cols ? tp : cols;
}

/* The forward batches only images below FC_CONV_FORWARD_IMAGE_COLS output pixels: from there its own GEMM per
 * image, written straight into y by the micro-kernels' epilogue, beats the wider GEMM's staging copy (14x14 1x1
 * layers of GoogLeNet and ResNet 3-20 % faster at batch 8, 1 and 2 threads; 7x7 gained nothing). */
#define FC_CONV_FORWARD_IMAGE_COLS 192
static int64_t fc_conv2d_forward_images_per_gemm(const fc_conv2d_desc *d, int threads) {
    return d->oh * d->ow >= FC_CONV_FORWARD_IMAGE_COLS ? 1 : fc_conv2d_images_per_gemm(d, threads);
}

int64_t fc_conv2d_workspace_bytes(const fc_conv2d_desc *d, int64_t elem_size) {
    int64_t nb = fc_conv2d_images_per_gemm(d, 1), kdim = d->c / d->groups * d->kh * d->kw;
    int64_t staging = nb > 1 ? d->f / d->groups * nb * d->oh * d->ow : 0;
    return (kdim * fc_conv2d_tile_columns(d, nb) + staging) * elem_size;
}

/* ---------------------------------------------------------------- direct convolution: geometry and choice */

static int direct_mode = FC_CONV_DIRECT_AUTO;

int fc_conv2d_set_direct_mode(int mode) {
    if (mode < FC_CONV_DIRECT_AUTO || mode > FC_CONV_DIRECT_ALWAYS) return FC_ERR_ARG;
    direct_mode = mode;
    return FC_OK;
}

int fc_conv2d_direct_mode(void) { return direct_mode; }

/* Elements of input and gradient one thread stages for the direct weight gradient (1 MiB of float32). */
#define FC_DIRECT_STAGE_ELEMS ((int64_t)1 << 18)
/* The direct path serves small images only: one padded image group must stay below this many elements. */
#define FC_DIRECT_MAX_STAGE ((int64_t)1 << 22)

/* The wide pixel grid of arch/direct_template.h for layer d and vector length vl. */
typedef struct fc_direct_grid {
    int64_t hp, wp;       /* padded input plane */
    int64_t hq, wq;       /* one phase plane of it: ceil(hp / sh) x ceil(wp / sw); wq is the wide grid's row stride */
    int64_t phase, plane; /* hq * wq values per phase plane, sh * sw phase planes per channel */
    int64_t qv;           /* wide-grid pixels computed: (oh-1)*wq + ow rounded up to vl */
    int64_t slack;        /* zeros after the last plane, read by the last vectors */
    int64_t stage_images; /* images per staged batch of the weight gradient */
} fc_direct_grid;

/* A strided layer is made a stride-1 one by splitting each padded channel into its sh * sw phases,
 *     phase (a, b) at (r, j) = xpad(r sh + a, j sw + b),
 * each a plane of hq x wq values: the tap (ki, kj) of output (oy, ox) reads phase (ki dh % sh, kj dw % sw) at
 * (oy + ki dh / sh, ox + kj dw / sw), one offset per tap on the wide grid of row stride wq again. (Those indices
 * stay inside the phase plane: (oy sh + ki dh) / sh <= (hp - 1) / sh < hq.) At stride 1 there is one phase, the
 * padded plane itself.
 * FC_ERR_OVERFLOW when the padded image is too large for the direct path (it is meant for small ones). */
static int fc_direct_grid_init(fc_direct_grid *g, const fc_conv2d_desc *d, int vl) {
    int64_t cg = d->c / d->groups, fg = d->f / d->groups, stage;
    g->hp = d->h + 2 * d->ph; /* both checked by fc_conv2d_prepare */
    g->wp = d->w + 2 * d->pw;
    g->hq = (g->hp + d->sh - 1) / d->sh;
    g->wq = (g->wp + d->sw - 1) / d->sw;
    if (fc_mul_overflow(g->hq, g->wq, &g->phase) || fc_mul_overflow(g->phase, d->sh, &g->plane) ||
        fc_mul_overflow(g->plane, d->sw, &g->plane) || fc_mul_overflow(g->plane, cg, &stage) ||
        stage > FC_DIRECT_MAX_STAGE)
        return FC_ERR_OVERFLOW;
    g->qv = ((d->oh - 1) * g->wq + d->ow + vl - 1) / vl * vl;
    g->slack = vl;
    /* the gradient's wide rows, fg rounded up to any weight-gradient tile height (<= 16) */
    int64_t rows, per_image;
    if (fc_mul_overflow(fg + 16, g->qv, &rows) || fc_add_overflow(rows, stage + g->slack, &per_image) ||
        per_image > FC_DIRECT_MAX_STAGE)
        return FC_ERR_OVERFLOW;
    g->stage_images = FC_DIRECT_STAGE_ELEMS / per_image;
    if (g->stage_images < 1) g->stage_images = 1;
    return FC_OK;
}

/* Whether layer d runs on the direct kernels. They need a small padded image. Stride 1, measured against the
 * GEMM path (1 thread, forward / input grad / weight grad): 1.6-4x faster on LeNet's layers, 1.1-1.4x on 3x3
 * layers of 32 to 128 filters whose padded input stays within about half the L2 cache (ResNet's 64 at 56x56 and
 * 128 at 28x28); no faster at 256 filters, slower at 384-512 (AlexNet conv3, VGG conv5) and when one image's padded
 * input spills the L2 (VGG conv3_1's input gradient, 256 channels at 58x58). One filter per group wastes most of
 * the kernel's filter block; 1x1 layers run 0.67x (GoogLeNet's 192->64). */
#define FC_DIRECT_MAX_FILTERS 128
#define FC_DIRECT_MAX_IMAGE_BYTES ((int64_t)1 << 20)
#define FC_STRIDED_DIRECT_MAX_CHANNELS 4
static int fc_conv2d_use_direct(const fc_conv2d_desc *d, int vl, int64_t elem_size) {
    fc_direct_grid g;
    if (direct_mode == FC_CONV_DIRECT_NEVER || fc_direct_grid_init(&g, d, vl) != FC_OK) return 0;
    if (direct_mode == FC_CONV_DIRECT_ALWAYS) return 1;
    int64_t fg = d->f / d->groups;
    /* strided layers (on their phase planes) only with a network's first-layer shape: measured at batch 8,
     * 1 thread, forward / weight gradient against the GEMM path, 3 -> 64 7x7 stride 2 (GoogLeNet, ResNet) at 224
     * runs 1.47x / 1.50x; 3 -> 96 7x7 stride 2 pad 1 1.0x / 1.19x; but with many channels the direct forward
     * loses (64 -> 128 3x3 stride 2 at 56: 0.67x) */
    if ((d->sh != 1 || d->sw != 1) && (d->c / d->groups > FC_STRIDED_DIRECT_MAX_CHANNELS || d->kh * d->kw < 9))
        return 0;
    if (d->kh == 1 && d->kw == 1) return 0; /* 1x1: the GEMM path reads the image as is, nothing to gain */
    if (2 * d->oh * d->ow < g.qv) return 0;  /* mostly dropped wide-grid columns (LeNet's C5: 1 pixel of 16) */
    /* Below 65 % of the columns kept the GEMM path wins unless the batch fills one image per lane: GoogLeNet's 5x5
     * layers at 7x7 (61 %), batch 8, forward / backward 1.15-1.23x / 1.19-1.24x on 1 thread, 1.34-1.44x /
     * 1.76-1.79x on 2; at batch 16 the lanes layout runs them 1.35x faster than the GEMM. LeNet's C3 (69 %) stays
     * direct (3.5x). */
    if (100 * d->oh * d->ow < 65 * g.qv && !fc_conv2d_direct_lanes(d, vl)) return 0;
    return fg >= 2 && fg <= FC_DIRECT_MAX_FILTERS && d->c / d->groups * g.plane * elem_size <= FC_DIRECT_MAX_IMAGE_BYTES;
}

static int direct_layout = FC_CONV_DIRECT_LAYOUT_AUTO;

int fc_conv2d_set_direct_layout(int layout) {
    if (layout < FC_CONV_DIRECT_LAYOUT_AUTO || layout > FC_CONV_DIRECT_LAYOUT_LANES) return FC_ERR_ARG;
    direct_layout = layout;
    return FC_OK;
}

int fc_conv2d_direct_layout(void) { return direct_layout; }

int fc_conv2d_direct_lanes(const fc_conv2d_desc *d, int vl) {
    fc_direct_grid g;
    int64_t stage;
    /* lanes stage whole padded rows: stride 1 only */
    if (direct_layout == FC_CONV_DIRECT_LAYOUT_WIDE || d->sh != 1 || d->sw != 1 || fc_direct_grid_init(&g, d, vl) != FC_OK)
        return 0;
    /* the staged group of vl images must stay as small as the wide path's one image */
    if (fc_mul_overflow(g.plane * (d->c / d->groups), vl, &stage) || stage > FC_DIRECT_MAX_STAGE) return 0;
    if (direct_layout == FC_CONV_DIRECT_LAYOUT_LANES) return 1;
    /* useful fraction of the computed pixels: wide oh*ow / qv, lanes n / (n rounded up to vl); lanes pays for
     * interleaving the input and the output, so it must win clearly */
    int64_t lanes_total = (d->n + vl - 1) / vl * vl;
    return 10 * d->n * g.qv > 12 * d->oh * d->ow * lanes_total;
}

/* Layers rearranged into 3x3-like stride-1 layers that run on Winograd. The input becomes phases,
 *     x2[c, a, b](i, j) = xpad[c](i s + a t, j s + b t),   a, b < P,
 * an image of c P^2 channels on which the kernel w2[f][c, a, b](u, v) = w[f][c](u s + a t, v s + b t) (zero past
 * k) at stride 1 gives the same output:
 *  - strided layers ("space to depth"): P = s, t = 1, kernel ceil(k / s). AlexNet's conv1, 11x11 stride 4 on 3
 *    channels, becomes a 3x3 layer on 48 channels (1.19x the multiplications, then Winograd's 2.25x fewer; and a
 *    stride-1 read of the input: the strided gather of the im2col packing cost a quarter of conv1's time);
 *  - 5x5 and 6x6 stride-1 layers: P = 2, t = 3, four 3x3 kernels on shifted copies of the input (16
 *    multiplications per output and channel instead of 25): AlexNet's conv2 with 256 filters 1.17x faster forward
 *    and backward (1 thread). Only from 32 channels and beyond the direct kernels' filter counts: against them
 *    (AlexNet's grouped conv2, GoogLeNet's 5x5 branches) it gained nothing.
 * Fills d2 (and the phase step t) and returns 1 when layer d goes this way. */
int fc_conv2d_rearranged(const fc_conv2d_desc *d, fc_conv2d_desc *d2, int64_t *step) {
    if (d->sh != d->sw || d->sh > 8 || d->dh != 1 || d->dw != 1 || d->n < 1) return 0;
    int64_t s = d->sh, phases, t, kh2, kw2;
    if (s >= 2) {
        phases = s, t = 1, kh2 = (d->kh + s - 1) / s, kw2 = (d->kw + s - 1) / s;
    } else if (d->kh == d->kw && (d->kh == 5 || d->kh == 6) &&
               ((d->c / d->groups >= 32 && d->f / d->groups > FC_DIRECT_MAX_FILTERS) ||
                fc_conv2d_winograd_mode() == FC_CONV_WINOGRAD_ALWAYS)) {
        phases = 2, t = 3, kh2 = kw2 = 3;
    } else {
        return 0;
    }
    fc_conv2d_desc r = {d->n, d->c * phases * phases, d->oh + kh2 - 1, d->ow + kw2 - 1, d->f, kh2, kw2, 1, 1, 0, 0,
                        1, 1, d->groups, 0, 0}; /* c * 64 cannot overflow: prepare bounds c * 512 */
    if (fc_conv2d_prepare(&r) != FC_OK || r.oh != d->oh || r.ow != d->ow || !fc_conv2d_use_winograd(&r)) return 0;
    *d2 = r;
    *step = t;
    return 1;
}

int fc_conv2d_forward_path(const fc_context *ctx, const fc_conv2d_desc *d, int64_t elem_size) {
    fc_conv2d_desc d2;
    int64_t step;
    if (fc_conv2d_is_dense(d)) return FC_CONV_PATH_GEMM;
    if (fc_conv2d_use_winograd(d) || fc_conv2d_rearranged(d, &d2, &step)) return FC_CONV_PATH_WINOGRAD;
    int vl = elem_size == (int64_t)sizeof(float) ? ctx->arch->s.vl : ctx->arch->d.vl;
    if (d->n > 0 && fc_conv2d_use_direct(d, vl, elem_size)) return FC_CONV_PATH_DIRECT;
    return FC_CONV_PATH_GEMM;
}

#define T float
#define PFX s
#define KERNEL_T fc_sgemm_kernel
#include "conv_impl.inc"
#undef T
#undef PFX
#undef KERNEL_T

#define T double
#define PFX d
#define KERNEL_T fc_dgemm_kernel
#include "conv_impl.inc"
#undef T
#undef PFX
#undef KERNEL_T
