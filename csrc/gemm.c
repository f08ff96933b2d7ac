/* GEMM entry points: the driver in gemm_driver.inc instantiated for float32 and float64. */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastconv/dispatch.h"
#include "fastconv/gemm.h"
#include "fastconv/threads.h"

/* Bytes of packed B that a small-M GEMM keeps in L2 (the L2 is 1 MiB on Zen 4, 2 MiB on Sapphire Rapids). */
#define FC_GEMM_L2_BUDGET ((int64_t)768 * 1024)
/* Largest B micro-panel (kc x nr) for which the tiles of a block run row panel by row panel (gemm_driver.inc):
 * it must stay in L1 (32 KiB on Zen 4, 48 KiB on Sapphire Rapids) next to the A micro-panel. */
#define FC_GEMM_L1_B_BYTES ((int64_t)24 * 1024)
/* A GEMM at most this deep writing a C larger than this walks C row panel by row panel. 1 MiB rather than the
 * L2 size: a C of 3.2 MB (one image of a 64 -> 256 1x1 layer at 56x56 without an epilogue, or the input gradient
 * of 256 -> 64) ran 1.2-1.6x faster so, on 1 and 2 threads. */
#define FC_GEMM_SHALLOW_K 64
#define FC_GEMM_COLD_C_BYTES ((int64_t)1 << 20)
/* Most rows of a block whose last column tile the narrow kernel computes at once (a stack buffer of this many rows
 * of FC_NARROW_COLS): mc of every arch, rounded up to mr, fits. */
#define FC_GEMM_NARROW_ROWS 512
/* Up to this many rows of A and a B of at least FC_GEMM_SMALL_M_MIN_B elements (where packing it into panels costs
 * more than it saves): dot products when B's columns are contiguous (gemm_small_m), the rows kernel reading B in
 * place when its rows are (gemm_small_m_rows). */
#define FC_GEMM_SMALL_M 8
#define FC_GEMM_SMALL_M_MIN_B ((int64_t)1 << 20)
/* The dot products from a B of 2^16 elements for one or two rows of A, 2^18 for more: the packed path computes 8
 * rows whatever m is (a fully connected layer of 1024 -> 1000 at batch 1: 0.29 -> 0.09 ms), but for 4-8 rows and
 * a B of up to about 2^17 elements, packing it once beats reading it once per 4 rows (0.8-0.9x otherwise). Below
 * 2^16 the dot products would win at one row too (LeNet-5's 120 -> 84 at batch 1: 3.6 -> 1.8 us), but a small
 * layer then sums an image in another order at batch 1 than in a batch, and feature extraction must not depend
 * on the batching (tests/test_transfer.py). */
#define FC_GEMM_SMALL_M_DOT_MIN_B(m) ((m) <= 2 ? (int64_t)1 << 16 : (int64_t)1 << 18)

#define T float
#define PFX s
#define KERN s
#define KERNEL_T fc_sgemm_kernel
#include "gemm_driver.inc"
#undef T
#undef PFX
#undef KERN
#undef KERNEL_T

#define T double
#define PFX d
#define KERN d
#define KERNEL_T fc_dgemm_kernel
#include "gemm_driver.inc"
#undef T
#undef PFX
#undef KERN
#undef KERNEL_T
