"""fastconv.optim against torch.optim and against plain NumPy recurrences written here."""
import math

import numpy as np
import pytest

from fastconv import nn, optim

STEPS = 6


def make_model(dtype=np.float64, seed=0):
    """Conv (4-D weight + bias), BatchNorm (1-D scale/shift) and Linear: names 0.*, 1.*, 4.*."""
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=rng, dtype=dtype), nn.BatchNorm2d(3, dtype=dtype), nn.ReLU(),
                          nn.Flatten(), nn.Linear(12, 4, rng=rng, dtype=dtype))
    for _, p, _, _, _ in model.named_parameters():
        p[...] = rng.normal(size=p.shape)           # biases and BN too, so decay on them is visible
    return model


def grad_sequence(model, steps=STEPS, seed=1):
    """A scripted gradient for every parameter and step: [{name: array}]."""
    rng = np.random.default_rng(seed)
    return [{n: rng.normal(size=p.shape).astype(p.dtype) for n, p, _, _, _ in model.named_parameters()}
            for _ in range(steps)]


def set_grads(model, grads):
    for n, _, g, _, _ in model.named_parameters():
        g[...] = grads[n]


def params_of(model):
    return {n: p.copy() for n, p, _, _, _ in model.named_parameters()}


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.03, momentum=0.8, weight_decay=5e-3, dampening=0.1)),
    ("SGD", dict(lr=0.03, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, kwargs", CONFIGS)
def test_matches_torch_optim(kind, kwargs, dtype):
    torch = pytest.importorskip("torch")
    model = make_model(dtype)
    grads = grad_sequence(model)
    tparams = {n: torch.tensor(p.copy(), requires_grad=True) for n, p, _, _, _ in model.named_parameters()}
    topt = getattr(torch.optim, kind)(list(tparams.values()), **kwargs)
    opt = getattr(optim, kind)(model, **kwargs)
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    for g in grads:
        set_grads(model, g)
        opt.step()
        for n, t in tparams.items():
            t.grad = torch.tensor(g[n])
        topt.step()
        for n, p, _, _, _ in model.named_parameters():
            assert p.dtype == dtype
            np.testing.assert_allclose(p, tparams[n].detach().numpy(), **tol, err_msg=n)


def numpy_sgd(params, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """Plain SGD recurrence on dicts of float64 arrays (PyTorch's formulation)."""
    params = {n: p.astype(np.float64) for n, p in params.items()}
    velocity = {}
    for g in grads:
        for n in params:
            d = g[n] + weight_decay * params[n]
            if momentum:
                velocity[n] = d if n not in velocity else momentum * velocity[n] + d
                d = d + momentum * velocity[n] if nesterov else velocity[n]
            params[n] = params[n] - lr * d
    return params


def numpy_adam(params, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    params = {n: p.astype(np.float64) for n, p in params.items()}
    m = {n: 0.0 for n in params}
    v = {n: 0.0 for n in params}
    for t, g in enumerate(grads, start=1):
        for n in params:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            m_hat, v_hat = m[n] / (1 - b1 ** t), v[n] / (1 - b2 ** t)
            params[n] = params[n] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


@pytest.mark.parametrize("kwargs", [dict(lr=0.1), dict(lr=0.05, momentum=0.9),
                                    dict(lr=0.05, momentum=0.9, nesterov=True),
                                    dict(lr=0.05, momentum=0.5, weight_decay=0.1)])
def test_sgd_matches_numpy_recurrence(kwargs):
    model = make_model()
    start, grads = params_of(model), grad_sequence(model)
    opt = optim.SGD(model, **kwargs)
    for g in grads:
        set_grads(model, g)
        opt.step()
    expected = numpy_sgd(start, grads, **kwargs)
    for n, p, _, _, _ in model.named_parameters():
        np.testing.assert_allclose(p, expected[n], rtol=1e-12, atol=1e-13, err_msg=n)


def test_adam_matches_numpy_recurrence():
    model = make_model()
    start, grads = params_of(model), grad_sequence(model)
    opt = optim.Adam(model, lr=0.01)
    for g in grads:
        set_grads(model, g)
        opt.step()
    expected = numpy_adam(start, grads, lr=0.01)
    for n, p, _, _, _ in model.named_parameters():
        np.testing.assert_allclose(p, expected[n], rtol=1e-12, atol=1e-13, err_msg=n)


def test_updates_in_place_in_param_dtype_and_leaves_grads():
    model = make_model(np.float32)
    before = {n: p for n, p, _, _, _ in model.named_parameters()}
    g = grad_sequence(model, 1)[0]
    set_grads(model, g)
    opt = optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1)
    opt.step()
    for n, p, grad, _, _ in model.named_parameters():
        assert p is before[n] and p.dtype == np.float32
        np.testing.assert_array_equal(grad, g[n])      # weight decay must not write into the grads
    assert all(st["momentum_buffer"].dtype == np.float32 for st in opt.state.values())
    opt.zero_grad()
    assert all(not grad.any() for _, _, grad, _, _ in model.named_parameters())


def test_parameters_triples_work_like_the_model():
    a, b = make_model(), make_model()
    grads = grad_sequence(a)
    oa = optim.SGD(a, lr=0.1, momentum=0.9)
    ob = optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    for g in grads:
        set_grads(a, g)
        set_grads(b, g)
        oa.step()
        ob.step()
    for (n, pa, _), (_, pb, _) in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(pa, pb, err_msg=n)
    ob.zero_grad()
    assert all(not g.any() for _, _, g in b.parameters())


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_lr_mult_zero_is_bit_identical(kind):
    model = make_model(np.float32)
    frozen_before = {n: p.tobytes() for n, p in params_of(model).items() if n.startswith("0.")}
    opt = getattr(optim, kind)(model, lr=0.1, weight_decay=0.1,
                               param_groups=[{"params": ["0"], "lr_mult": 0}])
    for g in grad_sequence(model):
        set_grads(model, g)
        opt.step()
    for n, p in params_of(model).items():
        if n.startswith("0."):
            assert p.tobytes() == frozen_before[n], n
    assert "4.weight" in opt.state and "0.weight" not in opt.state
    assert opt.param_lr("0.weight") == 0 and opt.param_lr("4.weight") == pytest.approx(0.1)


def test_lr_mult_scales_the_step():
    """With plain SGD, lr_mult 0.1 moves a parameter exactly 1/10 as far as lr_mult 1."""
    full, tenth = make_model(), make_model()
    start = params_of(full)
    g = grad_sequence(full, 1)[0]
    set_grads(full, g)
    set_grads(tenth, g)
    optim.SGD(full, lr=0.5).step()
    optim.SGD(tenth, lr=0.5, param_groups={"4.weight": 0.1, "1": 0.1}).step()
    for n in start:
        d_full = params_of(full)[n] - start[n]
        d_tenth = params_of(tenth)[n] - start[n]
        expected = 0.1 * d_full if n.startswith(("4.weight", "1.")) else d_full
        np.testing.assert_allclose(d_tenth, expected, rtol=1e-10, atol=1e-14, err_msg=n)
        np.testing.assert_allclose(d_full, -0.5 * g[n], rtol=1e-10, atol=1e-14)


def test_groups_first_match_wins_and_globs():
    model = make_model()
    opt = optim.SGD(model, lr=1.0, weight_decay=0.1, param_groups=[
        {"params": ["4.bias"], "lr_mult": 2.0},
        {"params": ["*.bias"], "lr_mult": 0.5, "weight_decay_mult": 0},
        {"params": "4", "lr_mult": 0.01}])
    assert opt.multipliers == {"0.weight": (1.0, 1.0), "0.bias": (0.5, 0.0), "1.weight": (1.0, 1.0),
                               "1.bias": (0.5, 0.0), "4.weight": (0.01, 1.0), "4.bias": (2.0, 1.0)}


def test_group_errors():
    model = make_model()
    with pytest.raises(ValueError, match="fc8"):
        optim.SGD(model, lr=0.1, param_groups=[{"params": ["fc8"], "lr_mult": 10}])
    with pytest.raises(ValueError, match="unknown keys"):
        optim.SGD(model, lr=0.1, param_groups=[{"params": ["0"], "lr": 10}])
    with pytest.raises(ValueError, match="lr_mult"):
        optim.SGD(model, lr=0.1, param_groups=[{"params": ["0"], "lr_mult": -1}])
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        optim.SGD(model, lr=-0.1)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(model, lr=0.1, momentum=1.0)
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(3)], lr=0.1)


def test_bias_decay_off_spares_1d_params():
    model = make_model()
    start = params_of(model)
    model.zero_grad()
    optim.SGD(model, lr=0.1, weight_decay=0.5, bias_decay=False).step()
    for n, p in params_of(model).items():
        if start[n].ndim == 1:              # conv/linear biases and BatchNorm scale/shift
            np.testing.assert_array_equal(p, start[n], err_msg=n)
        else:
            np.testing.assert_allclose(p, start[n] * (1 - 0.1 * 0.5), rtol=1e-14, err_msg=n)


def test_module_freeze_is_respected_at_step_time():
    model = make_model(np.float32)
    opt = optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=0.1)
    model[4].freeze()
    before = model[4].params["weight"].tobytes()
    for g in grad_sequence(model, 3):
        set_grads(model, g)              # even a stale nonzero gradient must not move a frozen weight
        opt.step()
    assert model[4].params["weight"].tobytes() == before
    model.unfreeze()
    set_grads(model, grad_sequence(model, 1)[0])
    opt.step()
    assert model[4].params["weight"].tobytes() != before


def test_sees_arrays_replaced_by_astype():
    model = make_model(np.float32)
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    set_grads(model, grad_sequence(model, 1)[0])
    opt.step()
    model.astype(np.float64)
    start = params_of(model)
    g = grad_sequence(model, 1, seed=5)[0]
    set_grads(model, g)
    opt.step()
    for n, p in params_of(model).items():
        assert p.dtype == np.float64 and opt.state[n]["momentum_buffer"].dtype == np.float64
        assert not np.array_equal(p, start[n])


# ------------------------------------------------------------------------------------------------ checkpoints

@pytest.mark.parametrize("kind, kwargs", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
                                          ("Adam", dict(lr=0.01, weight_decay=1e-3))])
def test_state_dict_resume_is_exact(kind, kwargs):
    grads = grad_sequence(make_model(np.float32), 7)
    groups = [{"params": ["0"], "lr_mult": 0.1}]

    def build():
        model = make_model(np.float32)
        opt = getattr(optim, kind)(model, param_groups=groups, **kwargs)
        return model, opt, optim.StepLR(opt, step_size=2, gamma=0.5)

    model, opt, sched = build()
    for i, g in enumerate(grads):
        if i == 3:
            saved = (model.state_dict(), opt.state_dict(), sched.state_dict())
        set_grads(model, g)
        opt.step()
        sched.step()
    straight = params_of(model)

    model2, opt2, sched2 = build()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert opt2.steps == 3 and opt2.lr == saved[1]["lr"]
    for g in grads[3:]:
        set_grads(model2, g)
        opt2.step()
        sched2.step()
    for n, p in params_of(model2).items():
        assert p.tobytes() == straight[n].tobytes(), n
    assert opt2.lr == opt.lr


def test_state_dict_is_a_copy_and_checked():
    model = make_model()
    opt = optim.SGD(model, lr=0.1, momentum=0.9)
    set_grads(model, grad_sequence(model, 1)[0])
    opt.step()
    sd = opt.state_dict()
    buf = opt.state["0.weight"]["momentum_buffer"]
    saved = sd["state"]["0.weight"]["momentum_buffer"].copy()
    buf += 1
    np.testing.assert_array_equal(sd["state"]["0.weight"]["momentum_buffer"], saved)
    with pytest.raises(ValueError, match="Adam"):
        optim.Adam(make_model(), lr=0.1).load_state_dict(sd)
    other = optim.SGD(nn.Sequential(nn.Linear(3, 2, rng=np.random.default_rng(0), dtype=np.float64)), lr=0.1)
    with pytest.raises(KeyError):
        other.load_state_dict(sd)


# ------------------------------------------------------------------------------------------------ schedules

def torch_lrs(torch, make_sched, epochs, metrics=None):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = make_sched(torch.optim.lr_scheduler, opt)
    lrs = []
    for e in range(epochs):
        opt.step()
        sched.step(*([] if metrics is None else [metrics[e]]))
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def our_lrs(make_sched, epochs, metrics=None):
    opt = optim.SGD(make_model(), lr=0.1)
    sched = make_sched(optim, opt)
    return [sched.step(*([] if metrics is None else [metrics[e]])) for e in range(epochs)]


def test_step_lr():
    make = lambda mod, opt: mod.StepLR(opt, step_size=3, gamma=0.1)  # noqa: E731
    ours = our_lrs(make, 10)
    np.testing.assert_allclose(ours, [0.1 * 0.1 ** ((e + 1) // 3) for e in range(10)], rtol=1e-14)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(ours, torch_lrs(torch, make, 10), rtol=1e-12)


def test_multistep_lr():
    make = lambda mod, opt: mod.MultiStepLR(opt, milestones=[2, 5, 6], gamma=0.5)  # noqa: E731
    ours = our_lrs(make, 9)
    np.testing.assert_allclose(ours, [0.1, 0.05, 0.05, 0.05, 0.025, 0.0125, 0.0125, 0.0125, 0.0125], rtol=1e-14)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(ours, torch_lrs(torch, make, 9), rtol=1e-12)
    with pytest.raises(ValueError, match="milestones"):
        optim.MultiStepLR(optim.SGD(make_model(), lr=0.1), [5, 2])


# epoch:       1     2     3     4     5     6     7     8     9     10    11    12    13    14
ACCURACY = [0.50, 0.60, 0.60, 0.59, 0.61, 0.61, 0.60, 0.70, 0.69, 0.68, 0.68, 0.71, 0.70, 0.70]
# patience 2, cooldown 1, threshold 0.5 % relative: best .60 at epoch 2; epochs 3, 4 bad; 0.61 > 0.603 is the
# new best at 5; 6, 7 bad; 0.70 best at 8; 9, 10, 11 bad -> third bad epoch exceeds the patience: lr / 10 after
# epoch 11, one cooldown epoch; 0.71 > 0.7035 is the best at 12; 13, 14 bad (two, not more than the patience).
EXPECTED_LR = [0.1] * 10 + [0.01] * 4


def test_reduce_on_plateau_scripted():
    make = lambda mod, opt: mod.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=2,  # noqa: E731
                                                  threshold=0.005, cooldown=1)
    ours = our_lrs(make, len(ACCURACY), ACCURACY)
    np.testing.assert_allclose(ours, EXPECTED_LR, rtol=1e-14)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(ours, torch_lrs(torch, make, len(ACCURACY), ACCURACY), rtol=1e-12)


def test_reduce_on_plateau_cooldown_min_lr_and_loss_mode():
    flat = [1.0] * 12
    for mode, kwargs in [("min", dict(patience=1, cooldown=2, min_lr=0.002)),
                         ("max", dict(patience=0, cooldown=0, threshold_mode="abs", threshold=0.1)),
                         ("min", dict(patience=1, threshold_mode="abs", threshold=-0.5))]:
        make = lambda mod, opt: mod.ReduceLROnPlateau(opt, mode=mode, **kwargs)  # noqa: E731
        ours = our_lrs(make, len(flat), flat)
        # independent walk for a constant metric: the first epoch improves on +-inf, then every epoch is bad
        # (unless the threshold is negative, which makes equal values count as improvements)
        lr, bad, cool, expected = 0.1, 0, 0, []
        improving = kwargs.get("threshold", 0) < 0
        for e in range(len(flat)):
            bad = 0 if e == 0 or improving else bad + 1
            if cool > 0:
                cool, bad = cool - 1, 0
            if bad > kwargs["patience"]:
                new = max(lr * 0.1, kwargs.get("min_lr", 0.0))
                lr = new if lr - new > 1e-8 else lr          # changes below eps are ignored
                cool, bad = kwargs["cooldown"], 0
            expected.append(lr)
        np.testing.assert_allclose(ours, expected, rtol=1e-12)
        torch = pytest.importorskip("torch")
        np.testing.assert_allclose(ours, torch_lrs(torch, make, len(flat), flat), rtol=1e-12)


def test_plateau_state_dict_resumes():
    opt = optim.SGD(make_model(), lr=0.1)
    sched = optim.ReduceLROnPlateau(opt, patience=2, cooldown=1, threshold=0.005)
    for a in ACCURACY[:6]:
        sched.step(a)
    saved_opt, saved = opt.state_dict(), sched.state_dict()
    rest = [sched.step(a) for a in ACCURACY[6:]]
    opt2 = optim.SGD(make_model(), lr=0.1).load_state_dict(saved_opt)
    sched2 = optim.ReduceLROnPlateau(opt2, patience=2, cooldown=1, threshold=0.005).load_state_dict(saved)
    assert [sched2.step(a) for a in ACCURACY[6:]] == rest
    assert math.isclose(rest[-1], 0.01)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", [dict(lr=0.1), dict(lr=0.05, weight_decay=0.01),
                                    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.02),
                                    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)])
def test_sgd_one_pass_update_equals_numpy_expressions(nthreads, dtype, kwargs):
    """Contiguous parameters take the one-pass C update (optim.h); strided ones the NumPy expressions. Both give
    the same bits, including a parameter large enough to be split over the threads."""
    rng = np.random.default_rng(3)
    shapes = [(30, 7), (5,), ((1 << 18) + 7,)]
    dense = [rng.standard_normal(s).astype(dtype) for s in shapes]
    wide = [np.zeros(s[:-1] + (2 * s[-1],), dtype) for s in shapes]
    strided = [w[..., ::2] for w in wide]
    for s, d in zip(strided, dense):
        s[...] = d
    assert not any(s.flags.c_contiguous for s in strided)
    grads = [np.zeros_like(d) for d in dense]
    fast = optim.SGD([(f"p{i}", d, g) for i, (d, g) in enumerate(zip(dense, grads))], **kwargs)
    plain = optim.SGD([(f"p{i}", s, g) for i, (s, g) in enumerate(zip(strided, grads))], **kwargs)
    for _ in range(3):
        for g in grads:
            g[...] = rng.standard_normal(g.shape)
        before = [g.copy() for g in grads]
        fast.step()
        plain.step()
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)  # the gradient is only read
    for d, s in zip(dense, strided):
        assert d.dtype == dtype
        np.testing.assert_array_equal(d, s)
    if kwargs.get("momentum"):
        for i in range(len(shapes)):
            np.testing.assert_array_equal(fast.state[f"p{i}"]["momentum_buffer"],
                                          plain.state[f"p{i}"]["momentum_buffer"])


def test_zero_grad_fills_large_and_strided_gradients(nthreads):
    """zero_grad's threaded memset covers every byte of a gradient larger than its 1 MiB chunks (and of a size
    that is not a multiple of them); strided gradients are zeroed by NumPy; other arrays are untouched."""
    big = np.full((5 << 20) // 8 + 5, 7.0)  # 5 MiB + 40 bytes of float64: shared by 2 threads
    wide = np.full((6, 8), 7.0, np.float32)
    strided = wide[:, ::2]
    p_big, p_strided = np.ones_like(big), np.ones_like(strided)
    opt = optim.SGD([("big", p_big, big), ("strided", p_strided, strided)], lr=0.1)
    opt.zero_grad()
    assert not big.any() and not strided.any()
    np.testing.assert_array_equal(wide[:, 1::2], 7.0)
    assert p_big.all() and p_strided.all()
    with pytest.raises(ValueError, match="contiguous"):
        from fastconv import _C
        _C.zero_fill(strided)
