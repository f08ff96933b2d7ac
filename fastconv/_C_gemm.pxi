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


def transpose(const real[:, :] src, real[:, :] dst):
    """dst = src.T with the current arch's transpose (the packing routines' building block), exposed so tests can
    check every arch's version; dst must have shape (cols, rows); src rows may be a strided view's."""
    if dst.shape[0] != src.shape[1] or dst.shape[1] != src.shape[0]:
        raise ValueError(f"dst has shape {(dst.shape[0], dst.shape[1])}, expected {(src.shape[1], src.shape[0])}")
    if src.strides[1] != sizeof(real) or dst.strides[1] != sizeof(real):
        raise ValueError("src and dst rows must be contiguous")
    cdef int64_t rows = src.shape[0], cols = src.shape[1]
    if rows == 0 or cols == 0:
        return
    with nogil:
        if real is float:
            fc_stranspose(&src[0, 0], rows, cols, src.strides[0] // sizeof(real), &dst[0, 0], dst.strides[0] // sizeof(real))
        else:
            fc_dtranspose(&src[0, 0], rows, cols, src.strides[0] // sizeof(real), &dst[0, 0], dst.strides[0] // sizeof(real))
