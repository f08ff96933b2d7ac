# GEMM bindings (included by _C.pyx).

def gemm(const real[:, :] a, const real[:, :] b, real[:, :] c, bint trans_a, bint trans_b, real alpha,
         real beta):
    """c = alpha * op(a) @ op(b) + beta * c on any strides; shapes already checked by fastconv.functional."""
    cdef int64_t isz = sizeof(real)
    cdef int64_t rs_a = a.strides[0] // isz, cs_a = a.strides[1] // isz
    cdef int64_t rs_b = b.strides[0] // isz, cs_b = b.strides[1] // isz
    cdef int64_t rs_c = c.strides[0] // isz, cs_c = c.strides[1] // isz
    cdef int64_t m = c.shape[0], n = c.shape[1]
    cdef int64_t k = a.shape[0] if trans_a else a.shape[1]
    if trans_a:
        rs_a, cs_a = cs_a, rs_a
    if trans_b:
        rs_b, cs_b = cs_b, rs_b
    cdef fc_context ctx = fc_context_default()
    cdef int err
    cdef const real *pa = &a[0, 0] if a.shape[0] > 0 and a.shape[1] > 0 else NULL
    cdef const real *pb = &b[0, 0] if b.shape[0] > 0 and b.shape[1] > 0 else NULL
    cdef real *pc = &c[0, 0] if m > 0 and n > 0 else NULL
    with nogil:
        if real is float:
            err = fc_sgemm(&ctx, m, n, k, alpha, pa, rs_a, cs_a, pb, rs_b, cs_b, beta, pc, rs_c, cs_c)
        else:
            err = fc_dgemm(&ctx, m, n, k, alpha, pa, rs_a, cs_a, pb, rs_b, cs_b, beta, pc, rs_c, cs_c)
    check(err)


def gemm_naive(const real[:, :] a, const real[:, :] b, real[:, :] c, real alpha, real beta):
    """The C triple loop (no transposes), exposed so tests can check the oracle itself."""
    cdef int64_t isz = sizeof(real)
    cdef int64_t m = c.shape[0], n = c.shape[1], k = a.shape[1]
    if m == 0 or n == 0:
        return
    cdef const real *pa = &a[0, 0] if k > 0 else NULL
    cdef const real *pb = &b[0, 0] if k > 0 else NULL
    with nogil:
        if real is float:
            fc_sgemm_naive(m, n, k, alpha, pa, a.strides[0] // isz, a.strides[1] // isz, pb, b.strides[0] // isz,
                           b.strides[1] // isz, beta, &c[0, 0], c.strides[0] // isz, c.strides[1] // isz)
        else:
            fc_dgemm_naive(m, n, k, alpha, pa, a.strides[0] // isz, a.strides[1] // isz, pb, b.strides[0] // isz,
                           b.strides[1] // isz, beta, &c[0, 0], c.strides[0] // isz, c.strides[1] // isz)
