"""`fastconv bench ...`: the whole-network benchmark (bench/bench_networks.py) from the command line.

The benchmark scripts live in the source checkout's bench/ directory, which is not installed with the package
(they need torch, onnxruntime and a C compiler for the peak probe, none of which fastconv itself requires).
So the command looks for bench/bench_networks.py, in this order:
  1. the directory named by the environment variable FASTCONV_BENCH_DIR
  2. bench/ beside the fastconv package (a source checkout, built in place or installed editable)
  3. bench/ in the current directory
and runs its main() in this process with every argument after `bench`. Without a checkout it says so and exits
with status 2. `fastconv bench --help` shows the benchmark's own options.
"""
import os
import sys

SCRIPT = "bench_networks.py"


def add_parser(subparsers):
    """Register `bench` on the fastconv command's subparsers; every following argument goes to the script."""
    # prefix_chars no option starts with: argparse then hands "--quick", "--help", ... through untouched
    p = subparsers.add_parser(
        "bench", add_help=False, prefix_chars="\x00",
        help="whole-network benchmark vs PyTorch and onnxruntime (needs a source checkout)",
        description="Run bench/bench_networks.py of a fastconv source checkout; `fastconv bench --help` lists "
                    "its options.")
    p.add_argument("bench_args", nargs="*", help="arguments for bench/bench_networks.py")
    return p


def find_bench_dir(package_dir=None, cwd=None):
    """The directory holding bench_networks.py, or None (see the module docstring for where it looks).
    `package_dir` and `cwd` default to this package's directory and the current directory."""
    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("FASTCONV_BENCH_DIR"), os.path.join(os.path.dirname(package_dir), "bench"),
                  os.path.join(cwd or os.getcwd(), "bench")]
    for d in candidates:
        if d and os.path.isfile(os.path.join(d, SCRIPT)):
            return os.path.abspath(d)
    return None


def run(args):
    """Run the benchmark with args.bench_args; returns its exit status (2 when there is no checkout)."""
    bench_dir = find_bench_dir()
    if bench_dir is None:
        print("fastconv bench needs a fastconv source checkout: the benchmark scripts (bench/) are not installed "
              "with the package. Run it from a checkout (`python bench/bench_networks.py ...` or `fastconv "
              "bench ...` inside it), or point FASTCONV_BENCH_DIR at the checkout's bench/ directory.",
              file=sys.stderr)
        return 2
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)  # the scripts import their neighbours (_common, torch_models, report)
    import bench_networks
    argv = list(args.bench_args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    try:
        return bench_networks.main(argv, prog="fastconv bench")
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
