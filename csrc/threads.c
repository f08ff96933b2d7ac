/* Thread-count policy: the single source of the number of threads every kernel uses.
 *
 * At start: OMP_NUM_THREADS when set (its first entry), else the CPUs this process may run on. Afterwards
 * fc_set_num_threads (Python's set_num_threads / threads() / threadpoolctl) changes it. Kernels pass the count
 * to their parallel regions explicitly (num_threads clause), so OpenMP's own ICV is never relied upon. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif
#include <pthread.h>
#include <unistd.h>

#include "fastconv/threads.h"

static int num_threads = 0; /* 0 = not initialized yet */
/* A count for the calling thread alone (0: the process-wide one): an inference plan records the forward of each
 * thread's share of a batch with the one-thread kernels it will replay on that thread, while other threads keep
 * the process-wide count. */
static _Thread_local int this_thread_threads = 0;
static const char *source = "default (CPUs available)";

/* GNU OpenMP's thread pool does not survive fork(): a child that opens a parallel region after its parent ran one
 * waits forever for threads that were not copied. So a child forked after a multi-threaded region runs serially
 * (as PyTorch's forked workers do); fc_set_num_threads cannot raise it there. */
static int parallel_used = 0;
static int forked_child = 0;

void fc_note_parallel_region(void) { parallel_used = 1; }

static void after_fork_in_child(void) {
    if (parallel_used) {
        forked_child = 1;
        num_threads = 1;
        source = "forked child of a multi-threaded process (OpenMP cannot cross fork)";
    }
}

__attribute__((constructor)) static void register_fork_handler(void) {
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

int fc_have_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fc_cpu_count(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void init_once(void) {
    if (num_threads > 0) return;
    const char *env = getenv("OMP_NUM_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10); /* "4,2" (nested lists) -> 4 */
        if (end != env && v >= 1 && v <= 4096) {
            num_threads = (int)v;
            source = "OMP_NUM_THREADS";
            return;
        }
    }
    num_threads = fc_cpu_count();
    source = "default (CPUs available)";
}

int fc_get_num_threads(void) {
    init_once();
#ifndef _OPENMP
    return 1;
#else
    return this_thread_threads > 0 && !forked_child ? this_thread_threads : num_threads;
#endif
}

int fc_set_this_thread_num_threads(int n) {
    int old = this_thread_threads;
    this_thread_threads = n < 0 ? 0 : n;
    return old;
}

int fc_set_num_threads(int n) {
    init_once();
    int old = num_threads;
    if (forked_child) return old;
    if (n < 1) n = 1;
    num_threads = n;
    source = "set_num_threads";
    return old;
}

const char *fc_num_threads_source(void) {
    init_once();
#ifndef _OPENMP
    return "built without OpenMP";
#else
    return source;
#endif
}

int fastconv_get_num_threads(void) { return fc_get_num_threads(); }
void fastconv_set_num_threads(int n) { fc_set_num_threads(n); }

int fc_team_size(const fc_context *ctx, int64_t items, int64_t work, int64_t min_work) {
    int64_t t = ctx->num_threads < 1 ? 1 : ctx->num_threads;
    if (work < min_work) t = 1;
    if (t > items) t = items < 1 ? 1 : items;
    if (t > 1) fc_note_parallel_region();
    return (int)t;
}

int fc_run_parts(int parts, int (*run)(void *arg, int part), void *arg) {
    int err = FC_OK;
    if (parts > 1) fc_note_parallel_region();
#pragma omp parallel for num_threads(parts) if (parts > 1) schedule(static, 1)
    for (int part = 0; part < parts; part++) {
        int e = run(arg, part);
        if (e != FC_OK) {
#pragma omp atomic write
            err = e;
        }
    }
    return err;
}
