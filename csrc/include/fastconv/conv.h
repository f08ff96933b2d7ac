/* 2-D convolution, NCHW, forward and backward, float32 (s) and float64 (d).
 *
 *   x (n, c, h, w) * weight (f, c/groups, kh, kw) + bias (f) -> y (n, f, oh, ow)
 *   oh = (h + 2 ph - dh (kh - 1) - 1) / sh + 1, likewise ow.
 *
 * 3x3 stride-1 layers with enough channels run Winograd F(2x2, 3x3) forward (winograd_impl.inc), stride-1
 * layers with few filters direct kernels (conv_impl.inc); the rest as follows.
 * Forward and the weight gradient run the GEMM with B packed straight from the image (implicit im2col): no
 * column matrix is ever materialized. The input gradient multiplies W^T by dY one tile of output pixels at a
 * time and scatters the tile back with col2im, so its workspace is bounded by FC_CONV_TILE_ELEMS elements per
 * thread whatever the batch or image size. 1x1 / stride 1 / pad 0 / dilation 1 convolutions skip im2col and
 * col2im entirely (the image *is* the column matrix).
 *
 * Threads: with at least as many (large) images as threads, images are spread over the threads and every GEMM
 * runs single-threaded; otherwise each GEMM uses all threads. Never both. Small images are batched several to a
 * GEMM (conv_impl.inc). */
#ifndef FASTCONV_CONV_H
#define FASTCONV_CONV_H

#include "fastconv/base.h"
#include "fastconv/gemm.h"

typedef struct fc_conv2d_desc {
    int64_t n, c, h, w;     /* input */
    int64_t f;              /* output channels */
    int64_t kh, kw;         /* kernel */
    int64_t sh, sw;         /* stride >= 1 */
    int64_t ph, pw;         /* zero padding >= 0 on both sides */
    int64_t dh, dw;         /* dilation >= 1 */
    int64_t groups;         /* divides c and f */
    int64_t oh, ow;         /* output size, filled in by fc_conv2d_prepare */
    int64_t pool3;          /* 0; 1 inside fc_Xconv2d_forward_pooled only (x max-pooled 3x3/1/1 first) */
} fc_conv2d_desc;

/* Elements of the per-thread column tile used by the input gradient (4 MiB of float32). */
#define FC_CONV_TILE_ELEMS ((int64_t)1 << 20)
/* Images with fewer output pixels than FC_CONV_SMALL_IMAGE are batched, FC_CONV_BATCH_COLS pixels to a GEMM
 * (see conv_impl.inc). */
#ifndef FC_CONV_SMALL_IMAGE
#define FC_CONV_SMALL_IMAGE 512
#endif
#define FC_CONV_BATCH_COLS 2048

/* How the input gradient is computed (process-wide; tests pin each method, users never need to):
 *   FC_CONV_DX_AUTO     the cheaper of the two below for the layer (the default)
 *   FC_CONV_DX_COL2IM   GEMM W^T dY per tile of output pixels, scattered back by col2im
 *   FC_CONV_DX_FLIPPED  forward convolution of dY with the flipped, transposed weights, where the geometry allows
 *                       it (stride 1, padding <= the dilated kernel extent); col2im elsewhere */
enum { FC_CONV_DX_AUTO = 0, FC_CONV_DX_COL2IM = 1, FC_CONV_DX_FLIPPED = 2 };
int fc_conv2d_set_input_grad_method(int method);
int fc_conv2d_input_grad_method(void);

/* Direct convolution (arch/direct_template.h) for stride-1 layers with few filters, forward and weight gradient
 * (and so the input gradient when it runs as a flipped forward convolution). Process-wide, for tests:
 *   FC_CONV_DIRECT_AUTO    where it is faster (the default)
 *   FC_CONV_DIRECT_NEVER   always the GEMM path
 *   FC_CONV_DIRECT_ALWAYS  every stride-1 layer whose padded image is small enough */
enum { FC_CONV_DIRECT_AUTO = 0, FC_CONV_DIRECT_NEVER = 1, FC_CONV_DIRECT_ALWAYS = 2 };
int fc_conv2d_set_direct_mode(int mode);
int fc_conv2d_direct_mode(void);
/* The direct forward's layout of the pixels in a vector: "wide" rows of one image (the kernel computes the
 * padded row's extra columns and drops them) or "lanes", one image per lane (VL images staged interleaved, no
 * column computed in vain; the last group's missing images padded with zeros). Auto picks the layout that wastes
 * less (LeNet's 10x10 outputs of 14-wide rows: lanes). Process-wide, for tests. */
enum { FC_CONV_DIRECT_LAYOUT_AUTO = 0, FC_CONV_DIRECT_LAYOUT_WIDE = 1, FC_CONV_DIRECT_LAYOUT_LANES = 2 };
int fc_conv2d_set_direct_layout(int layout);
int fc_conv2d_direct_layout(void);
/* Whether layer d (on the direct path) runs its forward with images in the lanes of vectors of vl elements. */
int fc_conv2d_direct_lanes(const fc_conv2d_desc *d, int vl);

/* Winograd F(2x2, 3x3) (winograd_impl.inc) for 3x3, stride-1, undilated layers, forward (and so the input
 * gradient when it runs as a flipped forward convolution). Process-wide, for tests:
 *   FC_CONV_WINOGRAD_AUTO    when both channels and filters per group are >= FC_WINOGRAD_MIN_CHANNELS
 *   FC_CONV_WINOGRAD_NEVER   never
 *   FC_CONV_WINOGRAD_ALWAYS  every 3x3 stride-1 undilated layer */
enum { FC_CONV_WINOGRAD_AUTO = 0, FC_CONV_WINOGRAD_NEVER = 1, FC_CONV_WINOGRAD_ALWAYS = 2 };
#define FC_WINOGRAD_MIN_CHANNELS 16
#define FC_WINOGRAD_MIN_FILTERS 32
/* Tiles (2x2 outputs each) transformed and multiplied per block. */
#define FC_WINOGRAD_BLOCK 96
int fc_conv2d_set_winograd_mode(int mode);
int fc_conv2d_winograd_mode(void);
/* The forward's output tile: F(2x2, 3x3) or F(4x4, 3x3) (1.78x fewer multiplications, a larger rounding bound).
 * FC_CONV_WINOGRAD_TILE_AUTO picks per layer, for the forward and the weight gradient; 2 or 4 force it
 * (process-wide, for tests). */
enum { FC_CONV_WINOGRAD_TILE_AUTO = 0 };
int fc_conv2d_set_winograd_tile(int tile);
int fc_conv2d_winograd_tile(void);
int fc_conv2d_winograd_tile_for(const fc_conv2d_desc *d);
int fc_conv2d_winograd_weight_grad_tile(const fc_conv2d_desc *d, int threads);
/* Whether layer d's forward runs on the Winograd path; whether its weight gradient does (in auto mode only from
 * 64 channels and filters per group and 96 tiles of 2x2 outputs). */
int fc_conv2d_use_winograd(const fc_conv2d_desc *d);
int fc_conv2d_use_winograd_weight_grad(const fc_conv2d_desc *d);
/* Called by fc_Xconv2d_forward when fc_conv2d_use_winograd(d); d already prepared. Workspace, with P = 16 points
 * (F(2x2)) or 36 (F(4x4)): the transformed weights (P x f x c/groups) and per thread
 * P x (c/groups + f/groups) x FC_WINOGRAD_BLOCK elements. */
int fc_sconv2d_forward_winograd(const fc_context *ctx, const float *x, float *y, int64_t ldy, const float *weight,
                                const float *scale, const float *bias, const float *res, int relu,
                                const fc_conv2d_desc *d);
int fc_dconv2d_forward_winograd(const fc_context *ctx, const double *x, double *y, int64_t ldy,
                                const double *weight, const double *scale, const double *bias, const double *res,
                                int relu, const fc_conv2d_desc *d);
/* The input gradient of a layer whose flipped form t (fc_conv2d_use_winograd(t): stride 1, dy padded, filters
 * and channels swapped) runs on Winograd, from the layer's own weights (flipped and swapped on the fly). */
int fc_sconv2d_input_grad_winograd(const fc_context *ctx, const float *dy, float *dx, const float *weight,
                                   const fc_conv2d_desc *t);
int fc_dconv2d_input_grad_winograd(const fc_context *ctx, const double *dy, double *dx, const double *weight,
                                   const fc_conv2d_desc *t);
/* The weight gradient of such a layer (dweight only). Workspace per thread: P x (f + c)/groups x up to kc tiles
 * for the transforms, and P x f x c/groups for its sums. */
int fc_sconv2d_backward_weight_winograd(const fc_context *ctx, const float *x, const float *dy, float *dweight,
                                        const fc_conv2d_desc *d);
int fc_dconv2d_backward_weight_winograd(const fc_context *ctx, const double *x, const double *dy, double *dweight,
                                        const fc_conv2d_desc *d);

/* Whether layer d (strided, or 5x5/6x6) runs as the stride-1 layer d2 on its input rearranged into phases (conv.c;
 * *step: the phase step); then on Winograd. Workspace: a rearranged copy of the input (or of dx) and of the
 * weights. */
int fc_conv2d_rearranged(const fc_conv2d_desc *d, fc_conv2d_desc *d2, int64_t *step);

/* Which path fc_Xconv2d_forward takes for layer d (prepared) with the current settings and context. */
enum { FC_CONV_PATH_GEMM = 0, FC_CONV_PATH_DIRECT = 1, FC_CONV_PATH_WINOGRAD = 2 };
int fc_conv2d_forward_path(const fc_context *ctx, const fc_conv2d_desc *d, int64_t elem_size);

/* Compute oh/ow and check every size product for int64 overflow. FC_ERR_ARG when the geometry is invalid. */
int fc_conv2d_prepare(fc_conv2d_desc *d);

/* Bytes of workspace per thread the kernels may allocate (packing buffers excluded). */
int64_t fc_conv2d_workspace_bytes(const fc_conv2d_desc *d, int64_t elem_size);

int fc_sconv2d_forward(const fc_context *ctx, const float *x, float *y, const float *weight, const float *bias,
                       const fc_conv2d_desc *d);
int fc_dconv2d_forward(const fc_context *ctx, const double *x, double *y, const double *weight,
                       const double *bias, const fc_conv2d_desc *d);
/* The forward with the next layers of an inference fused in: y = relu?(conv(x) * scale + bias + res), scale and
 * bias per output channel (a batch-norm folded in without copying the weights; NULL: 1 and 0), res (NULL for
 * none) laid out as y (a residual block's shortcut), relu clamping at 0 with NaN kept. Each output is written once, in
 * the GEMM's or the Winograd output transform's tile while it is in cache. Image i of y starts at y + i * ldy
 * (0: f * oh * ow, dense; larger: y is a channel slice of a wider array, an inception block's concatenation). */
int fc_sconv2d_forward_fused(const fc_context *ctx, const float *x, float *y, int64_t ldy, const float *weight,
                             const float *scale, const float *bias, const float *res, int relu,
                             const fc_conv2d_desc *d);
int fc_dconv2d_forward_fused(const fc_context *ctx, const double *x, double *y, int64_t ldy, const double *weight,
                             const double *scale, const double *bias, const double *res, int relu,
                             const fc_conv2d_desc *d);

/* Weights prepared once for many inference forwards of one layer, behind a 64-byte header saying for what they
 * were made: on the Winograd path (directly, or after a strided or 5x5 layer's rearrangement into a 3x3 stride-1
 * one) the transformed weights U (arch's mr, tile, channels, filters, groups, rearrangement); on the GEMM path each
 * group's weights packed into the GEMM's panels (arch's mr and kc, filters, depth, groups), used where the layer
 * runs image after image. Elements needed for layer d with the current settings (0: its forward runs the direct
 * kernels, nothing to prepare; -1: overflow). */
int64_t fc_sconv2d_prepared_weights_elems(const fc_context *ctx, const fc_conv2d_desc *d);
int64_t fc_dconv2d_prepared_weights_elems(const fc_context *ctx, const fc_conv2d_desc *d);
/* Writes them; FC_ERR_ARG when elems is not the size above or there is nothing to prepare. */
int fc_sconv2d_prepare_weights(const fc_context *ctx, const float *weight, float *prepared, int64_t elems,
                               const fc_conv2d_desc *d);
int fc_dconv2d_prepare_weights(const fc_context *ctx, const double *weight, double *prepared, int64_t elems,
                               const fc_conv2d_desc *d);
/* fc_Xconv2d_forward_fused reading prepared weights where their header matches what the layer would transform
 * now; otherwise (another tile, arch or layer, or prepared NULL) from weight, which must be the same weights. */
int fc_sconv2d_forward_prepared(const fc_context *ctx, const float *x, float *y, int64_t ldy, const float *weight,
                                const float *prepared, int64_t elems, const float *scale, const float *bias,
                                const float *res, int relu, const fc_conv2d_desc *d);
int fc_dconv2d_forward_prepared(const fc_context *ctx, const double *x, double *y, int64_t ldy,
                                const double *weight, const double *prepared, int64_t elems, const double *scale,
                                const double *bias, const double *res, int relu, const fc_conv2d_desc *d);
/* fc_Xconv2d_forward_prepared of max_pool2d(x, 3, stride 1, padding 1) for a pointwise layer on the GEMM path (an
 * inception block's pool branch): each image (or batch of small images) is pooled into a per-thread buffer that
 * the GEMM then reads while it is in cache, so the pooled tensor is never written out and read back. The values
 * are those of fc_Xmax_pool2d_forward_values followed by the convolution, bit for bit. FC_ERR_ARG for any other
 * layer (the caller pools and convolves separately). Workspace: one image's input per thread (a batch of them
 * for images below 192 output pixels). */
int fc_sconv2d_forward_pooled(const fc_context *ctx, const float *x, float *y, int64_t ldy, const float *weight,
                              const float *prepared, int64_t elems, const float *scale, const float *bias,
                              const float *res, int relu, const fc_conv2d_desc *d);
int fc_dconv2d_forward_pooled(const fc_context *ctx, const double *x, double *y, int64_t ldy,
                              const double *weight, const double *prepared, int64_t elems, const double *scale,
                              const double *bias, const double *res, int relu, const fc_conv2d_desc *d);
/* Several layers that read the same input, run as one: the filters of weight (d->f of them, one group, a layer on
 * the GEMM path) split in order over nout outputs (at most FC_GEMM_MAX_SPLIT), output s taking outs[s].f of them,
 * its image i at outs[s].y + i * outs[s].ldy (0: dense). Each output is what fc_Xconv2d_forward_prepared gives for
 * its filters, scale and bias entries (no residual); the input is packed once for all (an inception block's 1x1
 * convolutions). FC_ERR_ARG for a layer off the GEMM path, groups, or filter counts that do not add up to d->f. */
typedef struct fc_sconv2d_output {
    float *y;
    int64_t ldy;
    int64_t f;
} fc_sconv2d_output;
typedef struct fc_dconv2d_output {
    double *y;
    int64_t ldy;
    int64_t f;
} fc_dconv2d_output;
int fc_sconv2d_forward_split(const fc_context *ctx, const float *x, const fc_sconv2d_output *outs, int nout,
                             const float *weight, const float *prepared, int64_t elems, const float *scale,
                             const float *bias, int relu, const fc_conv2d_desc *d);
int fc_dconv2d_forward_split(const fc_context *ctx, const double *x, const fc_dconv2d_output *outs, int nout,
                             const double *weight, const double *prepared, int64_t elems, const double *scale,
                             const double *bias, int relu, const fc_conv2d_desc *d);
/* The Winograd halves of the above (winograd_impl.inc); step: the rearrangement's (0: none). */
int64_t fc_swinograd_prepared_elems(const fc_context *ctx, const fc_conv2d_desc *d);
int64_t fc_dwinograd_prepared_elems(const fc_context *ctx, const fc_conv2d_desc *d);
int fc_swinograd_prepare(const fc_context *ctx, const float *weight, float *prepared, int64_t elems, int64_t step,
                         const fc_conv2d_desc *d);
int fc_dwinograd_prepare(const fc_context *ctx, const double *weight, double *prepared, int64_t elems,
                         int64_t step, const fc_conv2d_desc *d);
int fc_swinograd_prepared_matches(const fc_context *ctx, const float *prepared, int64_t elems, int64_t step,
                                  const fc_conv2d_desc *d);
int fc_dwinograd_prepared_matches(const fc_context *ctx, const double *prepared, int64_t elems, int64_t step,
                                  const fc_conv2d_desc *d);
int fc_sconv2d_forward_winograd_prepared(const fc_context *ctx, const float *x, float *y, int64_t ldy,
                                         const float *prepared, const float *scale, const float *bias,
                                         const float *res, int relu, const fc_conv2d_desc *d);
int fc_dconv2d_forward_winograd_prepared(const fc_context *ctx, const double *x, double *y, int64_t ldy,
                                         const double *prepared, const double *scale, const double *bias,
                                         const double *res, int relu, const fc_conv2d_desc *d);

/* dx from dy and the weights (x not needed). Workspace: the col2im tile, or for the flipped method one
 * rearranged copy of the weights. */
int fc_sconv2d_backward_input(const fc_context *ctx, const float *dy, float *dx, const float *weight,
                              const fc_conv2d_desc *d);
int fc_dconv2d_backward_input(const fc_context *ctx, const double *dy, double *dx, const double *weight,
                              const fc_conv2d_desc *d);

/* dweight (and dbias when not NULL) from dy and x; overwrites them. */
int fc_sconv2d_backward_weight(const fc_context *ctx, const float *x, const float *dy, float *dweight,
                               float *dbias, const fc_conv2d_desc *d);
int fc_dconv2d_backward_weight(const fc_context *ctx, const double *x, const double *dy, double *dweight,
                               double *dbias, const fc_conv2d_desc *d);

#endif
