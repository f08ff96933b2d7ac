/* Convolution entry points: geometry checks, then the drivers of conv_impl.inc for float32 and float64. */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastconv/conv.h"
#include "fastconv/gemm.h"
#include "fastconv/im2col.h"
#include "fastconv/threads.h"

/* 1x1, stride 1, no padding, no dilation: the image is its own column matrix. */
static int fc_conv2d_is_pointwise(const fc_conv2d_desc *d) {
    return d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 && d->ph == 0 && d->pw == 0;
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
static int64_t fc_conv2d_images_per_gemm(const fc_conv2d_desc *d) {
    int64_t p = d->oh * d->ow, fg = d->f / d->groups;
    if (p >= FC_CONV_SMALL_IMAGE || d->n <= 1) return 1;
    int64_t nb = (FC_CONV_BATCH_COLS + p - 1) / p;
    int64_t cap = 4 * FC_CONV_TILE_ELEMS / (fg * p);
    if (nb > cap) nb = cap;
    if (nb > d->n) nb = d->n;
    return nb < 1 ? 1 : nb;
}

/* Columns per col2im tile of the input gradient: the kdim x tile matrix stays within FC_CONV_TILE_ELEMS. */
static int64_t fc_conv2d_tile_columns(const fc_conv2d_desc *d, int64_t nb) {
    int64_t kdim = d->c / d->groups * d->kh * d->kw, cols = nb * d->oh * d->ow;
    int64_t tp = FC_CONV_TILE_ELEMS / kdim;
    if (tp < 16) tp = 16; /* a very deep kernel still gets a GEMM worth running */
    return tp < cols ? tp : cols;
}

int64_t fc_conv2d_workspace_bytes(const fc_conv2d_desc *d, int64_t elem_size) {
    int64_t nb = fc_conv2d_images_per_gemm(d), kdim = d->c / d->groups * d->kh * d->kw;
    int64_t staging = nb > 1 ? d->f / d->groups * nb * d->oh * d->ow : 0;
    return (kdim * fc_conv2d_tile_columns(d, nb) + staging) * elem_size;
}

#define T float
#define PFX s
#include "conv_impl.inc"
#undef T
#undef PFX

#define T double
#define PFX d
#include "conv_impl.inc"
#undef T
#undef PFX
