"""Flags the commands and experiment scripts share, and the objects they build from them.

With no subject flags a command runs on the embedded organism; with ``--model-dir``,
``--sae-dir`` and ``--data-dir`` on a real (converted or Hugging Face) model, its SAEs and the
refusal_direction data (:func:`subject_from_args`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import jax.numpy as jnp

from ports.registry import NotCachedError
from refusal_jax.core.errors import UsageError
from refusal_jax.core.identity import Identity, IdentityMismatch, describe_input
from refusal_jax.method.judges import PROMPTS, ClassifierJudge
from refusal_jax.method.laig import ALPHA_RULES, alpha_schedule
from refusal_jax.study.runs import Cache, open_run
from refusal_jax.study.subject import Subject, load_classifier, load_subject


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def number_list(kind):
    """An argparse ``type`` for comma-separated numbers (``"0,-0.5,-1"``): a malformed, empty or
    non-finite entry is a usage error naming the value."""

    def parse(text: str) -> tuple:
        try:
            out = tuple(kind(t) for t in text.split(",") if t.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(  # noqa: B904 (argparse shows only the message)
                f"not a comma-separated list of {kind.__name__}: {text!r}"
            )
        if not out or not all(math.isfinite(x) for x in out):
            raise argparse.ArgumentTypeError(f"need finite {kind.__name__} values: {text!r}")
        return out

    parse.__name__ = f"{kind.__name__} list"
    return parse


# Count flags that must be >= 1 when given (argparse dest names).
POSITIVE = (
    "n_steps", "max_new_tokens", "n_train", "n_test", "n_val", "n_prompts", "n_features",
    "n_candidates", "shard_size", "direction_prompts", "n_pairs", "n_random", "n_tokens",
    "n_suffix_prompts", "top_k", "alpha_batch", "model_parallel", "d_sae", "steps",
    "batch_size", "seqs_per_step", "eval_seqs", "checkpoint_every", "gcg_steps",
    "gcg_candidates", "gcg_train", "k",
)  # fmt: skip
NON_NEGATIVE = ("skip_positions", "trim_padding", "seed", "dead_steps", "lr_warmup")


def check_args(args: argparse.Namespace, subject: Subject | None = None) -> None:
    """Validate flags before any compute: finite floats, positive counts and, with the loaded
    ``subject``, ``--best-layer`` within the model's layers and ``--n-candidates`` /
    ``--candidates`` / ``--n-features`` within the SAE width. Raises :class:`UsageError` naming
    the flag."""
    for name, v in vars(args).items():
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{_flag(name)} must be a finite number, got {v}")
        if isinstance(v, int) and not isinstance(v, bool):
            if name in POSITIVE and v < 1:
                raise UsageError(f"{_flag(name)} must be >= 1, got {v}")
            if name in NON_NEGATIVE and v < 0:
                raise UsageError(f"{_flag(name)} must be >= 0, got {v}")
    if hasattr(args, "alpha_rule"):  # add_laig_arguments: n_steps >= 1 was checked above
        try:
            alpha_schedule(args.n_steps, args.alpha_rule)
        except ValueError as e:
            raise UsageError(
                f"--alpha-rule {args.alpha_rule} --n-steps {args.n_steps}: {e}"
            ) from None
    if subject is None:
        return
    n_layers = subject.cfg.n_layers
    best = getattr(args, "best_layer", None)
    if best is not None and not 0 <= best < n_layers:
        raise UsageError(
            f"--best-layer {best} is out of range: the model has layers 0..{n_layers - 1}"
        )
    if subject.saes is not None:
        width = int(subject.saes.W_dec.shape[-2])
        # a script whose flag of that name is not about SAE features sets sae_width_flags
        for name in getattr(args, "sae_width_flags", ("n_candidates", "n_features", "candidates")):
            v = getattr(args, name, None)
            for k in v if isinstance(v, tuple) else () if v is None else (v,):
                if not 1 <= int(k) <= width:
                    raise UsageError(
                        f"{_flag(name)} {k} must be between 1 and the SAE width {width}"
                    )


def add_laig_arguments(p: argparse.ArgumentParser, steps_help: str = "LA-IG alpha steps") -> None:
    """``--n-steps`` and ``--alpha-rule``: the LA-IG quadrature over alpha
    (:func:`refusal_jax.method.laig.alpha_schedule`)."""
    p.add_argument("--n-steps", type=int, default=10, help=steps_help)
    p.add_argument(
        "--alpha-rule",
        default="left",
        choices=ALPHA_RULES,
        help="LA-IG quadrature over alpha (default left, the paper's; radau with --n-steps 2 "
        "costs about a third of left's 10 at a similar F* overlap: see la_ig's alpha_rule)",
    )


def _skip_positions(text: str) -> int | str:
    if text == "content":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'content', got {text!r}") from None


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
        "--sae-layers",
        type=number_list(int),
        default=None,
        help="use SAEs at these layers only (comma-separated); by default every layer needs one",
    )
    p.add_argument(
        "--skip-positions",
        type=_skip_positions,
        default=None,
        help="positions left out of the LA-IG mean and the act baseline: an int n (the first n "
        "tokens) or 'content' (special tokens and the chat template's constant prefix); "
        "default 'content' with --model-dir, 1 (BOS) on the organism",
    )


def subject_from_args(args: argparse.Namespace, **kwargs) -> Subject:
    """:func:`refusal_jax.study.subject.load_subject` of the subject flags (``kwargs``: its
    keyword arguments, e.g. ``mesh``, ``dtype``, ``with_saes``), after :func:`check_args` of every
    flag (before loading: syntax and ranges; after: against the model and SAEs)."""
    check_args(args)
    if args.model_dir and not args.sae_dir and kwargs.get("with_saes", True):
        raise UsageError("--model-dir needs --sae-dir (SAEs for that model)")
    if not args.model_dir:
        for name in ("data_dir", "eval_set"):
            if getattr(args, name, None) is not None:
                raise UsageError(
                    f"{_flag(name)} applies to a real model (--model-dir); the organism uses "
                    "its own corpus"
                )
    try:
        subject = load_subject(
            args.model_dir,
            args.sae_dir,
            sae_width=args.sae_width,
            target_l0=args.target_l0,
            data_dir=args.data_dir,
            skip_positions=args.skip_positions,
            sae_layers=args.sae_layers,
            **kwargs,
        )
    except NotCachedError as e:  # a hub id / release not downloaded: say what to download
        raise UsageError(str(e)) from None
    check_args(args, subject)
    return subject


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs", help="parent folder of the run folder")
    p.add_argument(
        "--resume", default=None, help="an existing run folder: reuse its cached results"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: a run folder made from other inputs is rebound and everything "
        "recomputed (default: refused, naming what differs)",
    )


# Flags that do not change results (where results go, progress), the classifier judge's flags
# (its verdicts are cached under the classifier's content digest, see load_classifier, so a
# classifier can be added to a finished run) and flags whose *content* the identity records
# instead of their path (model, SAEs, data; other input files).
RUN_FLAGS = ("out", "resume", "quiet", "force", "debug", "func", "command")
CLASSIFIER_FLAGS = ("classifier_dir", "classifier_prompt", "classifier_dtype")
SUBJECT_PATH_FLAGS = ("model_dir", "sae_dir", "data_dir")
INPUT_FLAGS = (
    "refusal_features",
    "wildjailbreak",
    "jailbreak_file",
    "suffix_csv",
    "gcg_results",
    "text_file",
    "categories_file",
)


def run_identity(args: argparse.Namespace, subject: Subject, exclude=()) -> Identity:
    """The :class:`Identity` of a script's results: the subject's model, SAEs and data by
    content, every other flag as a setting (``exclude``: flags that do not change any cached
    result, e.g. a selection rule applied to cached responses), and the content of input files
    given by :data:`INPUT_FLAGS`. The classifier flags are left out: verdicts are cached under the
    classifier's content digest."""
    skip = {*RUN_FLAGS, *CLASSIFIER_FLAGS, *SUBJECT_PATH_FLAGS, *INPUT_FLAGS, *exclude}
    settings = {k: v for k, v in vars(args).items() if k not in skip and not callable(v)}
    inputs = {}
    for k in INPUT_FLAGS:
        v = getattr(args, k, None)
        if isinstance(v, str) and Path(v).exists():
            inputs[k] = describe_input(v)
        elif v is not None:
            settings[k] = v
    return subject.identity(settings, inputs)


def open_run_from_args(
    args: argparse.Namespace, name: str, subject: Subject, exclude=()
) -> tuple[Path, Cache]:
    """The run folder (``--resume DIR`` or a new one under ``--out``) bound to the script's
    :func:`run_identity`, and its :class:`~refusal_jax.study.runs.Cache`. Resuming a folder made
    from another model, SAEs, data or settings exits with one line naming what differs (exit
    2), unless ``--force`` (then everything is recomputed)."""
    ident = run_identity(args, subject, exclude)
    try:
        return open_run(
            args.out, name, args.seed, ident,
            resume=getattr(args, "resume", None), force=getattr(args, "force", False),
        )  # fmt: skip
    except (IdentityMismatch, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


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
    "check_args",
    "number_list",
    "add_classifier_arguments",
    "add_laig_arguments",
    "add_refusal_features_argument",
    "add_run_arguments",
    "add_subject_arguments",
    "classifier_from_args",
    "open_run_from_args",
    "run_identity",
    "subject_from_args",
]
