/* Softmax and cross-entropy: the kernels of loss.inc instantiated for float32 and float64. */
#include <math.h>
#include <stdint.h>

#include "fastconv/loss.h"
#include "fastconv/threads.h"

/* Below this many values a thread team costs more than it saves. */
#define FC_LOSS_MIN_PARALLEL ((int64_t)1 << 14)


static int fc_loss_check(const fc_softmax_desc *d, int64_t *total) {
    if (d->n < 0 || d->k < 0) return FC_ERR_ARG;
    if (fc_mul_overflow(d->n, d->k, total)) return FC_ERR_OVERFLOW;
    return FC_OK;
}

#define T float
#define PFX s
#define FC_EXP expf
#include "loss.inc"
#undef T
#undef PFX
#undef FC_EXP

#define T double
#define PFX d
#define FC_EXP exp
#include "loss.inc"
#undef T
#undef PFX
#undef FC_EXP
