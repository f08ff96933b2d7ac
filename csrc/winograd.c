/* Winograd F(2x2, 3x3) convolution (winograd_impl.inc): when it runs, and its instantiation for both types. */
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

int fc_conv2d_use_winograd(const fc_conv2d_desc *d) {
    if (winograd_mode == FC_CONV_WINOGRAD_NEVER) return 0;
    if (d->kh != 3 || d->kw != 3 || d->sh != 1 || d->sw != 1 || d->dh != 1 || d->dw != 1 || d->n < 1) return 0;
    if (winograd_mode == FC_CONV_WINOGRAD_ALWAYS) return 1;
    return d->c / d->groups >= FC_WINOGRAD_MIN_CHANNELS && d->f / d->groups >= FC_WINOGRAD_MIN_FILTERS;
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
