"""Jobs that tests/test_distributed.py runs under ``mpiexec -n K``, and the data and models they share with the
single-process references computed inside pytest.

    mpiexec -n 2 python tests/_mpi_job.py fit '{"out": "...", "epochs": 2, ...}'
    mpiexec -n 2 python tests/_mpi_job.py cli train lenet5 --distributed ...
"""
import json
import os
import sys
import time

import numpy as np

from fastconv import data, nn, optim


def dataset(n=45, seed=3):
    """A learnable 10-class problem on 1x12x12 images: the label is the argmax of a fixed linear map."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    w = rng.standard_normal((10, 144))
    y = np.argmax(x.reshape(n, -1) @ w.T, axis=1).astype(np.int64)
    return data.ArrayDataset(x, y, num_classes=10)


def model(kind="cnn", dtype=np.float64, seed=0):
    """cnn: no BatchNorm (the exactness tests); bn: one BatchNorm2d."""
    rng = np.random.default_rng(seed)
    if kind == "cnn":
        net = nn.Sequential(
            c1=nn.Conv2d(1, 4, 3, padding=1, rng=rng, dtype=dtype), r1=nn.ReLU(), p1=nn.MaxPool2d(2),
            c2=nn.Conv2d(4, 8, 3, rng=rng, dtype=dtype), r2=nn.ReLU(), flat=nn.Flatten(),
            fc=nn.Linear(8 * 4 * 4, 10, rng=rng, dtype=dtype))
    else:
        net = nn.Sequential(
            c1=nn.Conv2d(1, 6, 3, padding=1, bias=False, rng=rng, dtype=dtype), bn=nn.BatchNorm2d(6, dtype=dtype),
            r1=nn.ReLU(), p1=nn.MaxPool2d(2), flat=nn.Flatten(), fc=nn.Linear(6 * 6 * 6, 10, rng=rng, dtype=dtype))
    return net


def setup(cfg):
    """(model, loader, optimizer, scheduler) of a job configuration, identical on every rank and in pytest."""
    dtype = np.dtype(cfg.get("dtype", "float64"))
    net = model(cfg.get("model", "cnn"), dtype)
    transform = data.RandomCrop(12, padding=1) if cfg.get("shift", True) else None
    loader = data.DataLoader(dataset(cfg.get("n", 45)), cfg.get("batch", 8), shuffle=True, seed=cfg.get("seed", 5),
                             transform=transform)
    opt = optim.SGD(net, lr=0.05, momentum=0.9, weight_decay=1e-3)
    return net, loader, opt, optim.StepLR(opt, 2, 0.5)


def validation(cfg):
    """A held-out set (cfg["val"]: its size; None without validation)."""
    return None if not cfg.get("val") else dataset(cfg["val"], seed=9)


class DyingLoss(nn.CrossEntropyLoss):
    """Cross-entropy that kills this process (how="exit"), hangs it ("hang") or raises ("raise") at its `at`-th
    call."""

    def __init__(self, at, how):
        self.calls, self.at, self.how = 0, at, how

    def forward(self, logits, labels):
        self.calls += 1
        if self.calls == self.at:
            if self.how == "hang":
                time.sleep(120)
            if self.how == "raise":
                raise RuntimeError("injected failure")
            os._exit(3)
        return super().forward(logits, labels)


def run_fit(cfg):
    from mpi4py import MPI

    import fastconv
    from fastconv import distributed
    comm = MPI.COMM_WORLD
    if comm.size != cfg["ranks"]:
        sys.exit(f"expected {cfg['ranks']} MPI ranks, got {comm.size}: mpiexec and mpi4py use different MPIs?")
    fastconv.set_num_threads(1)
    net, loader, opt, sched = setup(cfg)
    loss = None
    if comm.rank == cfg.get("fault_rank", -1):
        loss = DyingLoss(cfg["fault_step"], cfg["fault"])
    history = distributed.fit(net, loader, validation(cfg), opt, cfg["epochs"], loss=loss, scheduler=sched,
                              checkpoint_dir=cfg.get("checkpoint_dir"), resume=cfg.get("resume", False),
                              progress=False, comm=comm, timeout=cfg.get("timeout", 60.0),
                              sync_batchnorm=cfg.get("sync_bn", False))
    state = net.state_dict()
    np.savez(f"{cfg['out']}.rank{comm.rank}.npz", **state)
    if comm.rank == 0:
        with open(f"{cfg['out']}.history.json", "w") as f:
            json.dump(list(history), f)


def run_cli(argv):
    import argparse

    from mpi4py import MPI  # noqa: F401  (initialize MPI before the engine starts threads)

    from fastconv import cli
    parser = argparse.ArgumentParser(prog="fastconv")
    sub = parser.add_subparsers(dest="command")
    cli._add_train_parsers(sub)                     # the train parser of cli.main, --distributed included
    train_parser = sub.choices["train"]
    args = parser.parse_args(argv)
    assert args.distributed
    return cli._train(args, train_parser)


if __name__ == "__main__":
    if sys.argv[1] == "fit":
        run_fit(json.loads(sys.argv[2]))
    else:
        sys.exit(run_cli(sys.argv[2:]))
