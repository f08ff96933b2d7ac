/* CPU feature detection: what the processor and the OS together allow. */
#ifndef FASTCONV_CPU_H
#define FASTCONV_CPU_H

typedef struct fc_cpu_features {
    int x86;        /* built for and running on x86-64 */
    int avx2;       /* AVX2 + FMA3 with OS-saved YMM state */
    int avx512f;    /* AVX-512F with OS-saved ZMM and opmask state */
    int avx512dq, avx512bw, avx512vl;
    char vendor[13];
    char brand[49];
} fc_cpu_features;

const fc_cpu_features *fc_cpu(void);

#endif
