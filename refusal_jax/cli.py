"""Command-line entry point: ``refusal-jax <command> ...``."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    from refusal_jax.demo import run_demo

    run_demo(args)
    return 0


def _cmd_sweep(args) -> int:
    from refusal_jax.sweep import run_cli

    run_cli(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refusal-jax", description="refusal_jax command line")
    sub = p.add_subparsers(dest="command", required=True)
    from refusal_jax.demo import add_demo_arguments

    d = sub.add_parser("demo", help="run the main job (the paper's pipeline) end to end")
    add_demo_arguments(d)
    d.set_defaults(func=_cmd_demo)
    from refusal_jax.sweep import add_sweep_arguments

    s = sub.add_parser(
        "sweep", help="resumable LA-IG / generation sweep over a prompt set, on all devices"
    )
    add_sweep_arguments(s)
    s.set_defaults(func=_cmd_sweep)
    from refusal_jax.sae_cli import add_sae_commands

    add_sae_commands(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
