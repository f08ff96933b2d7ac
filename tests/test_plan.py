"""Inference plans (Module.prepare_inference + no_grad on a Sequential): the kernel calls of the first forward for an
input shape, replayed without the Python between them. Each replay must give the layer-by-layer forward's bits, in
a new array, and a plan must never be kept where the replay would differ."""
import threading

import numpy as np
import pytest

import fastconv
import fastconv.functional as F
import fastconv.nn as nn
from fastconv import _C, models


def small_net(rng, dtype=np.float32):
    """Every layer kind a plan records: conv + batch-norm + ReLU, LRN, max and average pooling, an inception block
    (split heads, pooled branch), a residual block, global pooling, dropout, flatten, linear + ReLU."""
    def conv(c, f, k, **kw):
        return nn.Conv2d(c, f, k, rng=rng, dtype=dtype, **kw)

    def bn(c):
        m = nn.BatchNorm2d(c, dtype=dtype)
        m.params["weight"][:] = rng.uniform(0.5, 1.5, c)
        m.params["bias"][:] = rng.standard_normal(c)
        m.buffers["running_mean"][:] = rng.standard_normal(c)
        m.buffers["running_var"][:] = rng.uniform(0.5, 2, c)
        return m

    inception = nn.Concat(
        nn.Sequential(conv(16, 8, 1), nn.ReLU()),
        nn.Sequential(conv(16, 6, 1), nn.ReLU(), conv(6, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(16, 4, 1), nn.ReLU()))
    residual = nn.Residual(nn.Sequential(conv(20, 20, 3, padding=1, bias=False), bn(20), nn.ReLU(),
                                         conv(20, 20, 3, padding=1, bias=False), bn(20)))
    return nn.Sequential(
        conv(3, 16, 5, padding=2), bn(16), nn.ReLU(), nn.LocalResponseNorm(5), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        inception, residual, nn.ReLU(), nn.AvgPool2d(2, 2), nn.GlobalAvgPool2d(), nn.Dropout(0.5, rng=1),
        nn.Flatten(), nn.Linear(20, 12, rng=rng, dtype=dtype), nn.ReLU(), nn.Linear(12, 5, rng=rng, dtype=dtype))


def plans_of(model):
    return {k: v for k, v in model.__dict__.get("_plans", {}).items() if k != "version"}


def layer_by_layer(model, x):
    with nn.no_grad():
        return model._forward_layers(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_gives_the_layer_by_layer_bits(nthreads, rng, dtype):
    model = small_net(rng, dtype).prepare_inference()
    x = rng.standard_normal((2, 3, 17, 19)).astype(dtype)
    with nn.no_grad():
        first = model(x)
        (plan,) = plans_of(model).values()
        assert plan is not None and plan.usable and plan.num_calls >= 12
        second = model(x)
        x2 = rng.standard_normal(x.shape).astype(dtype)
        third = model(x2)
    want = layer_by_layer(model, x)
    np.testing.assert_array_equal(first, want)
    np.testing.assert_array_equal(second, want)
    np.testing.assert_array_equal(third, layer_by_layer(model, x2))
    assert not np.shares_memory(first, second)  # a new output each call
    # the same network in eval mode without prepare_inference (nothing fused differently, nothing recorded)
    plain = small_net(np.random.default_rng(0), dtype)
    plain.load_state_dict(model.state_dict())
    with nn.no_grad():
        np.testing.assert_allclose(plain.eval()(x2), third, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                   atol=1e-5 if dtype == np.float32 else 1e-12)
    assert not plans_of(plain)


def test_zoo_networks_at_batch_1(rng):
    for name in ("lenet5", "alexnet"):
        model = models.get_model(name).prepare_inference()
        x = rng.standard_normal((1,) + model.input_shape).astype(np.float32)
        with nn.no_grad():
            model(x)
            x2 = rng.standard_normal(x.shape).astype(np.float32)
            got = model(x2)
        assert all(p is not None for p in plans_of(model).values()), name
        np.testing.assert_array_equal(got, layer_by_layer(model, x2))


class Doubling(nn.Module):
    """Computes with NumPy between the kernels: a plan would replay a stale value."""
    plan_safe = True  # claimed wrongly on purpose: the replay check must catch it

    def forward(self, x):
        return x * 2


class Opaque(nn.Module):
    def forward(self, x):
        return x - 1


@pytest.mark.parametrize("extra", [Doubling, Opaque])
def test_no_plan_where_values_are_computed_outside_the_kernels(rng, extra):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, rng=rng), nn.ReLU(), extra(), nn.Conv2d(4, 3, 3, rng=rng))
    model.prepare_inference()
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    with nn.no_grad():
        model(x)
        x2 = rng.standard_normal(x.shape).astype(np.float32)
        got = model(x2)
    assert list(plans_of(model).values()) == [None]
    np.testing.assert_array_equal(got, layer_by_layer(model, x2))


def test_a_replaced_parameter_or_child_records_again(rng):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, rng=rng), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 3, rng=rng))
    model.prepare_inference()
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    with nn.no_grad():
        before = model(x)
        conv = model.children["0"]
        conv.params["weight"] = 2 * conv.params["weight"]
        np.testing.assert_array_equal(model(x), layer_by_layer(model, x))
        assert not np.array_equal(model(x), before)
        model.children["3"] = nn.Linear(4 * 7 * 7, 3, rng=rng)
        np.testing.assert_array_equal(model(x), layer_by_layer(model, x))
        assert model(x).shape == (1, 3)


def test_prepared_buffers_are_read_only(rng):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, rng=rng), nn.BatchNorm2d(4), nn.ReLU()).prepare_inference()
    with pytest.raises(ValueError, match="read-only"):
        model.children["1"].buffers["running_mean"][0] = 1.0
    model.train()
    model.children["1"].buffers["running_mean"][0] = 1.0  # writable again


def test_backward_after_a_planned_forward_raises(rng):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, rng=rng), nn.ReLU(), nn.Conv2d(4, 3, 3, rng=rng))
    model.prepare_inference()
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    with nn.no_grad():
        model(x)
        model(x)
    y = model(x)  # with gradients (eval mode): kept for backward
    model.backward(np.ones_like(y))
    with nn.no_grad():
        model(x)  # replayed: the last forward kept nothing
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(y))


def test_inputs_a_plan_does_not_take(rng, monkeypatch):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, rng=rng), nn.ReLU(), nn.Conv2d(4, 3, 3, rng=rng))
    model.prepare_inference()
    x = rng.standard_normal((2, 2, 11, 9)).astype(np.float32)
    with nn.no_grad():
        strided = np.asfortranarray(x)  # not C-contiguous: layer by layer, no plan
        np.testing.assert_array_equal(model(strided), layer_by_layer(model, x))
        assert not plans_of(model)
        for shape in [(1, 2, 9, 9), (2, 2, 9, 9), (3, 2, 9, 9), (1, 2, 10, 9), (1, 2, 9, 10), (4, 2, 9, 9)]:
            xi = rng.standard_normal(shape).astype(np.float32)
            np.testing.assert_array_equal(model(xi), layer_by_layer(model, xi))
        assert len(plans_of(model)) == nn.INFERENCE_PLANS_PER_MODULE  # the oldest dropped
        # the thread count is part of a plan's key
        previous = _C.get_num_threads()
        try:
            _C.set_num_threads(1 if previous != 1 else 2)
            np.testing.assert_array_equal(model(x), layer_by_layer(model, x))
            assert any(k[0] == x.shape and k[2][1] == _C.get_num_threads() for k in plans_of(model))
        finally:
            _C.set_num_threads(previous)
        # activations past the budget: no plan
        monkeypatch.setattr(nn, "INFERENCE_PLAN_MAX_BYTES", 1000)
        big = rng.standard_normal((8, 2, 9, 9)).astype(np.float32)
        np.testing.assert_array_equal(model(big), layer_by_layer(model, big))
        assert plans_of(model)[(big.shape, "f", _C.plan_settings())] is None


def test_threads_calling_one_model(rng):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, rng=rng), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5, rng=rng)).prepare_inference()
    xs = [rng.standard_normal((1, 3, 10, 10)).astype(np.float32) for _ in range(4)]
    want = [layer_by_layer(model, x) for x in xs]
    errors = []

    def work(k):
        try:
            with nn.no_grad():
                for _ in range(200):
                    np.testing.assert_array_equal(model(xs[k]), want[k])
        except AssertionError as e:
            errors.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_inference_plan_api(rng):
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    plan = _C.InferencePlan(x, 1 << 20)
    assert plan.start()
    assert not _C.InferencePlan(x, 1 << 20).start()  # one recording at a time
    y = F.conv2d(x, w, relu=True)
    plan.finish(y)
    assert plan.usable and plan.num_calls == 1 and plan.activation_bytes == y.nbytes
    np.testing.assert_array_equal(plan.run(x), y)
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(plan.run(x2), F.conv2d(x2, w, relu=True))
    with pytest.raises(ValueError, match="recorded for"):
        plan.run(x2[:, :1])
    with pytest.raises(ValueError, match="recorded for"):
        plan.run(x2.astype(np.float64))
    ((kind, seconds),) = plan.call_times(x2, 3)
    assert kind == "conv 1x2x6x6 -> 3 3x3/1" and seconds > 0
    # a forward writing into its input cannot be replayed
    inplace = _C.InferencePlan(y, 1 << 20)
    assert inplace.start()
    _C.relu_forward(y.reshape(-1), y.reshape(-1))
    inplace.finish(y)
    assert not inplace.usable and "input" in inplace.reason
    with pytest.raises(RuntimeError, match="cannot run"):
        inplace.run(y)
    with pytest.raises(TypeError):
        _C.InferencePlan(np.asfortranarray(rng.standard_normal((2, 3, 4, 5))), 1 << 20)


def test_no_plan_where_numpy_fills_part_of_a_recorded_array(rng):
    """An inception branch ending in a pooling copies its result into its channels of the block's output with
    NumPy, beside a branch whose convolution writes its channels there itself: the replay check catches the
    channels no recorded kernel writes (a replay on another input would keep the first input's values there)."""
    block = nn.Concat(nn.Sequential(nn.Conv2d(3, 4, 1, rng=rng), nn.ReLU()), nn.Sequential(nn.MaxPool2d(3, 1, 1)))
    model = nn.Sequential(block, nn.Conv2d(7, 2, 3, rng=rng)).prepare_inference()
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    with nn.no_grad():
        model(x)
        x2 = rng.standard_normal(x.shape).astype(np.float32)
        got = model(x2)
    np.testing.assert_array_equal(got, layer_by_layer(model, x2))
    assert list(plans_of(model).values()) == [None]


def one_thread_shares(model, x, parts):
    """The one-thread layer-by-layer forward of each of `parts` equal shares of x's images, stacked: what a split
    plan's replay must give bit for bit."""
    share = x.shape[0] // parts
    with fastconv.threads(1):
        return np.concatenate([layer_by_layer(model, x[k * share:(k + 1) * share]) for k in range(parts)])


@pytest.mark.parametrize("threads, batch", [(2, 8), (2, 2), (3, 6)])
def test_split_plan_runs_each_threads_share(rng, threads, batch):
    """A small network on several threads replays one plan per thread, each over its share of the images."""
    model = models.get_model("lenet5").prepare_inference()
    x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    with fastconv.threads(threads), nn.no_grad():
        first = model(x)
        (plan,) = plans_of(model).values()
        assert isinstance(plan, _C.SplitInferencePlan) and len(plan.parts) == threads
        assert plan.num_calls == sum(p.num_calls for p in plan.parts) >= threads * 5
        got, again = model(x2), model(x2)
        whole = layer_by_layer(model, x2)
    np.testing.assert_array_equal(first, one_thread_shares(model, x, threads))
    np.testing.assert_array_equal(got, one_thread_shares(model, x2, threads))
    np.testing.assert_array_equal(again, got)
    assert not np.shares_memory(got, again)
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-6)  # the whole batch's forward, to rounding


def test_split_plan_every_layer_kind_one_image_per_thread(rng):
    model = small_net(rng, np.float64).prepare_inference()
    x = rng.standard_normal((4, 3, 17, 19))
    with fastconv.threads(4), nn.no_grad():
        model(x)
        (plan,) = plans_of(model).values()
        assert isinstance(plan, _C.SplitInferencePlan) and len(plan.parts) == 4
        x2 = rng.standard_normal(x.shape)
        got = model(x2)
    np.testing.assert_array_equal(got, one_thread_shares(model, x2, 4))


def test_when_a_batch_is_not_split(rng, monkeypatch):
    model = models.get_model("lenet5").prepare_inference()

    def plan_for(batch, threads):
        x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
        with fastconv.threads(threads), nn.no_grad():
            got = model(x)
            np.testing.assert_array_equal(got, layer_by_layer(model, x))
            return plans_of(model)[(x.shape, "f", _C.plan_settings())]
    assert type(plan_for(7, 2)) is _C.InferencePlan  # the thread count does not divide the batch
    assert type(plan_for(1, 2)) is _C.InferencePlan
    assert type(plan_for(8, 1)) is _C.InferencePlan
    monkeypatch.setattr(nn, "INFERENCE_SPLIT_MAX_WEIGHTS", model.num_parameters() - 1)  # too many weights
    model.release_inference()
    model.prepare_inference()
    assert type(plan_for(4, 2)) is _C.InferencePlan


def test_split_inference_plan_api(rng):
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)

    def recorded(x, forward):
        plan = _C.InferencePlan(x, 1 << 20)
        assert plan.start()
        y = forward(x)
        plan.finish(y)
        assert plan.usable
        return plan
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    conv = lambda v: F.conv2d(v, w, relu=True)  # noqa: E731
    split = _C.SplitInferencePlan([recorded(x[:2], conv), recorded(x[2:], conv)])
    x2 = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(split.run(x2), conv(x2))
    with pytest.raises(ValueError, match="recorded for"):
        split.run(x2[:2])
    with pytest.raises(ValueError, match="usable"):
        _C.SplitInferencePlan([])
    with pytest.raises(ValueError, match="same input shape"):
        _C.SplitInferencePlan([recorded(x[:2], conv), recorded(x[:1], conv)])
    # a result that is a strided view of its array replays as such, but cannot be stacked
    view_plan = recorded(x[:2], lambda v: conv(v)[:, 1:])
    np.testing.assert_array_equal(view_plan.run(x2[:2]), conv(x2[:2])[:, 1:])
    with pytest.raises(ValueError, match="whole"):
        _C.SplitInferencePlan([view_plan])


def test_this_thread_num_threads_is_per_thread():
    seen = []
    with fastconv.threads(3):
        previous = _C.set_this_thread_num_threads(1)
        try:
            assert _C.get_num_threads() == 1
            worker = threading.Thread(target=lambda: seen.append(_C.get_num_threads()))
            worker.start()
            worker.join()
        finally:
            assert _C.set_this_thread_num_threads(previous) == 1
        assert seen == [3] and _C.get_num_threads() == 3
