"""Whole-network benchmark: fastconv vs PyTorch CPU vs onnxruntime, images/s for inference and a training step.

Networks (fastconv.models with default options, float32, NCHW): LeNet-5, AlexNet, VGG-16, GoogLeNet, ResNet-50.
The torch side is bench/torch_models.py -- the same architectures written as plain torch modules, loaded with the
fastconv model's weights; onnxruntime runs that torch model exported to ONNX (opset 17, TorchScript exporter,
dynamic batch). All three run in the same process, cell after cell, at each thread count.

  inference      fastconv: model.prepare_inference() (eval mode, each Winograd layer's weight transform made
                 once, as an onnxruntime session prepacks its weights when it loads a model), model.forward(x)
                 under fastconv.no_grad() (conv + batch-norm folded, ReLU in place); torch: eval() under
                 inference_mode(); onnxruntime:
                 session.run with intra_op_num_threads = threads
  training step  zero_grad + forward + softmax cross-entropy + backward + SGD update (lr 1e-3, no momentum);
                 fastconv: model.train(), no input gradient for the first layer, fastconv.optim.SGD;
                 torch: train(), zero_grad(set_to_none=True), F.cross_entropy, torch.optim.SGD

Each cell: the libraries take turns in 3 rounds (so a drift of the machine's load hits them alike), each round
giving a library an untimed call, then timed calls for a third of the budget; at least 3 timed calls per
library; the median is reported. eff GFLOP/s = (2 for inference, 6 for training) x MACs x batch / median
time, the MACs being those of the conv and linear layers from fastconv.analyze.summary (the convention of the
project's performance anchors). Ratios are in images/s, fastconv / torch and fastconv / onnxruntime: > 1 means
fastconv is faster. The warm-up results are checked: inference logits of fastconv and onnxruntime against
torch, and the first training step's loss against torch's where the network has no dropout.

    python bench/bench_networks.py                      # every network, the default batches, 1 and 2 threads
    python bench/bench_networks.py --quick              # the cells the perf targets name, short budget
    python bench/bench_networks.py --nets lenet5,alexnet --batches 8 --threads 1 --json out.json --md out.md
    python bench/bench_networks.py --quick --layers     # and the per-layer table of bench_layers.py

OPENBLAS_* variables change NumPy's GEMM; this script never touches them.
"""
import argparse
import gc
import json
import os
import sys
import tempfile
import time

from _common import (all_threads, environment, fmt, library_versions, load_average, machine, markdown_table,
                     measure_rounds, memory_bytes, np, onnxruntime_or_none, ort_session, ratio, torch)

import fastconv  # noqa: E402  (_common chose which fastconv is imported)
from fastconv import analyze, models, nn, optim  # noqa: E402

NETS = ("lenet5", "alexnet", "vgg16", "googlenet", "resnet50")
MODES = ("infer", "train")
LIBS = ("fastconv", "torch", "onnxruntime")
FLOPS_PER_MAC = {"infer": 2, "train": 6}
LR = 1e-3

# batches per network and mode: those of the perf anchors, where a cell costs seconds rather than minutes
PLAN = {
    "lenet5": {"infer": (1, 8, 64), "train": (1, 8, 64)},
    "alexnet": {"infer": (1, 8), "train": (1, 8)},
    "vgg16": {"infer": (1,), "train": (4,)},
    "googlenet": {"infer": (1, 8), "train": (1, 8)},
    "resnet50": {"infer": (1, 8), "train": (1, 8)},
}
# --quick: the cells the performance targets quote
QUICK_PLAN = {
    "lenet5": {"infer": (64,), "train": (64,)},
    "alexnet": {"infer": (8,), "train": (8,)},
    "vgg16": {"infer": (1,), "train": (4,)},
    "googlenet": {"infer": (8,), "train": (8,)},
    "resnet50": {"infer": (8,), "train": (8,)},
}
CHECK_TOL = 1e-3  # max |got - torch| / max |torch| of float32 logits; a wrong network is far above it


def max_rel_err(got, want):
    """max |got - want| / max |want| in float64: a scale-free error for logits or a loss."""
    got = np.asarray(got.detach() if hasattr(got, "detach") else got, dtype=np.float64)
    want = np.asarray(want.detach() if hasattr(want, "detach") else want, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


# ------------------------------------------------------------------------------------------------ networks

def network_macs(fc_model):
    """MACs per image of the conv and linear layers, from analyze.summary (BatchNorm's and LRN's per-element
    products are left out, as in the FLOP convention of the perf anchors)."""
    rows = analyze.summary(fc_model, batch=1).rows
    return sum(r.macs for r in rows if r.type in ("Conv2d", "Linear"))


def has_dropout(fc_model):
    return any(isinstance(m, nn.Dropout) for _, m in fc_model.named_modules())


class Network:
    """One network in the three libraries, with the same weights: `fc` (fastconv model), `torch_model` and
    `onnx_path` (None when that library is not run), `macs` per image, `input_shape` (C, H, W)."""

    def __init__(self, name, use_torch=True, use_onnx=True, workdir=None, seed=0):
        self.name = name
        self.fc = models.get_model(name, seed=seed)
        self.input_shape = self.fc.input_shape
        self.num_classes = self.fc.output_shape((1,) + self.input_shape)[1]
        self.macs = network_macs(self.fc)
        self.params = self.fc.num_parameters()
        self.dropout = has_dropout(self.fc)
        self.torch_model = self.onnx_path = None
        self.export_error = None
        if use_torch:
            import torch_models
            self.torch_model = torch_models.load_fastconv_weights(torch_models.build(name), self.fc)
            if use_onnx:
                path = os.path.join(workdir or tempfile.gettempdir(), f"{name}.onnx")
                try:
                    self.onnx_path = torch_models.export_onnx(self.torch_model, path, self.input_shape)
                except Exception as e:  # an exporter failure costs the onnxruntime column, not the run
                    self.export_error = f"{type(e).__name__}: {e}"

    def batch(self, batch, seed=0):
        """A float32 input batch and int64 labels, the same arrays for every library."""
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch,) + tuple(self.input_shape), dtype=np.float32)
        return x, rng.integers(0, self.num_classes, batch).astype(np.int64)

    def training_bytes(self, batch):
        """fastconv's estimate of a training step's memory (analyze.summary)."""
        return analyze.summary(self.fc, batch=batch).memory["total"]


# ------------------------------------------------------------------------------------------ timed callables

def fastconv_infer(model, x):
    """fn() -> logits of the fastconv model prepared for inference (eval mode), under no_grad (as torch runs
    under inference_mode)."""
    model.prepare_inference()

    def run():
        with fastconv.no_grad():
            return model.forward(x)
    return run


def fastconv_train_step(model, x, labels, lr=LR):
    """fn() -> loss of one fastconv training step: zero_grad, forward, cross-entropy, backward, SGD update.

    The root's need_input_grad=False reaches the first layer through the containers: no gradient for the
    input images."""
    model.train()
    model.need_input_grad = False
    opt = optim.SGD(model, lr=lr)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss = loss_fn.forward(model.forward(x), labels)
        model.backward(loss_fn.backward())
        opt.step()
        return loss
    return step


def torch_infer(model, x):
    model.eval()
    xt = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return model(xt)
    return run


def torch_train_step(model, x, labels, lr=LR):
    """fn() -> loss of one torch training step: zero_grad(set_to_none), forward, cross_entropy, backward, SGD."""
    model.train()
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def ort_infer(session, x):
    return lambda: session.run(None, {"input": x})[0]


def cell_callables(net, mode, x, labels, session=None):
    """{lib: fn} for one cell; libraries that are not run are absent."""
    fns = {}
    if mode == "infer":
        fns["fastconv"] = fastconv_infer(net.fc, x)
        if net.torch_model is not None:
            fns["torch"] = torch_infer(net.torch_model, x)
        if session is not None:
            fns["onnxruntime"] = ort_infer(session, x)
    else:
        fns["fastconv"] = fastconv_train_step(net.fc, x, labels)
        if net.torch_model is not None:
            fns["torch"] = torch_train_step(net.torch_model, x, labels)
    return fns


# ----------------------------------------------------------------------------------------------- running

HEADER = ["net", "mode", "batch", "thr", "fastconv ms", "fastconv img/s", "eff GFLOP/s", "torch img/s",
          "onnxruntime img/s", "fc/torch", "fc/ort"]


def table_row(net, mode, batch, threads, cell):
    """One markdown row from {lib: record} of a cell."""
    ips = {lib: r["images_per_s"] for lib, r in cell.items()}
    fc_rec = cell.get("fastconv")
    return [net, mode, str(batch), str(threads), fmt(fc_rec and fc_rec["median_ms"]),
            fmt(ips.get("fastconv"), 1), fmt(fc_rec and fc_rec["gflops"], 1), fmt(ips.get("torch"), 1),
            fmt(ips.get("onnxruntime"), 1), fmt(ratio(ips.get("fastconv"), ips.get("torch"))),
            fmt(ratio(ips.get("fastconv"), ips.get("onnxruntime")))]


def check_cell(net, mode, batch, threads, timings, dropout):
    """Compare the warm-up results with torch's: logits (inference) or the first step's loss (training; not
    comparable when the network has dropout, whose masks each library draws its own way)."""
    if "torch" not in timings:
        return []
    want = timings["torch"].result
    checks = []
    for lib in ("fastconv", "onnxruntime"):
        if lib not in timings:
            continue
        entry = {"net": net, "mode": mode, "batch": batch, "threads": threads, "lib": lib}
        if mode == "train" and dropout:
            entry.update(error=None, note="not compared: dropout masks differ between libraries",
                         loss=float(timings[lib].result), torch_loss=float(want))
        else:
            entry["error"] = max_rel_err(timings[lib].result, want)
            if mode == "train":
                entry.update(loss=float(timings[lib].result), torch_loss=float(want))
        checks.append(entry)
    return checks


def run_network(name, plan, threads, budget, use_torch, use_onnx, records, checks, skipped, workdir):
    """Every cell of one network at every thread count; rows are printed as they finish."""
    t0 = time.perf_counter()
    net = Network(name, use_torch=use_torch, use_onnx=use_onnx, workdir=workdir)
    info = {"params": net.params, "macs_per_image": net.macs, "input_shape": list(net.input_shape),
            "num_classes": net.num_classes, "dropout": net.dropout, "setup_s": None}
    if net.export_error:
        skipped.append({"net": name, "lib": "onnxruntime", "reason": f"ONNX export failed: {net.export_error}"})
        print(f"<!-- {name}: ONNX export failed ({net.export_error}); no onnxruntime column -->", flush=True)
    info["setup_s"] = time.perf_counter() - t0
    checked = set()
    libs_run = 1 + (net.torch_model is not None) + (net.onnx_path is not None)
    for n in threads:
        session = ort_session(net.onnx_path, n) if net.onnx_path and plan.get("infer") else None
        with all_threads(n):
            for mode in MODES:
                for batch in plan.get(mode, ()):
                    need = (net.training_bytes(batch) if mode == "train" else 0) * libs_run
                    available = memory_bytes()[1]
                    if available is not None and need > 0.8 * available:
                        reason = (f"needs ~{need / 2 ** 30:.1f} GiB for {libs_run} libraries, "
                                  f"{available / 2 ** 30:.1f} GiB available")
                        skipped.append({"net": name, "mode": mode, "batch": batch, "threads": n, "reason": reason})
                        print(f"<!-- skipped {name} {mode} batch {batch} at {n} threads: {reason} -->", flush=True)
                        continue
                    x, labels = net.batch(batch)
                    # the libraries take turns in rounds (measure_rounds: a drifting machine load then hits all
                    # of them alike), each running its calls back to back within a round
                    timings = measure_rounds(cell_callables(net, mode, x, labels, session), budget=budget,
                                             min_repeats=3)
                    flop = FLOPS_PER_MAC[mode] * net.macs * batch
                    cell = {}
                    for lib, t in timings.items():
                        cell[lib] = {"net": name, "mode": mode, "batch": batch, "threads": n, "lib": lib,
                                     **sample_summary(t.samples), "median_ms": t.median_ms,
                                     "images_per_s": batch / t.median, "gflops": flop / t.median / 1e9,
                                     "load_1m": (load_average() or [None])[0]}
                        records.append(cell[lib])
                    if mode not in checked:  # the first cell of each mode: no library has trained yet
                        checks.extend(check_cell(name, mode, batch, n, timings, net.dropout))
                        checked.add(mode)
                    print("| " + " | ".join(table_row(name, mode, batch, n, cell)) + " |", flush=True)
                    del timings, cell
        del session
    del net
    gc.collect()
    return info


MAX_SAMPLES_KEPT = 200  # a LeNet-5 cell times ~40,000 calls in its second: the JSON keeps an even spread of them


def sample_summary(samples):
    """The JSON's record of one cell's timed calls: their count, quartiles and extremes (ms), and at most
    MAX_SAMPLES_KEPT of them, evenly spaced in call order, to 4 significant digits."""
    ms = sorted(1e3 * s for s in samples)
    step = max(1, -(-len(samples) // MAX_SAMPLES_KEPT))
    quartile = lambda q: ms[min(len(ms) - 1, int(q * (len(ms) - 1) + 0.5))]  # noqa: E731
    return {"calls": len(ms), "min_ms": ms[0], "q1_ms": quartile(0.25), "q3_ms": quartile(0.75), "max_ms": ms[-1],
            "samples_ms": [float(f"{1e3 * s:.4g}") for s in samples[::step]]}


def print_checks(checks):
    if not checks:
        return
    print(f"\n### Warm-up results against torch: max |lib - torch| / max |torch| (MISMATCH above {CHECK_TOL:g})\n")
    rows = []
    for c in checks:
        if c.get("error") is None:
            shown = c.get("note", "")
        else:
            shown = f"{c['error']:.1e}" + (" MISMATCH" if c["error"] > CHECK_TOL else "")
        what = "logits" if c["mode"] == "infer" else "first-step loss"
        rows.append([c["net"], c["mode"], str(c["batch"]), c["lib"], what, shown])
    print(markdown_table(["net", "mode", "batch", "lib", "compared", "error vs torch"], rows))


def run_layers(spec, quick, threads, budget):
    """bench_layers.py's convolution and memory-bound tables; returns its records and checks."""
    import bench_layers
    from _common import machine_peak
    if spec in (None, "default"):
        names = list(bench_layers.QUICK_LAYERS) + list(bench_layers.MEMORY_OPS) if quick else \
            [la.name for la in bench_layers.LAYERS] + list(bench_layers.MEMORY_OPS)
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    conv = [bench_layers.LAYERS_BY_NAME[s] for s in names if s in bench_layers.LAYERS_BY_NAME]
    memory = [s for s in names if s in bench_layers.MEMORY_OPS]
    peak, _ = machine_peak()
    timing = {"budget": budget, "min_repeats": 3}
    records, checks = [], []
    print("\n## Per-layer benchmark (bench/bench_layers.py)\n")
    if conv:
        bench_layers.run_conv(conv, threads, timing, peak, fastconv._runtime.config()["arch"], records, checks)
    if memory:
        bench_layers.run_memory(memory, threads, timing, records, checks)
    bench_layers.print_checks(checks)
    return {"records": records, "checks": checks,
            "peak_gflops": {f"{a},{t}": g for (a, t), g in peak.items()} if peak else None}


def parse_args(argv, prog=None):
    p = argparse.ArgumentParser(prog=prog or "bench_networks.py", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", help="comma-separated subset of: " + ", ".join(NETS))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--batches", help="comma-separated batch sizes for every network and mode (default: each "
                                     "network's own, e.g. LeNet-5 1,8,64, VGG-16 1 for inference and 4 for training)")
    p.add_argument("--modes", default="infer,train", help="infer, train or both (default)")
    p.add_argument("--quick", action="store_true", help="only the cells the performance targets quote (LeNet-5 "
                   "64, AlexNet 8, VGG-16 1 / 4, GoogLeNet 8, ResNet-50 8) with a 0.1 s budget: several minutes "
                   "on 2 cores")
    p.add_argument("--budget", type=float, help="seconds of timed calls per cell and library (default 1, quick 0.1;"
                                                " at least 3 calls are timed whatever it is)")
    p.add_argument("--no-onnx", action="store_true", help="leave onnxruntime out")
    p.add_argument("--no-torch", action="store_true", help="leave torch (and so onnxruntime) out")
    p.add_argument("--layers", nargs="?", const="default", metavar="NAMES",
                   help="also run bench_layers.py's per-layer table (optionally only the comma-separated layers "
                        "and memory ops NAMES)")
    p.add_argument("--json", metavar="PATH", help="write each cell's timing summary (with up to 200 of its samples), "
                   "the checks and the environment to PATH")
    p.add_argument("--md", metavar="PATH", help="write the markdown report to PATH (bench/report.py)")
    p.add_argument("--png", metavar="PATH", help="write the bar chart of the ratios to PATH (needs matplotlib)")
    args = p.parse_args(argv)
    args.net_list = _names(p, args.nets, NETS, "--nets") if args.nets else list(NETS)
    args.mode_list = _names(p, args.modes, MODES, "--modes")
    args.thread_counts = _ints(p, args.threads, "--threads")
    batches = _ints(p, args.batches, "--batches") if args.batches else None
    plans = QUICK_PLAN if args.quick else PLAN
    args.plans = {net: {mode: (tuple(batches) if batches else plans[net][mode]) for mode in args.mode_list}
                  for net in args.net_list}
    if args.budget is None:
        args.budget = 0.1 if args.quick else 1.0
    if args.budget < 0:
        p.error("--budget must be >= 0")
    return args


def _names(p, text, allowed, option):
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        p.error(f"{option}: unknown or empty {unknown or text!r}; choose from {', '.join(allowed)}")
    return chosen


def _ints(p, text, option):
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        p.error(f"{option} must be comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        p.error(f"{option} must be positive integers, got {text!r}")
    return values


def main(argv=None, prog=None):
    """Run the benchmark with command-line arguments `argv` (default sys.argv[1:]); `prog` names the command
    in usage messages. Returns the exit status: 1 when a result differs from torch's."""
    args = parse_args(argv, prog)
    use_torch = torch is not None and not args.no_torch
    ort = onnxruntime_or_none()
    use_onnx = use_torch and not args.no_onnx and ort is not None
    env = environment()
    env["versions"] = library_versions()
    env["machine"] = machine()
    m, v = env["machine"], env["versions"]
    print(f"fastconv {v['fastconv']} from {env['fastconv_path']} (kernels {env['fastconv_arch']}); numpy "
          f"{v['numpy']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, python {v['python']}")
    print(f"CPU {m['cpu']}, {m['cpus_usable']} usable of {m['cpu_count']}; load average "
          f"{', '.join(f'{x:.2f}' for x in m['load_average'] or [])}; {m['date']}")
    if not use_torch:
        print("torch not run: no torch and no onnxruntime columns")
    elif not use_onnx:
        print("onnxruntime not run" + (" (not installed)" if ort is None else ""))
    print(f"Timing: one untimed warm-up call, then >= 3 timed calls and ~{args.budget:g} s per cell and library; "
          "median shown. Ratios > 1: fastconv is faster.\n")
    print(markdown_table(HEADER, []), flush=True)
    records, checks, skipped, nets = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="fastconv-bench-") as workdir:
        for name in args.net_list:
            nets[name] = run_network(name, args.plans[name], args.thread_counts, args.budget, use_torch, use_onnx,
                                     records, checks, skipped, workdir)
    print_checks(checks)
    layers = None
    if args.layers:
        layers = run_layers(args.layers, args.quick, args.thread_counts, args.budget)
    env["load_average_end"] = load_average()
    data = {"benchmark": "bench_networks", "environment": env,
            "settings": {"budget_s": args.budget, "min_repeats": 3, "threads": args.thread_counts,
                         "quick": args.quick, "plans": args.plans, "lr": LR, "torch": use_torch,
                         "onnxruntime": use_onnx, "check_tol": CHECK_TOL},
            "networks": nets, "records": records, "checks": checks, "skipped": skipped, "layers": layers}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"\nraw numbers written to {args.json}")
    if args.md or args.png:
        import report
        png = args.png
        if png:
            try:
                report.write_png(data, png)
                print(f"chart written to {png}")
            except (ValueError, SystemExit) as e:  # no peer measured, or no matplotlib: the rest still stands
                print(f"no chart: {e}", file=sys.stderr)
                png = None
        if args.md:
            report.write_markdown(data, args.md, png=png)
            print(f"report written to {args.md}")
    bad = [c for c in checks if c.get("error") is not None and c["error"] > CHECK_TOL]
    if bad:
        print("WARNING: some results differ from torch (see MISMATCH above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
