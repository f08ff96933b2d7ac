# Declarations of the C engine (csrc/include/fastconv/*.h) for the Cython bindings.
from libc.stdint cimport int64_t

cdef extern from "fastconv/base.h" nogil:
    enum:
        FC_OK
        FC_ERR_NOMEM
        FC_ERR_OVERFLOW
        FC_ERR_ARG
    ctypedef struct fc_arch:
        pass
    ctypedef struct fc_context:
        const fc_arch *arch
        int num_threads

cdef extern from "fastconv/cpu.h" nogil:
    ctypedef struct fc_cpu_features:
        int x86
        int avx2
        int avx512f
        int avx512dq
        int avx512bw
        int avx512vl
        char vendor[13]
        char brand[49]
    const fc_cpu_features *fc_cpu()

cdef extern from "fastconv/threads.h" nogil:
    int fc_have_openmp()
    int fc_get_num_threads()
    int fc_set_num_threads(int n)
    int fc_set_this_thread_num_threads(int n)
    int fc_run_parts(int parts, int (*run)(void *arg, int part) noexcept nogil, void *arg)
    const char *fc_num_threads_source()
    int fc_cpu_count()

cdef extern from "fastconv/dispatch.h" nogil:
    ctypedef struct fc_sgemm_kernel:
        int mr, vl, nv, mc, kc, nc
    ctypedef struct fc_dgemm_kernel:
        int mr, vl, nv, mc, kc, nc
    ctypedef struct fc_arch_row "fc_arch":
        const char *name
        const char *isa
        fc_sgemm_kernel s
        fc_dgemm_kernel d
    int fc_arch_count()
    const fc_arch_row *fc_arch_at(int i)
    int fc_arch_supported(const fc_arch_row *a)
    const fc_arch_row *fc_arch_best()
    const fc_arch_row *fc_arch_find(const char *name)
    const fc_arch_row *fc_arch_current()
    void fc_arch_select(const fc_arch_row *a)
    fc_context fc_context_default()

cdef extern from "fastconv/gemm.h" nogil:
    void fc_stranspose(const float *src, int64_t rows, int64_t cols, int64_t lds, float *dst, int64_t ldd)
    void fc_dtranspose(const double *src, int64_t rows, int64_t cols, int64_t lds, double *dst, int64_t ldd)
    int fc_sgemm(const fc_context *ctx, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                 int64_t rs_a, int64_t cs_a, const float *b, int64_t rs_b, int64_t cs_b, float beta, float *c,
                 int64_t rs_c, int64_t cs_c)
    int fc_dgemm(const fc_context *ctx, int64_t m, int64_t n, int64_t k, double alpha, const double *a,
                 int64_t rs_a, int64_t cs_a, const double *b, int64_t rs_b, int64_t cs_b, double beta, double *c,
                 int64_t rs_c, int64_t cs_c)
    void fc_sgemm_naive(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t rs_a, int64_t cs_a,
                        const float *b, int64_t rs_b, int64_t cs_b, float beta, float *c, int64_t rs_c,
                        int64_t cs_c)
    void fc_dgemm_naive(int64_t m, int64_t n, int64_t k, double alpha, const double *a, int64_t rs_a,
                        int64_t cs_a, const double *b, int64_t rs_b, int64_t cs_b, double beta, double *c,
                        int64_t rs_c, int64_t cs_c)
