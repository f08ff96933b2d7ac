"""Several convolutions of one input as one (F.conv2d_split, the GEMM's split epilogue) and the inception step that
uses it under prepare_inference: each output bit for bit what its own convolution gives."""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
import fastconv.nn as nn
from fastconv import _C, testing

# (x shape, kernel, padding, sections). Outputs of >= 192 pixels run image after image, smaller ones batch images
# and scatter; sections that are not multiples of the micro-kernel's rows put a split inside a tile; 600 channels
# run more than one kc block; a 2x2 layer with many filters is on the GEMM path too (im2col).
CASES = {
    "inception_3a": ((2, 48, 16, 14), 1, 0, (16, 24, 8)),
    "odd_sections": ((3, 20, 15, 13), 1, 0, (5, 11, 3, 7)),
    "small_output": ((5, 36, 7, 7), 1, 0, (13, 6, 21)),
    "deep": ((2, 600, 14, 14), 1, 0, (9, 30)),
    "one_image": ((1, 12, 20, 20), 1, 0, (1, 2)),
    "2x2_many_filters": ((2, 16, 13, 15), 2, 0, (150, 30)),
    # a kernel covering the whole input: the dense path, each section its own GEMM into its output
    "dense": ((4, 6, 5, 5), 5, 0, (7, 10, 3)),
}


def make(rng, case, dtype):
    xs, k, pad, sections = CASES[case]
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((sum(sections), xs[1], k, k)).astype(dtype)
    b = rng.standard_normal(sum(sections)).astype(dtype)
    return x, w, b, pad, sections


def pieces(a, sections):
    return np.split(a, np.cumsum(sections)[:-1], axis=0)


@pytest.mark.parametrize("prepare", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_split_matches_separate_convolutions(arch, nthreads, rng, case, dtype, prepare):
    x, w, b, pad, sections = make(rng, case, dtype)
    s = rng.uniform(0.5, 2, w.shape[0]).astype(dtype)
    prepared = F.conv2d_prepare_weights(w, x.shape, 1, pad) if prepare else None
    ys = F.conv2d_split(x, w, b, sections, padding=pad, scale=s, relu=True, prepared=prepared)
    assert [y.shape[1] for y in ys] == list(sections)
    ref = testing.conv2d_ref(x, w, b, 1, pad)
    tol = 2e-3 if dtype == np.float32 else 1e-9
    previous = _C.conv2d_direct_mode("never")  # a section alone may have few enough filters for the direct kernels
    try:
        alone = [F.conv2d(x, wi, bi, padding=pad, scale=si, relu=True)
                 for wi, bi, si in zip(pieces(w, sections), pieces(b, sections), pieces(s, sections))]
    finally:
        _C.conv2d_direct_mode(previous)
    for y, y_alone, bi, si, ri in zip(ys, alone, pieces(b, sections), pieces(s, sections),
                                      np.split(ref, np.cumsum(sections)[:-1], axis=1)):
        # the same GEMM rows, the same epilogue: bit for bit the layer alone
        np.testing.assert_array_equal(y, y_alone)
        expect = np.maximum((ri - bi[None, :, None, None]) * si[None, :, None, None] + bi[None, :, None, None], 0)
        assert testing.max_relative_error(y, expect) < tol


@pytest.mark.parametrize("case", ["inception_3a", "small_output", "dense"])
def test_split_writes_channel_slices(arch, rng, case):
    """Outputs given as channel slices of wider arrays (a concatenation) are written in place, nothing around
    them."""
    x, w, b, pad, sections = make(rng, case, np.float32)
    n, _, h, wd = F.conv2d(x, w[:1], padding=pad).shape  # the output's planes
    bufs = [np.full((n, f + 5, h, wd), -7.0, np.float32) for f in sections]
    outs = [buf[:, 2:2 + f] for buf, f in zip(bufs, sections)]
    ys = F.conv2d_split(x, w, None, sections, padding=pad, out=outs)
    for y, o, buf, wi in zip(ys, outs, bufs, pieces(w, sections)):
        assert y is o
        np.testing.assert_array_equal(o, F.conv2d(x, wi, padding=pad))
        assert np.all(buf[:, :2] == -7.0) and np.all(buf[:, 2 + o.shape[1]:] == -7.0)


def test_split_empty_batch(rng):
    x = np.zeros((0, 8, 5, 5), np.float32)
    ys = F.conv2d_split(x, rng.standard_normal((6, 8, 1, 1)).astype(np.float32), None, [2, 4])
    assert [y.shape for y in ys] == [(0, 2, 5, 5), (0, 4, 5, 5)]


def test_split_bad_arguments(rng):
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((6, 8, 1, 1)).astype(np.float32)
    for sections in ([2, 3], [6, 0], [1, 1, 1, 1, 2], []):
        with pytest.raises(ValueError, match="sections"):
            F.conv2d_split(x, w, None, sections)
    with pytest.raises(TypeError, match="sections"):
        F.conv2d_split(x, w)
    with pytest.raises(ValueError, match="out has shape"):
        F.conv2d_split(x, w, None, [2, 4], out=[np.empty((2, 2, 6, 6), np.float32), np.empty((2, 3, 6, 6), np.float32)])
    with pytest.raises(TypeError, match="one per section"):
        F.conv2d_split(x, w, None, [2, 4], out=np.empty((2, 6, 6, 6), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        F.conv2d_split(x, w.astype(np.float64), None, [2, 4])
    # a layer the direct kernels run (few filters, 3x3 at stride 1) is not split
    with pytest.raises(ValueError, match="GEMM path"):
        F.conv2d_split(x, rng.standard_normal((6, 8, 3, 3)).astype(np.float32), None, [2, 4], padding=1)


def inception(rng, c, fs, bn=False):
    """An inception block: 1x1 branch, 1x1 reduction + 3x3, 1x1 reduction + 5x5, pool + 1x1 projection."""
    def unit(cin, cout, k):
        layers = [nn.Conv2d(cin, cout, k, padding=k // 2, rng=rng)]
        if bn:
            b = nn.BatchNorm2d(cout)
            b.buffers["running_mean"][:] = rng.standard_normal(cout)
            b.buffers["running_var"][:] = rng.uniform(0.5, 2, cout)
            b.params["weight"][:] = rng.uniform(0.5, 2, cout)
            b.params["bias"][:] = rng.standard_normal(cout)
            layers.append(b)
        return layers + [nn.ReLU()]
    f1, r3, f3, r5, f5, fp = fs
    block = nn.Concat(nn.Sequential(*unit(c, f1, 1)),
                      nn.Sequential(*unit(c, r3, 1), *unit(r3, f3, 3)),
                      nn.Sequential(*unit(c, r5, 1), *unit(r5, f5, 5)),
                      nn.Sequential(nn.MaxPool2d(3, 1, 1), *unit(c, fp, 1)))
    for _, m in block.named_modules():
        if type(m) is nn.Conv2d:
            m.params["bias"][:] = rng.standard_normal(m.out_channels) * 0.1
    return block


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inception_block_prepared_runs_heads_as_one(arch, nthreads, rng, monkeypatch, dtype, bn):
    block = inception(rng, 24, (16, 12, 24, 4, 8, 8), bn).astype(dtype)
    x = rng.standard_normal((3, 24, 16, 15)).astype(dtype)
    with fastconv.no_grad():
        ref = block.eval().forward(x)
        calls = []
        real_split = F.conv2d_split
        monkeypatch.setattr(F, "conv2d_split", lambda *a, **k: calls.append(k["out"]) or real_split(*a, **k))
        block.prepare_inference()
        y = block.forward(x)
        # one convolution for the three branches that open with a 1x1 on the block's input
        assert len(calls) == 1 and [o.shape[1] for o in calls[0]] == [16, 12, 4]
        np.testing.assert_array_equal(y, ref)
        again = block.forward(x)
        np.testing.assert_array_equal(again, ref)
        # a weight array replaced after preparing is read (the fused weights are made again)
        conv = block.children["1"].children["0"]
        conv.params["weight"] = conv.params["weight"] * 2
        changed = block.forward(x)
        block.release_inference()
        np.testing.assert_array_equal(changed, block.forward(x))
        assert not np.array_equal(changed[:, 16:40], ref[:, 16:40])
        np.testing.assert_array_equal(changed[:, :16], ref[:, :16])
    assert len(calls) == 3


def test_inception_block_backward_after_fused_forward_raises(rng):
    block = inception(rng, 8, (4, 4, 8, 4, 4, 4)).prepare_inference()
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    with fastconv.no_grad():
        y = block.forward(x)
    with pytest.raises(RuntimeError):
        block.backward(np.ones_like(y))


def test_googlenet_prepared_matches_eval(rng):
    from fastconv import models
    net = models.get_model("googlenet", seed=0)
    x = rng.standard_normal((1,) + tuple(net.input_shape)).astype(np.float32)
    with fastconv.no_grad():
        ref = net.eval().forward(x)
        net.prepare_inference()
        np.testing.assert_array_equal(net.forward(x), ref)


def test_more_than_four_heads_fuse_the_first_four(rng, monkeypatch):
    block = nn.Concat(*[nn.Sequential(nn.Conv2d(6, f, 1, rng=rng), nn.ReLU()) for f in (3, 5, 2, 4, 7)])
    x = rng.standard_normal((2, 6, 14, 15)).astype(np.float32)
    with fastconv.no_grad():
        ref = block.eval().forward(x)
        calls = []
        real_split = F.conv2d_split
        monkeypatch.setattr(F, "conv2d_split", lambda *a, **k: calls.append(k["out"]) or real_split(*a, **k))
        np.testing.assert_array_equal(block.prepare_inference().forward(x), ref)
    assert [o.shape[1] for o in calls[0]] == [3, 5, 2, 4]
