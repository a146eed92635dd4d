"""What every checkpoint converter's ``main`` (``python -m ports.hf``, ``python -m ports.gguf``)
shares: the flags (a source, ``--out``, ``--dtype``) and saving with a one-line summary."""

from __future__ import annotations

import argparse
import math

import jax

from refusal_jax.core.checkpoint import save_model
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.errors import ArgumentParser
from refusal_jax.core.io import check_separate


def converter_args(doc: str, source_flag: str, source_help: str, argv=None) -> argparse.Namespace:
    """Parse ``source_flag`` (required), ``--out`` and ``--dtype`` (float32 or bfloat16); an
    ``--out`` equal to, inside or containing the source is a usage error naming both flags."""
    p = ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(source_flag, required=True, help=source_help)
    p.add_argument("--out", required=True, help="output folder for the converted checkpoint")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)
    check_separate(
        args.out, getattr(args, source_flag.lstrip("-").replace("-", "_")), "--out", source_flag
    )
    return args


def save_converted(args: argparse.Namespace, cfg: ModelConfig, params: dict, **save_kw) -> None:
    """:func:`save_model` to ``args.out`` and print what was converted (family, size, dtype)."""
    save_model(args.out, cfg, params, **save_kw)
    n = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(params))
    print(f"converted {cfg.family} ({n / 1e6:.1f}M parameters, {args.dtype}) -> {args.out}")
