/* Element-wise activations (activation.h): memory-bound loops vectorized by the compiler, split over threads in
 * static contiguous chunks when the array is large. activation_kernels.inc holds them for float32 and float64. */
#include <stdint.h>

#include "fastconv/activation.h"
#include "fastconv/threads.h"


/* The loops' parallel region over t threads. The `if` is limited to the parallel region: a bare `if` also
 * applies to `simd` and would turn vectorization off whenever one thread runs. */
#define FC_PARALLEL_SIMD _Pragma("omp parallel for simd num_threads(t) if (parallel : t > 1) schedule(static)")
/* Marks a variable that only OpenMP pragmas read (unused in a serial build). */
#define FC_OMP_ONLY __attribute__((unused))

#define T float
#define PFX s
#include "activation_kernels.inc"
#undef T
#undef PFX

#define T double
#define PFX d
#include "activation_kernels.inc"
#undef T
#undef PFX
