/* FMA throughput probe: the float32 GFLOP/s this machine reaches with nothing but fused multiply-adds.
 *
 * Each thread runs independent chains acc[i] = acc[i] * x + y. An FMA has a latency of ~4 cycles and recent
 * x86 cores issue two per cycle, so at least 4 x 2 = 8 chains must be in flight to keep both pipes busy; we use
 * 12 ymm chains (of 16 registers) and 24 zmm chains (of 32). The chains converge to y / (1 - x), so values stay
 * normal (no denormal slowdowns); their sum goes to a volatile sink so the compiler cannot drop them.
 *
 * Usage: fma_peak [seconds_per_measurement]   prints lines "<isa> <threads> <GFLOP/s>" for isa avx2 and avx512
 * (when the CPU has it) and threads 1 and 2. Built by bench/peak.py with -O2 -mavx2 -mfma -mavx512f -fopenmp.
 * Each figure is the best of 5 runs of about `seconds` of CPU time each, timed per thread in CPU time (see
 * measure), after a calibration run that also lets the clock settle. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define AVX2_CHAINS 12
#define AVX512_CHAINS 24

static double thread_cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static volatile float sink;

/* `iters` rounds of AVX2_CHAINS ymm FMAs (8 floats each); returns a value depending on every chain. */
__attribute__((noinline)) static float chains_avx2(long iters) {
    __m256 acc[AVX2_CHAINS];
    const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-6f);
    for (int i = 0; i < AVX2_CHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < AVX2_CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    }
    __m256 s = acc[0];
    for (int i = 1; i < AVX2_CHAINS; i++) s = _mm256_add_ps(s, acc[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

__attribute__((noinline)) static float chains_avx512(long iters) {
    __m512 acc[AVX512_CHAINS];
    const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-6f);
    for (int i = 0; i < AVX512_CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
        for (int i = 0; i < AVX512_CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    }
    __m512 s = acc[0];
    for (int i = 1; i < AVX512_CHAINS; i++) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

/* GFLOP/s of `threads` threads each running `iters` rounds (best of 5 runs).
 *
 * Each thread divides its own work by its own CPU time (CLOCK_THREAD_CPUTIME_ID), and the rates are summed: on a
 * machine shared with other jobs, wall time would measure their load, while the peak is a property of the cores
 * (the rate an FMA stream reaches while it runs). */
static double measure(int avx512, int threads, long iters) {
    double flops_per_thread = (avx512 ? 2.0 * 16 * AVX512_CHAINS : 2.0 * 8 * AVX2_CHAINS) * iters;
    double best = 0;
    for (int run = 0; run < 5; run++) {
        double gflops = 0;
#pragma omp parallel num_threads(threads) reduction(+ : gflops)
        {
            double t0 = thread_cpu_seconds();
            float r = avx512 ? chains_avx512(iters) : chains_avx2(iters);
            gflops += flops_per_thread / (thread_cpu_seconds() - t0) * 1e-9;
#pragma omp critical
            sink += r;
        }
        if (gflops > best) best = gflops;
    }
    return best;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 0.1;
    if (seconds <= 0) seconds = 0.1;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        fprintf(stderr, "fma_peak: this CPU has no AVX2+FMA\n");
        return 1;
    }
    int have_avx512 = __builtin_cpu_supports("avx512f") != 0; /* a nonzero mask, not necessarily 1 */
    for (int avx512 = 0; avx512 <= have_avx512; avx512++) {
        /* calibrate: rounds that take about `seconds` of CPU time on one thread (also the warm-up) */
        long iters = 1 << 16;
        for (;;) {
            double t0 = thread_cpu_seconds();
            sink += avx512 ? chains_avx512(iters) : chains_avx2(iters);
            double dt = thread_cpu_seconds() - t0;
            if (dt > seconds / 4) {
                iters = (long)(iters * seconds / dt) + 1;
                break;
            }
            iters *= 2;
        }
        for (int threads = 1; threads <= 2; threads++)
            printf("%s %d %.1f\n", avx512 ? "avx512" : "avx2", threads, measure(avx512, threads, iters));
    }
    return 0;
}
