"""Optimizers and learning-rate schedules that update a model's parameter arrays in place.

An optimizer is built from a model (preferred) or from the (name, param, grad) triples of ``model.parameters()``.
Given a model it keeps (module, own name) references and reads ``module.params`` / ``module.grads`` at every
``step()``, so it always sees the arrays the model currently holds, and a parameter that is frozen
(``module.freeze``) at step time is skipped. Every update is vectorized NumPy in the parameter's dtype.

Parameter groups carry Caffe's per-parameter multipliers::

    SGD(model, lr=0.001, momentum=0.9, weight_decay=5e-4, param_groups=[
        {"params": ["fc8"], "lr_mult": 10},                      # the new head learns fast
        {"params": ["conv*", "fc6", "fc7"], "lr_mult": 0.1},     # pretrained layers learn slowly
        {"params": ["*.bias"], "weight_decay_mult": 0},          # (first matching group wins)
    ])

A parameter's learning rate is ``opt.lr * lr_mult`` and its weight decay ``weight_decay * weight_decay_mult``.
``lr_mult == 0`` freezes it: no decay, no momentum, the array is left bit-identical. Schedulers change
``opt.lr``; the multipliers scale whatever it is.

Patterns: a pattern matches a dotted parameter name when it equals it, when it names a module the parameter
belongs to (``"fc8"`` matches ``"fc8.weight"``, ``"features.0"`` matches ``"features.0.bias"``), or as an
``fnmatch`` glob (``"conv*"``, ``"*.bias"``). Groups are tried in order and the first one that matches a
parameter owns it; parameters no group matches get multipliers 1. A pattern that matches no parameter at all is a
ValueError (it is almost always a typo). ``param_groups`` may also be a dict ``{pattern: lr_mult}``.

Weight decay is L2 regularization added to the gradient (PyTorch's ``weight_decay``; Caffe's ``weight_decay``
with ``decay_mult``): ``g = grad + weight_decay * p``. By default every parameter is decayed, biases included
(PyTorch's and Caffe's default). ``bias_decay=False`` exempts every 1-D parameter -- the biases of convolutions
and linear layers and BatchNorm's scale and shift -- which is the usual recipe; an explicit
``weight_decay_mult`` in a group still wins over that rule.
"""
import bisect
import fnmatch
import math

import numpy as np

from . import _C
from .nn import _zero

__all__ = ["SGD", "Adam", "StepLR", "MultiStepLR", "ReduceLROnPlateau"]


def _check_nonneg(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class _Slot:
    """Where one parameter lives: either (module, own name), read afresh at every step, or fixed arrays."""

    __slots__ = ("name", "module", "own_name", "param", "grad")

    def __init__(self, name, module=None, own_name=None, param=None, grad=None):
        self.name, self.module, self.own_name, self.param, self.grad = name, module, own_name, param, grad

    def arrays(self):
        if self.module is not None:
            return self.module.params[self.own_name], self.module.grads[self.own_name]
        return self.param, self.grad

    def trainable(self):
        return self.module is None or self.module.trainable(self.own_name)


def _slots(params_or_model):
    """Slots from a Module, from named_parameters() 5-tuples or from parameters() (name, param, grad) triples."""
    from .nn import Module
    if isinstance(params_or_model, Module):
        return [_Slot(n, m, own) for n, _, _, m, own in params_or_model.named_parameters(include_frozen=True)], \
            params_or_model
    slots = []
    for item in params_or_model:
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 5):
            raise TypeError("an optimizer takes a fastconv.nn.Module or its parameters() triples "
                            f"(name, param, grad); got an item {type(item).__name__}")
        if len(item) == 5:
            slots.append(_Slot(item[0], item[3], item[4]))
        else:
            name, p, g = item
            if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray) or p.shape != g.shape:
                raise TypeError(f"parameter {name!r}: param and grad must be ndarrays of the same shape")
            slots.append(_Slot(name, param=p, grad=g))
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        raise ValueError("parameter names must be unique")
    if not slots:
        raise ValueError("the optimizer got no parameters")
    return slots, None


def _pattern_matches(pattern, name):
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _resolve_groups(param_groups, slots, bias_decay):
    """{parameter name: (lr_mult, weight_decay_mult)} from the group specification."""
    if param_groups is None:
        param_groups = []
    elif isinstance(param_groups, dict):
        param_groups = [{"params": [k], "lr_mult": v} for k, v in param_groups.items()]
    groups = []
    for i, g in enumerate(param_groups):
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError(f"param_groups[{i}] must be a dict with a 'params' list of names or patterns")
        unknown = set(g) - {"params", "lr_mult", "weight_decay_mult"}
        if unknown:
            raise ValueError(f"param_groups[{i}]: unknown keys {sorted(unknown)}; "
                             f"allowed: params, lr_mult, weight_decay_mult")
        patterns = [g["params"]] if isinstance(g["params"], str) else list(g["params"])
        lr_mult = _check_nonneg(g.get("lr_mult", 1.0), f"param_groups[{i}]['lr_mult']")
        wd_mult = g.get("weight_decay_mult")
        wd_mult = None if wd_mult is None else _check_nonneg(wd_mult, f"param_groups[{i}]['weight_decay_mult']")
        groups.append((patterns, lr_mult, wd_mult))
    for i, (patterns, _, _) in enumerate(groups):
        for pat in patterns:
            if not any(_pattern_matches(pat, s.name) for s in slots):
                raise ValueError(f"param_groups[{i}]: pattern {pat!r} matches no parameter; parameters are "
                                 f"{[s.name for s in slots][:12]}{'...' if len(slots) > 12 else ''}")
    mults = {}
    for s in slots:
        lr_mult, wd_mult = 1.0, None
        for patterns, g_lr, g_wd in groups:
            if any(_pattern_matches(p, s.name) for p in patterns):
                lr_mult, wd_mult = g_lr, g_wd
                break
        if wd_mult is None:
            wd_mult = 1.0 if bias_decay or s.arrays()[0].ndim > 1 else 0.0
        mults[s.name] = (lr_mult, wd_mult)
    return mults


class Optimizer:
    """Shared machinery: parameter slots, multipliers, lr, step count, per-parameter state, (de)serialization.

    Subclasses implement ``_update(p, g, state, lr, weight_decay)`` for one parameter, in place."""

    _hyper = ()          # names of the hyperparameters saved in state_dict and restored by load_state_dict
    _buffers = ()        # names of the per-parameter arrays in self.state[name]

    def __init__(self, params_or_model, lr, param_groups=None, bias_decay=True):
        self._slots, self._model = _slots(params_or_model)
        self.lr = lr
        self.bias_decay = bool(bias_decay)
        self.multipliers = _resolve_groups(param_groups, self._slots, self.bias_decay)
        self.steps = 0
        self.state = {}

    @property
    def lr(self):
        """Base learning rate; parameter p uses ``lr * lr_mult(p)``. Schedulers set it."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _check_nonneg(value, "lr")

    @property
    def param_names(self):
        return [s.name for s in self._slots]

    def param_lr(self, name):
        """The learning rate parameter `name` gets at the next step (0 when frozen by lr_mult)."""
        return self.lr * self.multipliers[name][0]

    def zero_grad(self):
        """Zero every gradient (the model's zero_grad when built from a model)."""
        if self._model is not None:
            self._model.zero_grad()
        else:
            for s in self._slots:
                _zero(s.arrays()[1])

    def step(self):
        """Update every trainable parameter with lr_mult > 0 from its current gradient, in place."""
        for s in self._slots:
            lr_mult, wd_mult = self.multipliers[s.name]
            if lr_mult == 0 or not s.trainable():
                continue
            p, g = s.arrays()
            state = self.state.setdefault(s.name, {})
            for key in self._buffers:      # the model was converted with astype() since the buffer was made
                if key in state and state[key].dtype != p.dtype:
                    state[key] = state[key].astype(p.dtype)
            self._update(p, g, state, self.lr * lr_mult, self.weight_decay * wd_mult)
        self.steps += 1

    def _update(self, p, g, state, lr, weight_decay):
        raise NotImplementedError

    def _decayed(self, p, g, weight_decay):
        """The gradient with L2 decay added, never writing into the model's grad array."""
        return g + weight_decay * p if weight_decay else g

    # --------------------------------------------------------------- checkpoints
    def state_dict(self):
        """Everything needed to continue exactly: a dict of Python scalars and copied arrays::

            {"type": "SGD", "lr": float, "steps": int, "hyper": {momentum, ...},
             "multipliers": {param name: (lr_mult, weight_decay_mult)},
             "state": {param name: {buffer name: ndarray or int}}}
        """
        return {
            "type": type(self).__name__,
            "lr": self.lr,
            "steps": self.steps,
            "hyper": {k: getattr(self, k) for k in self._hyper},
            "multipliers": {k: tuple(v) for k, v in self.multipliers.items()},
            "state": {name: {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                             for k, v in st.items()} for name, st in self.state.items()},
        }

    def load_state_dict(self, state):
        """Restore lr, step count, hyperparameters, multipliers and buffers (copied, cast to each parameter's
        dtype). The parameter names must be the ones this optimizer holds."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"this is a {type(self).__name__}; the state_dict is from {state.get('type')!r}")
        names = set(self.param_names)
        saved = set(state["multipliers"])
        if saved != names or not set(state["state"]) <= names:
            raise KeyError(f"optimizer state_dict parameters differ: missing {sorted(names - saved)[:10]}, "
                           f"unexpected {sorted((saved | set(state['state'])) - names)[:10]}")
        arrays = {s.name: s.arrays()[0] for s in self._slots}
        new_state = {}
        for name, st in state["state"].items():
            new_state[name] = {}
            for k, v in st.items():
                if k in self._buffers:
                    v = np.asarray(v)
                    if v.shape != arrays[name].shape:
                        raise ValueError(f"optimizer buffer {name}.{k}: shape {v.shape} differs from the "
                                         f"parameter's {arrays[name].shape}")
                    v = np.array(v, dtype=arrays[name].dtype, copy=True)
                new_state[name][k] = v
        for k in self._hyper:
            setattr(self, k, state["hyper"][k])
        self.lr = state["lr"]
        self.steps = int(state["steps"])
        self.multipliers = {k: (float(a), float(b)) for k, (a, b) in state["multipliers"].items()}
        self.state = new_state
        return self


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, PyTorch's formulation::

        g = grad + weight_decay * p
        v = momentum * v + (1 - dampening) * g      (v = g at a parameter's first step)
        g = g + momentum * v   if nesterov   else   v
        p = p - lr * g

    The velocity holds gradients, not steps, so a learning-rate change takes effect at once (Caffe and
    Sutskever et al. write v = mu v - lr g instead; the two agree while lr is constant).

    Parameters
    ----------
    params_or_model : a fastconv.nn.Module (preferred) or its ``parameters()`` triples.
    lr : base learning rate.  momentum : in [0, 1).  nesterov : Nesterov momentum (needs momentum > 0 and
    dampening 0).  weight_decay : L2 coefficient.  param_groups, bias_decay : see the module docstring.
    """

    _hyper = ("momentum", "dampening", "nesterov", "weight_decay")
    _buffers = ("momentum_buffer",)

    def __init__(self, params_or_model, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0,
                 param_groups=None, bias_decay=True):
        super().__init__(params_or_model, lr, param_groups, bias_decay)
        self.momentum = _check_nonneg(momentum, "momentum")
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.dampening = _check_nonneg(dampening, "dampening")
        self.weight_decay = _check_nonneg(weight_decay, "weight_decay")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening == 0")

    def _update(self, p, g, state, lr, weight_decay):
        v = state.get("momentum_buffer")
        flat = [a for a in (p, g, v) if a is not None]
        if p.dtype in (np.float32, np.float64) and all(a.dtype == p.dtype and a.flags.c_contiguous for a in flat) \
                and p.flags.writeable:
            # the same steps in one pass over memory (optim.h): the fully connected layers' weights are hundreds of
            # MB, and each NumPy expression below reads or writes them once more
            first = bool(self.momentum) and v is None
            if first:
                v = state["momentum_buffer"] = np.empty_like(p)
            _C.sgd_update(p.reshape(-1), g.reshape(-1), v.reshape(-1) if self.momentum else None, lr,
                          self.momentum, self.dampening, weight_decay, self.nesterov, first)
            return
        d = self._decayed(p, g, weight_decay)
        if self.momentum:
            v = state.get("momentum_buffer")
            if v is None:
                v = state["momentum_buffer"] = np.array(d, copy=True)
            else:
                v *= self.momentum
                v += d if self.dampening == 0 else (1 - self.dampening) * d
            d = d + self.momentum * v if self.nesterov else v
        p -= lr * d


class Adam(Optimizer):
    """Adam (Kingma & Ba), PyTorch's formulation with bias correction and L2 weight decay::

        g = grad + weight_decay * p
        m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2 ;  t = t + 1        (t counted per parameter)
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    _hyper = ("betas", "eps", "weight_decay")
    _buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, params_or_model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 param_groups=None, bias_decay=True):
        super().__init__(params_or_model, lr, param_groups, bias_decay)
        b1, b2 = (_check_nonneg(b, "betas") for b in betas)
        if not (b1 < 1 and b2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.betas = (b1, b2)
        self.eps = _check_nonneg(eps, "eps")
        self.weight_decay = _check_nonneg(weight_decay, "weight_decay")

    def _update(self, p, g, state, lr, weight_decay):
        b1, b2 = self.betas
        d = self._decayed(p, g, weight_decay)
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * d
        v *= b2
        v += (1 - b2) * (d * d)
        denom = np.sqrt(v)
        denom /= math.sqrt(1 - b2 ** t)
        denom += self.eps
        p -= (lr / (1 - b1 ** t)) * (m / denom)


# ------------------------------------------------------------------------------------------------- schedules

class _EpochScheduler:
    """Sets ``optimizer.lr`` from the number of ``step()`` calls (one per epoch, after the epoch's training),
    as a closed form of the lr the optimizer had when the scheduler was made."""

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"a scheduler needs a fastconv.optim optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def _lr_at(self, epoch):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self._lr_at(self.last_epoch)
        return self.optimizer.lr

    def get_last_lr(self):
        return self.optimizer.lr

    def state_dict(self):
        """Counters only; the optimizer's own state_dict holds its current lr."""
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        if state.get("type") != type(self).__name__:
            raise ValueError(f"this is a {type(self).__name__}; the state_dict is from {state.get('type')!r}")
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        return self


class StepLR(_EpochScheduler):
    """lr = base_lr * gamma ** (epoch // step_size): divide by 1/gamma every `step_size` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)) or step_size < 1:
            raise ValueError(f"step_size must be an integer >= 1, got {step_size!r}")
        self.step_size, self.gamma = int(step_size), _check_nonneg(gamma, "gamma")

    def _lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(_EpochScheduler):
    """lr = base_lr * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        super().__init__(optimizer)
        milestones = list(milestones)
        if any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in milestones) or \
                milestones != sorted(set(milestones)):
            raise ValueError(f"milestones must be strictly increasing integers >= 1, got {milestones}")
        self.milestones, self.gamma = [int(m) for m in milestones], _check_nonneg(gamma, "gamma")

    def _lr_at(self, epoch):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ReduceLROnPlateau:
    """Multiply lr by `factor` once the monitored metric has not improved for more than `patience` epochs
    (the AlexNet recipe: divide by 10 when validation accuracy stops improving). PyTorch's rules:

    - mode "max" (accuracy) or "min" (loss); improvement means beating the best so far by `threshold`,
      relative (``a > best * (1 + threshold)`` for max) or absolute (``a > best + threshold``) per
      `threshold_mode`; a NaN metric never counts as an improvement;
    - after a reduction, `cooldown` epochs pass in which bad epochs are not counted;
    - the lr never goes below `min_lr`, and changes smaller than `eps` are ignored.

    Call ``step(metric)`` once per epoch with the validation metric.
    """

    def __init__(self, optimizer, mode="max", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"a scheduler needs a fastconv.optim optimizer, got {type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        if not 0 <= factor < 1:
            raise ValueError(f"factor must be in [0, 1), got {factor}")
        self.optimizer, self.mode, self.factor = optimizer, mode, float(factor)
        self.patience, self.cooldown = int(patience), int(cooldown)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.min_lr, self.eps = _check_nonneg(min_lr, "min_lr"), float(eps)
        self.best = -math.inf if mode == "max" else math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def _is_better(self, a):
        # PyTorch's comparisons, kept literally so a run's schedule matches torch's (NaN compares False)
        if self.threshold_mode == "rel":
            return a > self.best * (1 + self.threshold) if self.mode == "max" else \
                a < self.best * (1 - self.threshold)
        return a > self.best + self.threshold if self.mode == "max" else a < self.best - self.threshold

    def step(self, metric):
        """Record this epoch's metric; returns the (possibly reduced) lr."""
        metric = float(metric)
        self.last_epoch += 1
        if self._is_better(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old = self.optimizer.lr
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.optimizer.lr

    def get_last_lr(self):
        return self.optimizer.lr

    def state_dict(self):
        return {"type": "ReduceLROnPlateau", "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter, "last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        if state.get("type") != "ReduceLROnPlateau":
            raise ValueError(f"this is a ReduceLROnPlateau; the state_dict is from {state.get('type')!r}")
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.last_epoch = int(state["last_epoch"])
        return self
