"""LA-IG: attribution patching with integrated gradients in SAE feature space
(docs/METHOD.md section 3).

The whole algorithm, in the residual-gradient form that keeps every d_sae-wide tensor out of
autodiff:

1. clean run -> x_l (resid_post at every layer; the alpha = 0 step's forward when the rule
   has that node);
2. patched run (refusal direction ablated at every layer) -> x~_l (after the ablation) and
   x_l^pre (the layer output before it). x_patch,l = dec(f_patch) + e_patch equals x_l^pre for
   error mode ``paper`` (e_patch = x^pre - dec(f_patch)) and x~_l for ``ablated``;
3. for each alpha: run with out_l = (1 - alpha) a + alpha x_patch,l at every layer (exactly the
   SAE-in-the-loop run, because decoders are affine) and take g_l = dm/d out_l, with
   m = sum_b logit_jb - logit_refusal at the last position. The steps are scanned, B at a
   time (``alpha_batch``); at alpha = 1 only the last layer has a gradient (no model run);
4. A[l,b,t,i] = (f_patch - f_clean)[l,b,t,i] * (mean_alpha g_l W_dec,l^T)[b,t,i], computed
   layer by layer and reduced over positions, or only for a feature subset.

:func:`la_ig_naive` is the straightforward SAE-in-the-loop version (gradient w.r.t. the
features, Python loop over alpha) the tests hold the fast path to.

Choosing the quadrature (``alpha_rule``, ``n_steps``; see :func:`alpha_schedule`): the integrand
g(alpha) = dm/d out_l at the interpolated run is a smooth function of alpha (no SAE, hence no
JumpReLU jump, inside the interpolated run), so rules of higher order converge much faster than
the paper's ``left`` rule, whose error falls only like 1/N. ``left, n_steps=10`` stays the
default to reproduce the paper. When the goal is the integral itself (F*, attributions) rather
than bit-level reproduction of the paper, ``alpha_rule="gauss"`` with 3-4 steps matched or beat
left N = 10 on the organism and on a Gemma-2-shaped model in
``experiments/benchmarks/laig_accuracy.py`` (errors vs an N = 256 reference and F* overlap in
experiments/benchmarks/RESULTS.md) at a third of the cost; check the curve for a new model
before going below N = 3, and keep ``left`` when comparing with the paper's numbers.

The end nodes are cheap (:func:`quadrature_ends`): alpha = 0 is the clean run, whose forward
LA-IG needs anyway, and at alpha = 1 every layer's output is x_patch, so the gradient is 0
below the last layer and costs no model run at all. ``radau`` (alpha = 1 a node) and
``lobatto`` (both ends) spend those savings on accuracy: ``radau`` N = 3 costs what ``gauss``
N = 2 costs and is exact to degree 4 instead of 3; ``lobatto`` N = 3 (Simpson) is exact to
degree 3 like ``gauss`` N = 2 at one forward pass less; ``radau`` N = 2 (one interpolated run)
is exact to degree 2. Measured against an N = 256 reference on three models (SmolLM2-135M's
real weights, the organism, a Gemma-2-shaped model; RESULTS.md), ``radau`` N = 2 had an F*
overlap at least that of the paper's left N = 10 on all three and a lower error on two;
``radau`` N = 3 cut the error 2.4-18x further. Which rule reaches a given accuracy depends on
the model: check the curve (``experiments/benchmarks/laig_accuracy.py``) for a new one.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from refusal_jax import sae as sae_lib
from refusal_jax.core.batching import batches
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.errors import check_direction
from refusal_jax.core.model import check_inputs, forward_fn, n_embeddings, unembed
from refusal_jax.core.patches import Identity
from refusal_jax.core.positions import ContentPositions
from refusal_jax.method.features import FeatureSet
from refusal_jax.method.interventions import Interpolate, ablate_direction, unit

ERROR_MODES = ("paper", "ablated")


ALPHA_RULES = ("left", "right", "midpoint", "trapezoid", "gauss", "lobatto", "radau")
# Rules whose weights are all 1/N (la_ig sums their steps and divides by N, as the paper does).
UNIFORM_RULES = ("left", "right", "midpoint")


def alpha_schedule(n_steps: int = 10, rule: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """Quadrature rule for the LA-IG integral over alpha in [0, 1]: ``(alphas, weights)``,
    both float32 [n_steps], weights summing to 1, so ``sum_k weights[k] g(alphas[k])``
    approximates ``int_0^1 g``.

    * ``left``: k/N for k < N (the paper's rule, alpha = 1 never evaluated), weights 1/N;
      exact for constants, error O(1/N).
    * ``right``: (k + 1)/N, weights 1/N; exact for constants.
    * ``midpoint``: (k + 1/2)/N, weights 1/N; exact for degree 1, error O(1/N^2).
    * ``trapezoid``: k/(N-1) for k = 0..N-1 (N >= 2), weights 1/(N-1) with half weight at both
      ends; exact for degree 1, error O(1/N^2).
    * ``gauss``: Gauss-Legendre nodes and weights mapped to [0, 1]; exact for polynomials of
      degree 2N - 1, error decaying faster than any power of 1/N for a smooth integrand.
    * ``lobatto``: Gauss-Lobatto, both ends 0 and 1 plus N - 2 interior nodes (N >= 2); exact
      for degree 2N - 3 (N = 3: Simpson's rule).
    * ``radau``: Gauss-Radau with alpha = 1 a node (the other N - 1 interior); exact for
      degree 2N - 2.

    The ends are cheap nodes in :func:`la_ig` (see :func:`quadrature_ends`): alpha = 0 is the
    clean run, whose forward LA-IG needs anyway (the node adds a backward pass), and at
    alpha = 1 every layer's output is replaced by x_patch, which cuts the chain: the gradient
    is 0 at every layer but the last, where it is the unembedding's at x_patch (no model run).
    ``radau`` N therefore costs N - 1 interpolated runs, ``lobatto`` N costs N - 2 and one
    backward pass, ``gauss`` N costs N runs and the clean forward.

    The uniform rules (left, right, midpoint) have equal weights; :func:`la_ig` sums their steps
    and divides by N, as the paper does. (Since algorithm version 2, ``left``'s alpha = 0 step
    reuses the clean run's forward: results equal version 1's to float32 rounding.)
    """
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    if rule in UNIFORM_RULES:
        k = np.arange(n_steps, dtype=np.float32)  # float32 k / N: the historical values
        offset = {"left": 0.0, "right": 1.0, "midpoint": 0.5}[rule]
        return (k + np.float32(offset)) / n_steps, np.full(n_steps, 1.0 / n_steps, np.float32)
    if rule == "trapezoid":
        if n_steps < 2:
            raise ValueError("the trapezoid rule needs n_steps >= 2 (both ends of [0, 1])")
        alphas = np.arange(n_steps, dtype=np.float64) / (n_steps - 1)
        weights = np.full(n_steps, 1.0 / (n_steps - 1))
        weights[[0, -1]] *= 0.5
    elif rule == "gauss":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        alphas, weights = (x + 1.0) / 2.0, w / 2.0
    elif rule == "lobatto":
        if n_steps < 2:
            raise ValueError("the lobatto rule needs n_steps >= 2 (both ends of [0, 1])")
        # on [-1, 1]: +-1 and the roots of P'_{N-1}; weights 2 / (N (N - 1) P_{N-1}(x)^2)
        p = np.polynomial.legendre.Legendre.basis(n_steps - 1)
        inner = np.sort(p.deriv().roots().real) if n_steps > 2 else np.empty(0)
        x = np.concatenate([[-1.0], inner, [1.0]])
        w = 2.0 / (n_steps * (n_steps - 1) * p(x) ** 2)
        alphas, weights = (x + 1.0) / 2.0, w / 2.0
    elif rule == "radau":
        # left Radau on [-1, 1] (-1 a node): the roots of P_{N-1} + P_N, weights 2 / N^2 at -1
        # and (1 - x) / (N^2 P_{N-1}(x)^2) elsewhere; mirrored so that +1 (alpha = 1) is the node
        basis = np.polynomial.legendre.Legendre.basis
        x = np.sort((basis(n_steps - 1) + basis(n_steps)).roots().real)
        x[0] = -1.0
        w = (1.0 - x) / (n_steps**2 * basis(n_steps - 1)(x) ** 2)
        w[0] = 2.0 / n_steps**2
        alphas, weights = (1.0 - x[::-1]) / 2.0, w[::-1] / 2.0
    else:
        raise ValueError(f"unknown alpha rule {rule!r} (one of {', '.join(ALPHA_RULES)})")
    return alphas.astype(np.float32), weights.astype(np.float32)


def _is_uniform(rule: str) -> bool:
    return rule in UNIFORM_RULES


def quadrature_ends(alphas: ArrayLike) -> tuple[bool, bool]:
    """(the first node is alpha = 0, the last is alpha = 1) of a schedule's ``alphas`` [N]
    (host values): the static ``ends`` of :func:`la_ig_fn` and :func:`attribute_batch`, which
    compute those nodes the cheap way (see :func:`alpha_schedule`)."""
    a = np.asarray(alphas)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"alphas must be a non-empty vector, got shape {a.shape}")
    return bool(a[0] == 0.0), bool(a[-1] == 1.0)


@struct.dataclass
class PatchedRuns:
    """The clean and directionally ablated runs LA-IG interpolates between.

    x_clean, x_ablated, x_patch: [L, B, T, D]; jailbreak_token [B]; refusal_token scalar.
    """

    x_clean: jax.Array
    x_ablated: jax.Array
    x_patch: jax.Array
    jailbreak_token: jax.Array
    refusal_token: jax.Array


@struct.dataclass
class LAIGResult:
    """grad [L, B, T, D] float32: quadrature-weighted mean over alpha of dm/d out_l
    (sum_k weights[k] g_l(alphas[k])); metric [N] per alpha (batch sum); alphas, weights [N]."""

    runs: PatchedRuns
    grad: jax.Array
    metric: jax.Array
    alphas: jax.Array
    weights: jax.Array


def _ablated_run(params, cfg, ids, mask, direction, error_mode):
    """The run with ``direction`` ablated at every layer: (ForwardOutput with residuals and
    last-position logits, x_patch [L, B, T, D] for ``error_mode``)."""
    if error_mode not in ERROR_MODES:
        raise ValueError(f"error_mode must be one of {ERROR_MODES}, got {error_mode!r}")
    ablation = ablate_direction(unit(jnp.asarray(direction, jnp.float32)), cfg.n_layers)
    abl = forward_fn(
        params, cfg, ids, mask, patch=ablation, return_residuals=True, last_logits_only=True
    )
    return abl, abl.block_out if error_mode == "paper" else abl.resid_post


def _jailbreak_tokens(given, abl_logits):
    """[B] int32: ``given`` (int or [B]) where >= 0, else the argmax of the ablated run's
    last-position logits (the paper's ``ind_jailbreak``)."""
    argmax = jnp.argmax(abl_logits[:, -1], axis=-1).astype(jnp.int32)
    given = jnp.broadcast_to(jnp.asarray(given, jnp.int32), argmax.shape)
    return jnp.where(given >= 0, given, argmax)


def patched_runs(
    params: dict,
    cfg: ModelConfig,
    ids: ArrayLike,
    mask: ArrayLike,
    direction: ArrayLike,
    refusal_token: int | ArrayLike,
    jailbreak_token: int | ArrayLike | None = None,
    error_mode: str = "paper",
) -> PatchedRuns:
    """Clean run and ablated run of ids / mask [B, T] (left padded) with ``direction`` [D]
    ablated at every layer; residuals [L, B, T, D]. ``jailbreak_token``: None -> per-sample
    argmax of the ablated run's last-position logits (the paper's ``ind_jailbreak``), else an
    int or [B] ids."""
    abl, x_patch = _ablated_run(params, cfg, ids, mask, direction, error_mode)
    clean = forward_fn(params, cfg, ids, mask, return_residuals=True, last_logits_only=True)
    jb = _jailbreak_tokens(-1 if jailbreak_token is None else jailbreak_token, abl.logits)
    return PatchedRuns(
        clean.resid_post, abl.resid_post, x_patch, jb, jnp.asarray(refusal_token, jnp.int32)
    )


def refusal_metric(logits: jax.Array, jailbreak_token: jax.Array, refusal_token: int) -> jax.Array:
    """m = sum_b logit[b, -1, jb_b] - logit[b, -1, refusal] (last position): logits [B, T, V],
    jailbreak_token [B] int -> a scalar."""
    last = logits[:, -1]
    jb = jnp.take_along_axis(last, jailbreak_token[:, None], axis=-1)[:, 0]
    return jnp.sum(jb - last[:, refusal_token])


@functools.partial(
    jax.jit, static_argnames=("cfg", "error_mode", "alpha_batch", "remat", "uniform", "ends")
)
def la_ig_fn(
    params,
    cfg,
    ids,
    mask,
    direction,
    refusal_token,
    jailbreak_token,
    alphas,
    weights,
    error_mode="paper",
    alpha_batch=None,
    remat=False,
    uniform=True,
    ends=(False, False),
) -> LAIGResult:
    """Jitted core of :func:`la_ig` (``jailbreak_token`` < 0 means per-sample argmax).

    alphas, weights [N] (:func:`alpha_schedule`). ``uniform``: the weights are all 1/N; the
    steps' gradients are then summed and divided by N (the paper's mean), else each step's
    gradient is scaled by its weight before the float32 sum.

    ``ends`` (static; :func:`quadrature_ends` of the same alphas): (alphas[0] == 0,
    alphas[-1] == 1), a promise that lets those nodes take the cheap way. alpha = 0: the
    interpolated run is the clean run (out_l = a + delta_l), so its forward doubles as the
    clean run and the node adds one backward pass (with ``alpha_batch`` B > 1 it runs in one
    vmapped batch with the next B - 1 nodes). alpha = 1: out_l = x_patch,l + delta_l does
    not depend on the layers below, so dm/d out_l is 0 for l < L - 1 and, at the last layer,
    the gradient of the metric through the unembedding at x_patch,L-1 (no model run). Either
    equals the full interpolated run at that alpha to float32 rounding (tested); with the
    default (False, False) every node runs the interpolated model, whatever the alphas. A
    broken promise (alphas[0] != 0 or alphas[-1] != 1) makes ``grad`` NaN, not wrong."""
    at_zero, at_one = ends
    refusal_token = jnp.asarray(refusal_token, jnp.int32)
    abl, x_patch = _ablated_run(params, cfg, ids, mask, direction, error_mode)
    jb = _jailbreak_tokens(jailbreak_token, abl.logits)
    x_patch = jax.lax.stop_gradient(x_patch)
    zeros = jnp.zeros_like(x_patch)

    def at_alpha(alpha, residuals=False):
        def metric(delta):
            patch = Interpolate(alpha, x_patch, delta)
            out = forward_fn(
                params, cfg, ids, mask, patch=patch, last_logits_only=True, remat=remat,
                return_residuals=residuals,
            )  # fmt: skip
            return refusal_metric(out.logits, jb, refusal_token), out.resid_post

        (value, post), grad = jax.value_and_grad(metric, has_aux=True)(zeros)
        return (value, grad, post) if residuals else (value, grad)

    def scaled(grads, weight_chunk):
        # float32 sums whatever the model dtype (bfloat16: the integral is not accumulated in
        # bfloat16); weighted rules scale each step before the sum
        grads = grads.astype(jnp.float32)
        if uniform:
            return grads
        return grads * weight_chunk.astype(jnp.float32).reshape((-1,) + (1,) * (grads.ndim - 1))

    def chunk(alpha_chunk, weight_chunk):
        # alpha steps of one chunk run as one vmapped batch; their gradients are summed
        metric, grads = jax.vmap(at_alpha)(alpha_chunk)
        return metric, scaled(grads, weight_chunk).sum(axis=0)

    n = alphas.shape[0]
    stop = n - int(at_one)
    first, metrics = 0, []
    if at_zero:
        # the first chunk holds alpha = 0 (and, with alpha_batch B > 1, the next B - 1 nodes in
        # the same vmapped batch); its forward's residuals at alpha = 0 are the clean run's
        first = 1 if alpha_batch is None else max(1, min(int(alpha_batch), stop))
        m0, g0, posts = jax.vmap(functools.partial(at_alpha, residuals=True))(alphas[:first])
        total, metrics = scaled(g0, weights[:first]).sum(axis=0), [m0]
        x_clean = posts[0]
    else:
        clean = forward_fn(params, cfg, ids, mask, return_residuals=True, last_logits_only=True)
        total, x_clean = jnp.zeros(x_patch.shape, jnp.float32), clean.resid_post

    inner = stop - first
    if inner:
        k = 1 if alpha_batch is None else max(1, min(int(alpha_batch), inner))
        n_full, rest = divmod(inner, k)

        def body(acc, chunk_args):
            metric, g = chunk(*chunk_args)
            return acc + g, metric

        # Chunks of k steps in a scan: peak memory holds k steps' activations and gradients
        # plus one float32 running sum, whatever the number of steps.
        a_in, w_in = alphas[first:stop], weights[first:stop]
        total, metric = jax.lax.scan(
            body,
            total,
            (a_in[: n_full * k].reshape(n_full, k), w_in[: n_full * k].reshape(n_full, k)),
        )
        metrics.append(metric.reshape(-1))
        if rest:
            m_rest, g_rest = chunk(a_in[n_full * k :], w_in[n_full * k :])
            total = total + g_rest
            metrics.append(m_rest)
    if at_one:

        def last_layer_metric(x_last):
            logits = unembed(params, cfg, x_last[:, -1:])
            return refusal_metric(logits, jb, refusal_token)

        m1, g1 = jax.value_and_grad(last_layer_metric)(x_patch[-1])
        total = total.at[-1].add(scaled(g1[None], weights[-1:])[0])
        metrics.append(m1[None])
    metric = jnp.concatenate(metrics)
    grad = total / n if uniform else total
    if at_zero or at_one:  # ends promised but not there: fail loudly
        held = (alphas[0] == 0) if at_zero else True
        held = (held & (alphas[-1] == 1)) if at_one else held
        grad = jnp.where(held, grad, jnp.nan)
    runs = PatchedRuns(x_clean, abl.resid_post, x_patch, jb, refusal_token)
    return LAIGResult(runs, grad, metric, alphas, weights)


def la_ig(
    params: dict,
    cfg: ModelConfig,
    ids: ArrayLike,
    mask: ArrayLike,
    direction: ArrayLike,
    *,
    refusal_token: int,
    jailbreak_token: int | ArrayLike | None = None,
    n_steps: int = 10,
    alpha_rule: str = "left",
    error_mode: str = "paper",
    alpha_batch: int | None = None,
    remat: bool | str = False,
) -> LAIGResult:
    """LA-IG gradients for a batch of left-padded prompts ids / mask [B, T].

    Returns :class:`LAIGResult` (``grad`` [L, B, T, D] float32, ``metric`` [n_steps], the
    patched runs). direction [D]: the refusal direction (ablated at every layer in the patched run).
    All alpha steps are one jitted program: a scan over chunks of ``alpha_batch`` steps (None:
    1, one step at a time), the steps of a chunk vmapped, their gradients summed in float32.
    Peak memory scales with ``alpha_batch``, not ``n_steps``; ``alpha_batch=n_steps`` runs all
    steps as one batch (fastest on accelerators when memory allows). ``remat`` (True/"full"
    or "dots", see :data:`refusal_jax.core.model.REMAT_POLICIES`) recomputes each layer in the
    backward pass, which cuts peak memory on long prompts several-fold at some cost in time.
    Neither setting changes the result beyond float32 summation order; ``grad`` is float32
    whatever the parameter dtype.

    Sharding: pass params / ids placed by :mod:`refusal_jax.core.sharding`; the jitted program then
    runs data and tensor parallel over the mesh.
    Feature attributions come from :func:`feature_attributions`.
    """
    if alpha_batch is not None and (not isinstance(alpha_batch, int) or alpha_batch < 1):
        raise ValueError(f"alpha_batch must be a positive int or None, got {alpha_batch!r}")
    check_inputs(cfg, ids, mask, "la_ig", n_embeddings(params, cfg))
    check_direction(direction, cfg.d_model, "la_ig direction")
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    jb = -1 if jailbreak_token is None else jailbreak_token
    alphas, weights = alpha_schedule(n_steps, alpha_rule)
    return la_ig_fn(
        params,
        cfg,
        ids,
        mask,
        jnp.asarray(direction),
        refusal_token,
        jb,
        jnp.asarray(alphas),
        jnp.asarray(weights),
        error_mode,
        alpha_batch,
        remat,
        _is_uniform(alpha_rule),
        quadrature_ends(alphas),
    )


def position_weights(
    mask: ArrayLike,
    skip: int = 1,
    *,
    ids: ArrayLike | None = None,
    positions: ContentPositions | None = None,
) -> jax.Array:
    """[B, T] float: 1 on the content positions of :mod:`refusal_jax.core.positions`.

    ``positions`` (a :class:`~refusal_jax.core.positions.ContentPositions`, needs ``ids``
    [B, T] when it has special ids) overrides ``skip``; without it, real tokens at position
    >= ``skip`` (the legacy rule ``ContentPositions(prefix_length=skip)``: skip BOS)."""
    rule = ContentPositions(prefix_length=skip) if positions is None else positions
    return rule.mask(ids, mask).astype(jnp.float32)


def _decoder_grad(sae_l, g):
    """dm/df = g (d dec/d f)^T for an affine decoder: [..., D] -> [..., d_sae], computed in the
    decoder's dtype (g, a float32 sum over alpha steps, is rounded once for bfloat16 SAEs)."""
    zeros = jnp.zeros(g.shape[:-1] + (sae_l.W_dec.shape[0],), sae_l.W_dec.dtype)
    out, vjp = jax.vjp(lambda f: sae_lib.decode(sae_l, f), zeros)
    return vjp(g.astype(out.dtype))[0]


@functools.partial(jax.jit, static_argnames=("per_token",))
def feature_attributions(
    result: LAIGResult, saes: sae_lib.SAE, weights: jax.Array, per_token: bool = False
) -> jax.Array:
    """Attributions of every feature at every layer.

    weights [B, T] (see :func:`position_weights`). Returns the weighted mean over positions
    [L, B, d_sae], or with ``per_token`` the full [L, B, T, d_sae] (large for real SAEs).
    Computed one layer at a time, so memory is one layer's [B, T, d_sae].
    """
    runs = result.runs
    denom = jnp.maximum(weights.sum(-1), 1.0)[:, None]

    def one_layer(args):
        layer, x_c, x_a, g = args
        sae_l = sae_lib.sae_layer(saes, layer)
        # float32 accumulation whatever the compute dtype (bf16 models)
        df = (sae_lib.encode(sae_l, x_a) - sae_lib.encode(sae_l, x_c)).astype(jnp.float32)
        a = df * _decoder_grad(sae_l, g).astype(jnp.float32)
        if per_token:
            return a
        return jnp.einsum("btf,bt->bf", a, weights) / denom

    layers = jnp.arange(runs.x_clean.shape[0])
    return jax.lax.map(one_layer, (layers, runs.x_clean, runs.x_ablated, result.grad))


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "positions", "error_mode", "alpha_batch", "remat", "uniform", "ends"),
)
def attribute_batch(
    params: dict,
    cfg: ModelConfig,
    saes: sae_lib.SAE,
    ids: jax.Array,
    mask: jax.Array,
    direction: jax.Array,
    refusal_token: jax.Array,
    quadrature: tuple[jax.Array, jax.Array],
    positions: ContentPositions,
    error_mode: str = "paper",
    alpha_batch: int | None = None,
    remat: bool | str = False,
    uniform: bool = True,
    ends: tuple[bool, bool] = (False, False),
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One batch of a prompt set through LA-IG as a single compiled program: ids / mask [B, T]
    (checked by the caller), direction [D], ``quadrature`` = (alphas [N], weights [N]) of
    :func:`alpha_schedule` and its static ``ends`` (:func:`quadrature_ends`) -> (position-mean
    attributions [L, B, d_sae] over the content positions of ``positions``, jailbreak token
    [B], metric [N]). The same numbers as
    :func:`la_ig` + :func:`position_weights` + :func:`feature_attributions`, without their
    per-call host checks and separate dispatches (what :func:`attribute_prompts` and sweeps
    run per batch)."""
    alphas, weights = quadrature
    res = la_ig_fn(
        params, cfg, ids, mask, direction, refusal_token, -1, alphas, weights,
        error_mode, alpha_batch, remat, uniform, ends,
    )  # fmt: skip
    attr = feature_attributions(res, saes, position_weights(mask, ids=ids, positions=positions))
    return attr, res.runs.jailbreak_token, res.metric


@dataclasses.dataclass(frozen=True)
class Throughput:
    """How fast a prompt set went through LA-IG: ``prompts`` in ``calls`` compiled calls of
    ``batch_size`` rows; ``seconds`` wall time of the whole loop, ``first_call_seconds`` of
    the first call (it includes compilation when the shape is new); ``prompts_per_s`` over the
    calls after the first (steady state; over all calls when there is one)."""

    prompts: int
    calls: int
    batch_size: int
    seconds: float
    first_call_seconds: float
    prompts_per_s: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PromptAttributions:
    """attributions [L, N, d_sae] float32 (position means), jailbreak_token [N] int32, metric
    [calls, n_steps] (summed over each call's rows, padding rows included), throughput."""

    attributions: np.ndarray
    jailbreak_token: np.ndarray
    metric: np.ndarray
    throughput: Throughput


def attribute_prompts(
    params: dict, cfg: ModelConfig, saes: sae_lib.SAE, ids: ArrayLike, mask: ArrayLike,
    direction: ArrayLike, *, refusal_token: int, positions: ContentPositions | None = None,
    n_steps: int = 10, alpha_rule: str = "left", error_mode: str = "paper", batch_size: int = 8,
    alpha_batch: int | None = None, remat: bool | str = False, progress: bool = False,
) -> PromptAttributions:  # fmt: skip
    """Position-mean LA-IG attributions of every prompt of ids / mask [N, T] (left padded):
    [L, N, d_sae], in batches of ``batch_size`` rows (the last one padded by repeating its last
    prompt), each batch one compiled :func:`attribute_batch` call.

    The inputs are checked once for the whole set; batch k + 1 is dispatched before batch k's
    results are pulled to the host, so the device never waits on Python between calls. The
    numbers equal :func:`la_ig` + :func:`feature_attributions` per batch (tested).
    ``positions``: the content-position rule (default: skip the first real token, BOS).
    LA-IG settings as in :func:`la_ig`; on CPU ``alpha_batch=None`` (alpha steps scanned one at
    a time, prompts batched) was fastest (experiments/benchmarks/RESULTS.md), on
    accelerators with memory to spare ``alpha_batch=n_steps`` batches prompts and alpha steps
    together."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if alpha_batch is not None and (not isinstance(alpha_batch, int) or alpha_batch < 1):
        raise ValueError(f"alpha_batch must be a positive int or None, got {alpha_batch!r}")
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.ndim != 2 or ids.shape != mask.shape or len(ids) == 0:
        raise ValueError(f"ids {ids.shape} and mask {mask.shape}: expected equal [N, T], N > 0")
    check_inputs(cfg, ids, mask, "attribute_prompts", n_embeddings(params, cfg))
    check_direction(direction, cfg.d_model, "attribute_prompts direction")
    positions = ContentPositions(prefix_length=1) if positions is None else positions
    schedule = alpha_schedule(n_steps, alpha_rule)
    quadrature = tuple(jnp.asarray(q) for q in schedule)
    direction = jnp.asarray(direction)
    rt = jnp.asarray(refusal_token, jnp.int32)

    def call(b_ids, b_mask):
        return attribute_batch(
            params, cfg, saes, b_ids, b_mask, direction, rt, quadrature, positions,
            error_mode, alpha_batch, remat, _is_uniform(alpha_rule), quadrature_ends(schedule[0]),
        )  # fmt: skip

    steps = list(batches(ids, mask, batch_size))
    attr, jb, metric = [], [], []
    first = None
    t0 = time.perf_counter()
    bar = tqdm(total=len(ids), desc="LA-IG", unit="prompt", disable=not progress, leave=False)
    with bar:
        pending = None  # the batch dispatched last: (device results, n_real)
        for step in [*steps, None]:
            launched = None if step is None else (call(step[0], step[1]), step[2])
            if pending is not None:
                (a, j, m), n = pending
                attr.append(np.asarray(a)[:, :n])
                jb.append(np.asarray(j)[:n])
                metric.append(np.asarray(m))
                first = time.perf_counter() - t0 if first is None else first
                bar.update(n)
            pending = launched
    seconds = time.perf_counter() - t0
    steady = len(ids) - steps[0][2]
    rate = steady / (seconds - first) if len(steps) > 1 else len(ids) / seconds
    throughput = Throughput(len(ids), len(steps), batch_size, seconds, first, rate)
    return PromptAttributions(
        np.concatenate(attr, axis=1), np.concatenate(jb), np.stack(metric), throughput
    )


@jax.jit
def subset_attributions(result: LAIGResult, saes: sae_lib.SAE, features: FeatureSet) -> jax.Array:
    """Per-token attributions of a feature subset only: [L, B, T, K] (masked entries 0)."""
    runs = result.runs

    def one_layer(args):
        layer, x_c, x_a, g = args
        sae_l = sae_lib.sae_layer(saes, layer)
        idx = features.idx[..., layer, :]
        fmask = features.mask[..., layer, :]
        if features.per_sample:
            enc = jax.vmap(lambda x, i: sae_lib.encode_features(sae_l, x, i))
            df = enc(x_a, idx) - enc(x_c, idx)
            w = sae_l.W_dec[idx]  # [B, K, D]
            grad_f = jnp.einsum("btd,bkd->btk", g, w)
            m = fmask[:, None, :]
        else:
            df = sae_lib.encode_features(sae_l, x_a, idx) - sae_lib.encode_features(sae_l, x_c, idx)
            grad_f = jnp.einsum("btd,kd->btk", g, sae_l.W_dec[idx])
            m = fmask[None, None, :]
        scale = jnp.asarray(getattr(sae_l.cfg, "input_scale", 1.0), g.dtype)
        return jnp.where(m, df * grad_f / scale, 0.0)

    layers = jnp.arange(runs.x_clean.shape[0])
    return jax.lax.map(one_layer, (layers, runs.x_clean, runs.x_ablated, result.grad))


# ----------------------------------------------------------------------------- naive reference
@struct.dataclass
class _SAEInTheLoop:
    """At every layer: f = enc(a); f_a = (1-alpha) f + alpha f_patch + delta_f;
    e_a = (1-alpha)(a - dec(f)) + alpha e_patch; out = dec(f_a) + e_a."""

    saes: object
    alpha: jax.Array
    f_patch: jax.Array  # [L, B, T, S]
    e_patch: jax.Array  # [L, B, T, D]
    delta_f: jax.Array  # [L, B, T, S]

    def __call__(self, x, layer, ctx):
        sae_l = sae_lib.sae_layer(self.saes, layer)
        f = sae_lib.encode(sae_l, x)
        f_a = (1 - self.alpha) * f + self.alpha * self.f_patch[layer] + self.delta_f[layer]
        e_a = (1 - self.alpha) * (x - sae_lib.decode(sae_l, f)) + self.alpha * self.e_patch[layer]
        return sae_lib.decode(sae_l, f_a) + e_a


def la_ig_naive(
    params: dict,
    cfg: ModelConfig,
    saes: sae_lib.SAE,
    ids: ArrayLike,
    mask: ArrayLike,
    runs: PatchedRuns,
    quadrature: tuple[ArrayLike, ArrayLike],
) -> jax.Array:
    """Reference LA-IG with the SAEs in the loop, one gradient per feature activation: ids /
    mask [B, T], the clean and patched ``runs`` of those prompts (:func:`patched_runs`, or
    ``LAIGResult.runs``) and ``quadrature`` = (alphas [N], weights [N]) (:func:`alpha_schedule`,
    or ``(result.alphas, result.weights)``) -> per-token attributions [L, B, T, S]. Slow; the
    test oracle of :func:`la_ig` + :func:`feature_attributions`: it shares their inputs, not
    their residual-gradient identity."""
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    enc = jax.vmap(sae_lib.encode)
    dec = jax.vmap(sae_lib.decode)
    f_clean = enc(saes, runs.x_clean)
    f_patch = enc(saes, runs.x_ablated)
    e_patch = runs.x_patch - dec(saes, f_patch)

    @jax.jit
    def grad_at(alpha):
        def metric(delta_f):
            patch = _SAEInTheLoop(saes, alpha, f_patch, e_patch, delta_f)
            out = forward_fn(params, cfg, ids, mask, patch=patch)
            return refusal_metric(out.logits, runs.jailbreak_token, runs.refusal_token)

        return jax.grad(metric)(jnp.zeros_like(f_patch))

    alphas, weights = (np.asarray(q, np.float32) for q in quadrature)
    grads = [grad_at(jnp.float32(a)) for a in alphas]
    mean = sum(float(w) * g for w, g in zip(weights, grads, strict=True))
    return (f_patch - f_clean) * mean


__all__ = [
    "ALPHA_RULES",
    "ERROR_MODES",
    "Identity",
    "LAIGResult",
    "PatchedRuns",
    "PromptAttributions",
    "Throughput",
    "UNIFORM_RULES",
    "alpha_schedule",
    "attribute_batch",
    "attribute_prompts",
    "feature_attributions",
    "la_ig",
    "la_ig_naive",
    "patched_runs",
    "position_weights",
    "quadrature_ends",
    "refusal_metric",
    "subset_attributions",
]
