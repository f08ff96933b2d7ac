/* The kernel table and the process-wide choice among its rows. */
#include <stdlib.h>
#include <string.h>

#include "fastconv/cpu.h"
#include "fastconv/dispatch.h"
#include "fastconv/threads.h"

extern const fc_arch fc_arch_ref;
#ifdef FC_BUILD_AVX2
extern const fc_arch fc_arch_avx2;
#endif
#ifdef FC_BUILD_AVX512
extern const fc_arch fc_arch_avx512;
#endif

static const fc_arch *const table[] = {
    &fc_arch_ref,
#ifdef FC_BUILD_AVX2
    &fc_arch_avx2,
#endif
#ifdef FC_BUILD_AVX512
    &fc_arch_avx512,
#endif
};

int fc_arch_count(void) { return (int)(sizeof table / sizeof table[0]); }
const fc_arch *fc_arch_at(int i) { return (i >= 0 && i < fc_arch_count()) ? table[i] : NULL; }

int fc_arch_supported(const fc_arch *a) {
    const fc_cpu_features *f = fc_cpu();
    if (!strcmp(a->name, "ref")) return 1;
    if (!strcmp(a->name, "avx2")) return f->avx2;
    if (!strcmp(a->name, "avx512")) return f->avx512f;
    return 0;
}

const fc_arch *fc_arch_best(void) {
    for (int i = fc_arch_count() - 1; i >= 0; i--)
        if (fc_arch_supported(table[i])) return table[i];
    return &fc_arch_ref;
}

const fc_arch *fc_arch_find(const char *name) {
    for (int i = 0; i < fc_arch_count(); i++)
        if (!strcmp(table[i]->name, name)) return table[i];
    return NULL;
}

static const fc_arch *current;

const fc_arch *fc_arch_current(void) {
    if (!current) current = fc_arch_best();
    return current;
}

void fc_arch_select(const fc_arch *a) { current = a; }

fc_context fc_context_default(void) {
    fc_context ctx;
    ctx.arch = fc_arch_current();
    ctx.num_threads = fc_get_num_threads();
    return ctx;
}

void *fc_aligned_alloc(int64_t bytes) {
    if (bytes < 0) return NULL;
    int64_t rounded;
    if (fc_add_overflow(bytes, FC_ALIGN - 1, &rounded)) return NULL;
    rounded = rounded / FC_ALIGN * FC_ALIGN;
    if (rounded == 0) rounded = FC_ALIGN;
    if ((uint64_t)rounded > (uint64_t)SIZE_MAX) return NULL;
    return aligned_alloc(FC_ALIGN, (size_t)rounded);
}

void fc_aligned_free(void *p) { free(p); }
