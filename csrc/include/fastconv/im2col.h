/* im2col / col2im on one image, for any pixel range, and the GEMM B-packing routines built on them.
 *
 * Column matrix of one image and group: row r = (ci, ki, kj) (r = (ci * kh + ki) * kw + kj), column p = output
 * pixel (oy, ox) (p = oy * ow + ox); entry = x[ci, oy*sh - ph + ki*dh, ox*sw - pw + kj*dw], 0 in the padding. */
#ifndef FASTCONV_IM2COL_H
#define FASTCONV_IM2COL_H

#include "fastconv/base.h"
#include "fastconv/conv.h"

/* Source of an implicit column matrix over a run of images: columns j = img * oh * ow + p, so several small
 * images make one wide GEMM. */
typedef struct fc_im2col_src {
    const void *x;                 /* channel ci of the group of image img is at x + img * img_stride + ci * h * w */
    int64_t img_stride;            /* elements between consecutive images (c * h * w) */
    const fc_conv2d_desc *d;
} fc_im2col_src;

/* B = column matrix (rows r, columns p): the forward GEMM's operand. */
void fc_spack_b_im2col(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                       float *FC_RESTRICT dst);
void fc_dpack_b_im2col(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                       double *FC_RESTRICT dst);
/* B = transposed column matrix (rows p, columns r): the weight gradient's operand. */
void fc_spack_b_im2col_t(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                         float *FC_RESTRICT dst);
void fc_dpack_b_im2col_t(const void *src, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, int vl,
                         double *FC_RESTRICT dst);

/* dx_group += col2im(cols), cols holding rows 0..cg*kh*kw-1 and columns [p0, p0 + np) (row stride np), the
 * columns running over images as above (dx images img_stride elements apart); channels [c0, c1) only, so
 * callers can split the channels over threads without races. */
void fc_scol2im_add(const float *cols, int64_t p0, int64_t np, int64_t c0, int64_t c1, float *dx,
                    int64_t img_stride, const fc_conv2d_desc *d);
void fc_dcol2im_add(const double *cols, int64_t p0, int64_t np, int64_t c0, int64_t c1, double *dx,
                    int64_t img_stride, const fc_conv2d_desc *d);

#endif
