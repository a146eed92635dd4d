"""Errors for people: the project's exception types for bad input and the one CLI error path.

Library code raises a :class:`UserError` (a ``ValueError``) when the input is wrong — a flag, a
file, a tensor, a key — with a message that names it. Every command line entry point runs its
``main`` through :func:`run_cli`, which turns such an error into exactly one line on stderr::

    error: <what> (<file/flag/tensor>)

and exit code 2. The traceback is printed only with ``--debug`` on the command line or
``REFUSAL_JAX_DEBUG=1`` in the environment. Anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.typing import ArrayLike


class UserError(ValueError):
    """Bad input from the user (flag, file, tensor, key); the message names it."""


class UsageError(UserError):
    """A command line flag is missing, malformed or contradicts another one."""


class ConfigError(UserError):
    """A model configuration is malformed or asks for something unsupported."""


class WeightsError(UserError):
    """A weights file (model or SAE) is missing, malformed, truncated or non-finite."""


class DataError(UserError):
    """A dataset file is missing, unreadable, malformed or empty."""


class NonFiniteError(UserError):
    """A computed result (direction, attribution, loss, metric) is NaN or infinite."""


def check_finite(value: ArrayLike, what: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` when ``value`` (a number or array, numpy or
    concrete jax) holds a NaN or an infinity. Call on results at the end of a stage."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fc":
        arr = arr.astype(np.float64) if arr.dtype.kind in "iub" else arr
    try:
        ok = bool(np.all(np.isfinite(arr)))
    except TypeError:  # bfloat16 and friends
        ok = bool(np.all(np.isfinite(arr.astype(np.float32))))
    if not ok:
        flat = arr.reshape(-1).astype(np.float32)
        n_bad = int((~np.isfinite(flat)).sum())
        raise NonFiniteError(f"{what}: {n_bad} of {flat.size} values are NaN or infinite")


def check_direction(direction: ArrayLike, d_model: int | None, what: str = "direction") -> None:
    """Refuse a refusal direction that is not a finite, non-zero vector [D] (concrete
    arrays only; traced ones pass). Raises :class:`NonFiniteError` / :class:`UserError` naming
    ``what``."""
    if type(direction).__module__.startswith("jax") and not hasattr(
        direction, "addressable_shards"
    ):
        return  # a tracer
    try:
        v = np.asarray(direction, np.float32)
    except Exception:  # noqa: BLE001 - traced or otherwise abstract: not checkable here
        return
    if d_model is not None and v.shape != (d_model,):
        raise UserError(f"{what} has shape {v.shape}, expected ({d_model},)")
    check_finite(v, what)
    if not np.any(v):
        raise UserError(f"{what} is all zeros: it has no direction to ablate or attribute along")


def nonfinite_rows(arr: ArrayLike, stacked: bool = False) -> list[int] | bool:
    """Where a (possibly sharded, multi-host) array holds NaN/inf, reading only this process's
    shards: for ``arr`` [L, ...] the sorted leading indices with a bad value when ``stacked``
    (one row per layer), else whether any value is bad."""
    bad: set[int] = set()
    any_bad = False
    shards = getattr(arr, "addressable_shards", None)
    pieces = (
        [(np.asarray(s.data), s.index) for s in shards] if shards else [(np.asarray(arr), None)]
    )
    for data, index in pieces:
        f32 = data.dtype in (np.float32, np.float64)
        ok = np.isfinite(data if f32 else data.astype(np.float32))
        if stacked and data.ndim:
            start = (index[0].start or 0) if index else 0
            rows = ~ok.reshape(data.shape[0], -1).all(axis=1)
            bad.update(int(start + i) for i in np.flatnonzero(rows))
        elif not ok.all():
            any_bad = True
    return sorted(bad) if stacked else any_bad


def check_finite_tree(tree: object, where: str) -> None:
    """Raise :class:`WeightsError` naming the first parameter (pytree path, and layer for the
    ``layers`` subtree) of ``tree`` that holds a NaN or an infinity."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        stacked = name.startswith("layers.")
        bad = nonfinite_rows(leaf, stacked)
        if bad:
            at = f" at layers {bad[:8]}" if stacked else ""
            raise WeightsError(f"{where}: tensor {name}{at} has NaN or infinite values")


def check_number(
    value: object, what: str, *, minimum: float | None = None, positive: bool = False
) -> float:
    """``float(value)``, refused (:class:`UserError` naming ``what``) when it is not a finite
    number, negative below ``minimum`` or not positive when ``positive``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UserError(f"{what} must be finite, got {value!r}")
    if minimum is not None and x < minimum:
        raise UserError(f"{what} must be >= {minimum}, got {value!r}")
    if positive and x <= 0:
        raise UserError(f"{what} must be > 0, got {value!r}")
    return x


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (unknown flag, bad value) raise
    :class:`UsageError` naming the flag, so :func:`run_cli` prints them as one line."""

    def error(self, message):
        raise UsageError(f"{message} ({self.prog})")


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True with ``--debug`` in ``argv`` or ``REFUSAL_JAX_DEBUG`` set (not empty, 0 or false)."""
    env = os.environ.get("REFUSAL_JAX_DEBUG", "")
    return "--debug" in (argv or ()) or env not in ("", "0", "false", "False")


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror} ({e.filename})"
    text = " ".join(str(e).split()) or type(e).__name__
    return text


def run_cli(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` as a command: a :class:`UserError` or a missing/unreadable file
    (``OSError``) prints ``error: ...`` (one line, stderr) and returns 2; ``--debug`` (removed from
    ``argv``) or ``REFUSAL_JAX_DEBUG=1`` prints the traceback too. Returns ``main``'s int result
    (0 for anything else). Use as ``sys.exit(run_cli(main))``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        result = main(argv)
    except (UserError, OSError) as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


__all__ = [
    "ArgumentParser",
    "ConfigError",
    "DataError",
    "NonFiniteError",
    "UsageError",
    "UserError",
    "WeightsError",
    "check_direction",
    "check_finite",
    "check_finite_tree",
    "nonfinite_rows",
    "check_number",
    "debug_requested",
    "run_cli",
]
