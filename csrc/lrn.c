/* Local response normalization: the kernels of lrn.inc instantiated for float32 and float64. */
#include <math.h>
#include <stdint.h>

#include "fastconv/lrn.h"
#include "fastconv/threads.h"

/* Spatial positions per work item: its running sums (doubles) and power row stay in L1 while the item walks
 * the channels. */
#define FC_LRN_BLOCK 256
/* LRN is compute-bound (two square roots and a division per element, running sums in double): on x86-64 with
 * GCC >= 11 and glibc's ifuncs, it is compiled three times, for AVX-512, AVX2+FMA and the baseline, and the
 * loader picks the CPU's best (the project's arch setting chooses only the GEMM-family kernels). AlexNet's
 * (8, 96, 55, 55) forward on 1 thread: 12.7 ms baseline with scalar sqrt, 7.1 vectorized, 2.7 with the clones. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define FC_LRN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FC_LRN_CLONES
#endif

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
