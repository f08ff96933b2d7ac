"""Stateless operations on NumPy arrays: the one place that checks arguments and converts arrays.

Arrays are float32 or float64 (never mixed); image tensors are NCHW. Each operation validates its inputs and
raises TypeError/ValueError naming the argument and the shapes, then hands buffers to the C engine, which
releases the GIL.
"""
import numpy as np

from . import _C

_FLOATS = (np.float32, np.float64)


def _as_float_array(x, name):
    """x as a float32/float64 ndarray (not copied when it already is one)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
        if x.dtype.kind in "iub":  # python lists of ints: use float64 as NumPy would
            x = x.astype(np.float64)
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype} (shape {x.shape})")
    if any(s % x.itemsize for s in x.strides):  # unaligned strides (e.g. views into structured arrays)
        x = np.ascontiguousarray(x)
    return x


def gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """General matrix multiply: ``out = alpha * op(a) @ op(b) + beta * out``.

    Parameters
    ----------
    a, b : 2-D float32 or float64 arrays of the same dtype; any memory order or strides (views are not copied).
        ``op(a)`` is ``a.T`` when `trans_a`, else `a`; likewise for `b`. op(a) is (M, K), op(b) is (K, N).
    out : optional (M, N) writable array of the same dtype. With ``beta == 0`` it is overwritten and never read
        (BLAS semantics: NaN in `out` does not propagate). Without `out`, a new C-ordered array is returned.
    alpha, beta : scalars.

    Returns
    -------
    out : (M, N) array.
    """
    a = _as_float_array(a, "a")
    b = _as_float_array(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm needs 2-D arrays, got a with shape {a.shape} and b with shape {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"gemm operands must have the same dtype, got a {a.dtype} (shape {a.shape}) and "
                        f"b {b.dtype} (shape {b.shape})")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ValueError(f"gemm inner dimensions differ: op(a) is {(m, k)} and op(b) is {(kb, n)} "
                         f"(a {a.shape}, trans_a={trans_a}; b {b.shape}, trans_b={trans_b})")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not np.isscalar(v) or isinstance(v, (str, bytes)) or np.iscomplexobj(v):
            raise TypeError(f"{name} must be a real scalar, got {v!r}")
    if out is None:
        if beta != 0:
            raise ValueError(f"gemm with beta={beta!r} needs `out`, the {(m, n)} array it accumulates into")
        out = np.empty((m, n), dtype=a.dtype)
        target = out
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.shape != (m, n):
            raise ValueError(f"out has shape {out.shape}, expected {(m, n)} for op(a) {(m, k)} @ op(b) {(k, n)}")
        if out.dtype != a.dtype:
            raise TypeError(f"out has dtype {out.dtype} (shape {out.shape}), expected {a.dtype} like a {a.shape} "
                            f"and b {b.shape}")
        if not out.flags.writeable:
            raise ValueError(f"out (shape {out.shape}) is read-only")
        target = out
        # Writing into an operand while reading it would be undefined: compute aside, then copy.
        if any(s % out.itemsize for s in out.strides) or np.may_share_memory(out, a) or \
                np.may_share_memory(out, b):
            target = np.array(out, order="C", copy=True)
    _C.gemm(a, b, target, bool(trans_a), bool(trans_b), alpha, beta)
    if target is not out:
        out[...] = target
    return out
