/* The one place that decides how many threads fastconv uses. */
#ifndef FASTCONV_THREADS_H
#define FASTCONV_THREADS_H

int fc_have_openmp(void);
int fc_get_num_threads(void);
/* n >= 1; returns the previous value. */
int fc_set_num_threads(int n);
/* Where the current count came from: "default (CPUs available)", "OMP_NUM_THREADS", "set_num_threads", ... */
const char *fc_num_threads_source(void);
/* CPUs this process may run on (sched_getaffinity where available). */
int fc_cpu_count(void);

/* Kernels call this before opening a parallel region with more than one thread (see threads.c: fork). */
void fc_note_parallel_region(void);

/* Exported under these names so threadpoolctl's controller can find and call them through ctypes. */
int fastconv_get_num_threads(void);
void fastconv_set_num_threads(int n);

#endif
