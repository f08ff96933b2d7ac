/* Local response normalization: the kernels of lrn.inc instantiated for float32 and float64. */
#include <math.h>
#include <stdint.h>

#include "fastconv/lrn.h"
#include "fastconv/threads.h"

/* Spatial positions per work item: its running sums (doubles) and power row stay in L1 while the item walks
 * the channels. */
#define FC_LRN_BLOCK 256

/* Below this many values a thread team costs more than it saves. */
#define FC_LRN_MIN_PARALLEL ((int64_t)1 << 14)

static int fc_lrn_threads(const fc_context *ctx, int64_t items, int64_t total) {
    int64_t t = ctx->num_threads < 1 ? 1 : ctx->num_threads;
    if (t > items) t = items;
    if (total < FC_LRN_MIN_PARALLEL || t < 1) t = 1;
    if (t > 1) fc_note_parallel_region();
    return (int)t;
}

#define T float
#define PFX s
#define FC_SQRT sqrtf
#define FC_POW powf
#include "lrn.inc"
#undef T
#undef PFX
#undef FC_SQRT
#undef FC_POW

#define T double
#define PFX d
#define FC_SQRT sqrt
#define FC_POW pow
#include "lrn.inc"
#undef T
#undef PFX
#undef FC_SQRT
#undef FC_POW
