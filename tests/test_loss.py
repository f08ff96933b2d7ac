"""softmax, log_softmax, softmax_cross_entropy and linear, forward and backward: against NumPy references written
here, float64 central finite differences, and torch.nn.functional when torch is installed; every kernel set x 1/2
threads x float32/float64."""
import numpy as np
import pytest

import fastconv.functional as F

DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


def numeric_grad(f, arrays, h=1e-6):
    """Central finite differences of the scalar f(*arrays) with respect to each array (float64)."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            plus = f(*arrays)
            a[i] = old - h
            minus = f(*arrays)
            a[i] = old
            g[i] = (plus - minus) / (2 * h)
        grads.append(g)
    return grads


def rel_err(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)


def ref_log_softmax(x, axis=-1):
    """log softmax in float64 through an explicit loop over the rows of the moved axis."""
    x = np.moveaxis(x.astype(np.float64), axis, -1)
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        top = row.max()
        out[idx] = row - top - np.log(np.sum(np.exp(row - top)))
    return np.moveaxis(out, -1, axis)


def ref_cross_entropy(logits, labels):
    lsm = ref_log_softmax(logits)
    return -np.mean([lsm[i, labels[i]] for i in range(len(labels))])


# ---------------------------------------------------------------------------------------------------- softmax

@pytest.mark.parametrize("shape,axis", [((5, 7), -1), ((3, 4, 6), 1), ((4, 5), 0), ((1, 1), -1), ((128, 200), -1),
                                        ((2, 3, 4, 5), -3), ((9,), 0)])
def test_softmax_and_log_softmax_match_reference(arch, nthreads, dtype, rng, shape, axis):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    ref = ref_log_softmax(x, axis)
    lsm = F.log_softmax(x, axis)
    sm = F.softmax(x, axis=axis)
    for out in (lsm, sm):
        assert out.dtype == dtype and out.shape == shape and out.flags.c_contiguous
    np.testing.assert_allclose(lsm, ref, **TOL[dtype])
    np.testing.assert_allclose(sm, np.exp(ref), **TOL[dtype])


def test_softmax_large_values_are_stable(dtype):
    x = np.array([[1e4, 1e4 - 1, -1e4], [-5e3, -5e3, -5e3]], dtype)
    sm = F.softmax(x)
    lsm = F.log_softmax(x)
    assert np.all(np.isfinite(sm)) and np.all(np.isfinite(lsm))
    np.testing.assert_allclose(lsm, ref_log_softmax(x), **TOL[dtype])
    np.testing.assert_allclose(sm.sum(axis=1), 1, rtol=1e-6)


def test_softmax_matches_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((6, 5, 4)) * 3).astype(dtype)
    tol = TOL[dtype]
    for axis in (0, 1, 2, -1):
        np.testing.assert_allclose(F.softmax(x, axis), torch.softmax(torch.tensor(x), axis).numpy(), **tol)
        np.testing.assert_allclose(F.log_softmax(x, axis), torch.log_softmax(torch.tensor(x), axis).numpy(), **tol)


def test_softmax_edge_shapes_and_errors():
    assert F.softmax(np.zeros((0, 4))).shape == (0, 4)
    assert F.log_softmax(np.zeros((3, 0), np.float32)).shape == (3, 0)
    with pytest.raises(ValueError, match="0-d"):
        F.softmax(np.float64(1.0))
    with pytest.raises(ValueError, match=r"axis 2 is out of range for x of shape \(3, 4\)"):
        F.softmax(np.zeros((3, 4)), axis=2)
    with pytest.raises(TypeError, match="axis must be an int"):
        F.log_softmax(np.zeros((3, 4)), axis=1.0)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        F.softmax(np.zeros((3, 4), np.complex128))


# ---------------------------------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("n,k", [(1, 1), (5, 3), (17, 10), (128, 200)])
def test_cross_entropy_matches_reference(arch, nthreads, dtype, rng, n, k):
    logits = (rng.standard_normal((n, k)) * 3).astype(dtype)
    labels = rng.integers(0, k, n)
    loss, probs = F.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, float)
    assert probs.dtype == dtype and probs.shape == (n, k)
    np.testing.assert_allclose(loss, ref_cross_entropy(logits, labels), rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(probs, np.exp(ref_log_softmax(logits)), **TOL[dtype])
    dl = F.softmax_cross_entropy_backward(probs, labels, dloss=0.5)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1
    assert dl.dtype == dtype
    np.testing.assert_allclose(dl, (np.exp(ref_log_softmax(logits)) - onehot) * 0.5 / n, **TOL[dtype])


def test_cross_entropy_backward_finite_differences(rng):
    logits = rng.standard_normal((4, 5)) * 2
    labels = np.array([0, 4, 2, 2])
    _, probs = F.softmax_cross_entropy(logits, labels)
    got = F.softmax_cross_entropy_backward(probs, labels, dloss=1.7)
    (num,) = numeric_grad(lambda z: 1.7 * F.softmax_cross_entropy(z, labels)[0], [logits])
    assert rel_err(got, num) < 1e-6


def test_cross_entropy_large_logits(dtype, rng):
    """Logits of magnitude 1e4: the label's probability underflows to 0 but the loss stays finite and exact."""
    logits = (rng.standard_normal((6, 8)) * 1e4).astype(dtype)
    labels = np.array([0, 1, 2, 3, 4, 5])
    loss, probs = F.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(loss, ref_cross_entropy(logits, labels), rtol=1e-7)
    assert loss > 1e3


def test_cross_entropy_matches_torch(nthreads, dtype, rng):
    torch = pytest.importorskip("torch")
    for scale in (3.0, 1e4):
        logits = (rng.standard_normal((33, 12)) * scale).astype(dtype)
        labels = rng.integers(0, 12, 33)
        loss, probs = F.softmax_cross_entropy(logits, labels)
        dl = F.softmax_cross_entropy_backward(probs, labels)
        tl = torch.tensor(logits, requires_grad=True)
        tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(labels))
        tloss.backward()
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(loss, tloss.item(), rtol=rtol)
        np.testing.assert_allclose(dl, tl.grad.numpy(), rtol=rtol, atol=rtol / 33)


def test_cross_entropy_label_forms_and_read_only(rng):
    logits = rng.standard_normal((3, 4))
    logits.flags.writeable = False
    expected = ref_cross_entropy(logits, [1, 3, 0])
    for labels in ([1, 3, 0], np.array([1, 3, 0], np.uint8), np.array([1.0, 3.0, 0.0]), np.array([1, 3, 0], np.int32)):
        loss, probs = F.softmax_cross_entropy(logits, labels)
        np.testing.assert_allclose(loss, expected, rtol=1e-13)
    probs.flags.writeable = False
    F.softmax_cross_entropy_backward(probs, [1, 3, 0], np.float64(2.0))
    assert F.softmax_cross_entropy_backward(np.zeros((0, 4)), np.zeros(0, np.int64)).shape == (0, 4)


def test_cross_entropy_bad_inputs():
    logits = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"labels\[1\] = 4"):
        F.softmax_cross_entropy(logits, [0, 4, 1])
    with pytest.raises(ValueError, match=r"labels\[2\] = -1"):
        F.softmax_cross_entropy(logits, [0, 1, -1])
    with pytest.raises(ValueError, match=r"labels must be integers, but labels\[1\] = 1.5"):
        F.softmax_cross_entropy(logits, [0.0, 1.5, 2.0])
    with pytest.raises(ValueError, match=r"labels must be integers, but labels\[0\] = nan"):
        F.softmax_cross_entropy(logits, [np.nan, 1.0, 2.0])
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        F.softmax_cross_entropy(logits, np.array([True, False, True]))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        F.softmax_cross_entropy(logits, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        F.softmax_cross_entropy(logits, [0, 1])
    with pytest.raises(ValueError, match=r"labels\[0\] = 0"):
        F.softmax_cross_entropy(np.zeros((1, 0)), [0])
    with pytest.raises(ValueError, match="at least one row"):
        F.softmax_cross_entropy(np.zeros((0, 4)), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"logits must be a 2-D \(N, K\) array"):
        F.softmax_cross_entropy(np.zeros((2, 3, 4)), [0, 1])
    with pytest.raises(TypeError, match="logits must be float32 or float64"):
        F.softmax_cross_entropy(np.zeros((3, 4), np.int16), [0, 1, 2])
    with pytest.raises(ValueError, match=r"labels\[0\] = 7"):
        F.softmax_cross_entropy_backward(logits, [7, 1, 2])
    with pytest.raises(ValueError, match="dloss must be finite"):
        F.softmax_cross_entropy_backward(logits, [0, 1, 2], dloss=np.inf)


# ---------------------------------------------------------------------------------------------------- linear

@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (7, 13, 5), (64, 100, 33), (0, 4, 3), (3, 0, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_numpy(arch, nthreads, dtype, rng, n, fin, fout, with_bias):
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype) if with_bias else None
    y = F.linear(x, w, b)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ref = np.einsum("ni,oi->no", x64, w64) + (b.astype(np.float64) if with_bias else 0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    assert y.dtype == dtype and y.shape == (n, fout)
    np.testing.assert_allclose(y, ref, **tol)
    dy = rng.standard_normal((n, fout)).astype(dtype)
    dx, dw, db = F.linear_backward(dy, x, w)
    np.testing.assert_allclose(dx, np.einsum("no,oi->ni", dy.astype(np.float64), w64), **tol)
    np.testing.assert_allclose(dw, np.einsum("no,ni->oi", dy.astype(np.float64), x64), **tol)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=0), **tol)
    assert F.linear_backward(dy, x, w, need_input_grad=False)[0] is None


def test_linear_backward_finite_differences(rng):
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal(5)
    dy = rng.standard_normal((4, 5))
    dx, dw, db = F.linear_backward(dy, x, w)
    num = numeric_grad(lambda x, w, b: np.sum(F.linear(x, w, b) * dy), [x, w, b])
    for g, n in zip((dx, dw, db), num):
        assert rel_err(g, n) < 1e-6


def test_linear_matches_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((9, 6)).astype(dtype)
    w = rng.standard_normal((4, 6)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    dy = rng.standard_normal((9, 4)).astype(dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(dy))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.linear(x, w, b), ty.detach().numpy(), **tol)
    for ours, theirs in zip(F.linear_backward(dy, x, w), (tx, tw, tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), **tol)


def test_linear_read_only_and_strided(rng):
    x = rng.standard_normal((6, 8))[::2, ::2]
    w = rng.standard_normal((3, 4))
    b = rng.standard_normal(3)
    for a in (x, w, b):
        a.flags.writeable = False
    np.testing.assert_allclose(F.linear(x, w, b), x @ w.T + b, rtol=1e-12, atol=1e-12)
    dx, dw, db = F.linear_backward(np.ones((3, 3)), x, w)
    np.testing.assert_allclose(dw, np.ones((3, 3)).T @ x, rtol=1e-12)


def test_linear_bad_inputs():
    x = np.zeros((2, 3), np.float32)
    w = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"x has 3 features \(shape \(2, 3\)\) but weight expects 5"):
        F.linear(x, np.zeros((4, 5), np.float32))
    with pytest.raises(TypeError, match="weight has dtype float64 but x has float32"):
        F.linear(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\) for weight of shape \(4, 3\)"):
        F.linear(x, w, np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="bias has dtype float64"):
        F.linear(x, w, np.zeros(4))
    with pytest.raises(ValueError, match="linear needs x"):
        F.linear(np.zeros(3, np.float32), w)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 3\), expected \(2, 4\)"):
        F.linear_backward(np.zeros((2, 3), np.float32), x, w)
    with pytest.raises(TypeError, match="dy has dtype float64"):
        F.linear_backward(np.zeros((2, 4)), x, w)
