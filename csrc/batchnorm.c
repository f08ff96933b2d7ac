/* Batch normalization: the kernels of batchnorm.inc instantiated for float32 and float64. */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastconv/batchnorm.h"
#include "fastconv/threads.h"

/* Channels are independent: one parallel-for over them. Below this many values a thread team costs more than it
 * saves. */
#define FC_BN_MIN_PARALLEL ((int64_t)1 << 15)

/* Partial sums are kept in FC_BN_LANES independent accumulators of the element type (enough of them to cover
 * the add latency at any vector width), and flushed into double every FC_BN_FLUSH values so that each float
 * accumulator never adds up more than FC_BN_FLUSH / FC_BN_LANES terms. */
#define FC_BN_LANES 16
#define FC_BN_FLUSH 2048


#define T float
#define PFX s
#include "batchnorm.inc"
#undef T
#undef PFX

#define T double
#define PFX d
#include "batchnorm.inc"
#undef T
#undef PFX
