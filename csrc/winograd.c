/* Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (winograd_impl.inc): when it runs, with which tile, and its
 * instantiation for both types. */
#ifdef _OPENMP
#include <omp.h>
#endif

#include <string.h>

#include "fastconv/conv.h"
#include "fastconv/dispatch.h"
#include "fastconv/gemm.h"
#include "fastconv/threads.h"

static int winograd_mode = FC_CONV_WINOGRAD_AUTO;

int fc_conv2d_set_winograd_mode(int mode) {
    if (mode < FC_CONV_WINOGRAD_AUTO || mode > FC_CONV_WINOGRAD_ALWAYS) return FC_ERR_ARG;
    winograd_mode = mode;
    return FC_OK;
}

int fc_conv2d_winograd_mode(void) { return winograd_mode; }

static int winograd_tile = FC_CONV_WINOGRAD_TILE_AUTO;

int fc_conv2d_set_winograd_tile(int tile) {
    if (tile != FC_CONV_WINOGRAD_TILE_AUTO && tile != 2 && tile != 4) return FC_ERR_ARG;
    winograd_tile = tile;
    return FC_OK;
}

int fc_conv2d_winograd_tile(void) { return winograd_tile; }

/* F(4x4, 3x3) does 1.78x fewer multiplications, but its transforms work on whole vectors of tiles along one tile
 * row: with fewer tiles per row than lanes the rest of the vector is computed in vain. Measured against F(2x2)
 * (interleaved, batch 4-16, 1 and 2 threads): 1.06-1.42x at 56x56 (VGG conv3_1, ResNet's 64 filters), 1.05-1.15x
 * at 28x28 and 27x27 (AlexNet's conv2 on its shifted copies). Narrower layers take F(4x4) on enough tiles: each
 * of its 36 transformed weight matrices (2.25x F(2x2)'s 16) is streamed once per call for all the tiles, so on
 * few tiles the weights' traffic decides. Measured with prepared weights (in-process, interleaved, 1 and 2
 * threads): from 32 tiles of 4x4 1.04-1.38x (14x14 at batch 2-8: 256 and 512 channels; 7x7 at batch 8: 160 -> 320
 * and 512); on 16 tiles 1.14-1.41x where the transformed weights are small (96 -> 208, 128 -> 256, 256 -> 256 at
 * 14x14 and 256 -> 384 at 13x13, batch 1) but 0.85-0.95x for 512 -> 512 (14x14 at batch 1, 7x7 at batch 4); on 4-8
 * tiles (7x7 at batch 1-2) 0.43-0.5x. */
#define FC_WINOGRAD4_MIN_WIDTH 24
#define FC_WINOGRAD4_MIN_TILES 32
#define FC_WINOGRAD4_FEW_TILES 16
#define FC_WINOGRAD4_FEW_TILES_MAX_WEIGHTS ((int64_t)1 << 22) /* 36 x channels x filters */

int fc_conv2d_winograd_tile_for(const fc_conv2d_desc *d) {
    if (winograd_tile != FC_CONV_WINOGRAD_TILE_AUTO) return winograd_tile;
    if (d->ow >= FC_WINOGRAD4_MIN_WIDTH) return 4;
    int64_t tiles4 = d->n * ((d->oh + 3) / 4) * ((d->ow + 3) / 4); /* no overflow: prepare checked n*oh*ow */
    if (tiles4 >= FC_WINOGRAD4_MIN_TILES) return 4;
    int64_t weights4;
    if (fc_mul_overflow(36 * (d->c / (d->groups > 0 ? d->groups : 1)), d->f, &weights4)) return 2;
    return tiles4 >= FC_WINOGRAD4_FEW_TILES && weights4 <= FC_WINOGRAD4_FEW_TILES_MAX_WEIGHTS ? 4 : 2;
}

/* The weight gradient's GEMMs are as deep as a thread's block of tiles, and each block adds its products into
 * the thread's sums H (points x f x c): F(4x4) has 2.25x the points and a quarter of the tiles, so on few tiles
 * its H traffic dominates. Measured against F(2x2) (interleaved, 1 and 2 threads): 1.1-1.56x from 96 tiles of
 * 4x4 per thread (VGG conv1_2 and conv3_1, AlexNet conv2 and conv3, ResNet's 64@56 and 256@14 on 1 thread);
 * 0.48-0.9x below (VGG conv5_1 at batch 4: 64 tiles; ResNet's 256@14 at batch 8 on 2 threads). */
#define FC_WINOGRAD4_MIN_GRAD_TILES 96

int fc_conv2d_winograd_weight_grad_tile(const fc_conv2d_desc *d, int threads) {
    if (winograd_tile != FC_CONV_WINOGRAD_TILE_AUTO) return winograd_tile;
    int64_t tiles4 = d->n * ((d->oh + 3) / 4) * ((d->ow + 3) / 4); /* no overflow: prepare checked n*oh*ow */
    return tiles4 >= FC_WINOGRAD4_MIN_GRAD_TILES * (int64_t)(threads < 1 ? 1 : threads) ? 4 : 2;
}

int fc_conv2d_use_winograd(const fc_conv2d_desc *d) {
    if (winograd_mode == FC_CONV_WINOGRAD_NEVER) return 0;
    if (d->kh != 3 || d->kw != 3 || d->sh != 1 || d->sw != 1 || d->dh != 1 || d->dw != 1 || d->n < 1) return 0;
    if (winograd_mode == FC_CONV_WINOGRAD_ALWAYS) return 1;
    return d->c / d->groups >= FC_WINOGRAD_MIN_CHANNELS && d->f / d->groups >= FC_WINOGRAD_MIN_FILTERS;
}

/* The weight gradient pays two transforms and their transposes per tile against 16 f x c products: measured
 * against the direct/GEMM paths (1 thread) 1.3-1.8x faster from 128 channels and filters up (AlexNet conv3, VGG
 * conv3_1 and conv5_1, ResNet's 512 at 7x7), 1.1x at 64 (ResNet's 64 at 56x56), slower at 16-32; and slower on
 * few tiles (batch 1 at 14x14: 49 tiles, too short a GEMM depth). */
int fc_conv2d_use_winograd_weight_grad(const fc_conv2d_desc *d) {
    if (!fc_conv2d_use_winograd(d)) return 0;
    if (winograd_mode == FC_CONV_WINOGRAD_ALWAYS) return 1;
    int64_t tiles = d->n * ((d->oh + 1) / 2) * ((d->ow + 1) / 2); /* no overflow: prepare checked n*oh*ow */
    return d->c / d->groups >= 64 && d->f / d->groups >= 64 && tiles >= 96;
}

#define T float
#define PFX s
#define KERNEL_T fc_sgemm_kernel
#include "winograd_impl.inc"
#undef T
#undef PFX
#undef KERNEL_T

#define T double
#define PFX d
#define KERNEL_T fc_dgemm_kernel
#include "winograd_impl.inc"
#undef T
#undef PFX
#undef KERNEL_T
