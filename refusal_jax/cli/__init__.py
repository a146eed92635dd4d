"""Command-line entry point: ``refusal-jax <command> ...`` (also ``python -m refusal_jax.cli``).

Commands: ``demo`` (the main job), ``sweep`` (resumable LA-IG / generation sweeps),
``train-sae``, ``convert-sae`` and ``report`` (rebuild a run folder's report.html). Every
parser lives in this package; the library below it takes plain arguments.
"""

from __future__ import annotations

import argparse

from refusal_jax.cli.demo import add_demo_arguments, cmd_demo
from refusal_jax.cli.report import add_report_arguments, cmd_report
from refusal_jax.cli.sae import add_sae_commands
from refusal_jax.cli.sweep import add_sweep_arguments, cmd_sweep
from refusal_jax.core.errors import ArgumentParser, run_cli


def _cmd_sweep(args: argparse.Namespace) -> int:
    cmd_sweep(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="refusal-jax", description="refusal_jax command line")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the main job (the paper's pipeline) end to end")
    add_demo_arguments(d)
    d.set_defaults(func=cmd_demo)
    s = sub.add_parser(
        "sweep", help="resumable LA-IG / generation sweep over a prompt set, on all devices"
    )
    add_sweep_arguments(s)
    s.set_defaults(func=_cmd_sweep)
    add_sae_commands(sub)
    r = sub.add_parser(
        "report", help="rebuild a run folder's report.html (and add feature dashboards)"
    )
    add_report_arguments(r)
    r.set_defaults(func=cmd_report)
    return p


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    """``refusal-jax ...``: a user error prints one line ``error: ...`` and returns 2 (the
    traceback with ``--debug`` or ``REFUSAL_JAX_DEBUG=1``; :func:`refusal_jax.core.errors.run_cli`).
    """
    return run_cli(_run, argv)


__all__ = ["build_parser", "main"]
