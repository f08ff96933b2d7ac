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
