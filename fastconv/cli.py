"""The `fastconv` command line."""
import argparse
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


if __name__ == "__main__":
    sys.exit(main())
