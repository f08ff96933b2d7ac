"""The `fastconv` command line."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastconv", description="fastconv: a fast CPU engine for ConvNets")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="version, kernels available and chosen, CPU features, OpenMP, threads")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "info":
        from . import show_config
        show_config()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
