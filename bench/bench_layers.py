"""Per-layer benchmark: fastconv vs torch CPU (oneDNN) vs a NumPy im2col + matmul convolution.

For each convolution layer of LeNet-5, AlexNet, VGG-16, GoogLeNet and ResNet-50 (float32, NCHW) it times the
forward pass and forward + backward (dx, dW, db), at each thread count, all three libraries in the same run,
and prints markdown tables: median ms, GFLOP/s, % of the machine's measured FMA peak (from bench/peak.py),
and the ratios torch/fastconv and numpy/fastconv (> 1 means fastconv is faster). Then the memory-bound ops
(max-pool, batch-norm, ReLU) in ms and GB/s.

FLOP convention (as in /work/shared/perf-anchors.md): MACs = N*F*Ho*Wo*(C/groups)*kh*kw, padded taps
included; forward = 2*MACs, forward+backward = 6*MACs.

    python bench/bench_layers.py                        # all layers, 1 and 2 threads
    python bench/bench_layers.py --quick                # smoke run: 3 layers, short timing
    python bench/bench_layers.py --layers lenet_conv2,relu --threads 1 --json out.json

OPENBLAS_* variables change NumPy's GEMM; this script never touches them and prints a note when they are set.
"""
import argparse
import json
import sys
from dataclasses import dataclass

from _common import (all_threads, environment, fmt, machine_peak, markdown_table, measure_rounds, np, peak_for,
                     print_environment, ratio, torch)

import fastconv.functional as fc  # noqa: E402  (_common chose which fastconv is imported)

if torch is not None:
    import torch.nn.functional as tF

LIBS = ("fastconv", "torch", "numpy")
PASSES = ("fwd", "fwdbwd")
PASS_LABEL = {"fwd": "forward", "fwdbwd": "forward+backward"}
FLOPS_PER_MAC = {"fwd": 2, "fwdbwd": 6}


# ---------------------------------------------------------------------------------------------- the layers

@dataclass(frozen=True)
class ConvLayer:
    """A convolution: input (N, C, H, W) -> F channels, square kernel k, stride, zero padding."""
    name: str
    x_shape: tuple
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0

    @property
    def out_hw(self):
        _, _, h, w = self.x_shape
        return ((h + 2 * self.padding - self.kernel) // self.stride + 1,
                (w + 2 * self.padding - self.kernel) // self.stride + 1)

    @property
    def w_shape(self):
        return (self.out_channels, self.x_shape[1], self.kernel, self.kernel)

    @property
    def y_shape(self):
        return (self.x_shape[0], self.out_channels) + self.out_hw

    @property
    def macs(self):
        n, c, _, _ = self.x_shape
        ho, wo = self.out_hw
        return n * self.out_channels * ho * wo * c * self.kernel * self.kernel


LAYERS = [
    ConvLayer("lenet_conv1", (64, 1, 32, 32), 6, 5),
    ConvLayer("lenet_conv2", (64, 6, 14, 14), 16, 5),
    ConvLayer("alexnet_conv1", (16, 3, 227, 227), 96, 11, stride=4),
    ConvLayer("alexnet_conv2", (16, 96, 27, 27), 256, 5, padding=2),
    ConvLayer("alexnet_conv3", (16, 256, 13, 13), 384, 3, padding=1),
    ConvLayer("vgg16_conv1_2", (4, 64, 224, 224), 64, 3, padding=1),
    ConvLayer("vgg16_conv3_1", (4, 128, 56, 56), 256, 3, padding=1),
    ConvLayer("vgg16_conv5_1", (4, 512, 14, 14), 512, 3, padding=1),
    ConvLayer("googlenet_1x1", (16, 192, 28, 28), 64, 1),
    ConvLayer("resnet50_3x3", (16, 64, 56, 56), 64, 3, padding=1),
]
LAYERS_BY_NAME = {layer.name: layer for layer in LAYERS}
QUICK_LAYERS = ("lenet_conv2", "googlenet_1x1", "resnet50_3x3")

MEMORY_OPS = ("maxpool3x3s2", "batchnorm_train", "relu")
MEMORY_OUTPUTS = {"maxpool3x3s2": {"fwd": ("y", "argmax"), "fwdbwd": ("dx",)},
                  "batchnorm_train": {"fwd": ("y",), "fwdbwd": ("dx", "dgamma", "dbeta")},
                  "relu": {"fwd": ("y",), "fwdbwd": ("dx",)}}
MAXPOOL_SHAPE = (16, 96, 55, 55)
BATCHNORM_SHAPE = (16, 64, 56, 56)
RELU_SHAPE = (16, 64, 56, 56)


def conv_arrays(layer, seed=0):
    """Random float32 x, weight (scaled by 1/sqrt(fan-in)), bias and output gradient dy for `layer`."""
    rng = np.random.default_rng(seed)
    fan_in = layer.x_shape[1] * layer.kernel ** 2
    return {
        "x": rng.standard_normal(layer.x_shape, dtype=np.float32),
        "w": (rng.standard_normal(layer.w_shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))),
        "b": rng.standard_normal(layer.out_channels, dtype=np.float32),
        "dy": rng.standard_normal(layer.y_shape, dtype=np.float32),
    }


# --------------------------------------------------------------------------- NumPy im2col + matmul baseline

def numpy_im2col(x, k, stride, padding):
    """cols (C*k*k, N*Ho*Wo): an as_strided view (C, k, k, N, Ho, Wo) of the padded input, copied by reshape."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, c, h, w = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    sn, sc, sh, sw = x.strides
    view = np.lib.stride_tricks.as_strided(x, (c, k, k, n, ho, wo), (sc, sh, sw, sn, sh * stride, sw * stride))
    return view.reshape(c * k * k, n * ho * wo)


def numpy_conv_forward(x, w, b, stride, padding):
    """y (N, F, Ho, Wo) and the cols matrix kept for the backward pass."""
    n, _, h, wd = x.shape
    f, _, k, _ = w.shape
    ho, wo = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    cols = numpy_im2col(x, k, stride, padding)
    y = w.reshape(f, -1) @ cols
    y += b[:, None]
    return np.ascontiguousarray(y.reshape(f, n, ho, wo).transpose(1, 0, 2, 3)), cols


def numpy_conv_backward(dy, cols, x_shape, w, stride, padding):
    """(dx, dw, db): dW = dY·colsᵀ, dcols = Wᵀ·dY, col2im by one strided += per kernel offset."""
    n, c, h, wd = x_shape
    f, _, k, _ = w.shape
    ho, wo = dy.shape[2:]
    dy_mat = dy.transpose(1, 0, 2, 3).reshape(f, -1)
    dw = (dy_mat @ cols.T).reshape(w.shape)
    db = dy_mat.sum(axis=1)
    dcols = (w.reshape(f, -1).T @ dy_mat).reshape(c, k, k, n, ho, wo)
    dx_padded = np.zeros((n, c, h + 2 * padding, wd + 2 * padding), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            dx_padded[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += \
                dcols[:, i, j].transpose(1, 0, 2, 3)
    dx = np.ascontiguousarray(dx_padded[:, :, padding:padding + h, padding:padding + wd])
    return dx, dw, db


# ------------------------------------------------------------------------------------- the timed callables

def conv_callables(layer, a):
    """{lib: {pass: fn}}; each fn runs one forward (returns (y,)) or forward+backward (returns (dx, dw, db))."""
    x, w, b, dy = a["x"], a["w"], a["b"], a["dy"]
    s, p = layer.stride, layer.padding

    def fc_fwd():
        return (fc.conv2d(x, w, b, s, p),)

    def fc_fwdbwd():
        fc.conv2d(x, w, b, s, p)
        return fc.conv2d_backward(dy, x, w, s, p)

    def np_fwd():
        return (numpy_conv_forward(x, w, b, s, p)[0],)

    def np_fwdbwd():
        _, cols = numpy_conv_forward(x, w, b, s, p)
        return numpy_conv_backward(dy, cols, x.shape, w, s, p)

    libs = {"fastconv": {"fwd": fc_fwd, "fwdbwd": fc_fwdbwd}, "numpy": {"fwd": np_fwd, "fwdbwd": np_fwdbwd}}
    if torch is not None:
        xt, wt, bt, dyt = (torch.from_numpy(a[k]) for k in ("x", "w", "b", "dy"))
        leaves = [t.detach().clone().requires_grad_(True) for t in (xt, wt, bt)]

        def torch_fwd():
            with torch.no_grad():
                return (tF.conv2d(xt, wt, bt, s, p),)

        def torch_fwdbwd():
            y = tF.conv2d(*leaves, s, p)
            return torch.autograd.grad(y, leaves, dyt)

        libs["torch"] = {"fwd": torch_fwd, "fwdbwd": torch_fwdbwd}
    return libs


def max_rel_err(got, want):
    """max |got - want| / max |want| (float64); a scale-free error for one output."""
    got = np.asarray(got.detach() if hasattr(got, "detach") else got, dtype=np.float64)
    want = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


CHECK_TOL = 1e-3  # float32 GEMMs with K up to 4608 stay near 1e-6; anything above 1e-3 is a wrong result
CONV_OUTPUTS = {"fwd": ("y",), "fwdbwd": ("dx", "dw", "db")}


def _check(name, pas, lib, got, want, output_names):
    """Errors of the outputs `got` against torch's `want`, paired in order (extra outputs are ignored)."""
    pairs = list(zip(output_names, got, want))
    return {"name": name, "pass": pas, "lib": lib, "outputs": [nm for nm, _, _ in pairs],
            "errors": [max_rel_err(g, w) for _, g, w in pairs]}


# --------------------------------------------------------------------------------------- memory-bound ops

def _numpy_maxpool_views(x, k, s):
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    return [((slice(None), slice(None), slice(i, i + s * ho, s), slice(j, j + s * wo, s)))
            for i in range(k) for j in range(k)]


def numpy_maxpool_forward(x, k=3, s=2):
    views = _numpy_maxpool_views(x, k, s)
    y = x[views[0]].copy()
    for v in views[1:]:
        np.maximum(y, x[v], out=y)
    return y


def numpy_maxpool_backward(dy, x, y, k=3, s=2):
    """Route dy to the first maximum of each window in row-major order (torch's tie rule)."""
    dx = np.zeros_like(x)
    pending = np.ones(y.shape, dtype=bool)
    for v in _numpy_maxpool_views(x, k, s):
        hit = (x[v] == y) & pending
        dx[v] += np.where(hit, dy, 0)
        pending &= ~hit
    return dx


def numpy_batchnorm_forward(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    invstd = 1 / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps)
    xhat = (x - mean) * invstd
    return xhat * gamma[:, None, None] + beta[:, None, None], xhat, invstd


def numpy_batchnorm_backward(dy, xhat, invstd, gamma):
    m = dy.size // dy.shape[1]
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    dx = (gamma[:, None, None] * invstd / m) * (m * dy - dbeta[:, None, None] - xhat * dgamma[:, None, None])
    return dx, dgamma, dbeta


def _has(*names):
    return all(hasattr(fc, n) for n in names)


def memory_op_case(name, seed=0):
    """(bytes per pass, {lib: {pass: fn or None}}, output description) for one memory-bound op.

    Bytes count the compulsory float32 tensor traffic only: forward reads the input and writes the output;
    backward adds reading dy (and x where the formula needs it) and writing dx. Max-pool's int64 argmax is not
    counted (torch writes one too). A None fn means fastconv does not provide that function yet.
    """
    rng = np.random.default_rng(seed)
    libs = {"fastconv": {}, "torch": {}, "torch_idx": {}, "numpy": {}}
    if name == "maxpool3x3s2":
        x = rng.standard_normal(MAXPOOL_SHAPE, dtype=np.float32)
        y_shape = numpy_maxpool_forward(x).shape
        dy = rng.standard_normal(y_shape, dtype=np.float32)
        fwd_bytes = 4 * (x.size + dy.size)
        nbytes = {"fwd": fwd_bytes, "fwdbwd": 2 * fwd_bytes}
        desc = f"{MAXPOOL_SHAPE} -> {y_shape}"
        if _has("max_pool2d"):
            libs["fastconv"]["fwd"] = lambda: fc.max_pool2d(x, 3, 2)
        if _has("max_pool2d", "max_pool2d_backward"):
            def fc_fwdbwd():
                _, argmax = fc.max_pool2d(x, 3, 2)
                return (fc.max_pool2d_backward(dy, argmax, x.shape),)
            libs["fastconv"]["fwdbwd"] = fc_fwdbwd
        libs["numpy"]["fwd"] = lambda: (numpy_maxpool_forward(x),)
        libs["numpy"]["fwdbwd"] = lambda: (numpy_maxpool_backward(dy, x, numpy_maxpool_forward(x)),)
        if torch is not None:
            xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
            xg = xt.detach().clone().requires_grad_(True)

            def torch_fwd():
                with torch.no_grad():
                    return (tF.max_pool2d(xt, 3, 2),)

            def torch_idx_fwd():
                with torch.no_grad():
                    return tF.max_pool2d(xt, 3, 2, return_indices=True)

            libs["torch"]["fwd"] = torch_fwd
            libs["torch_idx"]["fwd"] = torch_idx_fwd
            libs["torch"]["fwdbwd"] = lambda: torch.autograd.grad(tF.max_pool2d(xg, 3, 2), (xg,), dyt)
        return nbytes, libs, desc

    shape = BATCHNORM_SHAPE if name == "batchnorm_train" else RELU_SHAPE
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    tensor = 4 * x.size
    nbytes = {"fwd": 2 * tensor, "fwdbwd": 5 * tensor}  # fwd: x, y; bwd adds dy, x, dx
    desc = f"{shape}"
    xt, dyt = (torch.from_numpy(v) for v in (x, dy)) if torch is not None else (None, None)
    if name == "batchnorm_train":
        c = shape[1]
        gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = rng.standard_normal(c, dtype=np.float32)
        running_mean, running_var = np.zeros(c, np.float32), np.ones(c, np.float32)
        if _has("batch_norm"):
            libs["fastconv"]["fwd"] = lambda: fc.batch_norm(x, gamma, beta, running_mean, running_var,
                                                            training=True)
        if _has("batch_norm", "batch_norm_backward"):
            def fc_fwdbwd():
                _, saved = fc.batch_norm(x, gamma, beta, running_mean, running_var, training=True)
                return fc.batch_norm_backward(dy, x, gamma, saved, training=True)
            libs["fastconv"]["fwdbwd"] = fc_fwdbwd
        libs["numpy"]["fwd"] = lambda: (numpy_batchnorm_forward(x, gamma, beta)[0],)

        def np_fwdbwd():
            _, xhat, invstd = numpy_batchnorm_forward(x, gamma, beta)
            return numpy_batchnorm_backward(dy, xhat, invstd, gamma)
        libs["numpy"]["fwdbwd"] = np_fwdbwd
        if torch is not None:
            gt, bt = torch.from_numpy(gamma), torch.from_numpy(beta)
            rmt, rvt = torch.zeros(c), torch.ones(c)
            leaves = [t.detach().clone().requires_grad_(True) for t in (xt, gt, bt)]

            def torch_fwd():
                with torch.no_grad():
                    return (tF.batch_norm(xt, rmt, rvt, gt, bt, training=True),)

            def torch_fwdbwd():
                y = tF.batch_norm(leaves[0], rmt, rvt, leaves[1], leaves[2], training=True)
                return torch.autograd.grad(y, leaves, dyt)
            libs["torch"]["fwd"], libs["torch"]["fwdbwd"] = torch_fwd, torch_fwdbwd
        return nbytes, libs, desc

    if _has("relu"):
        libs["fastconv"]["fwd"] = lambda: (fc.relu(x),)
    if _has("relu", "relu_backward"):
        def fc_fwdbwd():
            fc.relu(x)
            return (fc.relu_backward(dy, x),)
        libs["fastconv"]["fwdbwd"] = fc_fwdbwd
    libs["numpy"]["fwd"] = lambda: (np.maximum(x, 0),)

    def np_fwdbwd():
        np.maximum(x, 0)
        return (dy * (x > 0),)
    libs["numpy"]["fwdbwd"] = np_fwdbwd
    if torch is not None:
        xg = xt.detach().clone().requires_grad_(True)

        def torch_fwd():
            with torch.no_grad():
                return (tF.relu(xt),)
        libs["torch"]["fwd"] = torch_fwd
        libs["torch"]["fwdbwd"] = lambda: torch.autograd.grad(tF.relu(xg), (xg,), dyt)
    return nbytes, libs, desc


# ----------------------------------------------------------------------------------------------- running

def run_conv(layers, threads, timing, peak, arch, records, checks):
    """Time every layer x thread count x pass x library; print rows as they finish."""
    header = ["layer", "thr", "pass", "fastconv ms", "GFLOP/s", "% peak", "torch ms", "GFLOP/s",
              "torch/fc", "numpy ms", "numpy/fc"]
    print("### Convolution layers (float32, NCHW): median ms, GFLOP/s; ratios > 1 mean fastconv is faster\n")
    print(markdown_table(header, []), flush=True)
    checked = set()
    for n in threads:
        with all_threads(n):
            for layer in layers:
                arrays = conv_arrays(layer)
                callables = conv_callables(layer, arrays)
                for pas in PASSES:
                    flop = FLOPS_PER_MAC[pas] * layer.macs
                    fns = {lib: callables[lib][pas] for lib in LIBS if callables.get(lib, {}).get(pas)}
                    cell = measure_rounds(fns, **timing)
                    for lib in cell:
                        records.append({"kind": "conv", "layer": layer.name, "threads": n, "pass": pas,
                                        "lib": lib, "flop": flop, "samples_ms": [1e3 * t for t in cell[lib].samples],
                                        "median_ms": cell[lib].median_ms, "gflops": flop / cell[lib].median / 1e9})
                    if layer.name not in checked and "torch" in cell:
                        for lib in ("fastconv", "numpy"):
                            checks.append(_check(layer.name, pas, lib, cell[lib].result, cell["torch"].result,
                                                 CONV_OUTPUTS[pas]))
                    gf = {lib: flop / t.median / 1e9 for lib, t in cell.items()}
                    pk = peak_for(peak, arch, n)
                    ms = {lib: t.median_ms for lib, t in cell.items()}
                    print("| " + " | ".join([
                        layer.name, str(n), pas, fmt(ms.get("fastconv")), fmt(gf.get("fastconv"), 1),
                        fmt(100 * gf["fastconv"] / pk, 0) + "%" if pk else "n/a",
                        fmt(ms.get("torch")), fmt(gf.get("torch"), 1),
                        fmt(ratio(ms.get("torch"), ms.get("fastconv"))),
                        fmt(ms.get("numpy")), fmt(ratio(ms.get("numpy"), ms.get("fastconv")))]) + " |", flush=True)
                    del cell
                checked.add(layer.name)
    print()


def print_checks(checks):
    if not checks:
        return
    print("### Correctness of the warm-up calls: max |lib - torch| / max |torch| "
          f"(MISMATCH above {CHECK_TOL:g})\n")
    rows = []
    for c in checks:
        shown = ", ".join(f"{nm} {e:.1e}" + (" MISMATCH" if e > CHECK_TOL else "")
                          for nm, e in zip(c["outputs"], c["errors"]))
        rows.append([c["name"], c["pass"], c["lib"], shown])
    print(markdown_table(["layer / op", "pass", "lib", "error vs torch"], rows))
    print()


def run_memory(ops, threads, timing, records, checks):
    """Time every memory-bound op x thread count x pass x library; print rows as they finish."""
    header = ["op", "thr", "pass", "MB", "fastconv ms", "GB/s", "torch ms", "GB/s", "torch/fc",
              "torch w/ indices ms", "numpy ms", "GB/s", "numpy/fc"]
    print("### Memory-bound ops (float32): median ms, GB/s of compulsory traffic; ratios > 1 mean fastconv is "
          "faster\n")
    print(markdown_table(header, []), flush=True)
    checked = set()
    for n in threads:
        with all_threads(n):
            for name in ops:
                nbytes, libs, desc = memory_op_case(name)
                for pas in PASSES:
                    cell = measure_rounds({lib: fns[pas] for lib, fns in libs.items() if fns.get(pas)}, **timing)
                    for lib in cell:
                        records.append({"kind": "memory", "op": name, "shape": desc, "threads": n, "pass": pas,
                                        "lib": lib, "bytes": nbytes[pas],
                                        "samples_ms": [1e3 * s for s in cell[lib].samples],
                                        "median_ms": cell[lib].median_ms,
                                        "gbps": nbytes[pas] / cell[lib].median / 1e9})
                    # max-pool: fastconv's argmax is checked against torch's return_indices
                    ref = cell.get("torch_idx") or cell.get("torch")
                    if name not in checked and ref is not None:
                        for lib in ("fastconv", "numpy"):
                            if lib in cell:
                                checks.append(_check(name, pas, lib, cell[lib].result, ref.result,
                                                     MEMORY_OUTPUTS[name][pas]))
                    ms = {lib: t.median_ms for lib, t in cell.items()}
                    gbps = {lib: nbytes[pas] / v / 1e6 for lib, v in ms.items()}
                    print("| " + " | ".join([
                        f"{name} {desc}", str(n), pas, fmt(nbytes[pas] / 1e6, 1),
                        fmt(ms.get("fastconv", "not available"), 3), fmt(gbps.get("fastconv"), 1),
                        fmt(ms.get("torch"), 3), fmt(gbps.get("torch"), 1),
                        fmt(ratio(ms.get("torch"), ms.get("fastconv"))),
                        fmt(ms.get("torch_idx"), 3),
                        fmt(ms.get("numpy"), 3), fmt(gbps.get("numpy"), 1),
                        fmt(ratio(ms.get("numpy"), ms.get("fastconv")))]) + " |", flush=True)
                    del cell
                checked.add(name)
    print()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [layer.name for layer in LAYERS] + list(MEMORY_OPS)
    p.add_argument("--layers", help="comma-separated subset of: " + ", ".join(names))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: layers {', '.join(QUICK_LAYERS)} + memory ops, ~0.1 s per cell")
    p.add_argument("--budget", type=float, help="seconds of timed calls per cell (default 0.5, quick 0.1)")
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers (every sample) to PATH")
    args = p.parse_args(argv)
    if args.layers:
        chosen = [s.strip() for s in args.layers.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in names]
        if unknown:
            p.error(f"unknown layer(s) {unknown}; choose from {names}")
    else:
        chosen = list(QUICK_LAYERS) + list(MEMORY_OPS) if args.quick else names
    args.conv_layers = [LAYERS_BY_NAME[s] for s in chosen if s in LAYERS_BY_NAME]
    args.memory_ops = [s for s in chosen if s in MEMORY_OPS]
    try:
        args.thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if min(args.thread_counts) < 1:
        p.error("--threads must be >= 1")
    if args.budget is None:
        args.budget = 0.1 if args.quick else 0.5
    return args


def main(argv=None):
    args = parse_args(argv)
    env = environment()
    peak, peak_error = machine_peak()
    print_environment(env, peak, peak_error)
    if torch is None:
        print("torch not installed: torch columns are empty\n")
    timing = {"budget": args.budget, "min_repeats": 3}
    print(f"Timing: the libraries in turn over 3 rounds, each an untimed call then timed calls, >= 3 and ~{args.budget:g} s per cell; median "
          "shown. The machine may be shared: compare ratios measured in the same run, not absolute figures.\n")
    if args.conv_layers:
        rows = [[la.name, str(la.x_shape), f"{la.out_channels} x {la.kernel}x{la.kernel}", la.stride, la.padding,
                 f"{la.out_hw[0]}x{la.out_hw[1]}", f"{la.macs / 1e9:.3f}"] for la in args.conv_layers]
        print(markdown_table(["layer", "input (N,C,H,W)", "filters", "stride", "pad", "out HxW", "GMACs"], rows))
        print(f"\nGFLOP/s = 2*MACs (forward) or 6*MACs (forward+backward) / median time, padded taps included; "
              f"% peak = fastconv GFLOP/s / measured FMA peak of its kernel set ({env['fastconv_arch']}).\n")
    records, checks = [], []
    if args.conv_layers:
        run_conv(args.conv_layers, args.thread_counts, timing, peak, env["fastconv_arch"], records, checks)
    if args.memory_ops:
        run_memory(args.memory_ops, args.thread_counts, timing, records, checks)
    print_checks(checks)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "settings": {"budget_s": args.budget, "threads": args.thread_counts},
                       "peak_gflops": {f"{a},{t}": g for (a, t), g in peak.items()} if peak else None,
                       "peak_error": peak_error, "records": records, "checks": checks}, f, indent=1)
        print(f"raw numbers written to {args.json}")
    if any(e > CHECK_TOL for c in checks for e in c["errors"]):
        print("WARNING: some results differ from torch (see MISMATCH above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
