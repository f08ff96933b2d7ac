"""fastconv.distributed: data-parallel training under `mpiexec -n K` on loopback, and feature extraction on a
local Dask cluster.

The MPI tests launch tests/_mpi_job.py with the mpiexec that sits next to this Python (the mpich wheel's) or on
PATH, and compare what the ranks wrote against references computed here in one process: fastconv.train.fit with
the same seed, and a plain loop that accumulates the pieces' gradients in rank order. Every subprocess is bounded
by a timeout. Skipped cleanly without mpi4py / mpiexec / dask.distributed.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import fastconv
from fastconv import nn, train

sys.path.insert(0, os.path.dirname(__file__))
import _mpi_job as J  # noqa: E402

from fastconv import distributed as D  # noqa: E402

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mpi_job.py")
# The folder the fastconv under test was imported from (the checkout for an in-place build, site-packages for an
# installed one): children import that same package, never an unbuilt source tree.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))


def _mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else shutil.which("mpiexec")


def _need_mpi():
    pytest.importorskip("mpi4py")
    if _mpiexec() is None:
        pytest.skip("no mpiexec (pip install 'fastconv[mpi]')")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _launch(ranks, args, timeout=90, launcher_options=()):
    """Run the job on `ranks` processes; returns (CompletedProcess, seconds)."""
    cmd = [_mpiexec(), *launcher_options, "-n", str(ranks), sys.executable, JOB, *args]
    start = time.monotonic()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir())
    return done, time.monotonic() - start


def _fit_job(ranks, cfg, **kw):
    done, seconds = _launch(ranks, ["fit", json.dumps({"ranks": ranks, **cfg})], **kw)
    return done, seconds


def _weights(prefix, rank=0):
    with np.load(f"{prefix}.rank{rank}.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def one_thread():
    previous = fastconv.set_num_threads(1)
    yield
    fastconv.set_num_threads(previous)


def _fit_reference(cfg, epochs):
    """One process, global batch, same seed: fastconv.train.fit."""
    net, loader, opt, sched = J.setup(cfg)
    history = train.fit(net, loader, J.validation(cfg), opt, epochs, scheduler=sched, progress=False, log=None,
                        batch_size=cfg.get("batch", 8))
    return net.state_dict(), history


def _accumulated_reference(cfg, epochs, ranks):
    """One process that, for every global batch, computes the K pieces' gradients one after the other (piece r:
    samples [r*m//K, (r+1)*m//K) of the batch the loader serves), weights piece r's by m_r/m and adds them up in
    rank order -- the additions a 2-rank Allreduce performs -- then steps."""
    net, loader, opt, sched = J.setup(cfg)
    net.need_input_grad = False
    dtype = net.children["c1"].params["weight"].dtype
    loss = nn.CrossEntropyLoss()
    params = [(m, k) for _, _, _, m, k in net.named_parameters()]
    for _ in range(epochs):
        for x, y in loader:
            x, m = x.astype(dtype), len(y)
            total = None
            for r in range(ranks):
                lo, hi = r * m // ranks, (r + 1) * m // ranks
                net.zero_grad()
                loss.forward(net.forward(x[lo:hi]), y[lo:hi])
                net.backward(loss.backward())
                piece = [mod.grads[k] * ((hi - lo) / m) for mod, k in params]
                total = piece if total is None else [t + p for t, p in zip(total, piece)]
            for (mod, k), g in zip(params, total):
                mod.grads[k][...] = g
            opt.step()
        sched.step()
    return net.state_dict()


# ================================================================================================ in-process units

@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_pieces_partition_every_global_batch(ranks):
    """The ranks' pieces, concatenated in rank order, are exactly the batches (augmented images included) that
    the DataLoader serves one process -- no overlap, nothing missing, the last partial batch too."""
    _, loader, _, _ = J.setup({"n": 45, "batch": 8})
    for epoch in range(2):
        expected = list(iter(loader))
        pieces = []
        for r in range(ranks):
            view = type(loader)(loader.dataset, loader.batch_size, shuffle=True, seed=loader.seed,
                                transform=loader.transform)
            view.epoch = epoch
            pieces.append(list(D._global_batches(view, r, ranks)))
            assert (view.epoch, view.batch) == (epoch + 1, 0)
        for b, (x, y) in enumerate(expected):
            got = [pieces[r][b] for r in range(ranks)]
            assert all(m == len(y) for _, _, m in got)
            np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), x)
            np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y)


def test_forward_to_matches_running_the_children():
    net = J.model("bn", np.float64)
    net.eval()
    x = np.random.default_rng(0).standard_normal((3, 1, 12, 12))
    expected = x
    for name, child in net.children.items():
        expected = child.forward(expected)
        if name == "p1":
            break
    np.testing.assert_array_equal(D.forward_to(net, x, "p1"), expected)
    np.testing.assert_array_equal(D.forward_to(net, x, None), net.forward(x))
    with pytest.raises(ValueError, match="no module 'nope'"):
        D.forward_to(net, x, "nope")
    with pytest.raises(ValueError, match="not a Sequential"):
        D._check_layer(net, "c1.weight")


def test_dropout_streams_differ_by_rank_and_repeat_by_epoch():
    """Rank 0 keeps the model's generators; rank r > 0 gets generators keyed by (seed, epoch, r): different
    masks on different ranks, the same masks whenever the same epoch is run again (an exact resume)."""
    def draws(rank, epoch):
        net = nn.Sequential(a=nn.Dropout(0.5, rng=7), b=nn.Dropout(0.5, rng=8))
        original = net.children["a"].rng
        D._reseed_dropout(net, 11, epoch, rank)
        assert (net.children["a"].rng is original) == (rank == 0)
        return [m.rng.random(4).tolist() for m in net.children.values()]
    assert draws(1, 3) == draws(1, 3)
    assert draws(1, 3) != draws(2, 3) and draws(1, 3) != draws(1, 4) and draws(0, 3) != draws(1, 3)
    a, b = draws(1, 3)
    assert a != b                                                   # modules get independent streams


class _OneRank(D.Communicator):
    """A communicator of one rank, without MPI (the collectives are identities)."""

    def __init__(self):
        self.rank, self.size, self.local_size, self.timeout = 0, 1, 1, 1.0

    def allreduce_(self, buffer, what=""):
        return buffer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_batchnorm_on_one_rank_is_batchnorm(dtype):
    """With one rank the synchronized statistics are the batch's: output, running statistics and all three
    gradients equal nn.BatchNorm2d's (fastconv.functional.batch_norm)."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 3, 5, 5)) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    plain, sync_src = nn.BatchNorm2d(3, dtype=dtype), nn.BatchNorm2d(3, dtype=dtype)
    for bn in (plain, sync_src):
        bn.params["weight"][...] = [0.5, 1.5, -1.0]
        bn.params["bias"][...] = [0.1, -0.2, 0.3]
    parent = nn.Sequential(bn=sync_src)
    assert D.convert_sync_batchnorm(parent, _OneRank()) == 1
    sync = parent.children["bn"]
    assert isinstance(sync, D.SyncBatchNorm2d) and sync.params["weight"] is sync_src.params["weight"]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sync.forward(x), plain.forward(x), **tol)
    np.testing.assert_allclose(sync.backward(dy), plain.backward(dy), **tol)
    for k in ("weight", "bias"):
        np.testing.assert_allclose(sync.grads[k], plain.grads[k], **tol)
    for k in ("running_mean", "running_var"):
        np.testing.assert_allclose(sync.buffers[k], plain.buffers[k], **tol)
    D.revert_sync_batchnorm(parent)
    assert type(parent.children["bn"]) is nn.BatchNorm2d
    assert parent.children["bn"].buffers["running_mean"] is sync_src.buffers["running_mean"]


# ================================================================================================ MPI: exactness

@pytest.mark.parametrize("dtype, tol", [("float64", dict(rtol=1e-12, atol=1e-13)),
                                        ("float32", dict(rtol=1e-5, atol=1e-6))])
def test_two_ranks_give_the_weights_of_one_process(tmp_path, one_thread, dtype, tol):
    """2 ranks x pieces of 4 (and of 2 + 3 for the last batch of 5) == 1 process x batch 8, with augmentation,
    momentum, weight decay and a schedule: bit-exact against the rank-order accumulation, equal to train.fit up
    to rounding, and the two ranks hold bit-identical weights."""
    _need_mpi()
    cfg, epochs = {"n": 45, "batch": 8, "epochs": 2, "dtype": dtype}, 2
    done, _ = _fit_job(2, {**cfg, "out": str(tmp_path / "w")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("epoch 1/2") == 1, done.stdout          # rank 0 alone logs
    rank0, rank1 = _weights(tmp_path / "w", 0), _weights(tmp_path / "w", 1)
    accumulated = _accumulated_reference(cfg, epochs, ranks=2)
    single, history = _fit_reference(cfg, epochs)
    for k in single:
        np.testing.assert_array_equal(rank0[k], rank1[k], err_msg=k)
        np.testing.assert_array_equal(rank0[k], accumulated[k], err_msg=k)
        np.testing.assert_allclose(rank0[k], single[k], err_msg=k, **tol)
        assert not np.allclose(single[k], J.model().state_dict()[k])       # it did train
    with open(tmp_path / "w.history.json") as f:
        logged = json.load(f)
    np.testing.assert_allclose([r["train_loss"] for r in logged], history.column("train_loss"), **tol)
    assert [r["train_acc"] for r in logged] == history.column("train_acc")


def test_local_batchnorm_two_ranks_stay_identical(tmp_path, one_thread):
    """By default BatchNorm uses each rank's own piece: the result is not one process's, but the ranks still
    hold bit-identical weights and (averaged at the end of each epoch) running statistics."""
    _need_mpi()
    cfg = {"model": "bn", "n": 48, "batch": 8, "epochs": 1}
    done, _ = _fit_job(2, {**cfg, "out": str(tmp_path / "w")})
    assert done.returncode == 0, done.stderr
    rank0, rank1 = _weights(tmp_path / "w", 0), _weights(tmp_path / "w", 1)
    single, _ = _fit_reference(cfg, 1)
    for k in single:
        np.testing.assert_array_equal(rank0[k], rank1[k], err_msg=k)
    assert not np.allclose(rank0["bn.running_var"], single["bn.running_var"], rtol=1e-6)


def test_sync_batchnorm_two_ranks_match_one_process(tmp_path, one_thread):
    """With --sync-batchnorm, 2 ranks normalize with the global batch's statistics: the weights and running
    statistics of one process with the whole batch (float64, up to rounding); the sharded validation (13 samples,
    batches of 8 and 5 split over the ranks) gives one process's validation loss and accuracy."""
    _need_mpi()
    cfg, epochs = {"model": "bn", "n": 48, "batch": 8, "epochs": 2, "sync_bn": True, "val": 13}, 2
    done, _ = _fit_job(2, {**cfg, "out": str(tmp_path / "w")})
    assert done.returncode == 0, done.stderr
    rank0, rank1 = _weights(tmp_path / "w", 0), _weights(tmp_path / "w", 1)
    single, history = _fit_reference(cfg, epochs)
    assert set(rank0) == set(single) and "bn.running_var" in single
    for k in single:
        np.testing.assert_array_equal(rank0[k], rank1[k], err_msg=k)
        np.testing.assert_allclose(rank0[k], single[k], rtol=1e-10, atol=1e-12, err_msg=k)
    with open(tmp_path / "w.history.json") as f:
        logged = json.load(f)
    np.testing.assert_allclose([r["val_loss"] for r in logged], history.column("val_loss"), rtol=1e-10)
    assert [r["val_acc"] for r in logged] == history.column("val_acc")
    assert all(0 < r["val_loss"] < 10 for r in logged)


# ================================================================================================ MPI: faults

def test_dead_rank_stops_the_job_then_resume_on_one_rank(tmp_path, one_thread):
    """Rank 1 dies (os._exit) in epoch 2: rank 0 stops with a clear message within the deadline (MPICH signals
    the survivors under -disable-auto-cleanup). The epoch-1 checkpoint resumes on ONE rank to the weights of an
    uninterrupted single-process run; the same checkpoint resumed by train.fit gives bit-identical weights."""
    _need_mpi()
    ckpt = tmp_path / "ckpt"
    cfg, epochs = {"n": 45, "batch": 8, "epochs": 3, "checkpoint_dir": str(ckpt)}, 3
    clear = ("another process of the job died", "did not complete within")
    for attempt in range(3):
        # MPICH's launcher now and then ends the survivor itself before its SIGUSR1 notice is handled (seen once
        # in five clean-clone runs): the job still stops, without our message. Retries keep the test about
        # the message while tolerating that race; a survivor that never explains itself fails every attempt.
        shutil.rmtree(ckpt, ignore_errors=True)
        done, seconds = _fit_job(2, {**cfg, "out": str(tmp_path / "a"), "fault_rank": 1, "fault_step": 9,
                                     "fault": "exit", "timeout": 20.0}, launcher_options=["-disable-auto-cleanup"])
        assert done.returncode != 0
        assert seconds < 60
        if any(m in done.stderr for m in clear):
            break
    assert any(m in done.stderr for m in clear), done.stderr
    assert train.load_checkpoint(ckpt / train.CHECKPOINT_NAME)["epoch"] == 1
    shutil.copytree(ckpt, tmp_path / "copy")

    done, _ = _fit_job(1, {**cfg, "out": str(tmp_path / "b"), "resume": True})
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "(epoch 1) on 1 rank(s)" in done.stdout
    resumed = _weights(tmp_path / "b")
    with open(tmp_path / "b.history.json") as f:
        assert [r["epoch"] for r in json.load(f)] == [1, 2, 3]

    net, loader, opt, sched = J.setup(cfg)
    train.fit(net, loader, None, opt, epochs, scheduler=sched, checkpoint_dir=tmp_path / "copy", resume=True,
              progress=False, log=None)
    single, _ = _fit_reference(cfg, epochs)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(resumed[k], v, err_msg=k)
        np.testing.assert_allclose(resumed[k], single[k], rtol=1e-12, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("fault, message", [
    ("hang", "rank 0/2: the gradient Allreduce of step 3 did not complete within 2 s"),
    ("raise", "rank 1/2: RuntimeError: injected failure; aborting the job"),
])
def test_hung_or_failing_rank_ends_the_job(tmp_path, fault, message):
    """A rank that hangs inside a step (alive, never joins the Allreduce) is not waited for forever: rank 0
    reports the operation that timed out and aborts the job. A rank whose step raises reports it and aborts the
    job rather than leaving the others waiting."""
    _need_mpi()
    done, seconds = _fit_job(2, {"epochs": 1, "out": str(tmp_path / "h"), "fault_rank": 1, "fault_step": 3,
                                 "fault": fault, "timeout": 2.0}, timeout=60)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert seconds < 45


# ================================================================================================ MPI: command line

def test_cli_train_distributed_two_ranks(tmp_path):
    """`fastconv train lenet5 --distributed` (wired as cli.main will) on 2 ranks: one log, one saved model that
    loads, the checkpoint of the last epoch."""
    _need_mpi()
    pytest.importorskip("sklearn")
    out = tmp_path / "lenet.safetensors"
    done, _ = _launch(2, ["cli", "train", "lenet5", "--distributed", "--epochs", "1", "--no-progress", "-o",
                          str(out), "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("training lenet5") == 1 and "on 2 MPI rank(s) x 1 thread(s)" in done.stdout
    assert done.stdout.count("held-out test accuracy") == 1
    model = fastconv.load(out)
    assert model.metadata["ranks"] == "2"
    assert train.load_checkpoint(tmp_path / "ck" / train.CHECKPOINT_NAME)["epoch"] == 1


# ================================================================================================ Dask

def _image_tree(root, rng):
    from PIL import Image
    for cls, count in (("cats", 7), ("dogs", 6)):
        os.makedirs(root / cls)
        for i in range(count):
            h, w = (32, 32) if i % 3 else (40, 36)        # some need resizing
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(root / cls / f"img{i:02d}.png")
    (root / "cats" / "notes.txt").write_text("not an image")
    return [f"{cls}/img{i:02d}.png" for cls, count in (("cats", 7), ("dogs", 6)) for i in range(count)]


def _serial_codes(model_path, folder, files):
    """Plain extraction: each image alone, through the children of `features` up to s4."""
    from fastconv.data import read_image
    model = fastconv.load(model_path)
    codes = []
    for f in files:
        x = read_image(os.path.join(folder, f), 32, channels=1)[None]
        for name, child in model.children["features"].children.items():
            x = child.forward(x)
            if name == "s4":
                break
        codes.append(x[0])
    return np.stack(codes)


@pytest.fixture
def feature_job(tmp_path):
    pytest.importorskip("PIL")
    from fastconv import models
    files = _image_tree(tmp_path / "images", np.random.default_rng(0))
    model_path = tmp_path / "lenet.safetensors"
    fastconv.save(models.get_model("lenet5", seed=3), model_path)
    return model_path, tmp_path / "images", files, _serial_codes(model_path, tmp_path / "images", files)


def test_extract_features_serially_without_a_client(feature_job, tmp_path):
    model_path, images, files, expected = feature_job
    out = tmp_path / "codes"
    result = D.extract_features_dask(model_path, images, "features.s4", out, partition_size=5, log=None)
    assert (result["partitions"], result["computed"], result["feature_shape"]) == (3, [0, 1, 2], (16, 5, 5))
    codes, listed = D.load_features(out)
    assert listed == files
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="different job"):
        D.extract_features_dask(model_path, images, "features.c3", out, partition_size=5, log=None)
    with pytest.raises(ValueError, match="no module 'c9'"):
        D.extract_features_dask(model_path, images, "features.c9", out, log=None)


def test_extract_features_on_a_local_dask_cluster_and_restart(feature_job, tmp_path, monkeypatch):
    """2 worker processes on loopback: the codes of a plain serial extraction, one model load per worker; a
    rerun after deleting one partition and corrupting another recomputes exactly those two."""
    distributed = pytest.importorskip("distributed")
    import logging
    model_path, images, files, expected = feature_job
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    out = tmp_path / "codes"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as client:
        first = D.extract_features_dask(model_path, images, "features.s4", out, partition_size=3, client=client,
                                        batch_size=2, log=None)
        assert first["computed"] == [0, 1, 2, 3, 4] and first["skipped"] == []
        loads = {}
        for report in first["reports"]:
            loads[report["pid"]] = max(loads.get(report["pid"], 0), report["model_loads"])
        assert set(loads.values()) == {1}                 # each worker loaded the model once
        codes, listed = D.load_features(out)
        assert listed == files and codes.shape == (13, 16, 5, 5)
        np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-6)

        os.unlink(out / "part-00002.npy")
        (out / "part-00004.npy").write_bytes(b"\x93NUMPY truncated")
        with pytest.raises(ValueError, match="part-00002.npy is missing"):
            D.load_features(out)
        again = D.extract_features_dask(model_path, images, "features.s4", out, partition_size=3, client=client,
                                        log=None)
        assert again["computed"] == [2, 4] and again["skipped"] == [0, 1, 3]
        np.testing.assert_array_equal(D.load_features(out)[0], codes)
    with open(out / "index.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == "row,partition,part_row,file,class" and lines[8] == "7,2,1,dogs/img00.png,dogs"
