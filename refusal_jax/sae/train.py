"""Training SAEs with optax: JumpReLU (L0 + straight-through threshold), TopK / BatchTopK (AuxK),
ReLU (L1), at one or many layers at once.

Data come from an *activation source*: an object with ``n_layers``, ``d_in`` and
``batch(step) -> [L, B, d_in]`` that is a pure function of (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would (:class:`ArraySource` for stored activations
[N, d] or [L, N, d]; :class:`ModelSource` for resid_post streamed from the model, non-pad
tokens only). All L layers train together: the train step is ``jax.vmap``-ed over a stacked
layer axis (equal widths); train unequal widths with one call per layer.

Inputs are scaled per layer by a constant s so that the mean norm is sqrt(d_in) (estimated on
the first batches); the trained SAE is returned with s folded into its weights (input_scale 1).

Losses, per token, on the scaled input x (reconstruction x_hat):
- mse = mean_d (x_hat - x)^2 (so mse / var is the FVU).
- jumprelu: + lambda_t * L0, L0 = sum_i H(pre_i - theta_i); the Heaviside H and the JumpReLU
  get the rectangle-kernel pseudo-derivative in theta (bandwidth eps), as in Rajamanoharan et
  al. (2024) / GemmaScope: d/dtheta JumpReLU = -(theta/eps) K((pre-theta)/eps),
  d/dtheta H = -(1/eps) K((pre-theta)/eps), K(u) = 1[|u| < 1/2].
- relu: + lambda_t * sum_i f_i ||W_dec,i||.
- topk / batchtopk: + aux_coeff * AuxK (Gao et al. 2024): the top aux_k *dead* latents
  reconstruct the residual x - x_hat, normalized by its variance.
lambda_t warms up linearly over ``sparsity_warmup_steps``; the learning rate over
``lr_warmup_steps``. Decoder rows stay unit norm (gradient parallel to each row removed, then
renormalized after each step).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.typing import ArrayLike

from refusal_jax import sae as sae_lib
from refusal_jax.core.config import ModelConfig
from refusal_jax.core.errors import check_finite, check_finite_tree
from refusal_jax.core.identity import (
    IDENTITY_FILE,
    Identity,
    IdentityMismatch,
    describe_tree,
    diff,
    read_checked_json,
    write_checked_json,
)
from refusal_jax.core.losses import next_token_ce
from refusal_jax.core.model import forward, forward_fn
from refusal_jax.core.positions import ContentPositions, content_positions
from refusal_jax.sae import SAE, SAEConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static training hyperparameters (hashable)."""

    architecture: str = "jumprelu"
    d_sae: int = 1024
    k: int | None = None
    n_steps: int = 1000
    lr: float = 3e-4
    lr_warmup_steps: int = 100
    lr_decay_fraction: float = 0.0  # linear decay to 0 over this final fraction of steps
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    grad_clip: float = 1.0
    sparsity_coeff: float = 1e-3  # L0 (jumprelu) or L1 (relu) weight
    sparsity_warmup_steps: int = 0
    bandwidth: float = 0.05  # jumprelu pseudo-derivative width (in scaled pre-activation units)
    init_threshold: float = 0.1
    aux_k: int | None = None  # default min(d_in // 2, d_sae)
    aux_coeff: float = 1 / 32
    dead_steps: int = 100  # a latent is dead after this many steps without firing
    apply_b_dec_to_input: bool | None = None  # default: False for jumprelu, True otherwise
    normalize_input: bool = True
    norm_batches: int = 4
    batchtopk_momentum: float = 0.99
    seed: int = 0

    def __post_init__(self):
        if self.architecture not in sae_lib.ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}")
        SAEConfig(self.architecture, 1, self.d_sae, k=self.k)  # validates k
        if self.n_steps < 1 or self.lr <= 0 or self.bandwidth <= 0:
            raise ValueError("n_steps, lr and bandwidth must be positive")

    def sae_config(self, d_in: int) -> SAEConfig:
        apply = self.apply_b_dec_to_input
        if apply is None:
            apply = self.architecture != "jumprelu"
        return SAEConfig(self.architecture, d_in, self.d_sae, k=self.k, apply_b_dec_to_input=apply)


# ----------------------------------------------------------------------------- sources
def _epoch_index(seed: int, step: int, batch: int, n: int) -> np.ndarray:
    """Indices of batch ``step``: consecutive slices of a per-epoch permutation of range(n)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, off = divmod(start + len(out), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.extend(perm[off : off + batch - len(out)].tolist())
    return np.asarray(out)


GROUP_NAMES = ("all", "content", "excluded")
# Per-token group labels of an evaluation set: 1 content, 0 excluded by the position rule
# (special tokens, template prefix), 2 norm outlier (norm > outlier_factor x median).
CONTENT, EXCLUDED_POSITION, OUTLIER = 1, 0, 2


def _outliers(x, factor) -> np.ndarray:
    """[L, n] bool: rows whose norm exceeds ``factor`` x the layer's median norm."""
    norms = np.linalg.norm(x, axis=-1)
    if factor is None or factor <= 0 or norms.shape[1] == 0:
        return np.zeros(norms.shape, bool)
    return norms > float(factor) * np.median(norms, axis=1, keepdims=True)


def _replace_outliers(x, out, rng) -> np.ndarray:
    """x [L, B, d] with the outlier rows of each layer replaced by non-outlier rows of the same
    layer (drawn with ``rng``), so the batch keeps its shape."""
    if not out.any():
        return x
    x = x.copy()
    for layer in np.flatnonzero(out.any(1)):
        ok = np.flatnonzero(~out[layer])
        if ok.size == 0:
            raise ValueError(f"layer {layer}: every token of the batch is a norm outlier")
        bad = np.flatnonzero(out[layer])
        x[layer, bad] = x[layer, rng.choice(ok, bad.size)]
    return x


class ArraySource:
    """Stored activations: ``acts`` [N, d] (one layer) or [L, N, d] (a stack of layers).

    Batch ``step`` is a slice of a per-epoch random permutation (seeded by (seed, epoch)) of the
    training rows: every row, or with ``content`` ([N] bool, True on content tokens, e.g. from
    :meth:`refusal_jax.core.positions.ContentPositions.mask`) and ``exclude`` only the content
    rows. Rows whose norm exceeds ``outlier_factor`` x the batch median (per layer) are replaced
    by other rows of the batch and counted in ``last_counts`` (None or 0: kept).
    :meth:`eval_batch` is a fixed sample of up to ``n_eval`` rows of every group.
    """

    def __init__(
        self,
        acts,
        batch_size: int,
        seed: int = 0,
        layers=None,
        *,
        content=None,
        exclude: bool = True,
        outlier_factor: float | None = 10.0,
        n_eval: int = 4096,
    ):
        acts = np.asarray(acts)
        if acts.ndim == 2:
            acts = acts[None]
        if acts.ndim != 3 or acts.dtype.kind != "f":
            raise ValueError(f"activations must be float [N, d] or [L, N, d], got {acts.shape}")
        self.acts, self.batch_size, self.seed = acts, int(batch_size), int(seed)
        self.n_layers, self.d_in = acts.shape[0], acts.shape[2]
        self.layers = list(range(self.n_layers)) if layers is None else list(layers)
        n = acts.shape[1]
        if content is not None:
            content = np.asarray(content).astype(bool).reshape(-1)
            if content.shape[0] != n:
                raise ValueError(f"content mask has {content.shape[0]} rows for {n} activations")
        self.content = content
        self.exclude, self.outlier_factor, self.n_eval = bool(exclude), outlier_factor, n_eval
        if content is not None and exclude:
            self.rows = np.flatnonzero(content)
            if self.rows.size == 0:
                raise ValueError("the content mask marks no activation as content")
        else:
            self.rows = None
        self.last_counts: dict = {}

    def describe(self) -> dict:
        """What the training data are and which tokens are left out."""
        n = self.acts.shape[1]
        n_content = n if self.content is None else int(self.content.sum())
        return {
            "source": "activations",
            "n_tokens": int(n),
            "n_content": n_content,
            "positions_known": self.content is not None,
            "exclude_positions": self.exclude,
            "outlier_factor": self.outlier_factor,
        }

    def batch(self, step: int) -> np.ndarray:
        n = self.acts.shape[1] if self.rows is None else self.rows.size
        idx = _epoch_index(self.seed, step, self.batch_size, n)
        if self.rows is not None:
            idx = self.rows[idx]
        x = np.asarray(self.acts[:, idx], np.float32)
        out = _outliers(x, self.outlier_factor)
        self.last_counts = {"tokens": int(idx.size), "outliers": out.sum(1).tolist()}
        return _replace_outliers(x, out, np.random.default_rng([self.seed, step, 2]))

    def eval_batch(self):
        """(x [L, n, d], groups [L, n] int8: 1 content, 0 excluded position, 2 outlier,
        positions [n] int: -1, unknown for stored activations)."""
        n = self.acts.shape[1]
        rng = np.random.default_rng([self.seed, 7])
        idx = np.sort(rng.choice(n, min(n, self.n_eval), replace=False))
        x = np.asarray(self.acts[:, idx], np.float32)
        content = np.ones(idx.size, bool) if self.content is None else self.content[idx]
        groups = np.broadcast_to(np.where(content, CONTENT, EXCLUDED_POSITION), x.shape[:2])
        groups = np.where(_outliers(x, self.outlier_factor), OUTLIER, groups).astype(np.int8)
        return x, groups, np.full(idx.size, -1)

    def describe_inputs(self) -> dict:
        """What the batches are made from (all bytes of the activations), for the checkpoint
        folder's identity (callers with a file pass its cached digest to ``train_sae`` instead)."""
        return {"activations": describe_tree(self.acts, "activations")}


class ModelSource:
    """resid_post activations at ``layers``, computed from token batches with the model and
    streamed: each step runs the model on ``seqs_per_step`` sequences only.

    tokens: (ids [N, T], mask [N, T]) arrays of left-padded sequences, or a callable
      ``step -> (ids, mask)`` that is a pure function of the step.
    positions: the content rule (:class:`refusal_jax.core.positions.ContentPositions`); None:
      the model config's special ids (BOS/EOS/pad) and the prefix every sequence of ``tokens``
      shares (:func:`refusal_jax.core.positions.content_positions` with ``prefix="data"``).
    exclude: train on content tokens only (default); False trains on every real token (the
      metrics still report the content and excluded groups apart).
    outlier_factor: tokens whose norm exceeds this x the step's median (per layer) are left out
      and counted (``last_counts``); None or 0 keeps them.
    Each step keeps the training tokens of its sequences (per-epoch permutation) and draws
    ``batch_size`` of them (seeded by (seed, step)); with ``reuse`` r, steps s of one group
    s // r share a forward pass (r times fewer model runs; the model always runs only up to the
    deepest requested layer). ``eval_tokens``: held-out (ids, mask) for
    :meth:`eval_batch` (default: ``n_eval_seqs`` sequences of ``tokens``).
    """

    def __init__(
        self,
        params,
        model_cfg,
        tokens,
        layers,
        batch_size: int,
        seqs_per_step: int = 8,
        seed: int = 0,
        *,
        positions: ContentPositions | None = None,
        exclude: bool = True,
        outlier_factor: float | None = 10.0,
        eval_tokens=None,
        n_eval_seqs: int = 32,
        reuse: int = 1,
    ):

        self._forward = forward
        self.params, self.model_cfg = params, model_cfg
        self.layers = [int(i) for i in layers]
        for layer in self.layers:
            if not 0 <= layer < model_cfg.n_layers:
                raise ValueError(f"layer {layer} out of range for {model_cfg.n_layers} layers")
        self.tokens, self.batch_size = tokens, int(batch_size)
        self.seqs_per_step, self.seed = int(seqs_per_step), int(seed)
        self.n_layers, self.d_in = len(self.layers), model_cfg.d_model
        if positions is None:
            if callable(tokens):
                positions = content_positions(model_cfg=model_cfg, prefix="none")
            else:
                ids, mask = (np.asarray(a) for a in tokens)
                positions = content_positions(
                    model_cfg=model_cfg, prefix="data", ids=ids, mask=mask
                )
        self.positions, self.exclude, self.outlier_factor = positions, bool(exclude), outlier_factor
        self.eval_tokens, self.n_eval_seqs = eval_tokens, int(n_eval_seqs)
        if reuse < 1:
            raise ValueError(f"reuse must be >= 1, got {reuse}")
        self.reuse = int(reuse)
        self.last_counts: dict = {}
        self._cache = None
        # the model runs only up to the deepest requested layer (logits at the last position)
        top = max(self.layers) + 1
        self._run_cfg = dataclasses.replace(
            model_cfg,
            n_layers=top,
            sliding_layers=tuple(model_cfg.sliding_layers[:top]),
        )
        self._run_params = {
            **params,
            "layers": jax.tree.map(lambda a: a[:top], params["layers"]),
        }

    def describe(self) -> dict:
        return {
            "source": "model",
            "layers": self.layers,
            "content_rule": self.positions.describe(),
            "exclude_positions": self.exclude,
            "outlier_factor": self.outlier_factor,
        }

    def token_batch(self, step: int):
        if callable(self.tokens):
            return self.tokens(step)
        ids, mask = (np.asarray(a) for a in self.tokens)
        idx = _epoch_index(self.seed, step, self.seqs_per_step, ids.shape[0])
        return ids[idx], mask[idx]

    def describe_inputs(self) -> dict:
        """What the batches are made from (the model's parameters and the token arrays, all
        bytes), for the checkpoint folder's identity."""
        out = {"model": describe_tree(self.params, "model parameters")}
        if not callable(self.tokens):
            out["tokens"] = describe_tree(tuple(np.asarray(a) for a in self.tokens), "tokens")
        return out

    def _resid(self, ids, mask) -> np.ndarray:
        out = self._forward(
            self._run_params, self._run_cfg, jnp.asarray(ids), jnp.asarray(mask),
            return_residuals=True, last_logits_only=True,
        )  # fmt: skip
        resid = np.asarray(out.resid_post[np.asarray(self.layers)], np.float32)  # [L, b, T, d]
        return resid.reshape(self.n_layers, -1, self.d_in)

    def batch(self, step: int) -> np.ndarray:
        group = step // self.reuse  # ``reuse`` steps draw from one forward pass
        if self._cache is None or self._cache[0] != group:
            ids, mask = self.token_batch(group)
            self._cache = (group, ids, mask, self._resid(ids, mask))
        _, ids, mask, resid = self._cache
        real = np.asarray(mask).reshape(-1).astype(bool)
        content = np.asarray(self.positions.mask(ids, mask)).reshape(-1)
        valid = np.flatnonzero(content if self.exclude else real)
        if valid.size == 0:
            raise ValueError(f"step {step}: token batch has no training (content) tokens")
        out = _outliers(resid[:, valid], self.outlier_factor)  # [L, n_valid]
        rng = np.random.default_rng([self.seed, step, 1])
        self.last_counts = {
            "tokens": int(real.sum()),
            "excluded_positions": int(real.sum() - valid.size),
            "outliers": out.sum(1).tolist(),
        }
        if not out.any():
            pick = rng.choice(valid, self.batch_size, replace=valid.size < self.batch_size)
            return resid[:, pick]
        rows = []
        for layer in range(self.n_layers):
            ok = valid[~out[layer]]
            pick = rng.choice(ok, self.batch_size, replace=ok.size < self.batch_size)
            rows.append(resid[layer, pick])
        return np.stack(rows)

    def eval_batch(self, max_tokens: int = 8192):
        """Every real token of the evaluation sequences: (x [L, n, d], groups [L, n] int8:
        1 content, 0 excluded position, 2 outlier; positions [n] int: index from the first real
        token)."""
        if self.eval_tokens is not None:
            ids, mask = (np.asarray(a) for a in self.eval_tokens)
        elif callable(self.tokens):
            ids, mask = self.tokens(-1)
        else:
            ids, mask = (np.asarray(a) for a in self.tokens)
            rng = np.random.default_rng([self.seed, 7])
            pick = np.sort(rng.choice(len(ids), min(len(ids), self.n_eval_seqs), replace=False))
            ids, mask = ids[pick], mask[pick]
        xs, groups, pos = [], [], []
        for i in range(0, len(ids), self.seqs_per_step):
            b_ids, b_mask = ids[i : i + self.seqs_per_step], mask[i : i + self.seqs_per_step]
            real = np.asarray(b_mask).reshape(-1).astype(bool)
            resid = self._resid(b_ids, b_mask)[:, real]
            xs.append(resid)
            groups.append(np.asarray(self.positions.mask(b_ids, b_mask)).reshape(-1)[real])
            pos.append((np.cumsum(b_mask, -1) - 1).reshape(-1)[real])
        x, content, pos = np.concatenate(xs, 1), np.concatenate(groups), np.concatenate(pos)
        if x.shape[1] > max_tokens:
            keep = np.sort(
                np.random.default_rng([self.seed, 8]).choice(x.shape[1], max_tokens, False)
            )
            x, content, pos = x[:, keep], content[keep], pos[keep]
        g = np.broadcast_to(np.where(content, CONTENT, EXCLUDED_POSITION), x.shape[:2])
        # outliers relative to the content tokens' median norm
        norms = np.linalg.norm(x, axis=-1)
        ref = np.median(norms[:, content] if content.any() else norms, axis=1, keepdims=True)
        if self.outlier_factor:
            g = np.where(norms > float(self.outlier_factor) * ref, OUTLIER, g)
        return x, g.astype(np.int8), pos


# ----------------------------------------------------------------------------- JumpReLU STE
def _rect(u):
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu_ste(pre: ArrayLike, threshold: ArrayLike, bandwidth: float) -> jax.Array:
    """pre * (pre > threshold) with the rectangle-kernel pseudo-derivative in threshold.

    pre [..., S] pre-activations, threshold [S] (broadcast against ``pre``) -> [..., S]."""
    return pre * (pre > threshold)


def _jumprelu_fwd(pre, threshold, bandwidth):
    return jumprelu_ste(pre, threshold, bandwidth), (pre, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    pre, thr = res
    g_pre = g * (pre > thr)
    g_thr = -(thr / bandwidth) * _rect((pre - thr) / bandwidth) * g
    return g_pre, _sum_to(g_thr, thr.shape)


jumprelu_ste.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step_ste(pre: ArrayLike, threshold: ArrayLike, bandwidth: float) -> jax.Array:
    """Heaviside H(pre - threshold) with the rectangle-kernel pseudo-derivative in threshold.

    pre [..., S], threshold [S] -> [..., S] of 0/1 in ``pre``'s dtype."""
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth):
    return step_ste(pre, threshold, bandwidth), (pre, threshold)


def _step_bwd(bandwidth, res, g):
    pre, thr = res
    g_thr = -(1.0 / bandwidth) * _rect((pre - thr) / bandwidth) * g
    return jnp.zeros_like(pre), _sum_to(g_thr, thr.shape)


step_ste.defvjp(_step_fwd, _step_bwd)


def _sum_to(x, shape):
    return x.reshape((-1,) + tuple(shape)).sum(0)


# ----------------------------------------------------------------------------- train state
@struct.dataclass
class LayerState:
    """Training state of one layer's SAE (stacked over layers during training).

    sae: the SAE on scaled inputs (input_scale 1); opt_state: optax state;
    since_fired [d_sae] int32: steps since each latent last fired; scale: the input scale s.
    """

    sae: SAE
    opt_state: object
    since_fired: jax.Array
    scale: jax.Array


class StepMetrics(NamedTuple):
    loss: jax.Array
    mse: jax.Array
    fvu: jax.Array
    l0: jax.Array
    aux: jax.Array
    dead_fraction: jax.Array


def make_optimizer(tcfg: TrainConfig) -> optax.GradientTransformation:
    decay_start = int(tcfg.n_steps * (1 - tcfg.lr_decay_fraction))

    def schedule(count):
        warm = jnp.minimum(1.0, (count + 1) / max(tcfg.lr_warmup_steps, 1))
        decay_len = max(tcfg.n_steps - decay_start, 1)
        decay = jnp.clip((tcfg.n_steps - count) / decay_len, 0.0, 1.0)
        decay = jnp.where(count < decay_start, 1.0, decay)
        return tcfg.lr * warm * decay

    return optax.chain(
        optax.clip_by_global_norm(tcfg.grad_clip),
        optax.adam(schedule, b1=tcfg.adam_b1, b2=tcfg.adam_b2),
    )


def _unit_rows(w):
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-8)


def init_layer(key: jax.Array, tcfg: TrainConfig, x0: ArrayLike, scale: float) -> LayerState:
    """One layer's initial state. x0 [B, d_in]: a first (unscaled) batch; b_dec starts at its mean.

    Decoder rows random unit vectors; W_enc = W_dec^T; b_enc = 0; threshold = init_threshold.
    """
    d_in = x0.shape[-1]
    cfg = tcfg.sae_config(d_in)
    w_dec = _unit_rows(jax.random.normal(key, (tcfg.d_sae, d_in)))
    thr = tcfg.init_threshold if tcfg.architecture == "jumprelu" else 0.0
    sae = SAE(
        W_enc=w_dec.T,
        b_enc=jnp.zeros((tcfg.d_sae,)),
        W_dec=w_dec,
        b_dec=jnp.mean(x0 * scale, axis=0),
        threshold=jnp.full((tcfg.d_sae,), thr, jnp.float32),
        cfg=cfg,
    )
    opt_state = make_optimizer(tcfg).init(sae)
    return LayerState(sae, opt_state, jnp.zeros((tcfg.d_sae,), jnp.int32), jnp.float32(scale))


def _loss(sae: SAE, x, tcfg: TrainConfig, coeff, dead):
    """Loss on scaled inputs x [B, d]; returns (loss, (metrics parts, f))."""
    pre = sae_lib.encode_pre(sae, x)
    arch = tcfg.architecture
    sparsity = jnp.float32(0.0)
    if arch == "jumprelu":
        thr = sae.threshold
        f = jumprelu_ste(pre, thr, tcfg.bandwidth)
        sparsity = coeff * step_ste(pre, thr, tcfg.bandwidth).sum(-1).mean()
    elif arch == "relu":
        f = jax.nn.relu(pre)
        sparsity = coeff * (f * jnp.linalg.norm(sae.W_dec, axis=-1)).sum(-1).mean()
    elif arch == "topk":
        f = sae_lib.activation(sae, pre)
    else:
        f = sae_lib.batchtopk_train(pre, tcfg.k)
    x_hat = sae_lib.decode(sae, f)
    err = x_hat - x
    mse = jnp.mean(err**2)
    aux = jnp.float32(0.0)
    if arch in ("topk", "batchtopk"):
        aux_k = min(tcfg.aux_k or max(x.shape[-1] // 2, 1), tcfg.d_sae)
        resid = jax.lax.stop_gradient(-err)
        dead_pre = jnp.where(dead, jax.nn.relu(pre), 0.0)
        f_aux = sae_lib.topk_mask(dead_pre, aux_k)
        e_hat = f_aux @ sae.W_dec
        var = jnp.sum((resid - resid.mean(0)) ** 2, -1).mean()
        aux_raw = jnp.sum((e_hat - resid) ** 2, -1).mean() / jnp.maximum(var, 1e-8)
        aux = jnp.where(dead.any(), aux_raw, 0.0)
    loss = mse + sparsity + tcfg.aux_coeff * aux
    return loss, (mse, aux, f)


def _layer_step(state: LayerState, x, step, tcfg: TrainConfig):
    """One optimizer step for one layer on an unscaled batch x [B, d]."""
    x = x * state.scale
    warm = jnp.minimum(1.0, (step + 1) / max(tcfg.sparsity_warmup_steps, 1))
    coeff = tcfg.sparsity_coeff * warm
    dead = state.since_fired >= tcfg.dead_steps
    (loss, (mse, aux, f)), grads = jax.value_and_grad(_loss, has_aux=True)(
        state.sae, x, tcfg, coeff, dead
    )
    w = state.sae.W_dec
    g_par = jnp.sum(grads.W_dec * w, axis=-1, keepdims=True) * w
    grads = grads.replace(W_dec=grads.W_dec - g_par)
    if tcfg.architecture != "jumprelu":
        grads = grads.replace(threshold=jnp.zeros_like(grads.threshold))
    updates, opt_state = make_optimizer(tcfg).update(grads, state.opt_state, state.sae)
    sae = optax.apply_updates(state.sae, updates)
    sae = sae.replace(W_dec=_unit_rows(sae.W_dec))
    if tcfg.architecture == "jumprelu":
        sae = sae.replace(threshold=jnp.maximum(sae.threshold, 0.0))
    elif tcfg.architecture == "batchtopk":
        kept_min = jnp.min(jnp.where(f > 0, f, jnp.inf))
        kept_min = jnp.where(jnp.isfinite(kept_min), kept_min, state.sae.threshold[0])
        m = tcfg.batchtopk_momentum
        first = step == 0
        new = jnp.where(first, kept_min, m * state.sae.threshold[0] + (1 - m) * kept_min)
        sae = sae.replace(threshold=jnp.full_like(sae.threshold, new))
    fired = (f > 0).any(0)
    since = jnp.where(fired, 0, state.since_fired + 1)
    var = jnp.mean(jnp.sum((x - x.mean(0)) ** 2, -1))
    fvu = jnp.mean(jnp.sum((sae_lib.decode(state.sae, f) - x) ** 2, -1)) / var
    metrics = StepMetrics(
        loss=loss,
        mse=mse,
        fvu=fvu,
        l0=(f > 0).sum(-1).mean(),
        aux=aux,
        dead_fraction=(since >= tcfg.dead_steps).mean(),
    )
    return LayerState(sae, opt_state, since, state.scale), metrics


@functools.partial(jax.jit, static_argnames=("tcfg",), donate_argnums=(0,))
def train_step(
    states: LayerState, x: ArrayLike, step: ArrayLike, tcfg: TrainConfig
) -> tuple[LayerState, StepMetrics]:
    """One step for all layers: states stacked [L, ...], x [L, B, d_in] unscaled, step int32.
    Returns the new states and the step's metrics, both stacked [L, ...]."""
    return jax.vmap(_layer_step, in_axes=(0, 0, None, None))(states, x, step, tcfg)


# ----------------------------------------------------------------------------- group metrics
SMALL_FRACTION = 0.1  # warn when at most this fraction of the tokens ...
DOMINATION_SHARE = 0.5  # ... holds at least this share of the variance


def variance_concentration(x: ArrayLike, share: float = DOMINATION_SHARE) -> np.ndarray:
    """The smallest fraction of tokens that holds ``share`` of the variance (squared distance
    to the mean), per layer: x [L, N, d_in] -> [L]. Somewhat below ``share`` for homogeneous data
    (about 0.3-0.45 for half the variance); near 0 when a few sink tokens (BOS, a template
    header) dominate."""
    x = np.asarray(x, np.float64)
    dev = np.sum((x - x.mean(1, keepdims=True)) ** 2, -1)  # [L, n]
    cum = np.cumsum(-np.sort(-dev, axis=1), axis=1) / np.maximum(dev.sum(1, keepdims=True), 1e-30)
    return (np.argmax(cum >= share, axis=1) + 1) / dev.shape[1]


@jax.jit
def _group_stats(sae: SAE, x, w):
    """x [n, d], w [G, n] 0/1 group weights -> per-group sums [G] (see :func:`group_metrics`)."""
    f = sae_lib.encode(sae, x)
    xh = sae_lib.decode(sae, f).astype(jnp.float32)
    x = x.astype(jnp.float32)
    on = (f > 0).astype(jnp.float32)
    cnt = w.sum(1)
    err = jnp.sum((xh - x) ** 2, -1)
    dev_all = jnp.sum((x - x.mean(0)) ** 2, -1)

    def sst(wg):
        mean = (wg @ x) / jnp.maximum(wg.sum(), 1.0)
        return wg @ jnp.sum((x - mean) ** 2, -1)

    cos = jnp.sum(x * xh, -1) / jnp.maximum(
        jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(xh, axis=-1), 1e-12
    )
    return {
        "n": cnt,
        "sse": w @ err,
        "sst": jax.vmap(sst)(w),
        "l0_sum": w @ on.sum(-1),
        "cos_sum": w @ cos,
        "alive": ((w @ on) > 0).mean(-1),
        "var_share": (w @ dev_all) / jnp.maximum(dev_all.sum(), 1e-30),
    }


def group_metrics(sae: SAE, x: ArrayLike, groups: ArrayLike) -> dict:
    """Reconstruction metrics of one layer's SAE per token group.

    x [N, d_in] activations (the SAE's input space); groups [N] int labels (1 content, 0
    excluded position, 2 norm outlier; see the sources' ``eval_batch``). Returns
    {group: {fvu, l0, alive_fraction, dead_fraction, cosine, n_tokens, variance_share}} for the
    groups ``all``, ``content`` and ``excluded`` (= not content). fvu = sum ||x_hat - x||^2 /
    sum ||x - mean_group||^2 over the group's tokens; cosine: mean cos(x, x_hat); alive: latents
    firing on at least one of the group's tokens; variance_share: the group's share of the
    total squared distance to the overall mean. Empty groups give NaN metrics."""
    g = np.asarray(groups)
    w = np.stack([g >= 0, g == CONTENT, g != CONTENT]).astype(np.float32)
    st = {k: np.asarray(v, np.float64) for k, v in _group_stats(sae, jnp.asarray(x), w).items()}
    out = {}
    for i, name in enumerate(GROUP_NAMES):
        n = st["n"][i]
        empty = n == 0
        nan = float("nan")
        out[name] = {
            "fvu": nan if empty else float(st["sse"][i] / max(st["sst"][i], 1e-30)),
            "l0": nan if empty else float(st["l0_sum"][i] / n),
            "alive_fraction": nan if empty else float(st["alive"][i]),
            "dead_fraction": nan if empty else float(1 - st["alive"][i]),
            "cosine": nan if empty else float(st["cos_sum"][i] / n),
            "n_tokens": int(n),
            "variance_share": float(st["var_share"][i]),
        }
    return out


def _warn(msg: str, warnings_out: list) -> None:
    import sys
    import warnings

    warnings_out.append(msg)
    warnings.warn(msg, stacklevel=3)
    print(f"\n*** WARNING: {msg}\n", file=sys.stderr, flush=True)


def position_shares(x: ArrayLike, positions: ArrayLike, top: int = 5) -> list:
    """The ``top`` position indices holding the most variance of x [N, d_in]: [(position, share)]
    (positions [N] int from the first real token; empty when unknown, i.e. all -1)."""
    positions = np.asarray(positions)
    if positions.size == 0 or (positions < 0).all():
        return []
    dev = np.sum((x - x.mean(0)) ** 2, -1)
    tot = max(dev.sum(), 1e-30)
    shares = {int(p): float(dev[positions == p].sum() / tot) for p in np.unique(positions)}
    return sorted(shares.items(), key=lambda kv: -kv[1])[:top]


# ----------------------------------------------------------------------------- loop
class TrainingInterrupted(Exception):
    """Raised by :func:`train_sae` when ``stop_after`` steps are done (checkpoint saved)."""

    def __init__(self, step: int):
        super().__init__(f"training stopped after step {step} (checkpoint saved)")
        self.step = step


@dataclasses.dataclass
class TrainResult:
    """saes: one trained SAE per source layer (input scale folded in); layers: their model
    layer indices; history: logged metrics per step (per layer lists); state: final stacked
    training state."""

    saes: list
    layers: list
    history: list
    state: LayerState
    # data: the source's description, token counts (tokens seen, excluded positions, outliers
    # per layer, over the steps run by this call) and the smallest fraction of training tokens
    # holding half the variance (:func:`variance_concentration`); eval: per layer, metrics of
    # the final SAE per token group (:func:`group_metrics`); warnings: the loud ones (sink
    # domination), also issued.
    data: dict = dataclasses.field(default_factory=dict)
    eval: list = dataclasses.field(default_factory=list)
    warnings: list = dataclasses.field(default_factory=list)

    def sae_set(self) -> dict:
        return dict(zip(self.layers, self.saes))


def init_states(
    source: ArraySource | ModelSource, tcfg: TrainConfig, batches: list[ArrayLike] | None = None
) -> LayerState:
    """Stacked initial states [L, ...]; the input scale per layer from the first batches
    (``batches``: those batches, each [L, B, d_in], if already drawn)."""
    if batches is None:
        batches = [np.asarray(source.batch(i), np.float32) for i in range(tcfg.norm_batches)]
    acts = np.concatenate(batches, axis=1)  # [L, n, d]
    if tcfg.normalize_input:
        mean_norm = np.linalg.norm(acts, axis=-1).mean(-1)
        scale = math.sqrt(source.d_in) / np.maximum(mean_norm, 1e-12)
    else:
        scale = np.ones(source.n_layers)
    keys = jax.random.split(jax.random.PRNGKey(tcfg.seed), source.n_layers)
    states = [
        init_layer(keys[i], tcfg, jnp.asarray(batches[0][i]), float(scale[i]))
        for i in range(source.n_layers)
    ]
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def warm_start(states: LayerState, saes: SAE) -> LayerState:
    """``states`` with SAEs that compute the same function as ``saes`` (stacked [L, ...], e.g.
    loaded from disk with :func:`refusal_jax.study.runs.load_saes`), moved into the training's
    scaled input space; optimizer state and firing counters stay fresh.

    Fine-tuning from trained SAEs (:func:`train_sae` ``init=``) keeps their features' identities
    while lowering the reconstruction error. The layer count, d_in and width must match."""
    want = (states.scale.shape[0],) + tuple(states.sae.W_dec.shape[1:])
    got = tuple(saes.W_dec.shape)
    if got != want:
        raise ValueError(f"warm start: SAEs of shape {got} (layers, d_sae, d_in), training {want}")
    if saes.cfg.input_scale != 1.0:
        saes = sae_lib.fold_input_scale(saes)
    s = states.scale.astype(jnp.float32)
    # exported = (W_enc * s, W_dec / s, b_dec / s) of the training SAE (see export_saes)
    w_enc = saes.W_enc / s[:, None, None]
    w_dec = saes.W_dec * s[:, None, None]
    b_dec = saes.b_dec * s[:, None]
    b_enc = saes.b_enc
    uses_b_dec = lambda cfg: bool(cfg.apply_b_dec_to_input)
    if uses_b_dec(states.sae.cfg) and not uses_b_dec(saes.cfg):
        b_enc = b_enc + jnp.einsum("ld,lds->ls", b_dec, w_enc)
    elif uses_b_dec(saes.cfg) and not uses_b_dec(states.sae.cfg):
        b_enc = b_enc - jnp.einsum("ld,lds->ls", b_dec, w_enc)
    sae = states.sae.replace(
        W_enc=w_enc, b_enc=b_enc, W_dec=w_dec, b_dec=b_dec, threshold=saes.threshold
    )
    return states.replace(sae=jax.tree.map(lambda a: a.astype(jnp.float32), sae))


def export_saes(states: LayerState) -> list[SAE]:
    """Trained SAEs (one per stacked layer of ``states`` [L, ...]), scale folded into the
    weights (input_scale 1)."""
    out = []
    for i in range(states.scale.shape[0]):
        sae = sae_lib.sae_layer(states.sae, i)
        cfg = dataclasses.replace(sae.cfg, input_scale=float(states.scale[i]), normalization=None)
        out.append(sae_lib.fold_input_scale(sae.replace(cfg=cfg)))
    return out


def _manager(ckpt_dir, keep: int = 2):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=opts)


def _run_identity(tcfg: TrainConfig, source, init=None, inputs=None) -> Identity:
    """The identity of a training run: its config, layers, d_in, what the batches are made from
    (``inputs``, else ``source.describe_inputs()``) and the warm-start SAEs."""
    layers = getattr(source, "layers", list(range(source.n_layers)))
    settings = {
        "train_config": dataclasses.asdict(tcfg),
        "d_in": source.d_in,
        "n_layers": source.n_layers,
        "layers": [int(i) for i in layers],
        "source": {
            k: int(getattr(source, k))
            for k in ("batch_size", "seqs_per_step", "seed")
            if hasattr(source, k)
        },
    }
    if hasattr(source, "describe"):  # which tokens are trained on (positions, outliers)
        settings["data"] = source.describe()
    if inputs is None:
        inputs = source.describe_inputs() if hasattr(source, "describe_inputs") else {}
    inputs = dict(inputs)
    model = inputs.pop("model", None)
    data = inputs.pop("tokens", None) or inputs.pop("activations", None)
    saes = None if init is None else describe_tree(init, "warm-start SAEs")
    return Identity(model, saes, data, settings, inputs)


def _check_config(ckpt_dir: Path, ident: Identity) -> None:
    """Record ``ident`` in a new checkpoint folder, or refuse one made by another run, naming
    every difference (other layers, tokens, model, config, ...)."""
    old = Identity.load(ckpt_dir)
    if old is None and (ckpt_dir / "train_config.json").exists():
        raise IdentityMismatch(
            f"{ckpt_dir} holds a run with a different configuration (recorded before "
            f"identities: no {IDENTITY_FILE}): use a new checkpoint folder"
        )
    if old is not None:
        diffs = diff(old, ident)
        if diffs:
            raise IdentityMismatch(
                f"{ckpt_dir} holds a run with a different configuration: {'; '.join(diffs)}; "
                "use a new checkpoint folder"
            )
        return
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ident.save(ckpt_dir)


def _read_history(ckpt_dir: Path, upto: int) -> list:
    """The logged records of the steps <= ``upto`` saved with the checkpoints (a damaged
    history file is named in a warning and replaced by an empty one)."""
    path = ckpt_dir / "history.json"
    if not path.exists():
        return []
    ok, hist = read_checked_json(path)
    return [r for r in hist if r["step"] <= upto] if ok else []


def train_sae(
    source: ArraySource | ModelSource,
    tcfg: TrainConfig,
    ckpt_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    stop_after: int | None = None,
    log_every: int = 10,
    progress: bool = True,
    init: SAE | None = None,
    inputs: dict | None = None,
) -> TrainResult:
    """Train one SAE per source layer (all layers in one vmapped step).

    With ``ckpt_dir`` the state is checkpointed (orbax) every ``checkpoint_every`` steps, on
    KeyboardInterrupt and at the end, and a run restarted with the same folder resumes from the
    latest checkpoint; because batches and initialization depend only on (seed, step), the
    result equals an uninterrupted run's. ``stop_after=n`` simulates a kill: after step n the
    state is saved and :class:`TrainingInterrupted` is raised. ``init``: stacked SAEs to start
    from (fine-tuning, see :func:`warm_start`) instead of a random initialization.

    The checkpoint folder records the run's identity (``identity.json``: config, layers, d_in,
    what the batches are made from - ``inputs``, records of
    :func:`refusal_jax.core.identity.describe_input` by name ("model", "tokens", "activations"),
    else ``source.describe_inputs()`` - and the warm-start SAEs); a folder made by another run is
    refused naming the difference. ``history`` holds every logged record since step 0, across
    resumes (saved with each checkpoint), also when the run had already finished.
    """
    from tqdm.auto import tqdm

    first = [np.asarray(source.batch(i), np.float32) for i in range(tcfg.norm_batches)]
    warns: list = []
    share = variance_concentration(np.concatenate(first, axis=1))
    counts = {"tokens": 0, "excluded_positions": 0, "outliers": [0] * source.n_layers}
    data = {
        **(source.describe() if hasattr(source, "describe") else {}),
        "half_variance_token_fraction": share.tolist(),
        "counts": counts,
    }
    for i, v in enumerate(share):
        if v <= SMALL_FRACTION:
            _warn(
                f"layer {source.layers[i] if hasattr(source, 'layers') else i}: "
                f"{v:.1%} of the training tokens hold half of the variance: the SAE "
                "will learn these few tokens (attention sinks: BOS, template header?). Exclude "
                "them (the default position rule, outlier_factor) or check the data.",
                warns,
            )
    evalset = source.eval_batch() if hasattr(source, "eval_batch") else None
    if evalset is not None:
        x_ev, g_ev, pos_ev = evalset
        data["eval_tokens"] = int(x_ev.shape[1])
        data["eval_groups"] = {
            "content": int((g_ev[0] == CONTENT).sum()),
            "excluded_positions": int((g_ev[0] == EXCLUDED_POSITION).sum()),
            "outliers": (g_ev == OUTLIER).sum(1).tolist(),
        }
        data["variance_by_position"] = [position_shares(x_ev[i], pos_ev) for i in range(len(x_ev))]
        trained_on_excluded = not getattr(source, "exclude", True)
        for i in range(len(x_ev)):
            exc = g_ev[i] != CONTENT
            dev = np.sum((x_ev[i] - x_ev[i].mean(0)) ** 2, -1)
            exc_share = float(dev[exc].sum() / max(dev.sum(), 1e-30))
            if trained_on_excluded and exc_share > DOMINATION_SHARE:
                _warn(
                    f"layer {source.layers[i]}: the excluded positions ({exc.mean():.0%} of "
                    f"tokens) hold {exc_share:.0%} of the variance and training includes them "
                    f"(exclusion off): the reported overall FVU measures them, not the content",
                    warns,
                )

    def eval_metrics(states_now):
        out = []
        for i in range(source.n_layers):
            sae_i = sae_lib.sae_layer(states_now.sae, i)
            x_i = jnp.asarray(x_ev[i]) * states_now.scale[i]
            out.append(group_metrics(sae_i, x_i, g_ev[i]))
        return out

    states = init_states(source, tcfg, first)
    if init is not None:
        states = warm_start(states, init)
    start, mngr = 0, None
    if ckpt_dir is not None:
        import orbax.checkpoint as ocp

        ckpt_dir = Path(ckpt_dir)
        _check_config(ckpt_dir, _run_identity(tcfg, source, init, inputs))
        mngr = _manager(ckpt_dir)
        latest = mngr.latest_step()
        if latest is not None:
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, states)
            states = mngr.restore(latest, args=ocp.args.StandardRestore(abstract))
            start = int(latest)
    history = [] if ckpt_dir is None else _read_history(ckpt_dir, start)

    def save(step):
        if mngr is not None:
            import orbax.checkpoint as ocp

            # the history first: a checkpoint never lacks the records of its steps
            write_checked_json(ckpt_dir / "history.json", history)
            if mngr.latest_step() != step:
                mngr.save(step, args=ocp.args.StandardSave(states))
            mngr.wait_until_finished()

    bar = tqdm(range(start, tcfg.n_steps), initial=start, total=tcfg.n_steps, disable=not progress)
    done = start  # finished steps, the step count of ``states``
    try:
        for step in bar:
            x = jnp.asarray(source.batch(step), jnp.float32)
            _add_counts(counts, getattr(source, "last_counts", None))
            (states, m), done = train_step(states, x, jnp.int32(step), tcfg), step + 1
            if done % log_every == 0 or done == tcfg.n_steps:
                rec = {"step": done, **{k: np.asarray(v).tolist() for k, v in m._asdict().items()}}
                check_finite(rec["loss"], f"SAE training loss at step {done} (per layer)")
                post = {
                    "fvu": f"{np.mean(rec['fvu']):.3f}",
                    "l0": f"{np.mean(rec['l0']):.1f}",
                    "dead": f"{np.mean(rec['dead_fraction']):.2f}",
                }
                if evalset is not None:
                    ev = eval_metrics(states)
                    rec["groups"] = {
                        g: {k: [e[g][k] for e in ev] for k in ev[0][g]} for g in GROUP_NAMES
                    }
                    post["fvu_content"] = f"{np.mean(rec['groups']['content']['fvu']):.3f}"
                    excl = [v for v in rec["groups"]["excluded"]["fvu"] if v == v]
                    post["fvu_excl"] = f"{np.mean(excl):.3f}" if excl else "-"
                    post["cos_content"] = f"{np.mean(rec['groups']['content']['cosine']):.2f}"
                history.append(rec)
                bar.set_postfix(**post)
            if done % checkpoint_every == 0:
                save(done)
            if stop_after is not None and done >= stop_after and done < tcfg.n_steps:
                save(done)
                raise TrainingInterrupted(done)
    except KeyboardInterrupt:
        save(done)
        raise
    finally:
        bar.close()
    saes = export_saes(states)
    check_finite_tree(saes, f"SAE training result after {tcfg.n_steps} steps")
    save(tcfg.n_steps)
    if mngr is not None:
        mngr.close()
    layers = getattr(source, "layers", list(range(source.n_layers)))
    final = []
    if evalset is not None:
        final = [group_metrics(saes[i], x_ev[i], g_ev[i]) for i in range(len(saes))]
    return TrainResult(saes, list(layers), history, states, data, final, warns)


def _add_counts(total: dict, c) -> None:
    if not c:
        return
    total["tokens"] += int(c.get("tokens", 0))
    total["excluded_positions"] += int(c.get("excluded_positions", 0))
    for i, v in enumerate(c.get("outliers", ())):
        total["outliers"][i] += int(v)


# ----------------------------------------------------------------------------- evaluation
@jax.jit
def reconstruction_metrics(sae: SAE, x: ArrayLike) -> dict[str, jax.Array]:
    """FVU, mean L0 and fraction of latents that never fire on x [N, d_in] (inference encode);
    scalars."""
    f = sae_lib.encode(sae, x)
    x_hat = sae_lib.decode(sae, f)
    var = jnp.sum((x - x.mean(0)) ** 2)
    return {
        "fvu": jnp.sum((x_hat - x) ** 2) / var,
        "l0": (f > 0).sum(-1).mean(),
        "dead_fraction": 1.0 - (f > 0).any(0).mean(),
    }


@functools.partial(jax.jit, static_argnames=("model_cfg",))
def _ce_three_ways(params, model_cfg, patch, zero_patch, ids, mask):

    w = mask[:, 1:] * mask[:, :-1]  # both the context and the target are real tokens
    ce = lambda p: next_token_ce(forward_fn(params, model_cfg, ids, mask, p).logits, ids, w)
    return ce(None), ce(patch), ce(zero_patch)


@struct.dataclass
class OnPositions:
    """Patch applying ``inner`` only where ``where`` [B, T] is set (elsewhere x passes)."""

    inner: object
    where: jax.Array

    def __call__(self, x, layer, ctx):
        return jnp.where(self.where[..., None], self.inner(x, layer, ctx), x)


def ce_loss_recovered(
    params: dict,
    model_cfg: ModelConfig,
    sae: SAE,
    layer: int,
    ids: ArrayLike,
    mask: ArrayLike,
    positions: ContentPositions | None = None,
) -> dict:
    """CE loss with the SAE spliced into resid_post of ``layer`` (error term removed).
    ids [B, T] int, mask [B, T].

    Returns ce_clean, ce_spliced, ce_zero (resid_post zeroed at that layer) and
    recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean). With ``positions`` (the content
    rule the SAE was trained with) the splice and the zeroing touch only content positions
    (an SAE trained without the sinks is not meant to reconstruct them).
    """
    patch = sae_lib.splice_patch({int(layer): sae}, model_cfg.n_layers)
    zero = sae_lib.ZeroAblate(patch.layer_mask)
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    if positions is not None:
        where = positions.mask(ids, mask)
        patch, zero = OnPositions(patch, where), OnPositions(zero, where)
    clean, spliced, zeroed = (
        float(v) for v in _ce_three_ways(params, model_cfg, patch, zero, ids, mask)
    )
    return {
        "ce_clean": clean,
        "ce_spliced": spliced,
        "ce_zero": zeroed,
        "recovered": (zeroed - spliced) / (zeroed - clean) if zeroed != clean else float("nan"),
    }
