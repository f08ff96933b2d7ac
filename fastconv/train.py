"""Training loop with validation, progress bar, exact checkpoint/resume, early stopping; evaluate and predict.

    from fastconv import data, optim, train
    history = train.fit(model, train_loader, val_loader, optim.SGD(model, lr=0.01, momentum=0.9), epochs=20,
                        checkpoint_dir="ckpt", resume=True)
    history.plot("history.png")                 # needs matplotlib (pip install 'fastconv[plot]')
    loss, accuracy = train.evaluate(model, test_loader)
    probabilities = train.predict(model, images)

Checkpoints. After every epoch ``<checkpoint_dir>/checkpoint.npz`` is replaced atomically (fastconv.io.atomic_write:
temporary file in the same directory, flush, fsync, rename, fsync of the directory), so it always holds the last
COMPLETE epoch, whatever kills the process. It holds the model's parameters and buffers, the optimizer (lr, step
count, multipliers, momentum buffers), the scheduler, the training loader's position, the state of every random
generator (each module's ``rng`` -- Dropout's --, NumPy's global and Python's ``random``), the early-stopping
record (with the best weights) and the history. ``fit(..., resume=True)`` restores all of it, so an interrupted
and resumed run ends with exactly the weights of an uninterrupted one. The file is a plain ``.npz`` (no pickle):
every array under its path in the state tree ("model/features.c1.weight", "optimizer/state/.../momentum_buffer")
plus ``__checkpoint__``, the JSON of the tree with ``{"__array__": key}`` where the arrays were.
"""
import copy
import json
import math
import os
import random
import sys
import time

import numpy as np

from . import nn
from .data import ArrayDataset, DataLoader
from .io import SAVEZ_OPTIONS, atomic_write, check_plain_array, remove_temporaries
from .optim import ReduceLROnPlateau

__all__ = ["fit", "evaluate", "predict", "History", "EarlyStopping", "save_checkpoint", "load_checkpoint",
           "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.npz"
_TREE_KEY = "__checkpoint__"
_FORMAT = "fastconv-checkpoint"


# ================================================================================================ history

class History(list):
    """One dict per epoch: epoch, train_loss, train_acc, val_loss, val_acc (NaN without validation), lr (the
    learning rate the epoch trained with), seconds (wall time of the epoch, validation included), images_per_s
    (training throughput)."""

    KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s")

    def column(self, key):
        return [row[key] for row in self]

    def plot(self, path):
        """Loss and accuracy curves (train and validation) per epoch, written to `path` (PNG by extension).
        Needs matplotlib (``pip install 'fastconv[plot]'``); uses no pyplot state."""
        try:
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise ImportError("plotting the history needs matplotlib: pip install 'fastconv[plot]'") from None
        fig = Figure(figsize=(10, 3.8), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        epochs = self.column("epoch")
        for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
            ax.plot(epochs, self.column(f"train_{key}"), "o-", label="train")
            if any(not math.isnan(v) for v in self.column(f"val_{key}")):
                ax.plot(epochs, self.column(f"val_{key}"), "s-", label="validation")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend()
        ax_loss.set_yscale("log")
        fig.savefig(os.fspath(path), dpi=100)
        return path


# ================================================================================================ early stopping

class EarlyStopping:
    """Stop when validation accuracy has not improved by more than `min_delta` for `patience` epochs.

    restore_best : at the end of fit, load the weights (parameters and buffers) of the best epoch.
    ``fit(..., early_stopping=5)`` means ``EarlyStopping(patience=5)``.
    """

    def __init__(self, patience=5, min_delta=0.0, restore_best=True):
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        self.patience, self.min_delta, self.restore_best = int(patience), float(min_delta), bool(restore_best)
        self.best = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_state = None

    def update(self, val_acc, epoch, model):
        """Record an epoch's validation accuracy; returns True when training should stop."""
        if val_acc > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = float(val_acc), int(epoch), 0
            if self.restore_best:
                self.best_state = model.state_dict()
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self):
        return {"patience": self.patience, "min_delta": self.min_delta, "restore_best": self.restore_best,
                "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_state": self.best_state}

    def load_state_dict(self, state):
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = state["best_state"]
        return self


# ================================================================================================ checkpoint files

def _join(path, key):
    return f"{path}/{key}" if path else str(key)


def _flatten(obj, arrays, path):
    """The JSON-able tree of `obj`, its arrays moved to `arrays[path]` (tuples tagged to come back as tuples)."""
    if isinstance(obj, np.ndarray):
        check_plain_array(path, obj)
        if path in arrays:
            raise ValueError(f"two arrays of the checkpoint would be stored as {path!r}")
        arrays[path] = obj
        return {"__array__": path}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"checkpoint keys must be strings, got {k!r} at {path!r}")
        return {k: _flatten(v, arrays, _join(path, k)) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, arrays, _join(path, i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, arrays, _join(path, i)) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (at {path!r})")


def _unflatten(tree, arrays, path):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            key = tree["__array__"]
            if key not in arrays:
                raise ValueError(f"{path}: array {key!r} is missing")
            return arrays[key]
        if set(tree) == {"__tuple__"}:
            return tuple(_unflatten(v, arrays, path) for v in tree["__tuple__"])
        return {k: _unflatten(v, arrays, path) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten(v, arrays, path) for v in tree]
    return tree


def save_checkpoint(path, state):
    """Write a nested dict of arrays and JSON values to `path` (.npz), atomically."""
    arrays = {}
    tree = _flatten(state, arrays, "")
    if _TREE_KEY in arrays:
        raise ValueError(f"{_TREE_KEY!r} is reserved")
    arrays[_TREE_KEY] = np.array(json.dumps(tree))
    with atomic_write(path) as f:
        np.savez(f, **arrays, **SAVEZ_OPTIONS)


def load_checkpoint(path):
    """The nested dict written by :func:`save_checkpoint`; a damaged file is a ValueError naming it."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        tree = json.loads(str(arrays.pop(_TREE_KEY)))
    except FileNotFoundError:
        raise
    except Exception as e:          # zipfile, zlib, numpy and json each have their own ways of failing
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    try:
        return _unflatten(tree, arrays, path)
    except ValueError as e:
        raise ValueError(f"{path}: damaged checkpoint: {e}") from None


# ================================================================================================ random state

def _module_generators(model):
    """{module name: Generator} for every module holding an ``rng`` Generator (Dropout)."""
    return {name or "<root>": m.rng for name, m in model.named_modules()
            if isinstance(getattr(m, "rng", None), np.random.Generator)}


def _random_state(model):
    return {"modules": {name: g.bit_generator.state for name, g in _module_generators(model).items()},
            "numpy_global": np.random.get_state(legacy=False),
            "python": random.getstate()}


def _set_random_state(model, state):
    generators = _module_generators(model)
    if set(generators) != set(state["modules"]):
        raise ValueError(f"the checkpoint has generators for modules {sorted(state['modules'])}, the model for "
                         f"{sorted(generators)}")
    for name, g in generators.items():
        g.bit_generator.state = state["modules"][name]
    np.random.set_state(state["numpy_global"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ================================================================================================ helpers

def _model_dtype(model):
    for _, p, _, _, _ in model.named_parameters():
        return p.dtype
    return np.dtype(np.float32)


def _as_loader(data, batch_size, shuffle, seed, name):
    """A DataLoader from a DataLoader, a dataset, or an (images, labels) pair."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, ArrayDataset):
        return DataLoader(data, batch_size, shuffle=shuffle, seed=seed)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return DataLoader(ArrayDataset(data[0], data[1]), batch_size, shuffle=shuffle, seed=seed)
    raise TypeError(f"{name} must be a fastconv.data.DataLoader, an ArrayDataset or an (images, labels) pair, "
                    f"got {type(data).__name__}")


def _epoch_batches(loader):
    """The batches of one whole pass over `loader`, leaving the loader's own position untouched."""
    view = copy.copy(loader)
    view.batch = 0
    return iter(view)


def _progress_bar(enabled, total, desc):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)


def _checkpoint_epoch(path):
    """The epoch a checkpoint file holds, or None when there is none or it cannot be read."""
    try:
        return int(load_checkpoint(path)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ================================================================================================ evaluate / predict

def evaluate(model, data, *, loss=None, batch_size=256):
    """(mean loss, accuracy) of `model` in eval mode on `data`: a DataLoader (one full pass, its position left
    as it was), an ArrayDataset or an (images, labels) pair. Images are cast to the model's dtype. The model's
    training flag is restored afterwards."""
    loader = _as_loader(data, batch_size, False, 0, "data")
    loss = nn.CrossEntropyLoss() if loss is None else loss
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    total = correct = 0
    loss_sum = 0.0
    try:
        for x, y in _epoch_batches(loader):
            logits = model.forward(np.asarray(x).astype(dtype, copy=False))
            loss_sum += float(loss.forward(logits, y)) * len(y)
            correct += int(np.sum(np.argmax(logits, axis=1) == y))
            total += len(y)
    finally:
        model.train(was_training)
    return loss_sum / total, correct / total


def predict(model, x, batch_size=256):
    """Class probabilities (N, K) (softmax of the logits) of `model` in eval mode for images x (N, C, H, W) (or
    an ArrayDataset), computed `batch_size` images at a time in the model's dtype."""
    from . import functional as F
    if isinstance(x, ArrayDataset):
        x = x.images
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be a 4-D (N, C, H, W) array, got shape {x.shape}")
    dtype = _model_dtype(model)
    was_training = model.training
    model.eval()
    try:
        out = [F.softmax(model.forward(x[i:i + batch_size].astype(dtype, copy=False)), axis=1)
               for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out)


# ================================================================================================ fit

def fit(model, train, val, optimizer, epochs, *, loss=None, scheduler=None, checkpoint_dir=None, resume=False,
        early_stopping=None, progress=True, plot=None, batch_size=64, seed=0, log=print):
    """Train `model` for `epochs` epochs (counted from the start of the run, resumed epochs included).

    train, val : fastconv.data DataLoaders, ArrayDatasets or (images, labels) pairs (the latter two are wrapped in
        DataLoaders of `batch_size`, the training one shuffled with `seed`); val may be None (no validation:
        no early stopping and no ReduceLROnPlateau then). Batches are cast to the model's dtype.
    optimizer : a fastconv.optim optimizer over the model.  loss : default nn.CrossEntropyLoss().
    scheduler : stepped once per epoch; a ReduceLROnPlateau gets the validation accuracy (mode "max") or loss
        (mode "min").
    checkpoint_dir : write ``checkpoint.npz`` there after every epoch (see the module docstring).
    resume : continue from the checkpoint in checkpoint_dir when there is one (else start afresh); stale
        temporary files of killed writes are removed.
    early_stopping : EarlyStopping, or an int patience.  plot : path of a PNG of the history, drawn at the end.
    progress : a tqdm bar per epoch (loss, accuracy, images/s) on stderr when it is a terminal.
    log : called with one summary line per epoch and with notices; None for silence.

    Returns the History. Ctrl-C (KeyboardInterrupt) reports where the last complete checkpoint is and re-raises;
    that checkpoint is left intact.
    """
    train = _as_loader(train, batch_size, True, seed, "train")
    val = None if val is None else _as_loader(val, batch_size, False, seed, "val")
    loss = nn.CrossEntropyLoss() if loss is None else loss
    if isinstance(early_stopping, (int, np.integer)) and not isinstance(early_stopping, bool):
        early_stopping = EarlyStopping(patience=early_stopping)
    if val is None and (early_stopping is not None or isinstance(scheduler, ReduceLROnPlateau)):
        raise ValueError("early stopping and ReduceLROnPlateau monitor validation: give val data")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    say = log if log is not None else (lambda line: None)
    dtype = _model_dtype(model)
    show_bar = bool(progress) and sys.stderr.isatty()

    path = None
    history, stopped = History(), False
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        path = os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_NAME)
        if resume:
            remove_temporaries(path)
            if os.path.exists(path):
                state = load_checkpoint(path)
                history, stopped = _restore(state, model, optimizer, scheduler, train, early_stopping, path)
                say(f"resumed from {path} (epoch {len(history)})")
            else:
                say(f"no checkpoint in {checkpoint_dir}; starting from scratch")

    previous_need_input_grad = model.need_input_grad
    model.need_input_grad = False            # nothing needs the gradient of the images
    epoch = len(history)
    try:
        while epoch < epochs and not stopped:
            epoch += 1
            row, stopped = _train_epoch(model, train, val, optimizer, loss, scheduler, early_stopping, dtype,
                                        epoch, epochs, show_bar)
            history.append(row)
            if path is not None:
                save_checkpoint(path, _checkpoint(model, optimizer, scheduler, train, early_stopping, history,
                                                  stopped))
            say(_summary(row, epochs))
            if stopped:
                say(f"early stopping: validation accuracy has not improved for {early_stopping.patience} epochs "
                    f"(best {early_stopping.best:.2%} at epoch {early_stopping.best_epoch})")
    except KeyboardInterrupt:
        where = "no checkpoint is being written (no checkpoint_dir)"
        if path is not None:
            done = _checkpoint_epoch(path)
            where = (f"no complete checkpoint yet in {checkpoint_dir}" if done is None else
                     f"the last complete checkpoint is {path} (epoch {done}); continue from it with resume=True "
                     f"(fastconv train --resume)")
        (log or (lambda s: print(s, file=sys.stderr)))(f"interrupted in epoch {epoch}: {where}")
        raise
    finally:
        model.need_input_grad = previous_need_input_grad
    if early_stopping is not None and early_stopping.restore_best and early_stopping.best_state is not None:
        model.load_state_dict(early_stopping.best_state)
        say(f"restored the weights of epoch {early_stopping.best_epoch} "
            f"(validation accuracy {early_stopping.best:.2%})")
    if plot is not None:
        history.plot(plot)
    return history


def _train_epoch(model, train, val, optimizer, loss, scheduler, early_stopping, dtype, epoch, epochs, show_bar):
    lr = optimizer.lr
    start = time.perf_counter()
    model.train()
    bar = _progress_bar(show_bar, len(train) - train.batch, f"epoch {epoch}/{epochs}")
    seen = correct = 0
    loss_sum = 0.0
    try:
        for x, y in train:
            x = np.asarray(x).astype(dtype, copy=False)
            optimizer.zero_grad()
            logits = model.forward(x)
            batch_loss = float(loss.forward(logits, y))
            if not math.isfinite(batch_loss):
                raise FloatingPointError(f"the training loss is {batch_loss} in epoch {epoch} (batch "
                                         f"{train.batch}); lower the learning rate")
            model.backward(loss.backward())
            optimizer.step()
            seen += len(y)
            loss_sum += batch_loss * len(y)
            correct += int(np.sum(np.argmax(logits, axis=1) == y))
            if bar is not None:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"loss {loss_sum / seen:.4f}, acc {correct / seen:.2%}, {rate:.0f} img/s",
                                    refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    train_seconds = time.perf_counter() - start
    val_loss, val_acc = evaluate(model, val, loss=loss) if val is not None else (math.nan, math.nan)
    return _end_epoch(model, scheduler, early_stopping, epoch, lr, loss_sum, correct, seen, val_loss, val_acc,
                      start, train_seconds)


def _end_epoch(model, scheduler, early_stopping, epoch, lr, loss_sum, correct, seen, val_loss, val_acc, start,
               train_seconds):
    """Step the schedule and early stopping on the epoch's validation figures; returns (history row, stop).
    Shared by fit and fastconv.distributed.fit so both log and schedule identically."""
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(val_acc if scheduler.mode == "max" else val_loss)
    elif scheduler is not None:
        scheduler.step()
    stop = early_stopping is not None and early_stopping.update(val_acc, epoch, model)
    row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen, "val_loss": val_loss,
           "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - start,
           "images_per_s": seen / max(train_seconds, 1e-9)}
    return row, stop


def _summary(row, epochs):
    text = (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}")
    if not math.isnan(row["val_acc"]):
        text += f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
    return text + f" | lr {row['lr']:.3g} | {row['seconds']:.1f} s, {row['images_per_s']:.0f} img/s"


def _checkpoint(model, optimizer, scheduler, train, early_stopping, history, stopped):
    return {"format": _FORMAT, "version": 1, "epoch": len(history), "stopped": stopped,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "train_loader": train.state_dict(), "random": _random_state(model),
            "early_stopping": None if early_stopping is None else early_stopping.state_dict(),
            "history": list(history)}


def _restore(state, model, optimizer, scheduler, train, early_stopping, path):
    """Load a checkpoint into the training objects; returns (history, stopped)."""
    if state.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a fastconv training checkpoint")
    for name, obj in (("scheduler", scheduler), ("early_stopping", early_stopping)):
        if (obj is None) != (state[name] is None):
            raise ValueError(f"{path}: the checkpoint was written {'with' if state[name] is not None else 'without'}"
                             f" a {name}; resume with the same training setup")
    try:
        model.load_state_dict(state["model"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: the checkpoint does not fit this model: {e}") from None
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if early_stopping is not None:
        early_stopping.load_state_dict(state["early_stopping"])
    train.load_state_dict(state["train_loader"])
    _set_random_state(model, state["random"])
    return History(state["history"]), bool(state["stopped"])
