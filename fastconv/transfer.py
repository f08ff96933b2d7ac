"""Transfer learning: reuse a trained ConvNet on a new task (the lecture's recipe).

Three ways, from least to most data-hungry:

1. Fixed feature extractor. Run the pretrained net up to a layer and train a linear classifier on the codes::

       codes = extract_features(net, images, layer="fc7")            # (N, 4096) for AlexNet / VGG
       clf = train_linear_classifier(codes, labels)                   # logistic regression (or kind="svm")
       accuracy = clf.score(extract_features(net, test_images, layer="fc7"), test_labels)

2. Finetune the top. Swap the head for the new classes, freeze the lower layers, train the rest with smaller
   learning rates for the pretrained layers than for the new head (Caffe's lr_mult)::

       head = replace_head(net, num_classes=20, rng=np.random.default_rng(0))   # e.g. "classifier.fc8"
       freeze_below(net, "fc6")                                       # conv1 .. conv5 keep their weights
       opt = optim.SGD(net, lr=0.01, momentum=0.9,
                       param_groups=lr_multipliers(net, {"fc6": 0.1, "fc7": 0.1, head: 1}))
       train.fit(net, train_loader, val_loader, opt, epochs=10)

3. Full finetuning: the same without freezing, the pretrained layers at 1/10 or 1/100 of the head's rate
   (``lr_multipliers(net, {"features": 0.01, "fc6": 0.1, "fc7": 0.1})``).

Pretrained weights in PyTorch's naming (torchvision's ``features.0.weight``, ``layer1.0.conv1.weight``,
``inception3a.branch1.conv.weight`` ...) load with :func:`load_torch_weights`, from safetensors without torch or
from a ``.pt`` file with torch.

Layer names: every function taking a layer accepts a module's full dotted name (``"classifier.fc7"``) or any
unique tail of it (``"fc7"``); ``[name for name, _ in model.named_modules()]`` lists them.
"""
import copy
import inspect
import math
import os
import re

import numpy as np

from . import functional as F
from . import nn, optim
from .data import ArrayDataset, DataLoader, check_images
from .init import kaiming_normal
from .models import MODELS
from .models.googlenet import SideBranch

__all__ = ["find_layer", "extract_features", "train_linear_classifier", "LinearClassifier", "replace_head",
           "freeze_below", "lr_multipliers", "read_torch_state_dict", "load_torch_weights", "TORCH_ARCHS"]


# ================================================================================================ layers by name

def find_layer(model, layer):
    """(full dotted name, module) of `layer` in `model`: its full name, or else the one module whose name ends
    with ``"." + layer``. An unknown or ambiguous name is a ValueError listing the candidates."""
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a module name (str), got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules:
        return layer, modules[layer]
    matches = [n for n in modules if n.endswith("." + layer)]
    if len(matches) == 1:
        return matches[0], modules[matches[0]]
    if matches:
        raise ValueError(f"layer {layer!r} is ambiguous: it could be {matches[:8]}{'...' if len(matches) > 8 else ''};"
                         f" give the full dotted name")
    leaves = [n for n, m in modules.items() if n and not m.children]
    raise ValueError(f"the model has no layer {layer!r}; its layers are {leaves[:24]}"
                     f"{f' ... ({len(leaves)} in all)' if len(leaves) > 24 else ''}")


def _model_dtype(model):
    for _, p, _, _, _ in model.named_parameters():
        return p.dtype
    return np.dtype(np.float32)


# ================================================================================================ features

class _Captured(Exception):
    """Raised by the layer being read, carrying its output: stops the forward pass right there."""

    def __init__(self, output):
        super().__init__()
        self.output = output


def _batches(data, batch_size, want_labels):
    """(images, labels or None) batches from an array, an (images, labels) pair, an ArrayDataset or a
    DataLoader (one full pass in the loader's order, its position left untouched)."""
    if isinstance(data, DataLoader):
        view = copy.copy(data)
        view.batch = 0
        yield from view
        return
    labels = None
    if isinstance(data, ArrayDataset):
        images, labels = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
        labels = np.asarray(labels)
    else:
        images = data
    check_images(images, name="data")
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"labels must have shape ({len(images)},) to match the images, got {labels.shape}")
    if want_labels and labels is None:
        raise ValueError("return_labels=True needs labelled data: an ArrayDataset, a DataLoader or an "
                         "(images, labels) pair")
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size], None if labels is None else labels[i:i + batch_size]


def extract_features(model, data, layer="fc7", batch_size=256, return_labels=False):
    """The codes of `data` at `layer`: the layer's outputs in eval mode, flattened to (N, D).

    model : a fastconv.nn model. layer : a module name (see :func:`find_layer`): ``"fc7"`` for AlexNet / VGG,
        ``"relu7"`` for the codes after the ReLU (Caffe's fc7 blob, which its in-place ReLU overwrites),
        ``"avgpool"`` for ResNet, ``"pool5"`` for GoogLeNet, ``"relu6"`` (84) or ``"relu5"`` (120) for LeNet-5.
    data : images (N, C, H, W) float32/float64 (cast to the model's dtype), an (images, labels) pair, an
        ArrayDataset, or a DataLoader (one pass in its order -- shuffled if it shuffles --, its position kept).
    The forward pass stops at the layer, so nothing above it runs. The model's training flags are restored.
    Returns codes (N, D) in the model's dtype, or (codes, labels (N,) int64) with return_labels=True.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    name, target = find_layer(model, layer)
    dtype = _model_dtype(model)
    training = {m: m.training for _, m in model.named_modules()}
    own_forward = type(target).forward

    def capture(x):
        raise _Captured(own_forward(target, x))

    codes, labels = [], []
    model.eval()
    target.forward = capture            # an instance attribute: only this module, only until the finally
    try:
        for x, y in _batches(data, batch_size, return_labels):
            x = np.asarray(x).astype(dtype, copy=False)
            try:
                model.forward(x)
            except _Captured as c:
                out = c.output
            else:
                raise ValueError(f"layer {name!r} did not run in the model's forward pass (in eval mode)")
            codes.append(np.asarray(out).reshape(len(x), -1))
            if y is not None:
                labels.append(np.asarray(y, dtype=np.int64))
    finally:
        del target.forward
        for m, flag in training.items():
            m.training = flag
    if not codes:
        raise ValueError("data holds no images")
    codes = np.concatenate(codes)
    return (codes, np.concatenate(labels)) if return_labels else codes


# ================================================================================================ linear classifier

class LinearClassifier:
    """A linear classifier trained on feature codes by :func:`train_linear_classifier`.

    backend : "sklearn" or "fastconv".  kind : "logistic" or "svm".  classes : the sorted distinct training
    labels; predictions are among them. Codes become ``(codes - mean) / scale`` (statistics of the training
    codes, both (D,); None without standardization) before the linear map.
    """

    def __init__(self, backend, kind, classes, mean, scale, estimator=None, layer=None):
        self.backend, self.kind, self.classes = backend, kind, classes
        self.mean, self.scale = mean, scale
        self.estimator = estimator       # the scikit-learn estimator (sklearn backend)
        self.layer = layer               # the trained nn.Linear (fastconv backend)

    def _prepare(self, codes):
        codes = _check_codes(codes)
        if self.mean is not None:
            if codes.shape[1] != self.mean.shape[0]:
                raise ValueError(f"codes have {codes.shape[1]} features, the classifier was trained on "
                                 f"{self.mean.shape[0]}")
            codes = (codes - self.mean) / self.scale
        return codes

    def decision_function(self, codes):
        """Scores (N, K), one column per class of ``classes`` (the logits for the fastconv backend)."""
        z = self._prepare(codes)
        if self.backend == "sklearn":
            s = self.estimator.decision_function(z)
            return np.stack([-s, s], axis=1) if s.ndim == 1 else s
        x = z.astype(self.layer.params["weight"].dtype, copy=False)
        return self.layer.forward(np.ascontiguousarray(x))

    def predict_proba(self, codes):
        """Class probabilities (N, K) (logistic regression only)."""
        if self.kind != "logistic":
            raise ValueError("a linear SVM gives scores, not probabilities: use decision_function")
        if self.backend == "sklearn":
            return self.estimator.predict_proba(self._prepare(codes))
        return F.softmax(self.decision_function(codes), axis=1)

    def predict(self, codes):
        """The predicted class (an element of ``classes``) of every row of codes (N, D)."""
        return self.classes[np.argmax(self.decision_function(codes), axis=1)]

    def score(self, codes, labels):
        """Accuracy on (codes, labels)."""
        return float(np.mean(self.predict(codes) == np.asarray(labels)))

    def __repr__(self):
        return f"LinearClassifier({self.kind}, {self.backend}, {len(self.classes)} classes)"


def _check_codes(codes):
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype.kind not in "fiu":
        raise ValueError(f"codes must be a 2-D (N, D) numeric array, got shape {codes.shape}, dtype {codes.dtype}")
    return codes.astype(np.float64, copy=False)


def _sklearn_available():
    try:
        import sklearn.linear_model  # noqa: F401
        import sklearn.svm  # noqa: F401
    except ImportError:
        return False
    return True


def train_linear_classifier(codes, labels, kind="logistic", C=1.0, standardize="global", backend="auto",
                            max_iter=2000, tol=1e-6):
    """Train a linear classifier on feature codes (N, D) with integer labels (N,).

    kind : "logistic" (multinomial logistic regression = a softmax classifier) or "svm" (linear SVM,
        one-vs-rest, squared hinge: scikit-learn's LinearSVC).
    C : inverse L2 strength, scikit-learn's convention: minimize ``C * sum_i loss_i + |W|^2 / 2`` (the
        intercept is not penalized).
    standardize : preprocessing fitted on the training codes and applied to every input:
        "global" (default): centre every feature and divide all of them by ONE scale, the codes' overall
        standard deviation -- C then means the same for every layer, and the relative sizes of the features
        (which carry information: a ReLU unit that barely fires stays small) are kept;
        "feature": zero mean and unit variance per feature (constant features only centred) -- the usual
        choice with many examples, but with a handful it inflates the noise of near-silent units
        (on the 5-shot digits of examples/transfer_digits.py it costs 1 to 2 points);
        None / False: the raw codes.
    backend : "sklearn" (needs scikit-learn), "fastconv", or "auto" = scikit-learn when installed, else
        fastconv. The fastconv backend is our own softmax classifier -- an nn.Linear trained in float64 by
        full-batch Nesterov gradient descent (fastconv.optim.SGD) on softmax_cross_entropy plus the same
        penalty -- until the gradient's largest entry is below `tol` or after `max_iter` steps. It minimizes
        the same objective as scikit-learn's LogisticRegression, so both give the same classifier up to the
        solvers' tolerances. It has no SVM: kind="svm" needs scikit-learn.
    Returns a LinearClassifier (predict, predict_proba, decision_function, score).
    """
    codes = _check_codes(codes)
    labels = np.asarray(labels)
    if labels.shape != (codes.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape ({codes.shape[0]},), got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if kind not in ("logistic", "svm"):
        raise ValueError(f"kind must be 'logistic' or 'svm', got {kind!r}")
    if backend not in ("auto", "sklearn", "fastconv"):
        raise ValueError(f"backend must be 'auto', 'sklearn' or 'fastconv', got {backend!r}")
    if not C > 0 or not math.isfinite(C):
        raise ValueError(f"C must be a finite number > 0, got {C}")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, the labels hold {len(classes)}")
    if backend == "auto":
        backend = "sklearn" if _sklearn_available() else "fastconv"
    if backend == "sklearn" and not _sklearn_available():
        raise ImportError("backend='sklearn' needs scikit-learn: pip install scikit-learn")
    if backend == "fastconv" and kind == "svm":
        raise ImportError("kind='svm' uses scikit-learn's LinearSVC (pip install scikit-learn); without it use "
                          "kind='logistic', our own softmax classifier")
    if standardize not in ("global", "feature", None, False):
        raise ValueError(f"standardize must be 'global', 'feature' or None, got {standardize!r}")
    mean = scale = None
    z = codes
    if standardize:
        mean = codes.mean(axis=0)
        if standardize == "feature":
            scale = codes.std(axis=0)
            scale[scale == 0] = 1.0
        else:
            overall = float(np.sqrt(np.mean((codes - mean) ** 2)))
            scale = np.full(codes.shape[1], overall if overall > 0 else 1.0)
        z = (codes - mean) / scale
    if backend == "sklearn":
        if kind == "logistic":
            from sklearn.linear_model import LogisticRegression
            estimator = LogisticRegression(C=C, max_iter=max_iter, tol=tol)
        else:
            from sklearn.svm import LinearSVC
            estimator = LinearSVC(C=C, max_iter=max_iter, tol=tol)
        estimator.fit(z, labels)
        return LinearClassifier("sklearn", kind, estimator.classes_, mean, scale, estimator=estimator)
    layer = _fit_softmax(z, np.searchsorted(classes, labels), len(classes), C, max_iter, tol)
    return LinearClassifier("fastconv", kind, classes, mean, scale, layer=layer)


def _fit_softmax(z, y, num_classes, C, max_iter, tol):
    """nn.Linear (D -> K) minimizing mean cross-entropy + |W|^2 / (2 C N), by full-batch Nesterov descent.

    Dividing sklearn's objective by C N gives that mean form, whose gradient is ours plus weight_decay * W with
    weight_decay = 1 / (C N). The step is 1 / L with L = |Z|_2^2 / (2 N) + weight_decay, a bound on the
    curvature (the softmax cross-entropy Hessian is at most 1/2 of the identity per sample)."""
    z = np.ascontiguousarray(z, dtype=np.float64)
    n = z.shape[0]
    layer = nn.Linear(z.shape[1], num_classes, dtype=np.float64)       # zeros: the convex problem needs no init
    layer.need_input_grad = False
    weight_decay = 1.0 / (C * n)
    lipschitz = np.linalg.norm(z, 2) ** 2 / (2 * n) + weight_decay
    opt = optim.SGD(layer, lr=1.0 / lipschitz, momentum=0.9, nesterov=True, weight_decay=weight_decay,
                    param_groups=[{"params": ["bias"], "weight_decay_mult": 0}])
    loss = nn.CrossEntropyLoss()
    for _ in range(max_iter):
        opt.zero_grad()
        loss.forward(layer.forward(z), y)
        layer.backward(loss.backward())
        grad_w = layer.grads["weight"] + weight_decay * layer.params["weight"]
        if max(np.abs(grad_w).max(), np.abs(layer.grads["bias"]).max()) < tol:
            break
        opt.step()
    return layer


# ================================================================================================ finetuning

def _parent(model, dotted):
    """(parent module, own name) of the module at dotted name `dotted`."""
    modules = dict(model.named_modules())
    parent, _, own = dotted.rpartition(".")
    return modules[parent], own


def replace_head(model, num_classes, rng=0, std=None):
    """Swap the model's last nn.Linear (in forward order) for a new one with `num_classes` outputs and the same
    fan-in; GoogLeNet's auxiliary classifiers (SideBranch heads) get new last layers too.

    rng : a numpy Generator or an int seed for the new weights: He normal (N(0, 2 / fan_in)), or N(0, std^2)
        when `std` is given (Caffe's finetuning examples use 0.01); biases zero. The new layers have the old
        ones' dtype and bias setting and are trainable (a freeze on the old head does not carry over).
    The model's ``arch`` record (used by fastconv.io.save / load) gets the new num_classes, and
    ``model.input_shape`` is unchanged. Returns the dotted name of the new head (e.g. ``"classifier.fc8"``),
    handy for lr_multipliers.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    branches = [n for n, m in model.named_modules() if isinstance(m, SideBranch)]
    side_heads, main = [], list(linears)
    for b in branches:
        inner = [n for n in linears if n.startswith(b + ".")]
        if inner:
            side_heads.append(inner[-1])
        main = [n for n in main if n not in inner]
    if not main:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer (outside auxiliary branches) to replace")
    for name in [main[-1]] + side_heads:
        parent, own = _parent(model, name)
        old = parent.children[own]
        w = old.params["weight"]
        new = nn.Linear(old.in_features, int(num_classes), bias="bias" in old.params, dtype=w.dtype)
        if std is None:
            kaiming_normal(new.params["weight"], rng)
        else:
            new.params["weight"][...] = rng.normal(0.0, std, new.params["weight"].shape)
        parent.children[own] = new
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and "num_classes" in _builder_options(arch):
        model.arch = {"name": arch["name"], "options": {**arch.get("options", {}), "num_classes": int(num_classes)}}
    return main[-1]


def _builder_options(arch):
    """Names of the options the model's builder takes."""
    builder = MODELS.get(arch.get("name"))
    return set(inspect.signature(builder).parameters) if builder is not None else set()


def freeze_below(model, layer):
    """Freeze every parameter of the modules that come before `layer` in forward order (named_modules order),
    the layer itself and everything after it keep their state. Returns the dotted names frozen.

    Frozen parameters get no gradient and no update (fastconv.nn.Module.freeze), and a Sequential skips the
    backward of a frozen prefix entirely. ``model.unfreeze()`` undoes it. BatchNorm layers below keep
    updating their running statistics in training mode; put them in eval mode (``m.eval()``) to keep those
    too.
    """
    name, _ = find_layer(model, layer)
    frozen = []
    for mname, m in model.named_modules():
        if mname == name:
            break
        if name.startswith(mname + ".") or mname == "":
            continue                     # an ancestor of the layer: only its earlier children are "below"
        for pname in m.params:
            m.freeze(pname)
            frozen.append(f"{mname}.{pname}")
    return frozen


def lr_multipliers(model, multipliers, default=1.0):
    """Parameter groups for fastconv.optim (``SGD(model, lr, param_groups=lr_multipliers(model, {...}))``)
    giving each layer a learning-rate multiplier (Caffe's lr_mult).

    multipliers : {layer: mult}, layers by full or unique short name (see find_layer); a layer's multiplier
        covers every parameter under it, and the most specific (longest) name wins, so
        ``{"features": 0.01, "conv5": 0.1}`` gives conv5 0.1 and the other conv layers 0.01. 0 freezes a
        parameter (no update, no decay, no momentum: it stays bit-identical).
    default : the multiplier of the parameters no layer covers (usually the new head: 1).
    Returns a list of {"params": [dotted parameter names], "lr_mult": m}, one per distinct multiplier.
    The lecture's recipe -- new head 1, the pretrained top 1/10, intermediate layers 1/100, the bottom frozen --
    reads ``lr_multipliers(net, {"conv1": 0, "conv2": 0, "features": 0.01, "fc6": 0.1, "fc7": 0.1})``.
    """
    resolved = {}
    for layer, mult in dict(multipliers).items():
        name, _ = find_layer(model, layer)
        if isinstance(mult, bool) or not isinstance(mult, (int, float, np.integer, np.floating)) or not mult >= 0:
            raise ValueError(f"the multiplier of {layer!r} must be a number >= 0, got {mult!r}")
        resolved[name] = float(mult)
    groups = {}
    for pname, _, _, _, _ in model.named_parameters():
        owners = [n for n in resolved if n == "" or pname.startswith(n + ".")]
        mult = resolved[max(owners, key=len)] if owners else float(default)
        groups.setdefault(mult, []).append(pname)
    return [{"params": names, "lr_mult": mult} for mult, names in groups.items()]


# ================================================================================================ PyTorch weights

TORCH_ARCHS = ("alexnet", "vgg", "resnet", "googlenet")


def _as_numpy(value, key):
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):           # a torch tensor (bfloat16 via float32)
        t = value.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not an array or tensor")


def read_torch_state_dict(source):
    """{name: ndarray} from a PyTorch-style state dict: a dict of arrays or tensors, a ``.safetensors`` file
    (read by fastconv.io without torch) or a torch file (``.pt``/``.pth``, read with
    ``torch.load(weights_only=True)``, so only tensors and plain containers are unpickled).

    A dict wrapping the weights under "state_dict" or "model" (common in training checkpoints) is unwrapped;
    a "module." prefix on every name (nn.DataParallel) is removed; BatchNorm's num_batches_tracked counters
    are dropped (fastconv does not keep them).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04" or head[:1] == b"\x80":      # torch.save's zip format, or its legacy pickle
            try:
                import torch
            except ImportError:
                raise ImportError(f"{path} is a torch file; reading it needs PyTorch (pip install torch), or "
                                  f"convert it to safetensors") from None
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:      # torch raises UnpicklingError, RuntimeError, ... for bad files
                raise ValueError(f"{path}: not a readable torch weights file ({type(e).__name__}: {e})") from None
        else:
            from .io import _read_safetensors
            state, _ = _read_safetensors(path)
    else:
        state = source
    if not isinstance(state, dict):
        raise TypeError(f"a state dict must be a dict of name -> array, got {type(state).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = state.get(wrapper)
        if isinstance(inner, dict) and not all(hasattr(v, "shape") for v in state.values()):
            state = inner
            break
    arrays = {str(k): _as_numpy(v, k) for k, v in state.items() if not str(k).endswith("num_batches_tracked")}
    if arrays and all(k.startswith("module.") for k in arrays):
        arrays = {k[len("module."):]: v for k, v in arrays.items()}
    return arrays


def _arch_family(model, arch):
    if arch is None:
        info = getattr(model, "arch", None)
        arch = info.get("name") if isinstance(info, dict) else getattr(model, "name", None)
        if arch is None:
            raise ValueError(f"cannot tell the architecture of this {type(model).__name__}: pass arch= one of "
                             f"{TORCH_ARCHS}")
    name = str(arch).lower()
    for family, prefixes in (("alexnet", ("alexnet", "zfnet")), ("vgg", ("vgg",)), ("resnet", ("resnet",)),
                             ("googlenet", ("googlenet", "inception_v1"))):
        if name.startswith(prefixes):
            return family
    raise ValueError(f"no PyTorch weight mapping for architecture {arch!r}; supported: {TORCH_ARCHS}")


def _copy(target_shape, a):
    return a


# --- AlexNet and VGG: torchvision's nn.Sequential "features" and "classifier", matched layer by layer

def _plan_sequential(model, state, family):
    """Both are two nn.Sequential: the k-th layer with weights of torch's "features" (by index) goes to the k-th
    of ours, likewise for "classifier". Pooling, ReLU, LRN and dropout have no weights, so their different
    positions (we name the layers and put a Flatten first in the classifier) do not matter."""
    plan = {}
    for section in ("features", "classifier"):
        if section not in model.children:
            raise ValueError(f"the model has no {section!r} Sequential; is it a fastconv {family}?")
        ours = [(f"{section}.{n}", m) for n, m in model.children[section].named_modules() if m.params]
        groups = {}
        for key in state:
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == section and parts[1].isdigit():
                groups.setdefault(int(parts[1]), set()).add(parts[2])
        theirs = [(f"{section}.{i}", groups[i]) for i in sorted(groups)]
        if len(theirs) != len(ours):
            raise ValueError(f"{section}: the checkpoint has {len(theirs)} layers with weights "
                             f"({[t for t, _ in theirs]}), the model {len(ours)} ({[o for o, _ in ours]}); "
                             + _HINTS[family])
        for (tname, tparams), (oname, module) in zip(theirs, ours):
            if "running_mean" in tparams:
                raise ValueError(f"torch {tname!r} is a batch normalization layer (a *_bn model?), fastconv "
                                 f"{oname!r} is a {type(module).__name__}: fastconv's {family} has no batch "
                                 f"normalization")
            for pname in module.params:
                plan[f"{oname}.{pname}"] = ((f"{tname}.{pname}",), _copy)
    return plan


# --- ResNet: the names map one to one

_RESNET_RULES = (
    (re.compile(r"(conv1|bn1|fc)\.(\w+)"), r"\1.\2"),
    (re.compile(r"(layer\d+\.\d+)\.(conv\d|bn\d)\.(\w+)"), r"\1.res.body.\2.\3"),
    (re.compile(r"(layer\d+\.\d+)\.downsample\.0\.(\w+)"), r"\1.res.shortcut.conv.\2"),
    (re.compile(r"(layer\d+\.\d+)\.downsample\.1\.(\w+)"), r"\1.res.shortcut.bn.\2"),
)


def _plan_resnet(model, state, source_stride_in_1x1):
    _check_resnet_strides(model, source_stride_in_1x1)
    plan = {}
    for key in state:
        for pattern, replacement in _RESNET_RULES:
            if pattern.fullmatch(key):
                plan[pattern.sub(replacement, key)] = ((key,), _copy)
                break
    return plan


def _check_resnet_strides(model, source_stride_in_1x1):
    """Bottleneck blocks put their stride on the 1x1 (ours by default, the paper's Caffe models) or on the 3x3
    (torchvision, "ResNet v1.5"): same shapes, different function, so a mismatch would load silently wrong."""
    for name, m in model.named_modules():
        body = m.children if name.endswith(".res.body") else {}
        if "conv3" in body and (body["conv1"].stride != 1 or body["conv2"].stride != 1):
            in_1x1 = body["conv1"].stride != 1
            if in_1x1 != bool(source_stride_in_1x1):
                raise ValueError(
                    f"{name}: the model's bottleneck blocks stride in the {'1x1' if in_1x1 else '3x3'} conv, the "
                    f"checkpoint's (source_stride_in_1x1={source_stride_in_1x1}) in the "
                    f"{'1x1' if source_stride_in_1x1 else '3x3'}; torchvision's ResNet-50/101/152 are v1.5 "
                    f"(3x3): build the model with stride_in_1x1=False "
                    f"(get_model('{getattr(model, 'name', 'resnet50')}', stride_in_1x1=False))")
            return


# --- GoogLeNet: torchvision's BasicConv2d (conv without bias + BatchNorm) folds into our conv with bias

def _googlenet_units(model):
    """(torch prefix, our module name, kind) of every layer with weights, kind "conv" (a BasicConv2d) or
    "linear"."""
    modules = dict(model.named_modules())
    units = [("conv1", "conv1", "conv"), ("conv2", "conv2_reduce", "conv"), ("conv3", "conv2", "conv")]
    branches = (("branch1", "1x1.conv"), ("branch2.0", "3x3.reduce"), ("branch2.1", "3x3.conv"),
                ("branch3.0", "5x5.reduce"), ("branch3.1", "5x5.conv"), ("branch4.1", "pool_proj.conv"))
    for name in modules:
        m = re.fullmatch(r"inception_(\d[a-z])", name)
        if m:
            units += [(f"inception{m.group(1)}.{t}", f"{name}.{o}", "conv") for t, o in branches]
        m = re.fullmatch(r"aux(\d)", name)
        if m:
            units += [(f"{name}.conv", f"{name}.head.conv", "conv"), (f"{name}.fc1", f"{name}.head.fc", "linear"),
                      (f"{name}.fc2", f"{name}.head.classifier", "linear")]
    units.append(("fc", "fc", "linear"))
    missing = [o for _, o, _ in units if o not in modules]
    if missing:
        raise ValueError(f"the model has no layers {missing[:6]}; is it a fastconv googlenet?")
    return units


def _fold_weight(eps, embed):
    def fold(target_shape, w, gamma=None, beta=None, mean=None, var=None):
        if gamma is not None:
            w = w * (gamma / np.sqrt(var + eps))[:, None, None, None]
        if embed and w.shape[2:] != tuple(target_shape[2:]):
            w = _embed_kernel(w, target_shape)
        return w
    return fold


def _embed_kernel(w, target_shape):
    """A k x k kernel centred in a larger K x K one of zeros: with padding K // 2 instead of k // 2 the
    convolution is unchanged (torchvision's inception branch3 is 3x3 where the paper's is 5x5)."""
    kh, kw = w.shape[2:]
    th, tw = target_shape[2:]
    if w.shape[:2] != tuple(target_shape[:2]) or th < kh or tw < kw or (th - kh) % 2 or (tw - kw) % 2:
        return w                                   # the shape check reports it
    out = np.zeros(target_shape, dtype=w.dtype)
    out[:, :, (th - kh) // 2:(th + kh) // 2, (tw - kw) // 2:(tw + kw) // 2] = w
    return out


def _fold_bias(eps, has_bias):
    def fold(target_shape, *arrays):
        bias = arrays[0] if has_bias else None
        if len(arrays) > int(has_bias):
            gamma, beta, mean, var = arrays[int(has_bias):]
            scale = gamma / np.sqrt(var + eps)
            return beta - mean * scale + (0 if bias is None else bias * scale)
        return np.zeros(target_shape) if bias is None else bias
    return fold


def _plan_googlenet(model, state, bn_eps):
    plan = {}
    modules = dict(model.named_modules())
    for tprefix, oname, kind in _googlenet_units(model):
        if kind == "linear":
            for p in modules[oname].params:
                plan[f"{oname}.{p}"] = ((f"{tprefix}.{p}",), _copy)
            continue
        bn = tuple(f"{tprefix}.bn.{p}" for p in ("weight", "bias", "running_mean", "running_var"))
        has_bn = any(k in state for k in bn)
        has_bias = f"{tprefix}.conv.bias" in state
        weight_src = (f"{tprefix}.conv.weight",) + (bn if has_bn else ())
        plan[f"{oname}.weight"] = (weight_src, _fold_weight(bn_eps, embed=oname.endswith("5x5.conv")))
        if "bias" in modules[oname].params:
            bias_src = ((f"{tprefix}.conv.bias",) if has_bias else ()) + (bn if has_bn else ())
            plan[f"{oname}.bias"] = (bias_src, _fold_bias(bn_eps, has_bias))
    return plan


_HINTS = {
    "alexnet": ("fastconv's alexnet is the 2012 paper's network (conv 96-256-384-384-256, LRN, 227x227 input); "
                "torchvision's AlexNet is the 64-192-384-256-256 variant of Krizhevsky's 2014 'one weird trick' "
                "paper (no LRN, 224x224), whose weights do not fit it"),
    "vgg": ("build the same VGG configuration (vgg11/13/16/19 = A/B/D/E) at input_size=224 (fastconv sizes fc6 "
            "for the input size; torchvision's adaptive pool feeds fc6 7x7 maps whatever the input); VGG with "
            "batch normalization (vgg*_bn) has no fastconv counterpart"),
    "resnet": "build the same depth (resnet18/34/50/101/152)",
    "googlenet": "build googlenet (aux_logits=True when the checkpoint has aux1/aux2)",
}


def load_torch_weights(model, source, arch=None, strict=True, exclude=(), source_stride_in_1x1=False,
                       bn_eps=1e-3):
    """Load weights named the PyTorch / torchvision way into a fastconv model, in place; returns the model.

    source : a state dict (arrays or tensors), a ``.safetensors`` file (no torch needed) or a ``.pt``/``.pth``
        file (needs torch; read with weights_only=True). See :func:`read_torch_state_dict`.
    arch : "alexnet", "vgg", "resnet" or "googlenet"; default: from the model (``model.arch`` / ``model.name``
        as set by fastconv.models).
    strict : every parameter and buffer of the model must be filled and every tensor of the checkpoint used,
        else a ValueError lists the missing and unexpected names (strict=False leaves the unmapped parameters
        as they are and ignores extra tensors).
    exclude : name prefixes -- of the checkpoint's or of our names -- to leave out, e.g. the old head
        (``exclude=["fc"]`` or ``["classifier.fc8"]``) before :func:`replace_head`.
    Every value is checked against the parameter's shape (a ValueError names both names and both shapes) and
    cast to the model's dtype.

    The mappings and where the architectures differ:
      * alexnet: torchvision ``features.{0,3,6,8,10}`` / ``classifier.{1,4,6}`` -> our conv1..conv5 /
        fc6..fc8, matched in order. torchvision's AlexNet is NOT ours (64-192-384-256-256 channels, no LRN,
        conv1 padding 2): its pretrained weights are refused with a shape error. A torch model with our
        channels and torchvision's naming maps exactly (the two-tower groups=2 model too).
      * vgg: ``features.N`` (each conv's index) / ``classifier.{0,3,6}`` -> conv{b}_{i} / fc6..fc8, in
        order. torchvision's adaptive average pool to 7x7 is the identity at 224x224 (use input_size=224);
        vgg*_bn weights are refused (our VGG has no batch normalization).
      * resnet: ``conv1``, ``bn1``, ``layer{s}.{i}.conv{k}`` / ``.bn{k}`` / ``.downsample.{0,1}``, ``fc`` ->
        conv1, bn1, layer{s}.{i}.res.body.conv{k} / bn{k}, .res.shortcut.conv / bn, fc. torchvision's
        bottleneck ResNets (50/101/152) are "v1.5", stride in the 3x3 conv: build ours with
        ``stride_in_1x1=False`` (checked; ``source_stride_in_1x1=True`` for v1 checkpoints).
      * googlenet: torchvision ``conv1``, ``conv2``, ``conv3``, ``inception{3a..5b}.branch{1,2.0,2.1,3.0,3.1,
        4.1}``, ``aux{1,2}.conv``/``fc1``/``fc2``, ``fc`` -> conv1, conv2_reduce, conv2, inception_{..}.{1x1.conv,
        3x3.reduce, 3x3.conv, 5x5.reduce, 5x5.conv, pool_proj.conv}, aux{n}.head.{conv, fc, classifier}, fc.
        torchvision puts batch normalization (eps `bn_eps` = 0.001, its value; the state dict does not say)
        after every conv and has no conv bias; ours has conv biases and no BN, so each BN is folded into its
        conv, which is exact in eval mode (w * g / sqrt(var + eps), b = beta - mean * g / sqrt(var + eps)).
        torchvision's "5x5" branch convs are 3x3 (a known slip it keeps for its weights): they are embedded in
        the centre of our 5x5 kernels, which is exact. What cannot be mapped: torchvision's pool4 is 2x2/2
        where ours (Caffe's) is 3x3/2 -- to reproduce torchvision's outputs exactly, swap it:
        ``model.children["pool4"] = nn.MaxPool2d(2, 2, ceil_mode=True)`` (the map sizes then still agree when
        the map entering pool4 has an even size, as the 14x14 at 224x224); its aux classifiers pool to 4x4
        adaptively (= our 5x5/3 average pool only at 224x224); and its ``transform_input`` re-normalization
        of the input is preprocessing, not weights.
    """
    family = _arch_family(model, arch)
    state = read_torch_state_dict(source)
    excluded = tuple(exclude) if not isinstance(exclude, str) else (exclude,)

    def is_excluded(name):
        return any(name == p or name.startswith(p + ".") for p in excluded)

    state = {k: v for k, v in state.items() if not is_excluded(k)}
    if family in ("alexnet", "vgg"):
        plan = _plan_sequential(model, state, family)
    elif family == "resnet":
        plan = _plan_resnet(model, state, source_stride_in_1x1)
    else:
        plan = _plan_googlenet(model, state, bn_eps)
    targets = {}
    for mname, m in model.named_modules():
        for store in (m.params, m.buffers):
            for k in store:
                targets[f"{mname}.{k}" if mname else k] = store[k]
    skipped = {s for t, (sources, _) in plan.items() if is_excluded(t) for s in sources}
    plan = {t: v for t, v in plan.items() if not is_excluded(t)}
    unknown_targets = sorted(set(plan) - set(targets))
    unfilled = sorted(t for t in targets if t not in plan and not is_excluded(t))
    incomplete = sorted(t for t, (sources, _) in plan.items() if t in targets and not all(s in state for s in sources))
    used = {s for t, (sources, _) in plan.items() if t in targets for s in sources}
    unexpected = sorted(set(state) - used - skipped)
    missing = unfilled + incomplete
    if strict and (missing or unexpected or unknown_targets):
        absent = sorted({s for t in incomplete for s in plan[t][0] if s not in state})
        problems = []
        if missing:
            problems.append(f"model parameters without a tensor {_few(missing)}"
                            + (f" (looked for {_few(absent)})" if absent else ""))
        if unexpected:
            problems.append(f"unexpected tensors {_few(unexpected)}")
        if unknown_targets:
            problems.append(f"tensors that map to names the model lacks {_few(unknown_targets)}")
        raise ValueError(f"the {family} checkpoint does not match the model: {', '.join(problems)}; "
                         f"{_HINTS[family]}")
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    last_linear = last_linear[0] if last_linear else None
    values = {}
    for target, (sources, make) in plan.items():
        if target not in targets or target in incomplete:
            continue
        want = targets[target]
        arrays = [np.asarray(state[s], dtype=np.float64) for s in sources]
        value = np.asarray(make(want.shape, *arrays))
        if value.shape != want.shape:
            how = " (after folding its batch normalization)" if len(sources) > 1 else ""
            head = target.rsplit(".", 1)[0] == last_linear
            raise ValueError(f"torch {sources[0]!r} has shape {tuple(state[sources[0]].shape)}{how} but fastconv "
                             f"{target!r} has shape {want.shape}; " + (
                                 f"the classifier heads differ (another number of classes?): load without it "
                                 f"(exclude=[{target.rsplit('.', 1)[0]!r}]) and use replace_head" if head
                                 else _HINTS[family]))
        values[target] = value.astype(want.dtype)
    model.load_state_dict(values, strict=False)
    return model


def _few(names, count=8):
    return f"{names[:count]}{f' ... ({len(names)} in all)' if len(names) > count else ''}"
