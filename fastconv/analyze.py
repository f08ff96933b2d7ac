"""What a network costs: shapes, parameters, operations and memory per layer (`summary`, computed from the
architecture alone, no kernel runs) and measured time per layer (`profile`).

    >>> from fastconv import analyze, models
    >>> s = analyze.summary(models.alexnet(init=None), (3, 227, 227))
    >>> print(s)                    # or s.to_markdown(), s.to_csv(), s.records()
    >>> s["features.conv1"].macs
    105415200

What is counted -- forward pass at inference, for the whole batch:
  params        elements of the layer's own parameters (BatchNorm's running statistics are buffers, not params)
  MACs          multiply-accumulates; a lone multiply counts as one MAC.
                  Conv2d: N * F * Ho * Wo * (C / groups) * kh * kw, every tap including those on padding
                  Linear: N * in * out
                  BatchNorm: 1 per element (y = x * scale + shift, scale and shift folded per channel)
                  LRN: size + 2 per element (the window's squares, k + alpha/size * sum, x * scale**-beta)
  comparisons   max pool: kh*kw - 1 per output (whole window, padding included); ReLU: 1 per element;
                softmax: K - 1 per row (its max)
  adds          bias: 1 per output element (conv, linear, position bias); avg pool: kh*kw - 1 per output;
                global avg pool: H*W - 1 per output; residual shortcut: 1 per element; softmax: 2K - 1 per row
  divisions     avg pools: 1 per output; softmax: 1 per element
  exponentials  softmax: 1 per element; LRN: 1 per element (the power scale**-beta)
  FLOPs         2 * MACs + comparisons + adds + divisions + exponentials
  Dropout (identity at inference), Flatten (a view) and Concat (a copy) do no arithmetic.
Activations: elements of each layer's output. Totals sum every array a forward pass creates (Flatten's view and
the identity of a side branch are shown, not summed); the "in-place" total also leaves out ReLU and Dropout,
which Caffe computes in place -- the usual way of counting conv, pool and FC outputs. The input is reported
apart.
Training memory (estimate, training mode): the arrays the layers keep for their backward (each array counted
once however many layers hold it; max pool's int64 argmax, dropout's mask, LRN's scale and BatchNorm's
statistics included) + parameters + their gradients + one momentum buffer per trainable parameter (SGD with
momentum) + buffers + the largest convolution workspace (per-thread workspace x threads; GEMM packing buffers
excluded). Transient gradient arrays of the backward pass are not included.
"""
import csv
import io
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _C, nn
from ._runtime import get_num_threads
from .models.alphago import PositionBias
from .models.googlenet import SideBranch

OPS = ("macs", "comparisons", "adds", "divisions", "exponentials")


@dataclass
class Row:
    """One layer (or the join of a Concat / the add of a Residual). Shapes include the batch."""
    name: str
    type: str
    input_shape: tuple
    output_shape: tuple
    params: int = 0
    macs: int = 0
    comparisons: int = 0
    adds: int = 0
    divisions: int = 0
    exponentials: int = 0
    flops: int = 0
    activations: int = 0
    activation_bytes: int = 0
    kept_bytes: int = 0
    workspace_bytes: int = 0
    view: bool = False
    inplace: bool = False


# --------------------------------------------------------------------------------------------- per-layer rules
# Each rule gets (module, input shape, output shape, itemsize) and returns the operation counts plus what the
# layer keeps for backward: "keeps" ("input" and/or "output", arrays shared with neighbours) and "extra" bytes
# of private arrays.

def _numel(shape):
    return int(np.prod(shape, dtype=np.int64))


def _pair(v):
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def _conv(m, ins, outs, itemsize):
    kh, kw = m.kernel_size
    macs = _numel(outs) * (ins[1] // m.groups) * kh * kw
    return dict(macs=macs, adds=_numel(outs) if "bias" in m.params else 0, keeps=("input",))


def _linear(m, ins, outs, itemsize):
    return dict(macs=_numel(outs) * ins[1], adds=_numel(outs) if "bias" in m.params else 0, keeps=("input",))


def _max_pool(m, ins, outs, itemsize):
    kh, kw = _pair(m.kernel_size)
    return dict(comparisons=_numel(outs) * (kh * kw - 1), extra=_numel(outs) * 8)  # int64 argmax


def _avg_pool(m, ins, outs, itemsize):
    kh, kw = _pair(m.kernel_size)
    return dict(adds=_numel(outs) * (kh * kw - 1), divisions=_numel(outs))


def _global_avg_pool(m, ins, outs, itemsize):
    return dict(adds=_numel(outs) * (_numel(ins[2:]) - 1), divisions=_numel(outs))


def _batch_norm(m, ins, outs, itemsize):
    return dict(macs=_numel(outs), keeps=("input",), extra=2 * ins[1] * itemsize)  # batch mean and invstd


def _lrn(m, ins, outs, itemsize):
    n = _numel(outs)
    return dict(macs=n * (m.size + 2), exponentials=n, keeps=("input", "output"), extra=n * itemsize)


def _relu(m, ins, outs, itemsize):
    return dict(comparisons=_numel(outs), keeps=("input",), inplace=True)


def _dropout(m, ins, outs, itemsize):
    return dict(extra=_numel(outs), inplace=True)  # the bool mask of kept units


def _flatten(m, ins, outs, itemsize):
    return dict(view=True)


def _softmax(m, ins, outs, itemsize):
    rows, k = _numel(outs) // outs[1], outs[1]
    return dict(comparisons=rows * (k - 1), adds=rows * (2 * k - 1), divisions=rows * k, exponentials=rows * k,
                keeps=("output",))


def _position_bias(m, ins, outs, itemsize):
    return dict(adds=_numel(outs))


RULES = {
    nn.Conv2d: _conv, nn.Linear: _linear, nn.MaxPool2d: _max_pool, nn.AvgPool2d: _avg_pool,
    nn.GlobalAvgPool2d: _global_avg_pool, nn.BatchNorm2d: _batch_norm, nn.LocalResponseNorm: _lrn,
    nn.ReLU: _relu, nn.Dropout: _dropout, nn.Flatten: _flatten, nn.Softmax: _softmax,
    PositionBias: _position_bias,
}


def _rule_for(module):
    for cls in type(module).__mro__:  # BatchNorm1d finds BatchNorm2d's rule
        if cls in RULES:
            return RULES[cls]
    return None


# --------------------------------------------------------------------------------------------- the walk

class _Walk:
    """Propagates shapes through the module tree, emitting rows; tracks arrays by identity so that an array
    kept by two layers (a conv output kept by its ReLU and a later layer) is counted once."""

    def __init__(self, itemsize, threads):
        self.itemsize, self.threads = itemsize, threads
        self.rows, self.uncounted = [], set()
        self.array_bytes, self.kept = [], set()

    def new_array(self, shape):
        self.array_bytes.append(_numel(shape) * self.itemsize)
        return len(self.array_bytes) - 1

    def keep(self, array):
        if array in self.kept:
            return 0
        self.kept.add(array)
        return self.array_bytes[array]

    def add_row(self, row):
        row.flops = 2 * row.macs + row.comparisons + row.adds + row.divisions + row.exponentials
        if not row.view:
            row.activations = _numel(row.output_shape)
            row.activation_bytes = row.activations * self.itemsize
        else:
            row.activations = _numel(row.output_shape)
        self.rows.append(row)

    def walk(self, module, name, shape, array):
        """Returns (output shape, output array id)."""
        join = (lambda child: f"{name}.{child}" if name else child)
        if isinstance(module, nn.Sequential):
            for cname, child in module.children.items():
                shape, array = self.walk(child, join(cname), shape, array)
            return shape, array
        if isinstance(module, nn.Concat):
            for cname, child in module.children.items():
                self.walk(child, join(cname), shape, array)
            out = module.output_shape(shape)
            self.add_row(Row(name, "Concat", shape, out))
            return out, self.new_array(out)
        if isinstance(module, nn.Residual):
            out, _ = self.walk(module.children["body"], join("body"), shape, array)
            if "shortcut" in module.children:
                short, _ = self.walk(module.children["shortcut"], join("shortcut"), shape, array)
            else:
                short = tuple(shape)
            if tuple(out) != tuple(short):
                raise ValueError(f"{name}: residual body gives {out} but the shortcut {short}")
            self.add_row(Row(name, "Residual add", shape, out, adds=_numel(out)))
            return out, self.new_array(out)
        if isinstance(module, SideBranch):
            self.walk(module.children["head"], join("head"), shape, array)
            self.add_row(Row(name, "SideBranch", shape, shape, view=True))
            return shape, array
        if module.children:
            raise TypeError(f"analyze cannot walk {name or 'the model'}: {type(module).__name__} is a container "
                            f"other than Sequential, Concat, Residual or SideBranch")
        try:
            out = tuple(module.output_shape(shape))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return self.leaf(module, name, tuple(shape), out, array)

    def leaf(self, module, name, shape, out, array):
        rule = _rule_for(module)
        if rule is None:
            self.uncounted.add(type(module).__name__)
            counts = dict(keeps=("input",))
        else:
            counts = rule(module, shape, out, self.itemsize)
        row = Row(name, type(module).__name__, shape, out, params=sum(p.size for p in module.params.values()),
                  view=counts.get("view", False), inplace=counts.get("inplace", False),
                  **{k: counts.get(k, 0) for k in OPS})
        out_array = array if row.view else self.new_array(out)
        keeps = counts.get("keeps", ())
        row.kept_bytes = counts.get("extra", 0) + (self.keep(array) if "input" in keeps else 0) + \
            (self.keep(out_array) if "output" in keeps else 0)
        if isinstance(module, nn.Conv2d):
            w = module.params["weight"]
            row.workspace_bytes = int(_C.conv2d_workspace_bytes(
                shape, w.shape, _pair(module.stride), _pair(module.padding), _pair(module.dilation),
                module.groups, self.itemsize))
        self.add_row(row)
        return out, out_array


# --------------------------------------------------------------------------------------------- rendering

def _fmt_int(v):
    return f"{v:,}"


def _fmt_bytes(n):
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fmt_shape(shape):
    """Per-sample shape (the batch is in the header): 96x55x55."""
    return "x".join(str(s) for s in shape[1:])


def _text_table(header, rows, align):
    """Aligned columns; `align` per column, '<' or '>'."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    def line(cells):
        return "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def _md_table(header, rows, align):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---:" if a == ">" else ":---" for a in align) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _csv(records):
    buf = io.StringIO()
    if records:
        writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("x".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in r.items()})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- summary

class Summary:
    """The result of `summary`: ``rows`` (list of Row), ``totals`` and ``memory`` (dicts), and renderings.
    ``summary[name]`` is the row of the layer with that dotted name."""

    COLUMNS = ("name", "type", "input", "output", "params", "MACs", "comp", "adds", "div", "exp", "activations",
               "act. memory")

    def __init__(self, rows, input_shape, batch, dtype, model_name, memory, uncounted):
        self.rows, self.input_shape, self.batch = rows, tuple(input_shape), batch
        self.dtype, self.model_name, self.memory, self.uncounted = np.dtype(dtype), model_name, memory, uncounted
        summed = [r for r in rows if not r.view]
        self.totals = {k: sum(getattr(r, k) for r in rows) for k in ("params",) + OPS + ("flops",)}
        self.totals.update(
            activations=sum(r.activations for r in summed),
            activation_bytes=sum(r.activation_bytes for r in summed),
            activations_inplace=sum(r.activations for r in summed if not r.inplace),
            input_activations=batch * _numel(self.input_shape),
        )

    def __getitem__(self, name):
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r} in the summary")

    def records(self):
        """One dict per row (the fields of Row; shapes include the batch)."""
        return [asdict(r) for r in self.rows]

    def _table_rows(self):
        rows = [[r.name, r.type, _fmt_shape(r.input_shape), _fmt_shape(r.output_shape), _fmt_int(r.params),
                 _fmt_int(r.macs), _fmt_int(r.comparisons), _fmt_int(r.adds), _fmt_int(r.divisions),
                 _fmt_int(r.exponentials), _fmt_int(r.activations) + ("" if not r.view else " (view)"),
                 _fmt_bytes(r.activation_bytes)] for r in self.rows]
        t = self.totals
        rows.append(["total", "", _fmt_shape((1,) + self.input_shape), "", _fmt_int(t["params"]),
                     _fmt_int(t["macs"]), _fmt_int(t["comparisons"]), _fmt_int(t["adds"]),
                     _fmt_int(t["divisions"]), _fmt_int(t["exponentials"]), _fmt_int(t["activations"]),
                     _fmt_bytes(t["activation_bytes"])])
        return rows

    def _header(self):
        return (f"{self.model_name}: input {_fmt_shape((1,) + self.input_shape)}, batch {self.batch}, "
                f"{self.dtype.name}; shapes per sample (C x H x W), counts for the whole batch")

    def _footer(self):
        t, m = self.totals, self.memory
        lines = [
            f"parameters: {t['params']:,} ({_fmt_bytes(m['parameters'])}), trainable {m['trainable_params']:,}",
            f"MACs: {t['macs']:,}   FLOPs (2*MACs + comparisons + adds + divisions + exponentials): "
            f"{t['flops']:,}",
            f"activations: {t['activations']:,} ({_fmt_bytes(t['activation_bytes'])}); with ReLU and Dropout in "
            f"place: {t['activations_inplace']:,}; input: {t['input_activations']:,}",
            "training memory estimate: "
            + ", ".join(f"{k.replace('_', ' ')} {_fmt_bytes(m[k])}" for k in
                        ("kept_activations", "parameters", "gradients", "optimizer_state", "buffers",
                         "conv_workspace"))
            + f" = {_fmt_bytes(m['total'])}",
            "counted: MAC = one multiply-add (conv taps on padding included, BatchNorm 1/element, LRN size+2/"
            "element); comparisons: max pool kh*kw-1/output, ReLU 1/element; adds: biases, avg pools, residual "
            "shortcuts, softmax; divisions: avg pools, softmax; exponentials: softmax, LRN power. Dropout, "
            "Flatten, Concat: no arithmetic. Memory: arrays kept for backward counted once, SGD momentum as "
            "optimizer state, workspace = largest conv's per-thread workspace x threads.",
        ]
        if self.uncounted:
            lines.append(f"NOT counted (unknown layer types, shown with zero operations): "
                         f"{', '.join(sorted(self.uncounted))}")
        return lines

    def to_text(self):
        align = "<<<<" + ">" * 8
        return "\n".join([self._header(), _text_table(self.COLUMNS, self._table_rows(), align), ""]
                         + self._footer())

    def to_markdown(self):
        align = "<<<<" + ">" * 8
        return "\n".join([f"**{self._header()}**", "", _md_table(self.COLUMNS, self._table_rows(), align), ""]
                         + [f"- {line}" for line in self._footer()])

    def to_csv(self):
        return _csv(self.records())

    def render(self, fmt="text"):
        formats = {"text": self.to_text, "md": self.to_markdown, "markdown": self.to_markdown, "csv": self.to_csv}
        if fmt not in formats:
            raise ValueError(f"format must be one of {sorted(formats)}, got {fmt!r}")
        return formats[fmt]()

    __str__ = to_text

    def __repr__(self):
        return (f"<Summary {self.model_name} input {self.input_shape} batch {self.batch}: "
                f"{self.totals['params']:,} params, {self.totals['macs']:,} MACs>")


def _model_dtype(model):
    for _, m in model.named_modules():
        for p in m.params.values():
            return p.dtype
    return np.dtype(np.float32)


def summary(model, input_shape=None, batch=1, dtype=None, threads=None):
    """Per-layer shapes, parameters, operations and memory of `model` for a batch of `batch` inputs of
    `input_shape` (C, H, W) -- default: the model's own ``input_shape`` attribute (set by fastconv.models).

    Nothing is run: shapes come from each module's ``output_shape``. `dtype` (default: the parameters')
    sets the byte sizes; `threads` (default: fastconv's current thread count) scales the conv workspace.
    What is counted is stated in this module's docstring and printed under the table. Returns a Summary.
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("summary needs input_shape (C, H, W): the model does not record one")
    input_shape = tuple(int(s) for s in input_shape)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    dtype = np.dtype(dtype) if dtype is not None else np.dtype(_model_dtype(model))
    threads = get_num_threads() if threads is None else int(threads)
    walk = _Walk(dtype.itemsize, threads)
    shape = (int(batch),) + input_shape
    walk.walk(model, "", shape, walk.new_array(shape))

    params = trainable = buffers = 0
    for _, m in model.named_modules():
        for k, p in m.params.items():
            params += p.size
            trainable += p.size if m.trainable(k) else 0
        buffers += sum(b.size * b.itemsize for b in m.buffers.values())
    memory = dict(
        kept_activations=sum(r.kept_bytes for r in walk.rows),
        parameters=params * dtype.itemsize,
        gradients=trainable * dtype.itemsize,
        optimizer_state=trainable * dtype.itemsize,
        buffers=buffers,
        conv_workspace=max((r.workspace_bytes for r in walk.rows), default=0) * threads,
        trainable_params=trainable,
    )
    memory["total"] = sum(memory[k] for k in ("kept_activations", "parameters", "gradients", "optimizer_state",
                                              "buffers", "conv_workspace"))
    name = getattr(model, "name", None) or type(model).__name__
    return Summary(walk.rows, input_shape, int(batch), dtype, name, memory, walk.uncounted)


# --------------------------------------------------------------------------------------------- profile

@dataclass
class ProfileRow:
    """Measured time of one leaf layer (median over the repeats) and the rate it implies."""
    name: str
    type: str
    forward_ms: float
    backward_ms: float
    forward_gflops: float   # GFLOP/s: the Summary's FLOPs over the forward time
    backward_gflops: float  # GFLOP/s for conv and linear: 2*MACs per gradient computed (input, weight); else nan


class Profile:
    """The result of `profile`: ``rows`` (ProfileRow per leaf layer), whole-pass times, renderings."""

    COLUMNS = ("name", "type", "fwd ms", "bwd ms", "fwd GFLOP/s", "bwd GFLOP/s")

    def __init__(self, rows, forward_ms, backward_ms, input_shape, batch):
        self.rows, self.forward_ms, self.backward_ms = rows, forward_ms, backward_ms
        self.input_shape, self.batch = input_shape, batch

    def __getitem__(self, name):
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r} in the profile")

    def records(self):
        return [asdict(r) for r in self.rows]

    def _table_rows(self):
        def g(v):
            return "-" if not np.isfinite(v) else f"{v:.1f}"
        rows = [[r.name, r.type, f"{r.forward_ms:.3f}", f"{r.backward_ms:.3f}", g(r.forward_gflops),
                 g(r.backward_gflops)] for r in self.rows]
        fwd_leaves, bwd_leaves = sum(r.forward_ms for r in self.rows), sum(r.backward_ms for r in self.rows)
        rows.append(["(containers: concat, residual adds, slicing)", "", f"{self.forward_ms - fwd_leaves:.3f}",
                     f"{self.backward_ms - bwd_leaves:.3f}", "", ""])
        rows.append(["total", "", f"{self.forward_ms:.3f}", f"{self.backward_ms:.3f}", "", ""])
        return rows

    def _header(self):
        return (f"profile: input {_fmt_shape((1,) + tuple(self.input_shape))}, batch {self.batch}; median "
                f"milliseconds per layer")

    def to_text(self):
        return "\n".join([self._header(), _text_table(self.COLUMNS, self._table_rows(), "<<>>>>")])

    def to_markdown(self):
        return "\n".join([f"**{self._header()}**", "", _md_table(self.COLUMNS, self._table_rows(), "<<>>>>")])

    def to_csv(self):
        return _csv(self.records())

    __str__ = to_text


def profile(model, x, dy=None, repeats=3, warmup=1):
    """Measure each leaf layer's forward and backward time on input `x` (N, C, H, W).

    Runs `warmup` + `repeats` real forward and backward passes in the model's current mode (`dy`: the output
    gradient; default standard normal of the output's shape -- a tuple for multi-output models), timing every
    leaf by wrapping its forward and backward for the duration. Side effects as for training: parameter
    gradients are zeroed at the end, BatchNorm running statistics move in training mode. Returns a Profile
    (median times per layer; GFLOP/s from `summary`'s counts).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    x = np.asarray(x)
    counts = {r.name: r for r in summary(model, x.shape[1:], batch=x.shape[0], dtype=x.dtype).rows}
    leaves = [(n, m) for n, m in model.named_modules() if not m.children]
    times = {n: ([], []) for n, _ in leaves}

    def timed(fn, bucket):
        def run(arg):
            t0 = time.perf_counter()
            out = fn(arg)
            bucket.append(time.perf_counter() - t0)
            return out
        return run

    for n, m in leaves:
        m.forward, m.backward = timed(m.forward, times[n][0]), timed(m.backward, times[n][1])
    totals = ([], [])
    try:
        rng = np.random.default_rng(0)
        for it in range(warmup + repeats):
            t0 = time.perf_counter()
            y = model.forward(x)
            t1 = time.perf_counter()
            if dy is None:
                dy = tuple(rng.standard_normal(o.shape).astype(o.dtype) for o in y) if isinstance(y, tuple) \
                    else rng.standard_normal(y.shape).astype(y.dtype)
            model.backward(dy)
            t2 = time.perf_counter()
            if it == warmup - 1:
                for f, b in times.values():
                    f.clear()
                    b.clear()
            elif it >= warmup:
                totals[0].append(t1 - t0)
                totals[1].append(t2 - t1)
    finally:
        for _, m in leaves:
            del m.forward, m.backward  # the instance attributes; the class methods show through again
        model.zero_grad()

    def ms(samples):
        return 1e3 * float(np.median(samples)) if samples else 0.0

    rows = []
    for n, m in leaves:
        f_ms, b_ms = ms(times[n][0]), ms(times[n][1])
        row = counts.get(n)
        flops = row.flops if row is not None else 0
        bwd_flops = float("nan")
        if isinstance(m, (nn.Conv2d, nn.Linear)) and row is not None:
            grads = int(m.need_input_grad) + int(m.trainable("weight"))
            bwd_flops = 2 * row.macs * grads
        rows.append(ProfileRow(n, type(m).__name__, f_ms, b_ms,
                               flops / (f_ms * 1e6) if f_ms > 0 else float("nan"),
                               bwd_flops / (b_ms * 1e6) if b_ms > 0 else float("nan")))
    return Profile(rows, ms(totals[0]), ms(totals[1]), x.shape[1:], x.shape[0])
