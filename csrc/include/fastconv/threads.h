/* The one place that decides how many threads fastconv uses. */
#ifndef FASTCONV_THREADS_H
#define FASTCONV_THREADS_H

#include "fastconv/base.h"

int fc_have_openmp(void);
int fc_get_num_threads(void);
/* n >= 1; returns the previous value. */
int fc_set_num_threads(int n);
/* n >= 1: the count for the calling thread only, until called again with 0 (back to the process-wide count);
 * returns the previous value (0 when there was none). */
int fc_set_this_thread_num_threads(int n);
/* Where the current count came from: "default (CPUs available)", "OMP_NUM_THREADS", "set_num_threads", ... */
const char *fc_num_threads_source(void);
/* CPUs this process may run on (sched_getaffinity where available). */
int fc_cpu_count(void);

/* Threads for a parallel loop over `items` independent pieces touching `work` values: one below `min_work`
 * (waking a team costs more than it saves), never more than `items`. Notes the region for fork safety when it
 * will be multi-threaded. */
int fc_team_size(const fc_context *ctx, int64_t items, int64_t work, int64_t min_work);

/* Kernels call this before opening a parallel region with more than one thread (see threads.c: fork). */
void fc_note_parallel_region(void);

/* run(arg, part) for part = 0 .. parts - 1, one thread each (all on the calling thread without OpenMP): an
 * inference plan replays each thread's share of a batch. An error code one of them returned, or FC_OK. */
int fc_run_parts(int parts, int (*run)(void *arg, int part), void *arg);

/* Exported under these names so threadpoolctl's controller can find and call them through ctypes. */
int fastconv_get_num_threads(void);
void fastconv_set_num_threads(int n);

#endif
