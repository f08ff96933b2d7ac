/* Base types shared by every fastconv C file.
 *
 * Sizes are int64_t everywhere: a VGG activation batch easily passes 2^31 elements, and signed sizes let strides
 * be negative (NumPy views such as a[::-1]). */
#ifndef FASTCONV_BASE_H
#define FASTCONV_BASE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
#define FC_RESTRICT __restrict__
#else
#define FC_RESTRICT restrict
#endif

#define FC_ALIGN 64 /* cache line and AVX-512 vector */

/* Error codes returned by C entry points; the bindings turn them into Python exceptions. */
enum {
    FC_OK = 0,
    FC_ERR_NOMEM = 1,    /* a workspace could not be allocated */
    FC_ERR_OVERFLOW = 2, /* a size computation overflowed int64 */
    FC_ERR_ARG = 3,      /* an argument the Python layer should have rejected */
};

/* The selected kernels and the thread count: the first argument of every public C function. */
struct fc_arch;
typedef struct fc_context {
    const struct fc_arch *arch;
    int num_threads;
} fc_context;

/* Overflow-checked size arithmetic: return 0 on success, 1 when the result does not fit in int64. */
static inline int fc_mul_overflow(int64_t a, int64_t b, int64_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int fc_add_overflow(int64_t a, int64_t b, int64_t *out) { return __builtin_add_overflow(a, b, out); }

/* 64-byte aligned allocation (NULL on failure or when the byte count overflows size_t). */
void *fc_aligned_alloc(int64_t bytes);
void fc_aligned_free(void *p);

#endif
