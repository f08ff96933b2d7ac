"""Weights prepared once for repeated inference (F.conv2d_prepare_weights, conv2d(prepared=...),
Module.prepare_inference): the same results as transforming them per call, used only where they fit."""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
import fastconv.nn as nn
from fastconv import _C, testing

# (x shape, weight shape, stride, padding, groups). Winograd: 3x3 stride-1 layers (one narrow, one wide enough for
# F(4x4), one with groups) and a strided layer rearranged into a 3x3 stride-1 one (AlexNet conv1's 11x11 stride 4).
# GEMM path (weights packed into panels), outputs of >= 192 pixels, which run image after image: 1x1 layers (one with
# groups, one deeper than the GEMM's kc) and a 3x3 stride-2 layer.
CASES = {
    "3x3": ((2, 24, 9, 11), (40, 24, 3, 3), 1, 1, 1),
    "3x3_wide": ((1, 32, 6, 30), (36, 32, 3, 3), 1, 1, 1),
    "3x3_groups": ((2, 36, 8, 8), (64, 18, 3, 3), 1, 1, 2),
    "11x11_s4": ((2, 3, 31, 35), (40, 3, 11, 11), 4, 0, 1),
    "1x1": ((2, 40, 16, 13), (36, 40, 1, 1), 1, 0, 1),
    "1x1_deep_groups": ((3, 1040, 14, 14), (20, 520, 1, 1), 1, 0, 2),
    "3x3_s2": ((2, 16, 31, 33), (24, 16, 3, 3), 2, 1, 1),
    # direct kernels (LeNet's C3; a 7x7 stride-2 stem on its phase planes), and a dense layer (LeNet's C5: kernel =
    # input, run as a fully connected one)
    "5x5_direct": ((2, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    "7x7_s2_direct": ((2, 3, 29, 27), (10, 3, 7, 7), 2, 3, 1),
    "5x5_dense": ((3, 16, 5, 5), (120, 16, 5, 5), 1, 0, 1),
}


@pytest.fixture
def winograd_auto():
    previous = _C.conv2d_winograd_mode("auto"), _C.conv2d_winograd_tile("auto")
    yield
    _C.conv2d_winograd_mode(previous[0])
    _C.conv2d_winograd_tile(previous[1])


def make(rng, case, dtype):
    xs, ws, stride, padding, groups = CASES[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return x, w, b, stride, padding, groups


@pytest.mark.parametrize("tile", ["auto", 2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_prepared_matches_per_call_transform(arch, nthreads, winograd_auto, rng, case, dtype, tile):
    _C.conv2d_winograd_tile(tile)
    x, w, b, stride, padding, groups = make(rng, case, dtype)
    prepared = F.conv2d_prepare_weights(w, x.shape, stride, padding, groups=groups)
    assert prepared is not None and prepared.dtype == dtype and prepared.ndim == 1
    assert prepared.ctypes.data % 64 == 0
    plain = F.conv2d(x, w, b, stride, padding, groups=groups)
    y = F.conv2d(x, w, b, stride, padding, groups=groups, prepared=prepared)
    # the same transform, once: bit for bit the per-call result
    np.testing.assert_array_equal(y, plain)
    ref = testing.conv2d_ref(x, w, b, stride, padding, groups=groups)
    tol = 2e-3 if dtype == np.float32 else 1e-9
    assert testing.max_relative_error(y, ref) < tol
    # fused epilogue, and a batch other than the one prepared for
    s = rng.standard_normal(w.shape[0]).astype(dtype)
    res = rng.standard_normal(plain.shape).astype(dtype)
    np.testing.assert_array_equal(
        F.conv2d(x, w, b, stride, padding, groups=groups, scale=s, residual=res, relu=True, prepared=prepared),
        F.conv2d(x, w, b, stride, padding, groups=groups, scale=s, residual=res, relu=True))
    # (the Winograd tile may depend on the batch: then the weights prepared for another tile are not used)
    np.testing.assert_array_equal(F.conv2d(x[:1], w, b, stride, padding, groups=groups, prepared=prepared),
                                  F.conv2d(x[:1], w, b, stride, padding, groups=groups))


@pytest.mark.parametrize("case", ["3x3", "11x11_s4", "1x1", "3x3_s2", "5x5_direct", "7x7_s2_direct", "5x5_dense"])
def test_prepared_values_are_read(arch, nthreads, winograd_auto, rng, case):
    """Altering the prepared weights (not their header) alters the output: the layer reads them."""
    x, w, b, stride, padding, groups = make(rng, case, np.float64)
    prepared = F.conv2d_prepare_weights(w, x.shape, stride, padding, groups=groups)
    header = 64 // prepared.itemsize
    changed = prepared.copy()
    changed[header:] *= 2
    y = F.conv2d(x, w, None, stride, padding, groups=groups, prepared=changed)
    np.testing.assert_allclose(y, 2 * F.conv2d(x, w, None, stride, padding, groups=groups), rtol=1e-12,
                               atol=1e-12)


def test_prepared_for_something_else_is_ignored(winograd_auto, rng):
    x, w, b, stride, padding, groups = make(rng, "3x3_wide", np.float32)
    plain = F.conv2d(x, w, b, stride, padding)
    # made for F(4x4) (30 columns), used after forcing F(2x2): the weights are transformed as usual
    prepared = F.conv2d_prepare_weights(w, x.shape, stride, padding)
    _C.conv2d_winograd_tile(2)
    np.testing.assert_array_equal(F.conv2d(x, w, b, stride, padding, prepared=prepared),
                                  F.conv2d(x, w, b, stride, padding))
    _C.conv2d_winograd_tile("auto")
    # Winograd off: the GEMM path, whatever was prepared
    _C.conv2d_winograd_mode("never")
    y = F.conv2d(x, w, b, stride, padding, prepared=prepared)
    assert testing.max_relative_error(y, plain) < 2e-3
    _C.conv2d_winograd_mode("auto")
    # another layer's, and garbage of the right size (no header): ignored
    x2 = rng.standard_normal((1, 32, 6, 12)).astype(np.float32)  # 12 columns: F(2x2)
    other = F.conv2d_prepare_weights(w, x2.shape, stride, padding)
    np.testing.assert_array_equal(F.conv2d(x, w, b, stride, padding, prepared=other), plain)
    np.testing.assert_array_equal(F.conv2d(x, w, b, stride, padding, prepared=np.zeros_like(prepared)), plain)
    np.testing.assert_array_equal(F.conv2d(x, w, b, stride, padding, prepared=np.zeros(3, np.float32)), plain)


@pytest.mark.parametrize("layout", ["wide", "lanes"])
def test_direct_path_prepared(winograd_auto, rng, layout):
    """The direct kernels read their filter blocks from the prepared weights in both layouts (one image per lane
    or pixels in the lanes), bit for bit what packing them per call gives; weights prepared for the GEMM path or
    for another layer are ignored."""
    previous = _C.conv2d_direct_layout(layout)
    try:
        x = rng.standard_normal((17, 6, 14, 14)).astype(np.float32)
        w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
        b = rng.standard_normal(16).astype(np.float32)
        assert _C.conv2d_forward_path(x.shape, w.shape, (1, 1), (0, 0), (1, 1), 1, 4) == "direct"
        prepared = F.conv2d_prepare_weights(w, x.shape)
        assert prepared is not None and prepared.size > w.size
        np.testing.assert_array_equal(F.conv2d(x, w, b, relu=True, prepared=prepared), F.conv2d(x, w, b, relu=True))
        changed = prepared.copy()
        changed[64 // changed.itemsize:] *= 2
        np.testing.assert_allclose(F.conv2d(x, w, prepared=changed), 2 * F.conv2d(x, w), rtol=1e-6, atol=1e-5)
        other = F.conv2d_prepare_weights(w[:8], x.shape)  # 8 filters: another header
        np.testing.assert_array_equal(F.conv2d(x[:, :, :, :], w, b, prepared=np.resize(other, prepared.size)),
                                      F.conv2d(x, w, b))
    finally:
        _C.conv2d_direct_layout(previous)


def test_batched_small_outputs_read_the_weights(arch, nthreads, rng):
    """Outputs below 192 pixels run several images per GEMM on the weights as they are: prepared GEMM panels
    are ignored there (altered ones change nothing)."""
    x = rng.standard_normal((4, 24, 7, 7)).astype(np.float64)
    w = rng.standard_normal((20, 24, 1, 1)).astype(np.float64)
    prepared = F.conv2d_prepare_weights(w, x.shape)
    assert prepared is not None
    prepared[64 // prepared.itemsize:] = np.nan
    np.testing.assert_array_equal(F.conv2d(x, w, prepared=prepared), F.conv2d(x, w))


def test_prepared_bad_arguments(rng):
    x, w, b, stride, padding, groups = make(rng, "3x3", np.float32)
    prepared = F.conv2d_prepare_weights(w, x.shape, stride, padding)
    with pytest.raises(TypeError, match="prepared"):
        F.conv2d(x.astype(np.float64), w.astype(np.float64), None, stride, padding, prepared=prepared)
    with pytest.raises(TypeError, match="prepared"):
        F.conv2d(x, w, None, stride, padding, prepared=list(prepared[:4]))
    with pytest.raises(TypeError, match="prepared"):
        F.conv2d(x, w, None, stride, padding, prepared=prepared.reshape(1, -1))
    with pytest.raises(ValueError, match="x_shape"):
        F.conv2d_prepare_weights(w, (24, 9, 11))
    with pytest.raises(ValueError, match="input channels"):
        F.conv2d_prepare_weights(w, (1, 25, 9, 11))


def small_net(rng):
    net = nn.Sequential(nn.Conv2d(8, 24, 3, padding=1, rng=rng), nn.BatchNorm2d(24), nn.ReLU(),
                        nn.Conv2d(24, 32, 3, padding=1, rng=rng), nn.ReLU(), nn.Conv2d(32, 8, 1, rng=rng))
    for _, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.buffers["running_mean"][...] = rng.standard_normal(24)
            m.buffers["running_var"][...] = rng.uniform(0.5, 2, 24)
    return net


def test_prepare_inference_model(winograd_auto, rng):
    net = small_net(rng)
    x = rng.standard_normal((2, 8, 10, 28)).astype(np.float32)
    with fastconv.no_grad():
        want = net.eval().forward(x)
        assert net.prepare_inference() is net and not net.training
        np.testing.assert_array_equal(net.forward(x), want)
        conv = [m for _, m in net.named_modules() if isinstance(m, nn.Conv2d)][1]
        first = conv._prepared[2]
        assert first is not None
        np.testing.assert_array_equal(net.forward(x), want)
        assert conv._prepared[2] is first  # reused, not made again
        # another width: prepared again for it, still right
        x2 = rng.standard_normal((1, 8, 10, 12)).astype(np.float32)
        y2 = net.forward(x2)
        assert conv._prepared[2] is not first
    net.release_inference()
    with fastconv.no_grad():
        np.testing.assert_array_equal(net.forward(x2), y2)


def test_prepare_inference_guards_the_weights(winograd_auto, rng):
    net = small_net(rng)
    x = rng.standard_normal((1, 8, 10, 28)).astype(np.float32)
    conv = [m for _, m in net.named_modules() if isinstance(m, nn.Conv2d)][1]
    net.prepare_inference()
    with fastconv.no_grad():
        before = net.forward(x)
    with pytest.raises(ValueError, match="read-only"):
        conv.params["weight"][0] = 0
    # a new weight array (not an in-place change) is prepared again, and guarded too
    conv.params["weight"] = conv.params["weight"] * 2
    with fastconv.no_grad():
        after = net.forward(x)
    with pytest.raises(ValueError, match="read-only"):
        conv.params["weight"][0] = 0
    net.release_inference()
    assert conv.params["weight"].flags.writeable
    with fastconv.no_grad():
        np.testing.assert_array_equal(after, net.forward(x))
    assert not np.array_equal(after, before)
    # train() and load_state_dict end it: writable again, the copies dropped
    net.prepare_inference()
    with fastconv.no_grad():
        net.forward(x)
    state = {k: v.copy() for k, v in net.state_dict().items()}
    net.train()
    assert conv.params["weight"].flags.writeable and "_prepared" not in conv.__dict__
    net.prepare_inference()
    net.load_state_dict(state)
    assert conv.params["weight"].flags.writeable and "_prepared" not in conv.__dict__
    # a bare Conv2d under no_grad uses its prepared weights too
    conv.prepare_inference()
    with fastconv.no_grad():
        y = conv.forward(rng.standard_normal((1, 24, 6, 26)).astype(np.float32))
    assert conv._prepared[2] is not None and y.shape == (1, 32, 6, 26)


def test_prepared_on_another_arch_is_ignored(rng):
    """Every arch packs its own panels (mr, kc): weights prepared under one and used under another are ignored."""
    archs = fastconv.available_archs()
    if len(archs) < 2:
        pytest.skip("one kernel set on this CPU")
    for case in ("1x1", "3x3"):
        x, w, b, stride, padding, groups = make(rng, case, np.float64)
        previous = fastconv.set_arch(archs[0])
        try:
            prepared = F.conv2d_prepare_weights(w, x.shape, stride, padding, groups=groups)
            for arch in archs[1:]:
                fastconv.set_arch(arch)
                np.testing.assert_array_equal(
                    F.conv2d(x, w, b, stride, padding, groups=groups, prepared=prepared),
                    F.conv2d(x, w, b, stride, padding, groups=groups), err_msg=f"{case}: {archs[0]} -> {arch}")
        finally:
            fastconv.set_arch(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("features", [(120, 84), (700, 90), (300, 256)], ids=["lenet_f6", "deeper_than_kc", "large"])
def test_prepared_linear_same_bits(nthreads, rng, dtype, features):
    """Under prepare_inference a small fully connected layer runs as a dense convolution on weights packed once:
    the same bits as F.linear at every batch size (with its ReLU fused), also deeper than the GEMM's kc; a layer
    of 2^16 weights or more keeps F.linear."""
    nin, nout = features
    layer = nn.Linear(nin, nout, rng=rng, dtype=dtype)
    layer.params["bias"][:] = rng.standard_normal(nout)
    small = layer.params["weight"].size < nn.Linear.PREPARED_MAX_WEIGHTS
    layer.prepare_inference()
    for n in (1, 2, 3, 9, 33):
        x = rng.standard_normal((n, nin)).astype(dtype)
        want = F.linear(x, layer.params["weight"], layer.params["bias"])
        np.testing.assert_allclose(want, x.astype(np.float64) @ layer.params["weight"].T.astype(np.float64) +
                                   layer.params["bias"], rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-12)
        with fastconv.no_grad():
            np.testing.assert_array_equal(layer.forward_inference(x), want)
            np.testing.assert_array_equal(layer.forward_inference(x, relu=True), np.maximum(want, 0))
        np.testing.assert_array_equal(F.linear(x, layer.params["weight"], layer.params["bias"], relu=True),
                                      np.maximum(want, 0))
    assert ("_prepared" in layer.__dict__) == small
