"""Batch-norm training forward + backward, (16, 64, 56, 56) float32, 1 thread: fastconv vs torch in the same run.

Run: PYTHONPATH=. python bench/batch_norm_vs_torch.py   (needs torch; prints times, asserts nothing)."""
import time
import numpy as np
import torch
import fastconv
import fastconv.functional as F

fastconv.set_num_threads(1)
torch.set_num_threads(1)
N, C, H, W = 16, 64, 56, 56
rng = np.random.default_rng(0)
x = rng.standard_normal((N, C, H, W), dtype=np.float32)
dy = rng.standard_normal((N, C, H, W), dtype=np.float32)
gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
tx = torch.from_numpy(x.copy()).requires_grad_()
tg, tb = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
trm, trv, tdy = torch.zeros(C), torch.ones(C), torch.from_numpy(dy.copy())


def ours():
    y, saved = F.batch_norm(x, gamma, beta, rm, rv, training=True)
    return F.batch_norm_backward(dy, x, gamma, saved)


def theirs():
    tx.grad = tg.grad = tb.grad = None
    y = torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, True, 0.1, 1e-5)
    y.backward(tdy)


def ours_fwd():
    return F.batch_norm(x, gamma, beta, rm, rv, training=True)


y, saved = ours_fwd()


def ours_bwd():
    return F.batch_norm_backward(dy, x, gamma, saved)


times = {name: [] for name in ("fastconv fwd+bwd", "torch fwd+bwd", "fastconv fwd", "fastconv bwd")}
cpu = {name: [] for name in times}
fns = {"fastconv fwd+bwd": ours, "torch fwd+bwd": theirs, "fastconv fwd": ours_fwd, "fastconv bwd": ours_bwd}
for f in fns.values():
    f()
for _ in range(60):
    for name, f in fns.items():  # interleaved, so machine noise hits both alike
        t, c = time.perf_counter(), time.thread_time()
        f()
        times[name].append(time.perf_counter() - t)
        cpu[name].append(time.thread_time() - c)  # CPU time of this thread: robust to a busy machine
for name, ts in times.items():
    print(f"{name:18s} wall median {np.median(ts) * 1e3:6.2f} ms  min {np.min(ts) * 1e3:6.2f} ms"
          f"   | thread CPU median {np.median(cpu[name]) * 1e3:6.2f} ms")
