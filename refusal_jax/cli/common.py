"""Flags the commands and experiment scripts share, and the objects they build from them.

With no subject flags a command runs on the embedded organism; with ``--model-dir``,
``--sae-dir`` and ``--data-dir`` on a real (converted or Hugging Face) model, its SAEs and the
refusal_direction data (:func:`subject_from_args`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp

from ports.registry import NotCachedError
from refusal_jax.method.judges import PROMPTS, ClassifierJudge
from refusal_jax.study.runs import new_run_folder
from refusal_jax.study.subject import Subject, load_classifier, load_subject


def add_subject_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-dir",
        "--model",
        dest="model_dir",
        help="converted (python -m ports.hf) or HF model folder, or a hub id in the local HF cache",
    )
    p.add_argument(
        "--sae-dir",
        help="per-layer SAE folder (GemmaScope tree, Gemma Scope 2, SAELens, ...) or a release "
        "name in the local HF cache (gemma-scope-2b-pt-res, gemma-scope-2-1b-it, ...)",
    )
    p.add_argument("--sae-width", help="GemmaScope width folder, e.g. 65k (auto if only one)")
    p.add_argument("--target-l0", type=float, default=100.0)
    p.add_argument("--data-dir", help="refusal_direction data (or $REFUSAL_JAX_DATA)")
    p.add_argument(
        "--skip-positions",
        type=int,
        default=None,
        help="positions after padding excluded from attribution (default 1: BOS)",
    )


def subject_from_args(args: argparse.Namespace, **kwargs) -> Subject:
    """:func:`refusal_jax.study.subject.load_subject` of the subject flags (``kwargs``: its
    keyword arguments, e.g. ``mesh``, ``dtype``, ``with_saes``)."""
    if args.model_dir and not args.sae_dir and kwargs.get("with_saes", True):
        raise SystemExit("--model-dir needs --sae-dir (SAEs for that model)")
    try:
        return load_subject(
            args.model_dir,
            args.sae_dir,
            sae_width=args.sae_width,
            target_l0=args.target_l0,
            data_dir=args.data_dir,
            skip_positions=args.skip_positions,
            **kwargs,
        )
    except NotCachedError as e:  # a hub id / release not downloaded: say what to download
        raise SystemExit(str(e)) from None


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument(
        "--resume", default=None, help="an existing run folder: reuse its cached results"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run_folder(args: argparse.Namespace, name: str) -> Path:
    """``--resume DIR`` if given (must exist), else a new ``<out>/<name>-seed<seed>-<time>``."""
    if getattr(args, "resume", None):
        folder = Path(args.resume)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume {folder}: no such run folder")
        return folder
    return new_run_folder(args.out, name, args.seed)


def add_classifier_arguments(p: argparse.ArgumentParser) -> None:
    """The classifier-judge flags of the experiment scripts (``--classifier-dir`` and its prompt
    and dtype); :func:`classifier_from_args` builds the judge from them."""
    p.add_argument("--classifier-dir", help="HF causal-LM classifier (HarmBench prompt)")
    p.add_argument("--classifier-prompt", choices=sorted(PROMPTS), default="harmbench")
    p.add_argument("--classifier-dtype", choices=("float32", "bfloat16"), default="bfloat16")


def classifier_from_args(args: argparse.Namespace) -> ClassifierJudge | None:
    """The :class:`ClassifierJudge` of ``--classifier-dir`` (None without one)."""
    if not args.classifier_dir:
        return None
    return load_classifier(
        args.classifier_dir,
        dtype=getattr(jnp, args.classifier_dtype),
        template=PROMPTS[args.classifier_prompt],
    )


def add_refusal_features_argument(p: argparse.ArgumentParser) -> None:
    """``--refusal-features`` of the experiment scripts (see
    :func:`refusal_jax.study.jailbreaks.refusal_features`)."""
    p.add_argument(
        "--refusal-features",
        default="ours",
        help="'ours' (F* of the training prompts) or a JSON file: categories.py's results.json "
        "(common features) or [[layer, feature], ...]",
    )


__all__ = [
    "add_classifier_arguments",
    "add_refusal_features_argument",
    "add_run_arguments",
    "add_subject_arguments",
    "classifier_from_args",
    "run_folder",
    "subject_from_args",
]
