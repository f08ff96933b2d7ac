"""Data-parallel training on this machine, and what it projects to on a cluster.

Part 1 (measured): training images/s of fastconv.distributed.DataParallel steps with 1 MPI rank x 2 engine threads
versus 2 ranks x 1 thread on the same cores (loopback, MPICH shared memory), for LeNet-5 (32x32), VGG-11 at 32x32
and ResNet-18 at 64x64 (10 classes, float32, SGD with momentum, a fixed synthetic global batch). Per step it
splits the time into compute (forward + backward + packing the gradients), the gradient Allreduce as each rank
sees it (transfer + waiting for the slower rank), and the update (medians over the timed steps; the parts
averaged over the ranks, the step time the slower rank's); and it times a bare Allreduce of the same
buffer after a barrier (the transfer alone). Each layout runs `--repeats` times, alternating; the table shows the
best run (the machine is shared: other processes take cores at random moments).

Part 2 (projected): for every model of fastconv.models at its own input size, the gradient volume per step
(trainable parameters x 4 bytes), the ring-Allreduce time 2(K-1)/K x volume / bandwidth at 10 and 100 Gb/s, the
single-process time per training image estimated as 6 x forward MACs (fastconv.analyze) / the training GFLOP/s
measured in part 1 (or --gflops), and the per-rank batch at which that compute time equals the communication
time (b*: with communication overlapped, larger batches hide it completely; without overlap, as fastconv does,
the step is compute + communication, and 90 % efficiency needs 9 b*). The projection is printed twice: with this
machine's measured throughput, and for a node 50x faster. One ResNet-50 step at 224x224 is measured to check the
estimate (--no-check skips it).

    python bench/bench_distributed.py                 # both parts (a few minutes)
    python bench/bench_distributed.py --quick         # LeNet-5 only, 1 repeat
    python bench/bench_distributed.py --project-only --gflops 50
    mpiexec -n 2 python bench/bench_distributed.py --worker resnet18 --threads 1   # one measurement (JSON)
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from _common import environment, fmt, markdown_table, np, print_environment

import fastconv  # noqa: E402  (_common chose which fastconv is imported)

# name -> (builder options, global batch, timed steps, warm-up steps)
MODELS = {
    "lenet5": (dict(in_channels=1, input_size=32), 64, 40, 5),
    "vgg11": (dict(input_size=32), 32, 4, 1),
    "resnet18": (dict(input_size=64), 32, 4, 1),
}
# (label, ranks, engine threads per rank, extra environment). The asked-for pair is "1 x 2" against "2 x 1";
# "1 x 1" is the base of the data-parallel speed-up, and "1 x 2 passive" shows how much of the 2-thread run is
# lost to OpenMP's spin-waiting when other processes share the cores (OMP_WAIT_POLICY=passive: threads sleep).
LAYOUTS = (("1 x 1", 1, 1, {}), ("1 x 2", 1, 2, {}), ("1 x 2 passive", 1, 2, {"OMP_WAIT_POLICY": "passive"}),
           ("2 x 1", 2, 1, {}))
RING_K = 16                          # ranks assumed in the projection (2(K-1)/K = 1.875; 2 as K grows)
BANDWIDTHS_GBIT = (10, 100)


# ------------------------------------------------------------------------------------------------ worker (MPI)

def worker(name, threads):
    from mpi4py import MPI

    from fastconv import distributed, models, nn, optim
    fastconv.set_num_threads(threads)
    comm = distributed.Communicator(timeout=900)
    options, batch, steps, warmup = MODELS[name]
    model = models.get_model(name, num_classes=10, seed=0, **options)
    c, h, w = model.input_shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    lo, hi = distributed._piece(batch, comm.rank, comm.size)
    dp = distributed.DataParallel(model, comm)
    dp.broadcast_parameters()
    model.need_input_grad = False
    opt = optim.SGD(model, lr=1e-3, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    for _ in range(warmup):
        dp.step(x[lo:hi], y[lo:hi], batch, loss, opt)
    comm.barrier()
    parts = ("compute", "allreduce", "update")
    samples = {k: [] for k in ("step",) + parts}
    for _ in range(steps):
        before = dict(dp.timings)
        start = time.perf_counter()
        dp.step(x[lo:hi], y[lo:hi], batch, loss, opt)
        samples["step"].append(time.perf_counter() - start)
        for k in parts:
            samples[k].append(dp.timings[k] - before[k])
    bare = []
    buffer = np.zeros(model.num_parameters(trainable_only=True) + 2, np.float32)
    for _ in range(5 if comm.size > 1 else 0):
        comm.barrier()
        start = time.perf_counter()
        comm.allreduce_(buffer)
        bare.append(time.perf_counter() - start)
    mine = {k: statistics.median(v) for k, v in samples.items()}
    every = comm.comm.gather(mine, root=0)
    if comm.rank == 0:
        step = max(r["step"] for r in every)
        print(json.dumps({
            "model": name, "ranks": comm.size, "threads": threads, "batch": batch, "steps": steps,
            "step_s": step, "images_per_s": batch / step,
            **{f"{k}_s": statistics.mean(r[k] for r in every) for k in parts},
            "bare_allreduce_s": statistics.median(bare) if bare else 0.0,
            "gradient_bytes": 4 * (buffer.size - 2), "mpi": MPI.Get_library_version().split("\n")[0]}))


# ------------------------------------------------------------------------------------------------ driver

def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def measure_layouts(names, repeats):
    """{(model, ranks, threads): best run's record}, layouts alternating so load spikes hit both alike."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        sys.exit("no mpiexec: pip install 'fastconv[mpi]'")
    best = {}
    for name in names:
        for _ in range(repeats):
            for label, ranks, threads, extra in LAYOUTS:
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), **extra)
                cmd = [mpiexec, "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker", name,
                       "--threads", str(threads)]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
                if done.returncode != 0:
                    sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
                record = json.loads(done.stdout.strip().splitlines()[-1])
                key = (name, label)
                if key not in best or record["images_per_s"] > best[key]["images_per_s"]:
                    best[key] = record
                print(f"  {name} {label}: {record['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    return best


def print_measured(best, names):
    rows = []
    for name in names:
        one, two = best[(name, "1 x 1")]["images_per_s"], best[(name, "1 x 2")]["images_per_s"]
        for label, ranks, _, _ in LAYOUTS:
            r = best[(name, label)]
            step = r["step_s"]
            share = r["allreduce_s"] / step
            rows.append([name, label, r["batch"], fmt(1e3 * step, 1), fmt(r["images_per_s"], 1),
                         fmt(r["images_per_s"] / one, 2), fmt(r["images_per_s"] / two, 2),
                         fmt(1e3 * r["compute_s"], 1),
                         f"{fmt(1e3 * r['allreduce_s'], 1)} ({100 * share:.1f} %)", fmt(1e3 * r["update_s"], 1),
                         "-" if ranks == 1 else fmt(1e3 * r["bare_allreduce_s"], 2),
                         fmt(r["gradient_bytes"] / 1e6, 2)])
    print(markdown_table(["model", "ranks x threads", "global batch", "step ms", "images/s", "vs 1 x 1", "vs 1 x 2",
                          "compute ms", "in Allreduce ms (share of step)", "update ms", "bare Allreduce ms",
                          "gradients MB"], rows))


def training_gflops(best, names):
    """Effective training GFLOP/s (6 x forward MACs per image x images/s) of the best one-process run."""
    from fastconv import analyze, models
    out = {}
    for name in names:
        options = MODELS[name][0]
        model = models.get_model(name, num_classes=10, init=None, **options)
        macs = analyze.summary(model).totals["macs"]
        single = max(best[(name, label)]["images_per_s"] for label, ranks, _, _ in LAYOUTS if ranks == 1)
        out[name] = 6 * macs * single / 1e9
    return out


ZOO = [("lenet5", {}), ("alexnet", {}), ("zfnet", {}), ("vgg11", {}), ("vgg16", {}), ("vgg19", {}),
       ("googlenet", {}), ("resnet18", {}), ("resnet34", {}), ("resnet50", {}), ("resnet101", {}),
       ("resnet152", {}), ("alphago_policy", {})]


def print_projection(gflops, check):
    from fastconv import analyze, models
    summaries = []
    for name, options in ZOO:
        model = models.get_model(name, init=None, **options)
        summaries.append((name, model.input_shape, model.num_parameters(trainable_only=True),
                          analyze.summary(model).totals["macs"]))
        del model
    for node, what in ((gflops, "this machine's best measured one-process training throughput"),
                       (NODE_GFLOPS, "a hypothetical node 50x this machine, e.g. 64 cores with AVX-512")):
        print(f"\nProjection: ring Allreduce over K = {RING_K} ranks (2(K-1)/K = {2 * (RING_K - 1) / RING_K:.3f}), "
              f"float32 gradients, training time per image = 6 x forward MACs / {node:.0f} GFLOP/s ({what})\n")
        print_projection_table(summaries, node)
    if check:
        check_estimate(gflops)


NODE_GFLOPS = 1000.0


def print_projection_table(summaries, gflops):
    rows = []
    factor = 2 * (RING_K - 1) / RING_K
    for name, input_shape, params, macs in summaries:
        volume = 4 * params
        per_image = 6 * macs / (gflops * 1e9)
        comm = [factor * volume * 8 / (bw * 1e9) for bw in BANDWIDTHS_GBIT]
        hide = [t / per_image for t in comm]             # b*: b * per_image == communication time
        rows.append([name, "x".join(map(str, input_shape)), f"{params / 1e6:.2f}", fmt(volume / 1e6, 1),
                     fmt(macs / 1e9, 2), fmt(1e3 * per_image, 1),
                     *(fmt(1e3 * t, 1) for t in comm), *(fmt(b, 1) for b in hide), *(fmt(9 * b, 0) for b in hide)])
    print(markdown_table(["model", "input", "params (M)", "gradients MB/step", "forward GMAC/image",
                          "train ms/image (1 node)", "Allreduce ms @10 Gb/s", "Allreduce ms @100 Gb/s",
                          "b* @10 (compute = Allreduce)", "b* @100", "b for 90 % without overlap @10",
                          "@100"], rows))


def check_estimate(gflops, threads=1):
    """Time real ResNet-50 training steps at 224x224 (on `threads` engine threads: the best one-process layout
    here was 1 x 1) against the MACs-based estimate."""
    from fastconv import analyze, models, nn, optim
    fastconv.set_num_threads(threads)
    model = models.get_model("resnet50", seed=0)
    batch = 4
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    y = np.arange(batch) % 1000
    opt, loss = optim.SGD(model, lr=1e-3, momentum=0.9), nn.CrossEntropyLoss()
    model.need_input_grad = False
    times = []
    for _ in range(3):
        start = time.perf_counter()
        opt.zero_grad()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
        times.append(time.perf_counter() - start)
    measured = min(times[1:]) / batch
    estimated = 6 * analyze.summary(model).totals["macs"] / (gflops * 1e9)
    print(f"\ncheck: ResNet-50 at 224x224, batch {batch}, {threads} thread(s): measured "
          f"{1e3 * measured:.0f} ms per training image, estimated {1e3 * estimated:.0f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", metavar="MODEL", choices=sorted(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--models", default=",".join(MODELS), help="measured models (default: all three)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="LeNet-5 only, one repeat, no check")
    parser.add_argument("--project-only", action="store_true", help="skip part 1 (needs --gflops)")
    parser.add_argument("--gflops", type=float, default=None, help="training GFLOP/s for the projection")
    parser.add_argument("--no-check", action="store_true", help="do not time the ResNet-50 step")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.threads)
    print_environment(environment(), None, "not used here")
    print(f"load average before the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs (a shared machine: other processes compete for the cores)\n")
    gflops = args.gflops
    if not args.project_only:
        names = ["lenet5"] if args.quick else [n for n in args.models.split(",") if n]
        best = measure_layouts(names, 1 if args.quick else args.repeats)
        print_measured(best, names)
        measured = training_gflops(best, names)
        print("\ntraining GFLOP/s of the best one-process run (6 x forward MACs per image x images/s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in measured.items()))
        if gflops is None:
            gflops = max(measured.values())
    if gflops is None:
        parser.error("--project-only needs --gflops")
    print_projection(gflops, check=not (args.no_check or args.quick))
    print(f"\nload average after the run: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
