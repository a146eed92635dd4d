"""Command-line entry point: ``refusal-jax <command> ...``."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    from refusal_jax.demo import run_demo

    run_demo(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refusal-jax", description="refusal_jax command line")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the main job (the paper's pipeline) end to end")
    d.add_argument("--model-dir", default=None, help="converted or HF model folder")
    d.add_argument("--out", default="runs", help="parent folder for the run folder")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
