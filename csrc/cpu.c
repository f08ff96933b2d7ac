/* CPU feature detection.
 *
 * A feature is usable only when the CPU reports it (CPUID) *and* the OS saves the wider registers on context
 * switches (XCR0 via XGETBV): a hypervisor can expose AVX-512 in CPUID while not enabling ZMM state. */
#include <string.h>

#include "fastconv/cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static unsigned long long read_xcr0(void) {
    unsigned int eax, edx;
    /* xgetbv as raw bytes-free inline asm: needs no -mxsave, so this file stays at the baseline ISA. */
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

static void detect(fc_cpu_features *f) {
    unsigned int eax, ebx, ecx, edx, max_leaf;
    f->x86 = 1;
    if (!__get_cpuid(0, &max_leaf, &ebx, &ecx, &edx)) return;
    memcpy(f->vendor + 0, &ebx, 4);
    memcpy(f->vendor + 4, &edx, 4);
    memcpy(f->vendor + 8, &ecx, 4);
    f->vendor[12] = 0;

    unsigned int ext_max = __get_cpuid_max(0x80000000u, 0);
    if (ext_max >= 0x80000004u) {
        unsigned int regs[12];
        for (unsigned int i = 0; i < 3; i++)
            __get_cpuid(0x80000002u + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
        memcpy(f->brand, regs, 48);
        f->brand[48] = 0;
    }

    __get_cpuid(1, &eax, &ebx, &ecx, &edx);
    int osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1, fma = (ecx >> 12) & 1;
    if (!osxsave || !avx) return;
    unsigned long long xcr0 = read_xcr0();
    int ymm_state = (xcr0 & 0x6) == 0x6;     /* SSE + AVX state */
    int zmm_state = (xcr0 & 0xe6) == 0xe6;   /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (max_leaf < 7) return;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    f->avx2 = ymm_state && fma && ((ebx >> 5) & 1);
    int zmm_ok = ymm_state && zmm_state;
    f->avx512f = zmm_ok && ((ebx >> 16) & 1) && f->avx2;
    f->avx512dq = zmm_ok && ((ebx >> 17) & 1);
    f->avx512bw = zmm_ok && ((ebx >> 30) & 1);
    f->avx512vl = zmm_ok && ((ebx >> 31) & 1);
}
#else
static void detect(fc_cpu_features *f) { (void)f; }
#endif

static fc_cpu_features features;
static int detected;

const fc_cpu_features *fc_cpu(void) {
    /* Called first from module init while the GIL is held, so this lazy init does not race. */
    if (!detected) {
        memset(&features, 0, sizeof features);
        detect(&features);
        detected = 1;
    }
    return &features;
}
