"""Scale out: data-parallel training over MPI, and batch feature extraction on Dask.

Training (extra ``[mpi]``: mpi4py and the MPICH wheel, whose ``mpiexec`` launches the ranks)::

    mpiexec -n 4 fastconv train lenet5 --distributed --checkpoint-dir ckpt      # the same options as without

    from fastconv import distributed
    history = distributed.fit(model, train_loader, val_loader, optimizer, epochs=20, checkpoint_dir="ckpt")

``fit`` is fastconv.train.fit on K processes (the Horovod pattern):

- Rank 0's initial parameters and buffers are broadcast to every rank, so all start from the same weights.
- Batches are GLOBAL: the loader's batch_size B is the batch of the whole job. Every rank walks the same
  shuffled order (same seed, same epoch key), and global batch b -- ``order[b*B:(b+1)*B]``, m samples -- is cut
  into K contiguous pieces, rank r taking ``[r*m // K, (r+1)*m // K)``. The pieces never overlap and together
  are exactly the batch one process would train on. Augmentation runs on the whole global batch with the
  loader's generator for that batch and each rank keeps its piece, so the images are bit-identical to a single
  process's (cheap: a rank gathers and crops B images but runs the network on B/K).
- Each rank's loss is the mean over its m_r samples, so its gradient is weighted by m_r / m and the weighted
  gradients are SUMMED: the gradient of the mean over the global batch (for equal pieces: the average of the K
  gradients). The weighted gradients of all trainable parameters are packed into ONE contiguous buffer (plus
  two slots carrying the batch's loss sum and correct count, so the logged statistics are global for free) and
  reduced with ONE Allreduce per step. Every rank then applies the same optimizer update to the same numbers.
- No overlap of communication with the backward pass: the modules have no per-parameter gradient hooks, a single
  fused Allreduce can only start once the last gradient exists, and MPICH progresses a non-blocking collective
  only inside MPI calls (or on an asynchronous progress thread, which would take a core from the kernels). The
  cost of that is quantified in docs/scaling.md.
- BatchNorm normalizes with each rank's LOCAL batch statistics by default (as Horovod and PyTorch DDP do): no
  extra communication, but the statistics are those of B/K samples, so results differ from one process with
  batch B. The running statistics, which then differ between ranks, are averaged over the ranks at the end of
  every epoch (before validation and the checkpoint). ``sync_batchnorm=True`` (``--sync-batchnorm``) swaps
  every BatchNorm for :class:`SyncBatchNorm2d`, which reduces the per-channel sums over all ranks (two small
  Allreduces in the forward, one in the backward, per layer): the statistics of the whole global batch, as one
  process computes them.
- Rank 0 alone logs, draws the progress bar and the plot, and writes ``checkpoint.npz`` -- the same file, the
  same format, as fastconv.train.fit, holding the GLOBAL loader position. So a run resumes from it with any
  number of ranks, or in one process with train.fit, and vice versa. On resume rank 0 reads the file and
  broadcasts its bytes (no shared file system needed). Dropout: rank 0 keeps the model's own generators (a
  1-rank run equals train.fit exactly; the checkpoint holds them); rank r > 0 draws its masks, each epoch, from
  generators keyed by (loader seed, epoch, r), so ranks do not repeat each other's masks and a resume with the
  same K draws exactly the masks of an uninterrupted run.
- Validation is sharded the same way and its sums reduced, so every rank gets the same numbers and the same
  scheduler, early-stopping and restore-best decisions.
- Exactness: K ranks with pieces of B/K end, after N steps, with the weights of one process at batch B up to
  rounding (the batch sum inside each gradient is split in K partial sums that MPI adds up: a different order
  of the same additions; 1e-12 relative in float64 after 12 steps). With one engine thread per rank they are
  bit-exact, in float32 and float64, against one process that accumulates the K pieces' weighted gradients in
  rank order, which is the addition order a 2-rank Allreduce performs. One rank is train.fit bit for bit.
  tests/test_distributed.py checks all three.

Faults. Every collective is non-blocking (Iallreduce, Ibcast) and polled against a deadline (``timeout``,
default :data:`DEFAULT_TIMEOUT` s, ``--mpi-timeout``): a rank whose peer died or hangs prints which operation
timed out and calls ``MPI_Abort``, which ends the whole job -- no hang. Under MPICH's launcher a process that
dies makes mpiexec kill the others at once; with ``mpiexec -disable-auto-cleanup`` the survivors get SIGUSR1,
which fit turns into the same clear message and abort (the handler is installed only while fit runs, only when
SIGUSR1 has its default action). An exception on one rank only (a bug, a full disk on rank 0) prints it with
the rank and aborts the job rather than leaving the others waiting. Errors every rank meets at the same point
(a non-finite GLOBAL loss, a damaged checkpoint) are raised normally on every rank. Then resume from the last
checkpoint, with any number of ranks.

Threads: :func:`default_threads` gives each rank (CPUs of its node) // (ranks on that node) engine threads;
the command line applies it unless --threads or OMP_NUM_THREADS says otherwise.

Feature extraction (extra ``[dask]``): :func:`extract_features_dask` runs a saved model over an image folder on a
Dask cluster, one partition of files per task, one model per worker, writing a ``.npy`` per partition as it is
produced, restartable. See its docstring.
"""
import contextlib
import csv
import hashlib
import io as _io
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

from . import nn

__all__ = ["fit", "DataParallel", "Communicator", "SyncBatchNorm2d", "convert_sync_batchnorm",
           "revert_sync_batchnorm", "default_threads", "add_arguments", "setup_command", "DEFAULT_TIMEOUT",
           "extract_features_dask", "load_features", "forward_to", "list_images"]

DEFAULT_TIMEOUT = 300.0      # seconds a rank waits in one collective before declaring a peer dead


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("distributed training needs mpi4py and an MPI library: pip install 'fastconv[mpi]' "
                          "(mpi4py + mpich, whose mpiexec launches the ranks)") from None
    return MPI


# ================================================================================================ communicator

_peer_died = threading.Event()


def _on_sigusr1(signum, frame):
    # MPICH's launcher (with -disable-auto-cleanup) signals the survivors when a process of the job dies
    _peer_died.set()


class Communicator:
    """An MPI communicator whose collectives never wait forever.

    Each collective is started non-blocking and polled (Test: busily for 5 ms, then with sleeps growing to
    0.2 ms, so a rank waiting for a slower one does not burn a core) until it completes, a deadline of `timeout`
    seconds passes, or the launcher reports a dead peer; in the last two cases the rank prints what it was
    waiting for and aborts the whole job (MPI_Abort), since a collective that one member will never join cannot
    be cancelled. (Measured on 2 ranks: as fast as the blocking Allreduce from 0.25 to 112 MB.)

    comm : an mpi4py communicator (default COMM_WORLD).  timeout : seconds, > 0.
    Attributes: rank, size, local_size (ranks on this node), comm (the mpi4py object).
    """

    def __init__(self, comm=None, timeout=DEFAULT_TIMEOUT):
        MPI = _import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()

    # --------------------------------------------------------------- collectives with a deadline
    SPIN_SECONDS = 0.005     # poll without sleeping this long first: a transfer in flight progresses only in Test
    ABORT_GRACE_SECONDS = 0.5  # see abort

    def _wait(self, request, what):
        start = time.monotonic()
        spin_until, deadline = start + self.SPIN_SECONDS, start + self.timeout
        pause = 5e-5
        try:
            while not request.Test():
                now = time.monotonic()
                if _peer_died.is_set():
                    self.abort(f"the MPI launcher reports that another process of the job died (rank {self.rank} "
                               f"was waiting in {what})")
                if now > deadline:
                    self.abort(f"{what} did not complete within {self.timeout:g} s: another rank died or hangs")
                if now > spin_until:         # the others are late (still computing): wait without burning a core
                    time.sleep(pause)
                    pause = min(2 * pause, 2e-4)
        except self.MPI.Exception as e:
            self.abort(f"MPI error in {what}: {e}")

    def allreduce_(self, buffer, what="Allreduce"):
        """Sum `buffer` (a contiguous ndarray) over all ranks, in place."""
        if self.size > 1:
            self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM), what)
        return buffer

    def bcast_(self, buffer, root=0, what="Bcast"):
        """Overwrite `buffer` (a contiguous ndarray) on every rank with root's, in place."""
        if self.size > 1:
            self._wait(self.comm.Ibcast(buffer, root=root), what)
        return buffer

    def barrier(self, what="Barrier"):
        if self.size > 1:
            self._wait(self.comm.Ibarrier(), what)

    def abort(self, message, code=1):
        """Print `message` naming this rank and end every process of the job."""
        print(f"fastconv distributed: rank {self.rank}/{self.size}: {message}; aborting the job (resume from the "
              f"last checkpoint)", file=sys.stderr, flush=True)
        if self.size > 1:
            # MPI_Abort tears the job down at once; output still on its way through the launcher can be lost
            # with it (seen on a loaded machine: the traceback arrived, this message did not). A short pause lets
            # the message reach the user first.
            time.sleep(self.ABORT_GRACE_SECONDS)
            self.comm.Abort(code)
        raise SystemExit(code)

    @contextlib.contextmanager
    def watch_launcher(self):
        """While inside, SIGUSR1 (MPICH's notice of a dead peer) makes the next collective abort with a clear
        message instead of killing this process silently. Only installed from the main thread and only over
        the default action."""
        installed = False
        if (self.size > 1 and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL):
            signal.signal(signal.SIGUSR1, _on_sigusr1)
            installed = True
        try:
            yield self
        finally:
            if installed:
                signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def _communicator(comm, timeout):
    return comm if isinstance(comm, Communicator) else Communicator(comm, timeout)


def default_threads(comm=None):
    """Engine threads per rank: the CPUs of this node divided among the ranks running on it (at least 1)."""
    from . import _C
    local = _communicator(comm, DEFAULT_TIMEOUT).local_size
    return max(1, _C.cpu_count() // local)


# ================================================================================================ synchronized BN

class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the GLOBAL batch (all ranks' pieces).

    Forward (training): per channel, the sum and count of x are summed over the ranks (Allreduce), giving the
    mean; then the sum of (x - mean)^2 (a second Allreduce, the two-pass variance); y = (x - mean) * invstd *
    gamma + beta, invstd = 1 / sqrt(var + eps) with the biased variance; the running statistics get the global
    mean and unbiased variance. Backward: the per-channel sums of dy and dy * xhat, weighted by this rank's
    share of the global loss (``grad_weight``, set by DataParallel for each step), are summed over the ranks,
    giving the global means that dx needs; dx is returned at this rank's own loss scale, because the caller
    weights this rank's parameter gradients before they are summed. Eval mode is plain BatchNorm with the
    running statistics. Sums run in float64.
    """

    def __init__(self, num_features, comm, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__(num_features, eps=eps, momentum=momentum, dtype=dtype)
        self.comm = comm
        self.grad_weight = 1.0 / comm.size

    @classmethod
    def from_batchnorm(cls, bn, comm):
        """A SyncBatchNorm2d sharing `bn`'s parameter, gradient and buffer arrays."""
        sync = cls.__new__(cls)
        sync.__dict__.update(bn.__dict__)
        sync.comm, sync.grad_weight = comm, 1.0 / comm.size
        sync._original_class = type(bn)
        return sync

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        nn._check_dtype(x, self)
        c = self.num_features
        if x.ndim < 2 or x.shape[1] != c:
            raise ValueError(f"SyncBatchNorm2d({c}) got input of shape {x.shape}")
        axes = (0,) + tuple(range(2, x.ndim))
        sums = np.empty(c + 1)
        sums[:c] = x.sum(axis=axes, dtype=np.float64)
        sums[c] = x.size // c
        self.comm.allreduce_(sums, "SyncBatchNorm statistics (Allreduce)")
        count = sums[c]
        if count < 2:
            raise ValueError(f"SyncBatchNorm2d needs more than 1 value per channel over all ranks, got {count:g}")
        shape = (1, c) + (1,) * (x.ndim - 2)
        mean = sums[:c] / count
        centred = x - mean.astype(x.dtype).reshape(shape)
        squares = np.square(centred, dtype=np.float64).sum(axis=axes)
        self.comm.allreduce_(squares, "SyncBatchNorm statistics (Allreduce)")
        var = squares / count
        invstd = 1.0 / np.sqrt(var + self.eps)
        self._xhat = centred * invstd.astype(x.dtype).reshape(shape)
        self._invstd, self._count, self._shape = invstd, count, shape
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm[...] = (1 - self.momentum) * rm + self.momentum * mean
        rv[...] = (1 - self.momentum) * rv + self.momentum * var * (count / (count - 1))
        return self._xhat * self.params["weight"].reshape(shape) + self.params["bias"].reshape(shape)

    def backward(self, dy):
        if not self.training:
            return super().backward(dy)
        c, shape, w = self.num_features, self._shape, self.grad_weight
        axes = (0,) + tuple(range(2, dy.ndim))
        local = np.empty(2 * c)
        local[:c] = dy.sum(axis=axes, dtype=np.float64)
        local[c:] = (dy * self._xhat).sum(axis=axes, dtype=np.float64)
        if self.trainable("bias"):
            self.grads["bias"] += local[:c].astype(dy.dtype)
        if self.trainable("weight"):
            self.grads["weight"] += local[c:].astype(dy.dtype)
        total = self.comm.allreduce_(local * w, "SyncBatchNorm gradient sums (Allreduce)")
        if not self.need_input_grad:
            return None
        # dL/dx at the global loss scale is gamma*invstd*(w dy - S1/M - xhat S2/M); divided by w for this rank
        scale = (self.params["weight"] * self._invstd).astype(dy.dtype).reshape(shape)
        mean_dy = (total[:c] / (self._count * w)).astype(dy.dtype).reshape(shape)
        mean_dy_xhat = (total[c:] / (self._count * w)).astype(dy.dtype).reshape(shape)
        return scale * (dy - mean_dy - self._xhat * mean_dy_xhat)


def convert_sync_batchnorm(model, comm):
    """Replace every BatchNorm2d/BatchNorm1d below `model` by a SyncBatchNorm2d sharing its arrays (in place;
    the state_dict keys do not change). Returns the number replaced."""
    comm = _communicator(comm, DEFAULT_TIMEOUT)
    replaced = 0
    for _, parent in model.named_modules():
        for name, child in list(parent.children.items()):
            if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
                parent.children[name] = SyncBatchNorm2d.from_batchnorm(child, comm)
                replaced += 1
    return replaced


def revert_sync_batchnorm(model):
    """Undo convert_sync_batchnorm: every SyncBatchNorm2d becomes the BatchNorm it replaced (same arrays)."""
    for _, parent in model.named_modules():
        for name, child in list(parent.children.items()):
            if isinstance(child, SyncBatchNorm2d):
                plain = object.__new__(child.__dict__.get("_original_class", nn.BatchNorm2d))
                plain.__dict__.update(child.__dict__)
                for key in ("comm", "grad_weight", "_original_class", "_xhat", "_invstd", "_count", "_shape"):
                    plain.__dict__.pop(key, None)
                parent.children[name] = plain
    return model


# ================================================================================================ the step

def _piece(m, rank, size):
    """[lo, hi) of rank's contiguous piece of a global batch of m samples."""
    return rank * m // size, (rank + 1) * m // size


class DataParallel:
    """The per-step machinery of data-parallel training on one rank.

    model : a fastconv.nn.Module whose parameters all have one dtype.  comm : Communicator or mpi4py comm.
    ``broadcast_parameters()`` copies rank 0's parameters and buffers everywhere (one Bcast). ``step(x, y, m,
    loss, optimizer)`` trains on this rank's piece (x, y) of a global batch of m samples: forward, backward,
    one Allreduce of the weighted gradients, optimizer.step(); it returns the global (loss sum, correct count).
    ``timings`` accumulates seconds spent in "compute" (forward + backward + packing), "allreduce" and "update",
    and "steps".
    """

    def __init__(self, model, comm=None, timeout=DEFAULT_TIMEOUT):
        self.model, self.comm = model, _communicator(comm, timeout)
        dtypes = {p.dtype for _, p, _, _, _ in model.named_parameters()}
        if len(dtypes) > 1:
            raise TypeError(f"the model mixes parameter dtypes {sorted(d.name for d in dtypes)}; convert it with "
                            f".astype() so its gradients fit one buffer")
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        self._flat = None
        self.timings = {"compute": 0.0, "allreduce": 0.0, "update": 0.0, "steps": 0}

    def _gradient_buffer(self, trainable):
        size = sum(g.size for _, _, g, _, _ in trainable) + 2
        if self._flat is None or self._flat.size != size:
            self._flat = np.empty(size, self.dtype)
        return self._flat

    def _state_arrays(self):
        return [a for _, m in self.model.named_modules() for a in list(m.params.values()) + list(m.buffers.values())
                if a.dtype == self.dtype]

    def broadcast_parameters(self, root=0):
        """Every parameter and buffer (of the model's dtype) takes root's values: one fused Bcast."""
        arrays = self._state_arrays()
        if self.comm.size == 1 or not arrays:
            return
        flat = np.concatenate([a.ravel() for a in arrays])
        self.comm.bcast_(flat, root, "the broadcast of the initial weights (Bcast)")
        offset = 0
        for a in arrays:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size

    def average_buffers(self):
        """Floating buffers (BatchNorm running statistics) become their mean over the ranks: one Allreduce."""
        buffers = [b for _, m in self.model.named_modules() for b in m.buffers.values() if b.dtype.kind == "f"]
        if self.comm.size == 1 or not buffers:
            return
        flat = np.concatenate([b.ravel().astype(np.float64) for b in buffers])
        self.comm.allreduce_(flat, "the averaging of the BatchNorm running statistics (Allreduce)")
        flat /= self.comm.size
        offset = 0
        for b in buffers:
            b[...] = flat[offset:offset + b.size].reshape(b.shape)
            offset += b.size

    def step(self, x, y, m, loss, optimizer):
        """One training step on this rank's piece (x, y) of a global batch of `m` samples (the piece may be
        empty). Returns the global (loss sum, correct count) of the batch; a non-finite global loss is a
        FloatingPointError on every rank (before any update)."""
        t0 = time.perf_counter()
        n = len(y)
        weight = n / m
        optimizer.zero_grad()
        local_loss = correct = 0.0
        for module in self._sync_bn():
            module.grad_weight = weight
        if n:
            logits = self.model.forward(x)
            local_loss = float(loss.forward(logits, y))
            self.model.backward(loss.backward())
            correct = float(np.sum(np.argmax(logits, axis=1) == y))
        trainable = list(self.model.named_parameters(include_frozen=False))
        flat = self._gradient_buffer(trainable)
        offset = 0
        for _, _, g, _, _ in trainable:
            np.multiply(g, weight, out=flat[offset:offset + g.size].reshape(g.shape))
            offset += g.size
        flat[-2], flat[-1] = local_loss * n, correct
        t1 = time.perf_counter()
        self.comm.allreduce_(flat, f"the gradient Allreduce of step {optimizer.steps + 1}")
        t2 = time.perf_counter()
        loss_sum, correct = float(flat[-2]), int(round(float(flat[-1])))
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"the training loss is {loss_sum / m} at step {optimizer.steps + 1}; lower "
                                     f"the learning rate")
        offset = 0
        for _, _, g, _, _ in trainable:
            g[...] = flat[offset:offset + g.size].reshape(g.shape)
            offset += g.size
        optimizer.step()
        t3 = time.perf_counter()
        self.timings["compute"] += t1 - t0
        self.timings["allreduce"] += t2 - t1
        self.timings["update"] += t3 - t2
        self.timings["steps"] += 1
        return loss_sum, correct

    def _sync_bn(self):
        return [m for _, m in self.model.named_modules() if isinstance(m, SyncBatchNorm2d)]


# ================================================================================================ data

def _global_batches(loader, rank, size, advance=True):
    """This rank's pieces of the loader's global batches from its current position: (x, y, m) with m the global
    batch size. Like iterating the DataLoader, it advances the loader's (epoch, batch) state (unless `advance`
    is False: a pass over a copy of the state, for evaluation)."""
    epoch, start = (loader.epoch, loader.batch) if advance else (loader.epoch, 0)
    order = loader.order(epoch)
    images, labels = loader.dataset.images, loader.dataset.labels
    bs = loader.batch_size
    for b in range(start, len(loader)):
        idx = order[b * bs:(b + 1) * bs]
        lo, hi = _piece(len(idx), rank, size)
        if loader.transform is not None:
            # the loader's own key for this batch's transform (DataLoader docstring), applied to the whole batch
            rng = np.random.default_rng(np.random.SeedSequence(loader.seed, spawn_key=(epoch, 1, b)))
            x = loader.transform(images[idx], rng)[lo:hi]
        else:
            x = images[idx[lo:hi]]
        if advance:
            loader.batch = b + 1
        yield x, labels[idx[lo:hi]], len(idx)
    if advance:
        loader.epoch, loader.batch = epoch + 1, 0


def _check_pieces(loader, size, what):
    """Every rank must get at least one sample of every batch (needed by synchronized BatchNorm)."""
    n, bs = len(loader.dataset), loader.batch_size
    sizes = {bs} if n >= bs else set()
    if not loader.drop_last and n % bs:
        sizes.add(n % bs)
    if min(sizes) < size:
        raise ValueError(f"{what}: a batch of {min(sizes)} samples cannot give each of the {size} ranks a sample, "
                         f"which synchronized BatchNorm needs; use a batch size >= {size} and drop_last=True")


def _evaluate(model, loader, loss, dtype, comm):
    """(mean loss, accuracy) over all ranks' pieces of one pass over `loader` (eval mode, position untouched)."""
    was_training = model.training
    model.eval()
    sums = np.zeros(3)
    try:
        for x, y, _ in _global_batches(loader, comm.rank, comm.size, advance=False):
            if len(y):
                logits = model.forward(np.asarray(x).astype(dtype, copy=False))
                sums += (float(loss.forward(logits, y)) * len(y), np.sum(np.argmax(logits, axis=1) == y), len(y))
    finally:
        model.train(was_training)
    comm.allreduce_(sums, "the validation sums (Allreduce)")
    return sums[0] / sums[2], sums[1] / sums[2]


def _reseed_dropout(model, seed, epoch, rank):
    """On rank r > 0, give every module's ``rng`` (Dropout) a generator keyed by (loader seed, epoch, r, module
    number): masks differ from rank to rank, and a run resumed at an epoch boundary -- with the same K -- draws
    exactly the masks an uninterrupted one would. Rank 0 keeps the model's own generators (they are what the
    checkpoint saves, and what makes a 1-rank run equal train.fit)."""
    if rank == 0:
        return
    for i, (_, m) in enumerate(model.named_modules()):
        if isinstance(getattr(m, "rng", None), np.random.Generator):
            m.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, 2, rank, i)))


# ================================================================================================ fit

def _read_checkpoint(comm, path):
    """The checkpoint state dict from rank 0's file, on every rank (its bytes broadcast), or None when rank 0
    has none. Every rank parses the same bytes, so a damaged file is the same ValueError everywhere."""
    from .io import remove_temporaries
    from .train import load_checkpoint
    length = np.array([-1], np.int64)
    if comm.rank == 0:
        remove_temporaries(path)
        if os.path.exists(path):
            length[0] = os.path.getsize(path)
    comm.bcast_(length, 0, "the checkpoint size (Bcast)")
    if length[0] < 0:
        return None
    if comm.rank == 0:
        data = np.fromfile(path, dtype=np.uint8)
        if data.size != length[0]:
            comm.abort(f"{path} changed size while being read")
    else:
        data = np.empty(int(length[0]), np.uint8)
    comm.bcast_(data, 0, "the checkpoint (Bcast)")
    if comm.rank == 0:
        return load_checkpoint(path)
    with tempfile.TemporaryDirectory(prefix="fastconv-ckpt-") as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        data.tofile(local)
        return load_checkpoint(local)


def _resume(comm, path, model, optimizer, scheduler, train, early_stopping, say):
    """(history, stopped) restored from rank 0's checkpoint on every rank, or a fresh start when there is none."""
    from . import train as T
    try:
        state = _read_checkpoint(comm, path)
        if state is None:
            say(f"no checkpoint in {os.path.dirname(path)}; starting from scratch")
            return T.History(), False
        restored = T._restore(state, model, optimizer, scheduler, train, early_stopping, path)
    except (ValueError, KeyError, TypeError) as e:
        e._same_on_all_ranks = True      # every rank parsed the same bytes
        raise
    say(f"resumed from {path} (epoch {len(restored[0])}) on {comm.size} rank(s)")
    return restored


def fit(model, train, val, optimizer, epochs, *, loss=None, scheduler=None, checkpoint_dir=None, resume=False,
        early_stopping=None, progress=True, plot=None, batch_size=64, seed=0, log=print, comm=None,
        timeout=DEFAULT_TIMEOUT, sync_batchnorm=False):
    """fastconv.train.fit on every rank of an MPI job (see the module docstring); call it on every rank.

    The arguments are train.fit's, with the loaders' batch size being the GLOBAL batch (split over the ranks),
    plus comm (an mpi4py communicator, default COMM_WORLD, or a Communicator), timeout (seconds a rank waits in
    one collective before aborting the job) and sync_batchnorm. `optimizer` and `scheduler` are built on every
    rank the same way, over the local model. Returns the History (global numbers, the same on every rank);
    rank 0 alone logs, shows progress, plots and writes checkpoints.
    """
    from . import train as T
    comm = _communicator(comm, timeout)
    train = T._as_loader(train, batch_size, True, seed, "train")
    val = None if val is None else T._as_loader(val, batch_size, False, seed, "val")
    loss = nn.CrossEntropyLoss() if loss is None else loss
    if isinstance(early_stopping, (int, np.integer)) and not isinstance(early_stopping, bool):
        early_stopping = T.EarlyStopping(patience=early_stopping)
    if val is None and (early_stopping is not None or isinstance(scheduler, T.ReduceLROnPlateau)):
        raise ValueError("early stopping and ReduceLROnPlateau monitor validation: give val data")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    if sync_batchnorm:
        _check_pieces(train, comm.size, "train")
    lead = comm.rank == 0
    say = log if (log is not None and lead) else (lambda line: None)
    parallel = DataParallel(model, comm)
    converted = convert_sync_batchnorm(model, comm) if sync_batchnorm else 0

    path = None
    history, stopped = T.History(), False
    previous_need_input_grad = model.need_input_grad
    try:
        with comm.watch_launcher():
            if checkpoint_dir is not None:
                path = os.path.join(os.fspath(checkpoint_dir), T.CHECKPOINT_NAME)
                if lead:
                    os.makedirs(checkpoint_dir, exist_ok=True)
                if resume:
                    history, stopped = _resume(comm, path, model, optimizer, scheduler, train, early_stopping, say)
            parallel.broadcast_parameters()
            if converted:
                say(f"synchronized BatchNorm: {converted} layer(s) use the statistics of the global batch")
            model.need_input_grad = False
            epoch = len(history)
            while epoch < epochs and not stopped:
                epoch += 1
                row, stopped = _train_epoch(parallel, train, val, optimizer, loss, scheduler, early_stopping,
                                            epoch, epochs, bool(progress) and lead and sys.stderr.isatty())
                history.append(row)
                if path is not None and lead:
                    T.save_checkpoint(path, T._checkpoint(model, optimizer, scheduler, train, early_stopping,
                                                          history, stopped))
                say(T._summary(row, epochs))
                if stopped:
                    say(f"early stopping: validation accuracy has not improved for {early_stopping.patience} "
                        f"epochs (best {early_stopping.best:.2%} at epoch {early_stopping.best_epoch})")
    except KeyboardInterrupt:
        if path is None:
            where = "no checkpoint is being written (no checkpoint_dir)"
        else:
            done = T._checkpoint_epoch(path) if lead else None
            where = (f"no complete checkpoint yet in {checkpoint_dir}" if done is None else
                     f"the last complete checkpoint is {path} (epoch {done}); continue from it with resume=True "
                     f"(fastconv train --resume)")
        say(f"interrupted: {where}")
        raise
    except Exception as e:
        # An error raised on this rank alone would leave the others waiting in the next collective: end the job.
        # Errors every rank raises at the same point (a non-finite global loss, a bad checkpoint) propagate.
        if comm.size > 1 and not getattr(e, "_same_on_all_ranks", False):
            traceback.print_exc(file=sys.stderr)
            comm.abort(f"{type(e).__name__}: {e}")
        raise
    finally:
        model.need_input_grad = previous_need_input_grad
        if converted:
            revert_sync_batchnorm(model)
    if early_stopping is not None and early_stopping.restore_best and early_stopping.best_state is not None:
        model.load_state_dict(early_stopping.best_state)
        say(f"restored the weights of epoch {early_stopping.best_epoch} "
            f"(validation accuracy {early_stopping.best:.2%})")
    if plot is not None and lead:
        history.plot(plot)
    return history


def _train_epoch(parallel, train, val, optimizer, loss, scheduler, early_stopping, epoch, epochs, show_bar):
    from . import train as T
    model, comm = parallel.model, parallel.comm
    lr = optimizer.lr
    start = time.perf_counter()
    model.train()
    _reseed_dropout(model, train.seed, train.epoch, comm.rank)
    bar = T._progress_bar(show_bar, len(train) - train.batch, f"epoch {epoch}/{epochs}")
    seen = correct = 0
    loss_sum = 0.0
    try:
        for x, y, m in _global_batches(train, comm.rank, comm.size):
            x = np.asarray(x).astype(parallel.dtype, copy=False)
            batch_loss, batch_correct = parallel.step(x, y, m, loss, optimizer)
            seen += m
            loss_sum += batch_loss
            correct += batch_correct
            if bar is not None:
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"loss {loss_sum / seen:.4f}, acc {correct / seen:.2%}, {rate:.0f} img/s",
                                    refresh=False)
                bar.update(1)
    except FloatingPointError as e:
        e._same_on_all_ranks = True      # the loss checked is the global one
        raise
    finally:
        if bar is not None:
            bar.close()
    train_seconds = time.perf_counter() - start
    parallel.average_buffers()
    val_loss, val_acc = (_evaluate(model, val, loss, parallel.dtype, comm) if val is not None
                         else (math.nan, math.nan))
    return T._end_epoch(model, scheduler, early_stopping, epoch, lr, loss_sum, correct, seen, val_loss, val_acc,
                        start, train_seconds)


# ================================================================================================ command line

def add_arguments(parser):
    """Add --distributed, --sync-batchnorm and --mpi-timeout to the `fastconv train` parser."""
    g = parser.add_argument_group("distributed training", "run under mpiexec -n K (pip install 'fastconv[mpi]'); "
                                  "--batch-size is the global batch, split over the K ranks")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training over MPI: one process per rank, gradients averaged every step, "
                        "rank 0 logs and saves; threads per rank default to the node's CPUs / its ranks")
    g.add_argument("--sync-batchnorm", action="store_true",
                   help="with --distributed: BatchNorm uses the statistics of the global batch (default: each "
                        "rank's own piece)")
    g.add_argument("--mpi-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"with --distributed: abort the job when a rank waits longer than this in one collective "
                        f"(a dead or hung peer; default {DEFAULT_TIMEOUT:g})")
    return parser


def setup_command(args, parser):
    """The MPI part of `fastconv train MODEL --distributed` (fastconv.cli._train runs the rest of the recipe with
    this module's fit): checks the options, joins the job and sets this rank's threads. Returns the
    Communicator."""
    from . import set_num_threads
    if not args.mpi_timeout > 0:
        parser.error(f"--mpi-timeout must be > 0, got {args.mpi_timeout}")
    try:
        comm = Communicator(timeout=args.mpi_timeout)
    except ImportError as e:
        parser.error(str(e))
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        set_num_threads(args.threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        set_num_threads(default_threads(comm))
    if args.batch_size < comm.size:
        parser.error(f"--batch-size {args.batch_size} (the global batch) is smaller than the {comm.size} ranks")
    return comm

# ================================================================================================ features on Dask

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
_MANIFEST = "manifest.json"
_INDEX = "index.csv"
_FORMAT = "fastconv-features"


def list_images(folder):
    """Paths (relative to `folder`, '/'-separated, sorted) of every image file below it, hidden files and
    folders skipped; the extensions are fastconv.data.ImageFolder's. So a class-per-subfolder tree lists its
    files in ImageFolder's order (class folders sorted, files sorted within each)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"image folder {folder} does not exist or is not a directory")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, folder)
        for f in sorted(files):
            if not f.startswith(".") and f.lower().endswith(_IMAGE_EXTENSIONS):
                found.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
    return sorted(found, key=lambda p: p.split("/"))


def forward_to(model, x, layer):
    """The output of the module with dotted name `layer` (e.g. "classifier.relu7", "layer3") when `x` runs
    through `model`; None or "" gives the model's output. The path is walked through Sequential containers,
    running each child in order and stopping after the one named (its later siblings never run); the named
    module may be anything, but the ones above it must be Sequentials."""
    if not layer:
        return model.forward(x)
    return _forward_path(model, x, layer.split("."), layer)


def _forward_path(module, x, path, layer):
    if not isinstance(module, nn.Sequential):
        raise ValueError(f"layer {layer!r}: features are taken after children of Sequential containers, but "
                         f"{type(module).__name__} is not one")
    if path[0] not in module.children:
        raise ValueError(f"layer {layer!r}: no module {path[0]!r} here; the children are {list(module.children)}")
    for name, child in module.children.items():
        if name == path[0]:
            return child.forward(x) if len(path) == 1 else _forward_path(child, x, path[1:], layer)
        x = child.forward(x)


def _check_layer(model, layer):
    module = model
    for i, part in enumerate(layer.split(".") if layer else []):
        if not isinstance(module, nn.Sequential):
            raise ValueError(f"layer {layer!r}: {'.'.join(layer.split('.')[:i]) or 'the model'} is a "
                             f"{type(module).__name__}, not a Sequential; name a module reachable through "
                             f"Sequential containers")
        if part not in module.children:
            raise ValueError(f"layer {layer!r}: no module {part!r} in {'.'.join(layer.split('.')[:i]) or 'the model'}"
                             f"; its children are {list(module.children)}")
        module = module.children[part]


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# One model per worker process: loaded by the first task that needs it, reused by the others; a lock serializes
# forwards through it (the modules cache arrays for backward) while the kernels use the worker's threads.
_WORKER_MODELS = {}
_WORKER_LOCK = threading.Lock()
_WORKER_LOADS = []


def _worker_model(model_path, fingerprint):
    from . import io
    key = (model_path, fingerprint)
    with _WORKER_LOCK:
        if key not in _WORKER_MODELS:
            model = io.load(model_path).eval()
            _WORKER_MODELS.clear()                 # a worker keeps one model, the latest asked for
            _WORKER_MODELS[key] = (model, threading.Lock())
            _WORKER_LOADS.append(key)
        return _WORKER_MODELS[key]


def _worker_threads():
    """The threads Dask gave this worker (1 outside a worker)."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return None
    state = getattr(worker, "state", None)
    return getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)


def _extract_partition(task):
    """Run one partition: read its images, forward them in batches to the layer, write the .npy atomically.
    Returns a small report (partition, rows, feature shape, process id, model loads in this process)."""
    from . import set_num_threads
    from .data import read_image
    from .io import atomic_write
    threads = _worker_threads()
    if threads:
        set_num_threads(threads)
    model, lock = _worker_model(task["model_path"], task["fingerprint"])
    c, h, w = task["input_shape"]
    dtype = next((p.dtype for _, p, _, _, _ in model.named_parameters()), np.dtype(np.float32))
    files = [os.path.join(task["folder"], f) for f in task["files"]]
    codes = []
    for i in range(0, len(files), task["batch_size"]):
        x = np.stack([read_image(f, (h, w), channels=c) for f in files[i:i + task["batch_size"]]])
        if task["preprocess"] is not None:
            x = task["preprocess"](x)
        with lock:
            codes.append(np.array(forward_to(model, np.asarray(x).astype(dtype, copy=False), task["layer"])))
    codes = np.concatenate(codes)
    with atomic_write(task["out"]) as f:
        np.save(f, codes, allow_pickle=False)
    return {"partition": task["partition"], "rows": len(codes), "feature_shape": list(codes.shape[1:]),
            "pid": os.getpid(), "model_loads": len(_WORKER_LOADS)}


def _partition_name(p):
    return f"part-{p:05d}.npy"


def _valid_partition(path, rows):
    """The feature shape of a finished partition file, or None when it is missing or does not validate."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if a.ndim < 1 or a.shape[0] != rows or a.dtype.kind != "f":
        return None
    return tuple(a.shape[1:])


def extract_features_dask(model_path, image_folder, layer, out_dir, partition_size=256, client=None, *,
                          batch_size=64, input_shape=None, preprocess=None, overwrite=False, log=print):
    """Features ("codes") of every image below `image_folder` at module `layer` of a saved model, on Dask.

    model_path : a file written by fastconv.save (the architecture is rebuilt from it; each worker loads it
        once and keeps it for all its partitions).
    image_folder : images found by :func:`list_images` (a class-per-subfolder tree, or flat), each read with
        fastconv.data.read_image at the model's input size and channels (or `input_shape` (C, H, W)) as float32
        in [0, 1], then `preprocess(x)` ((N, C, H, W) -> same; picklable) if given, then cast to the model's dtype.
    layer : dotted module name (see :func:`forward_to`; None for the model's output).
    out_dir : receives ``manifest.json`` (model, layer, sizes, fingerprints), ``index.csv`` (one row per image:
        row, partition, row within it, file, class = first folder or "") -- both written before any work --
        and ``part-NNNNN.npy``, the (rows, ...) codes of each partition of `partition_size` consecutive files,
        each written atomically (fastconv.io.atomic_write) as soon as its task finishes.
    client : a dask.distributed Client; None uses the current default client if there is one, else runs the
        partitions here, one after the other.
    batch_size : images per forward inside a task.
    overwrite : when out_dir holds the output of a different job (other model file, layer, files or sizes),
        False raises a ValueError, True deletes its partitions and starts over.

    Restart: run the same call again; partitions whose file exists and validates (loadable .npy header with the
    right row count) are skipped, the rest computed. Returns a dict: out_dir, num_images, feature_shape,
    partitions, computed, skipped (lists of partition numbers) and reports (one dict per computed partition).
    """
    from . import io
    model_path, image_folder, out_dir = (os.path.abspath(os.fspath(p)) for p in (model_path, image_folder, out_dir))
    if isinstance(partition_size, bool) or not isinstance(partition_size, (int, np.integer)) or partition_size < 1:
        raise ValueError(f"partition_size must be an integer >= 1, got {partition_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    say = log if log is not None else (lambda line: None)
    files = list_images(image_folder)
    if not files:
        raise ValueError(f"no image files below {image_folder}")
    model = io.load(model_path)          # checks the file and the layer here, before any worker starts
    _check_layer(model, layer)
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError(f"{model_path} does not record its input shape; pass input_shape=(C, H, W)")
    del model
    input_shape = tuple(int(v) for v in input_shape)
    partitions = [(p, files[s:s + partition_size]) for p, s in enumerate(range(0, len(files), partition_size))]
    manifest = {"format": _FORMAT, "version": 1, "model": model_path, "model_sha256": _file_sha256(model_path),
                "layer": layer or "", "input_shape": list(input_shape), "partition_size": int(partition_size),
                "num_images": len(files), "num_partitions": len(partitions),
                "files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
                "preprocess": None if preprocess is None else
                f"{getattr(preprocess, '__module__', '')}.{getattr(preprocess, '__qualname__', repr(preprocess))}"}
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, _MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            try:
                previous = json.load(f)
            except json.JSONDecodeError:
                previous = None
        if previous != manifest:
            if not overwrite:
                raise ValueError(f"{out_dir} holds features of a different job (model, layer, files or sizes "
                                 f"differ); use another out_dir or overwrite=True")
            for name in os.listdir(out_dir):
                if name.startswith("part-") and name.endswith(".npy"):
                    os.unlink(os.path.join(out_dir, name))
    for name, text in ((_MANIFEST, json.dumps(manifest, indent=1)), (_INDEX, _index_csv(partitions))):
        with io.atomic_write(os.path.join(out_dir, name)) as f:
            f.write(text.encode())
    for name in os.listdir(out_dir):        # stale temporaries of partition writes killed mid-way
        if name.startswith(".part-") and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(out_dir, name))

    done, tasks = {}, []
    fingerprint = manifest["model_sha256"]
    for p, chunk in partitions:
        out = os.path.join(out_dir, _partition_name(p))
        shape = _valid_partition(out, len(chunk))
        if shape is not None:
            done[p] = shape
            continue
        tasks.append({"model_path": model_path, "fingerprint": fingerprint, "folder": image_folder, "files": chunk,
                      "layer": layer, "input_shape": input_shape, "batch_size": int(batch_size),
                      "preprocess": preprocess, "out": out, "partition": p})
    say(f"{len(partitions)} partition(s) of up to {partition_size} images ({len(files)} in all): {len(done)} "
        f"already done, {len(tasks)} to compute")
    reports = _run_tasks(tasks, client, say)
    shapes = set(done.values()) | {tuple(r["feature_shape"]) for r in reports}
    if len(shapes) > 1:
        raise ValueError(f"the partitions in {out_dir} have different feature shapes {sorted(shapes)}; run again "
                         f"with overwrite=True")
    return {"out_dir": out_dir, "num_images": len(files), "feature_shape": shapes.pop(),
            "partitions": len(partitions), "computed": sorted(r["partition"] for r in reports),
            "skipped": sorted(done), "reports": reports}


def _index_csv(partitions):
    out = _io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "partition", "part_row", "file", "class"])
    row = 0
    for p, chunk in partitions:
        for i, f in enumerate(chunk):
            writer.writerow([row, p, i, f, f.split("/")[0] if "/" in f else ""])
            row += 1
    return out.getvalue()


def _default_client():
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _run_tasks(tasks, client, say):
    if not tasks:
        return []
    client = client if client is not None else _default_client()
    if client is None:
        reports = []
        try:
            for task in tasks:
                reports.append(_extract_partition(task))
                say(f"partition {task['partition']}: {reports[-1]['rows']} codes written")
        finally:
            _WORKER_MODELS.clear()       # this process is not a worker: do not keep the model
        return reports
    try:
        from distributed import as_completed
    except ImportError:
        raise ImportError("extraction on a Dask cluster needs dask.distributed: pip install 'fastconv[dask]'") \
            from None
    futures = client.map(_extract_partition, tasks, pure=False)
    reports = []
    for future in as_completed(futures):
        report = future.result()      # a failed task re-raises its exception here, naming the file
        reports.append(report)
        say(f"partition {report['partition']}: {report['rows']} codes written")
    return reports


def load_features(out_dir):
    """(codes, files): every partition of an extraction concatenated in row order, and the relative file path
    of each row. A missing or invalid partition is a ValueError naming it (run the extraction again)."""
    out_dir = os.fspath(out_dir)
    with open(os.path.join(out_dir, _MANIFEST)) as f:
        manifest = json.load(f)
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{out_dir}: not a fastconv feature directory")
    with open(os.path.join(out_dir, _INDEX), newline="") as f:
        rows = list(csv.DictReader(f))
    counts = np.bincount([int(r["partition"]) for r in rows], minlength=manifest["num_partitions"])
    parts = []
    for p, n in enumerate(counts):
        path = os.path.join(out_dir, _partition_name(p))
        if _valid_partition(path, int(n)) is None:
            raise ValueError(f"{path} is missing or incomplete; run the extraction again to compute it")
        parts.append(np.load(path, allow_pickle=False))
    return np.concatenate(parts), [r["file"] for r in rows]
