"""Reading and writing SAE files: GemmaScope, SAELens, LlamaScope, EleutherAI sparsify.

Readers return a :class:`refusal_jax.sae.SAE` (float32 by default) and are liberal in what they
accept; writers (SAELens, GemmaScope) write one canonical layout. No torch, no pickle: ``.npz``
through ``np.load(allow_pickle=False)``, safetensors through :mod:`ports.safetensors_io`.

Layouts (see docs/FORMATS.md):

- GemmaScope: ``params.npz`` with ``W_enc [d, S]``, ``W_dec [S, d]``, ``b_enc [S]``, ``b_dec [d]``,
  ``threshold [S]``; tree ``layer_{l}/width_{w}/average_l0_{n}/params.npz``.
- Gemma Scope 2 (Gemma 3): ``params.safetensors`` with lower-case ``w_enc [d, S]``,
  ``w_dec [S, d]``, ``b_enc``, ``b_dec``, ``threshold`` and a ``config.json`` (``hf_hook_point_in``
  ``model.layers.{l}.output``, ``width``, ``l0``, ``architecture`` "jump_relu", ``type``);
  folders ``<site>/layer_{l}_width_{w}_l0_{small|medium|big}[_affine]`` in the
  ``google/gemma-scope-2-<size>-<pt|it>`` repositories. Same JumpReLU as GemmaScope (no input
  normalization, b_dec not subtracted). Transcoders (``affine_skip_connection``, MLP-in ->
  MLP-out hooks) are refused: the method clamps residual-stream features.
- SAELens: ``cfg.json`` + ``sae_weights.safetensors`` (same array names and orientation).
- LlamaScope: ``hyperparams.json`` + ``checkpoints/final.safetensors`` with ``encoder.weight
  [S, d]``, ``encoder.bias``, ``decoder.weight [d, S]``, ``decoder.bias``; dataset-wise input
  normalization folded into the weights on load.
- sparsify: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight [S, d]``, ``encoder.bias``,
  ``W_dec [S, d]``, ``b_dec`` (subtracted from the input); TopK.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ports.safetensors_io import CheckpointError, load_file, save_file
from refusal_jax import sae as sae_lib
from refusal_jax.core.io import read_json_file
from refusal_jax.sae import SAE, SAEConfig


class SAEFormatError(CheckpointError):
    """An SAE file is missing, malformed, or does not match what is expected."""


SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
LLAMASCOPE_CFG, LLAMASCOPE_WEIGHTS = "hyperparams.json", "checkpoints/final.safetensors"
GEMMASCOPE_FILE = "params.npz"
GEMMASCOPE2_FILE, GEMMASCOPE2_CFG = "params.safetensors", "config.json"
# Gemma Scope 2 sites that hold residual-stream SAEs, searched in this order under a release root.
GEMMASCOPE2_RESID_SITES = ("resid_post_all", "resid_post")
GEMMASCOPE2_DIR_RE = re.compile(r"^layer_(\d+)_width_(\d+[km]?)_l0_([a-z0-9]+?)(_affine)?$")


# ----------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict:
    out = read_json_file(path, SAEFormatError)
    if not isinstance(out, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, got {type(out).__name__}")
    return out


def _config_and_weights(folder: Path, cfg_name: str, weights_name: str):
    """(config dict, weights path, arrays) of a folder holding a JSON config and safetensors."""
    raw = _read_json(folder / cfg_name)
    wpath = folder / weights_name
    if not wpath.exists():
        raise SAEFormatError(f"{wpath}: file not found")
    return raw, wpath, dict(load_file(wpath))


def _get(arrays: dict, key: str, where) -> np.ndarray:
    if key not in arrays:
        raise SAEFormatError(f"{where}: missing array {key!r} (has {sorted(arrays)})")
    a = np.asarray(arrays[key])
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise SAEFormatError(f"{where}: array {key!r} has dtype {a.dtype}, expected a float type")
    return a


def _expect(name: str, a: np.ndarray, shape: tuple, where) -> None:
    if tuple(a.shape) != tuple(shape):
        raise SAEFormatError(f"{where}: {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")


def _bool(cfg: dict, key: str, default: bool, where) -> bool:
    """A boolean config field, parsed strictly: JSON true/false, 0/1 or the strings "true" /
    "false" (any case); anything else is an error naming the key (``bool("false")`` is True)."""
    v = cfg.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise SAEFormatError(f"{where}: {key}={v!r} is not a boolean (true/false)")


def check_hook(hook, where) -> None:
    """Refuse an SAE whose hook is not the residual stream after a layer (``attn_out``,
    ``mlp_out``, ``hook_z``, ``resid_pre``, ...): the method reads and patches resid_post."""
    if hook in (None, ""):
        return
    name = str(hook)
    if not re.search(r"resid_post$", name):
        raise SAEFormatError(
            f"{where}: SAE hook {name!r} is not a resid_post hook (only residual-stream SAEs "
            "after a layer, e.g. blocks.L.hook_resid_post, are supported)"
        )


def _build(arrays: dict, cfg: SAEConfig, where, expected_d_in=None, dtype=jnp.float32) -> SAE:
    """SAE from numpy arrays in our orientation, after strict shape checks, finite values and
    non-negative thresholds."""
    if expected_d_in is not None and cfg.d_in != expected_d_in:
        raise SAEFormatError(
            f"{where}: SAE d_in is {cfg.d_in} but the model's d_model is {expected_d_in}"
        )
    for name, shape in sae_lib.param_shapes(cfg).items():
        _expect(name, arrays[name], shape, where)
        a = np.asarray(arrays[name], np.float32)
        if not np.isfinite(a).all():
            n_bad = int((~np.isfinite(a)).sum())
            raise SAEFormatError(f"{where}: tensor {name} has {n_bad} NaN or infinite values")
    if (np.asarray(arrays["threshold"], np.float32) < 0).any():
        raise SAEFormatError(f"{where}: tensor threshold has negative values")
    if cfg.input_scale is not None and not (
        math.isfinite(float(cfg.input_scale)) and float(cfg.input_scale) > 0
    ):
        raise SAEFormatError(f"{where}: input scale {cfg.input_scale} is not a positive number")
    return SAE(
        **{k: jnp.asarray(np.asarray(v, np.float32), dtype) for k, v in arrays.items()}, cfg=cfg
    )


def _np(sae: SAE) -> dict[str, np.ndarray]:
    if sae.W_enc.ndim != 2:
        raise ValueError(f"write one SAE at a time (W_enc has shape {sae.W_enc.shape})")
    return {k: np.asarray(getattr(sae, k), np.float32) for k in sae_lib.param_shapes(sae.cfg)}


def _widths(arrays: dict, where) -> tuple[int, int]:
    w = _get(arrays, "W_enc", where)
    if w.ndim != 2:
        raise SAEFormatError(f"{where}: W_enc must be 2-D [d_in, d_sae], got shape {w.shape}")
    return int(w.shape[0]), int(w.shape[1])


# ----------------------------------------------------------------------------- GemmaScope
def load_gemmascope(path, expected_d_in=None, dtype=jnp.float32) -> SAE:
    """A GemmaScope JumpReLU SAE from ``params.npz`` (or a folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / GEMMASCOPE_FILE
    if not path.exists():
        raise SAEFormatError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise SAEFormatError(f"{path}: not a readable npz without pickle: {e}") from e
    d_in, d_sae = _widths(arrays, path)
    out = {k: _get(arrays, k, path) for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    cfg = SAEConfig("jumprelu", d_in, d_sae)
    return _build(out, cfg, path, expected_d_in, dtype)


def save_gemmascope(sae: SAE, path) -> Path:
    """Write ``params.npz`` (a folder or a ``.npz`` path). Input scaling and b_dec-on-input are
    folded into the weights exactly; relu SAEs become JumpReLU with threshold 0."""
    if sae.cfg.architecture not in ("relu", "jumprelu", "batchtopk"):
        raise ValueError(f"a {sae.cfg.architecture} SAE cannot be written as GemmaScope (JumpReLU)")
    sae = sae_lib.fold_b_dec_into_b_enc(sae_lib.fold_input_scale(sae))
    arrays = _np(sae)
    if sae.cfg.architecture == "relu":
        arrays["threshold"] = np.zeros_like(arrays["threshold"])
    path = Path(path)
    if path.suffix != ".npz":
        path.mkdir(parents=True, exist_ok=True)
        path = path / GEMMASCOPE_FILE
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


_WIDTH_RE = re.compile(r"^width_(\d+)([km]?)$")
_L0_RE = re.compile(r"^average_l0_(\d+)$")


def _parse_width(name: str) -> int | None:
    m = _WIDTH_RE.match(name)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2)]


def find_gemmascope(root, layer: int, width, target_l0: float = 100) -> Path:
    """The ``params.npz`` under ``root/layer_{layer}/width_{w}/average_l0_{n}`` with n closest to
    ``target_l0`` (ties: the smaller n). ``width`` is an int (16384) or a folder tag ("16k")."""
    base = Path(root) / f"layer_{layer}"
    if not base.is_dir():
        raise FileNotFoundError(f"no GemmaScope folder {base}")
    want = _parse_width(f"width_{width}") if isinstance(width, str) else int(width)
    wdirs = [d for d in base.iterdir() if d.is_dir() and _parse_width(d.name) == want]
    if not wdirs:
        have = sorted(d.name for d in base.iterdir() if d.is_dir())
        raise FileNotFoundError(f"{base}: no width_{width} folder (have {have})")
    cands = []
    for wd in wdirs:
        for d in wd.iterdir():
            m = _L0_RE.match(d.name)
            if m and (d / GEMMASCOPE_FILE).exists():
                cands.append((abs(int(m.group(1)) - target_l0), int(m.group(1)), d))
    if not cands:
        raise FileNotFoundError(f"{wdirs[0]}: no average_l0_*/{GEMMASCOPE_FILE}")
    return min(cands, key=lambda c: (c[0], c[1]))[2] / GEMMASCOPE_FILE


# ----------------------------------------------------------------------------- Gemma Scope 2
def load_gemmascope2(folder, expected_d_in=None, dtype=jnp.float32) -> SAE:
    """A Gemma Scope 2 residual-stream JumpReLU SAE: a folder with ``params.safetensors``
    (``w_enc [d, S]``, ``w_dec [S, d]``, ``b_enc [S]``, ``b_dec [d]``, ``threshold [S]``) and,
    as released, ``config.json``. Encodes ``f = relu(pre) * (pre > threshold)`` with
    ``pre = x @ w_enc + b_enc`` and decodes ``f @ w_dec + b_dec`` (no normalization, b_dec not
    subtracted from the input). Transcoders and non-JumpReLU configs raise
    :class:`SAEFormatError`."""
    folder = Path(folder)
    if folder.name == GEMMASCOPE2_FILE:
        folder = folder.parent
    wpath = folder / GEMMASCOPE2_FILE
    if not wpath.exists():
        raise SAEFormatError(f"{wpath}: file not found")
    raw = _read_json(folder / GEMMASCOPE2_CFG) if (folder / GEMMASCOPE2_CFG).exists() else {}
    where = folder / GEMMASCOPE2_CFG
    arch = str(raw.get("architecture", "jump_relu")).lower()
    if arch not in ("jump_relu", "jumprelu"):
        raise SAEFormatError(f"{where}: architecture {arch!r} is not supported (jump_relu)")
    arrays = dict(load_file(wpath))
    hook_in, hook_out = raw.get("hf_hook_point_in"), raw.get("hf_hook_point_out")
    if (
        "affine_skip_connection" in arrays
        or str(raw.get("type", "sae")).lower() == "transcoder"
        or (hook_in and hook_out and hook_in != hook_out)
    ):
        raise SAEFormatError(
            f"{folder}: a Gemma Scope 2 transcoder (reads {hook_in}, writes {hook_out}); the "
            "method needs residual-stream SAEs (resid_post / resid_post_all)"
        )
    renamed = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec"}
    out = {ours: _get(arrays, theirs, wpath) for ours, theirs in renamed.items()}
    out["threshold"] = _get(arrays, "threshold", wpath)
    if out["W_enc"].ndim != 2:
        raise SAEFormatError(f"{wpath}: w_enc must be 2-D [d_in, d_sae], got {out['W_enc'].shape}")
    d_in, d_sae = (int(n) for n in out["W_enc"].shape)
    if raw.get("width") is not None and int(raw["width"]) != d_sae:
        raise SAEFormatError(f"{where}: width={raw['width']} but w_enc gives {d_sae}")
    cfg = SAEConfig("jumprelu", d_in, d_sae)
    return _build(out, cfg, wpath, expected_d_in, dtype)


def gemmascope2_layer(folder) -> int | None:
    """The layer of a Gemma Scope 2 folder: ``config.json``'s ``hf_hook_point_in``
    (``model.layers.{l}.output``), else the folder name ``layer_{l}_width_...``."""
    folder = Path(folder)
    if (folder / GEMMASCOPE2_CFG).exists():
        hook = str(_read_json(folder / GEMMASCOPE2_CFG).get("hf_hook_point_in") or "")
        m = re.match(r"^(?:model\.)?(?:language_model\.)?layers\.(\d+)\.output$", hook)
        if m:
            return int(m.group(1))
    m = GEMMASCOPE2_DIR_RE.match(folder.name)
    return int(m.group(1)) if m else None


def gemmascope2_site(root) -> Path:
    """The folder holding ``layer_*_width_*_l0_*`` SAE folders: ``root`` itself, or its
    residual-stream site (``resid_post_all``, else ``resid_post``) when ``root`` is a release."""
    root = Path(root)
    for site in GEMMASCOPE2_RESID_SITES:
        if (root / site).is_dir():
            return root / site
    return root


def _gemmascope2_l0(folder: Path) -> float | None:
    if (folder / GEMMASCOPE2_CFG).exists():
        l0 = _read_json(folder / GEMMASCOPE2_CFG).get("l0")
        return None if l0 is None else float(l0)
    return None


def find_gemmascope2(root, layer: int, width=None, target_l0: float = 100) -> Path:
    """The Gemma Scope 2 folder ``layer_{layer}_width_{w}_l0_*`` under ``root`` (a site folder
    or a release root) whose ``config.json`` ``l0`` is closest to ``target_l0`` (ties: the
    smaller). ``width`` is an int (16384) or a tag ("16k"); None when only one width exists."""
    site = gemmascope2_site(root)
    cands = []
    for d in sorted(site.iterdir()) if site.is_dir() else []:
        m = GEMMASCOPE2_DIR_RE.match(d.name)
        if m and int(m.group(1)) == layer and not m.group(4) and (d / GEMMASCOPE2_FILE).exists():
            cands.append((d, m.group(2)))
    if not cands:
        raise FileNotFoundError(f"{site}: no layer_{layer}_width_*_l0_*/{GEMMASCOPE2_FILE}")
    widths = sorted({w for _, w in cands})
    if width is None:
        if len(widths) > 1:
            raise ValueError(
                f"{site}: layer {layer} has widths {widths}: pass width= (--sae-width)"
            )
        want = _parse_width(f"width_{widths[0]}")
    else:
        want = _parse_width(f"width_{width}") if isinstance(width, str) else int(width)
    cands = [d for d, w in cands if _parse_width(f"width_{w}") == want]
    if not cands:
        raise FileNotFoundError(f"{site}: layer {layer} has no width {width} (have {widths})")
    if len(cands) == 1:
        return cands[0]
    l0s = [(_gemmascope2_l0(d), d) for d in cands]
    if any(l0 is None for l0, _ in l0s):
        raise SAEFormatError(
            f"{site}: several L0s for layer {layer} ({[d.name for d in cands]}) and a "
            f"{GEMMASCOPE2_CFG} without 'l0' to choose by"
        )
    return min(l0s, key=lambda c: (abs(c[0] - target_l0), c[0]))[1]


# ----------------------------------------------------------------------------- SAELens
_SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}
_SAELENS_ARCH.update(batchtopk="batchtopk")


def _saelens_config(raw: dict, d_in: int, d_sae: int, where, input_scale=None) -> SAEConfig:
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    cfg = {**meta, **raw}  # top-level fields win over nested metadata
    arch = str(cfg.get("architecture", "standard")).lower()
    act = str(cfg.get("activation_fn_str", cfg.get("activation_fn", "relu")) or "relu").lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k"))
    if arch == "standard" and act == "topk":
        arch = "topk"
    if arch not in _SAELENS_ARCH:
        raise SAEFormatError(f"{where}: SAE architecture {arch!r} is not supported")
    if arch == "standard" and act not in ("relu",):
        raise SAEFormatError(f"{where}: activation_fn_str {act!r} is not supported")
    arch = _SAELENS_ARCH[arch]
    for field, have in (("d_in", d_in), ("d_sae", d_sae)):
        if field in cfg and cfg[field] is not None and int(cfg[field]) != have:
            raise SAEFormatError(f"{where}: cfg {field}={cfg[field]} but W_enc gives {have}")
    norm = cfg.get("normalize_activations", "none")
    if norm in (None, False, "none"):
        scale = 1.0 if input_scale is None else float(input_scale)
    elif norm == "expected_average_only_in":
        scale = input_scale
        for key in ("input_scale", "norm_scaling_factor", "activation_norm_scaling_factor"):
            if scale is None and cfg.get(key) is not None:
                scale = float(cfg[key])
        avg = cfg.get("dataset_average_activation_norm")
        if scale is None and avg is not None:
            avg = avg.get("in") if isinstance(avg, dict) else avg
            scale = math.sqrt(d_in) / float(avg)
        if scale is None:
            raise SAEFormatError(
                f"{where}: normalize_activations='expected_average_only_in' but no scaling factor "
                "in cfg.json; pass input_scale=sqrt(d_in)/average_activation_norm"
            )
    else:
        raise SAEFormatError(
            f"{where}: normalize_activations={norm!r} (per-token) is not supported"
        )
    apply_b_dec = _bool(cfg, "apply_b_dec_to_input", True, where)  # SAELens' default is True
    check_hook(cfg.get("hook_name"), where)
    return SAEConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        k=int(k) if arch in ("topk", "batchtopk") and k is not None else None,
        apply_b_dec_to_input=apply_b_dec,
        input_scale=scale,
    )


def load_saelens(folder, expected_d_in=None, input_scale=None, dtype=jnp.float32) -> SAE:
    """An SAE from a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``).

    Reads old (``activation_fn_str``, ``activation_fn_kwargs.k``) and new (``architecture``,
    ``k``, nested ``metadata``) config fields; ``log_threshold`` is exponentiated; a
    ``scaling_factor`` (finetuning) is folded into W_dec. ``input_scale`` supplies the scaling
    factor when ``normalize_activations`` is ``expected_average_only_in`` and cfg has none.
    """
    folder = Path(folder)
    raw, wpath, arrays = _config_and_weights(folder, SAELENS_CFG, SAELENS_WEIGHTS)
    d_in, d_sae = _widths(arrays, wpath)
    cfg = _saelens_config(raw, d_in, d_sae, folder / SAELENS_CFG, input_scale)
    out = {k: _get(arrays, k, wpath) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if "threshold" in arrays:
        out["threshold"] = _get(arrays, "threshold", wpath)
    elif "log_threshold" in arrays:
        out["threshold"] = np.exp(_get(arrays, "log_threshold", wpath).astype(np.float64))
    elif cfg.architecture in ("jumprelu", "batchtopk"):
        raise SAEFormatError(f"{wpath}: {cfg.architecture} SAE without a 'threshold' array")
    else:
        out["threshold"] = np.zeros((d_sae,), np.float32)
    if "scaling_factor" in arrays:
        sf = _get(arrays, "scaling_factor", wpath)
        _expect("scaling_factor", sf, (d_sae,), wpath)
        _expect("W_dec", out["W_dec"], (d_sae, d_in), wpath)
        out["W_dec"] = out["W_dec"].astype(np.float32) * sf.astype(np.float32)[:, None]
    return _build(out, cfg, wpath, expected_d_in, dtype)


def save_saelens(sae: SAE, folder, hook_name: str | None = None, model_name: str | None = None):
    """Write a SAELens folder: ``cfg.json`` (new-style fields, ``metadata`` nested) and
    ``sae_weights.safetensors`` (float32). The input scale is folded into the weights, so
    ``normalize_activations`` is always "none"; batchtopk is written as its inference form,
    jumprelu with the learned threshold."""
    sae = sae_lib.fold_input_scale(sae)
    arch = {"relu": "standard", "batchtopk": "jumprelu"}.get(
        sae.cfg.architecture, sae.cfg.architecture
    )
    arrays = _np(sae)
    if arch not in ("jumprelu",):
        arrays.pop("threshold")
    cfg = {
        "architecture": arch,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": hook_name, "model_name": model_name},
    }
    if arch == "topk":
        cfg["k"] = sae.cfg.k
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(arrays, folder / SAELENS_WEIGHTS)
    tmp = folder / (SAELENS_CFG + ".tmp")
    tmp.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp, folder / SAELENS_CFG)
    return folder


# ----------------------------------------------------------------------------- LlamaScope
def load_llamascope(
    folder, expected_d_in=None, fold: bool = True, saelens_5_5_2: bool = False, dtype=jnp.float32
) -> SAE:
    """A LlamaScope JumpReLU SAE (``hyperparams.json`` + ``checkpoints/final.safetensors``).

    Dataset-wise normalization: s = sqrt(d_model) / dataset_average_activation_norm["in"]. With
    ``fold`` (default) it goes into the weights: W_enc *= s, W_dec /= s, b_dec /= s, and the
    SAE has input_scale 1; otherwise the SAE keeps input_scale s (same function). The threshold is
    jump_relu_threshold * s. ``saelens_5_5_2=True`` reproduces sae_lens 5.5.2, used by the
    paper, which kept the unscaled jump_relu_threshold: with s > 1 this lowers the threshold and
    inflates L0 (more features fire). A per-feature ``log_jumprelu_threshold`` array, if present,
    is used instead of the scalar.
    """
    folder = Path(folder)
    hp, wpath, arrays = _config_and_weights(folder, LLAMASCOPE_CFG, LLAMASCOPE_WEIGHTS)
    for key in ("d_model", "d_sae"):
        if key not in hp:
            raise SAEFormatError(f"{folder / LLAMASCOPE_CFG}: missing field {key!r}")
    d_in, d_sae = int(hp["d_model"]), int(hp["d_sae"])
    if hp.get("hook_point_in", "") != hp.get("hook_point_out", hp.get("hook_point_in", "")):
        raise SAEFormatError(f"{folder}: a transcoder (hook_point_in != hook_point_out)")
    check_hook(hp.get("hook_point_in"), folder / LLAMASCOPE_CFG)
    act = str(hp.get("act_fn", "jumprelu")).lower()
    if act not in ("jumprelu", "relu"):
        raise SAEFormatError(f"{folder}: act_fn {act!r} is not supported")
    enc = _get(arrays, "encoder.weight", wpath)
    dec = _get(arrays, "decoder.weight", wpath)
    _expect("encoder.weight", enc, (d_sae, d_in), wpath)
    _expect("decoder.weight", dec, (d_in, d_sae), wpath)
    norm = hp.get("norm_activation", "dataset-wise")
    if norm == "dataset-wise":
        avg = hp.get("dataset_average_activation_norm")
        avg = avg.get("in") if isinstance(avg, dict) else avg
        if avg is None:
            raise SAEFormatError(
                f"{folder}: dataset-wise norm without dataset_average_activation_norm"
            )
        s = math.sqrt(d_in) / float(avg)
    elif norm in ("none", "inference", None):
        s = 1.0
    else:
        raise SAEFormatError(f"{folder}: norm_activation {norm!r} (per-token) is not supported")
    if "log_jumprelu_threshold" in arrays:
        theta = np.exp(_get(arrays, "log_jumprelu_threshold", wpath).astype(np.float64))
    elif act == "relu":
        theta = np.zeros(d_sae)
    else:
        if hp.get("jump_relu_threshold") is None:
            raise SAEFormatError(f"{folder}: JumpReLU SAE without jump_relu_threshold")
        theta = np.full(d_sae, float(hp["jump_relu_threshold"]))
    threshold = theta if saelens_5_5_2 else theta * s
    out = {
        "W_enc": enc.astype(np.float32).T,
        "b_enc": _get(arrays, "encoder.bias", wpath),
        "W_dec": dec.astype(np.float32).T,
        "b_dec": _get(arrays, "decoder.bias", wpath),
        "threshold": threshold.astype(np.float32),
    }
    apply_b_dec = _bool(hp, "apply_decoder_bias_to_pre_encoder", False, folder / LLAMASCOPE_CFG)
    arch = "jumprelu" if act == "jumprelu" else "relu"
    cfg = SAEConfig(arch, d_in, d_sae, apply_b_dec_to_input=apply_b_dec, input_scale=s)
    sae = _build(out, cfg, wpath, expected_d_in, dtype)
    return sae_lib.fold_input_scale(sae) if fold else sae


# ----------------------------------------------------------------------------- sparsify
def load_sparsify(folder, expected_d_in=None, dtype=jnp.float32) -> SAE:
    """An EleutherAI sparsify TopK SAE (``cfg.json`` + ``sae.safetensors``)."""
    folder = Path(folder)
    cfg_raw = _read_json(folder / SAELENS_CFG)
    wpath = folder / SPARSIFY_WEIGHTS
    if not wpath.exists():
        raise SAEFormatError(f"{wpath}: file not found")
    arrays = dict(load_file(wpath))
    if cfg_raw.get("transcode") or "W_skip" in arrays or cfg_raw.get("skip_connection"):
        raise SAEFormatError(f"{folder}: transcoders / skip connections are not supported")
    enc = _get(arrays, "encoder.weight", wpath)
    if enc.ndim != 2:
        raise SAEFormatError(f"{wpath}: encoder.weight must be 2-D [d_sae, d_in], got {enc.shape}")
    d_sae, d_in = (int(n) for n in enc.shape)
    if cfg_raw.get("d_in") is not None and int(cfg_raw["d_in"]) != d_in:
        raise SAEFormatError(
            f"{folder}: cfg d_in={cfg_raw['d_in']} but encoder.weight is {enc.shape}"
        )
    if "k" not in cfg_raw:
        raise SAEFormatError(f"{folder / SAELENS_CFG}: missing field 'k'")
    w_dec = _get(arrays, "W_dec", wpath)
    _expect("W_dec", w_dec, (d_sae, d_in), wpath)
    out = {
        "W_enc": enc.astype(np.float32).T,
        "b_enc": _get(arrays, "encoder.bias", wpath),
        "W_dec": w_dec,
        "b_dec": _get(arrays, "b_dec", wpath),
        "threshold": np.zeros(d_sae, np.float32),
    }
    cfg = SAEConfig("topk", d_in, d_sae, k=int(cfg_raw["k"]), apply_b_dec_to_input=True)
    return _build(out, cfg, wpath, expected_d_in, dtype)


# ----------------------------------------------------------------------------- sniffing
def detect_format(path) -> str:
    """One of "gemmascope", "gemmascope2", "saelens", "llamascope", "sparsify" for a file or
    folder."""
    path = Path(path)
    if path.suffix == ".npz" or (path / GEMMASCOPE_FILE).exists():
        return "gemmascope"
    if path.name == GEMMASCOPE2_FILE or (path / GEMMASCOPE2_FILE).exists():
        return "gemmascope2"
    if (path / LLAMASCOPE_CFG).exists():
        return "llamascope"
    if (path / SAELENS_WEIGHTS).exists():
        return "saelens"
    if (path / SPARSIFY_WEIGHTS).exists():
        return "sparsify"
    raise SAEFormatError(
        f"{path}: no SAE found (expected {GEMMASCOPE_FILE}, {GEMMASCOPE2_FILE}, {LLAMASCOPE_CFG}, "
        f"{SAELENS_CFG} + {SAELENS_WEIGHTS}, or {SAELENS_CFG} + {SPARSIFY_WEIGHTS})"
    )


LOADERS = {
    "gemmascope": load_gemmascope,
    "gemmascope2": load_gemmascope2,
    "saelens": load_saelens,
    "llamascope": load_llamascope,
    "sparsify": load_sparsify,
}


def load_sae(path, format: str | None = None, **kw) -> SAE:
    """Load one SAE, sniffing the format unless given; ``kw`` go to the format's loader
    (``expected_d_in``, ``dtype``; ``fold``/``saelens_5_5_2`` for LlamaScope, ...)."""
    fmt = format or detect_format(path)
    if fmt not in LOADERS:
        raise ValueError(f"unknown SAE format {fmt!r}; known {sorted(LOADERS)}")
    return LOADERS[fmt](path, **kw)


_LAYER_RES = (
    re.compile(r"^layer_(\d+)$"),  # GemmaScope
    re.compile(r"L(\d+)[RAM]?(?:-|$)"),  # LlamaScope Llama3_1-8B-Base-L15R-8x
    re.compile(r"^layers\.(\d+)$"),  # sparsify
    re.compile(r"blocks\.(\d+)\."),  # SAELens hook names
    re.compile(r"(?:^|[_.-])l(?:ayer)?_?(\d+)(?:$|[_.-])", re.IGNORECASE),
)


def _layer_of(name: str) -> int | None:
    for r in _LAYER_RES:
        m = r.search(name)
        if m:
            return int(m.group(1))
    return None


def load_sae_set(root, layers=None, width=None, target_l0: float = 100, **kw) -> dict[int, SAE]:
    """All SAEs under ``root`` as ``{layer: SAE}``.

    A GemmaScope tree (``layer_{l}/width_*/average_l0_*``) needs ``width`` and picks the L0
    closest to ``target_l0`` per layer; so does a Gemma Scope 2 site folder
    (``layer_{l}_width_{w}_l0_{tag}``, or a release root holding ``resid_post_all``), whose
    ``width`` may be omitted when it has one width. Otherwise every immediate subfolder holding
    an SAE is loaded, its layer taken from the folder name (``layer_3``, ``...-L15R-8x``,
    ``layers.3``) or from a SAELens ``hook_name`` (``blocks.3.hook_resid_post``). ``layers``
    restricts the set.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no SAE folder {root}")
    want = None if layers is None else {int(i) for i in layers}
    out: dict[int, SAE] = {}
    site = gemmascope2_site(root)
    gs2 = sorted(
        {int(m.group(1)) for d in site.iterdir() if (m := GEMMASCOPE2_DIR_RE.match(d.name))}
    )
    if gs2:
        for layer in gs2:
            if want is None or layer in want:
                d = find_gemmascope2(site, layer, width, target_l0)
                if gemmascope2_layer(d) != layer:
                    raise SAEFormatError(
                        f"{d}: config.json hooks layer {gemmascope2_layer(d)}, folder says {layer}"
                    )
                out[layer] = load_gemmascope2(d, **kw)
        if want is not None and want - set(out):
            raise FileNotFoundError(f"{site}: no SAE for layers {sorted(want - set(out))}")
        return dict(sorted(out.items()))
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    gemma = [d for d in subdirs if re.match(r"^layer_\d+$", d.name) and not _is_sae_dir(d)]
    if gemma:
        if width is None:
            raise ValueError(f"{root} is a GemmaScope tree: pass width= (and target_l0=)")
        for d in gemma:
            layer = int(d.name.split("_")[1])
            if want is None or layer in want:
                out[layer] = load_gemmascope(find_gemmascope(root, layer, width, target_l0), **kw)
    else:
        for d in subdirs:
            if not _is_sae_dir(d):
                continue
            layer = _layer_of(d.name)
            if layer is None and (d / SAELENS_CFG).exists():
                raw = _read_json(d / SAELENS_CFG)
                hook = raw.get("hook_name") or (raw.get("metadata") or {}).get("hook_name") or ""
                layer = _layer_of(str(hook))
            if layer is None:
                raise SAEFormatError(f"{d}: cannot tell which layer this SAE belongs to")
            if layer in out:
                raise SAEFormatError(f"{root}: two SAEs for layer {layer}")
            if want is None or layer in want:
                out[layer] = load_sae(d, **kw)
    if want is not None and want - set(out):
        raise SAEFormatError(f"{root}: no SAE for layers {sorted(want - set(out))}")
    if not out:
        raise FileNotFoundError(f"{root}: no SAEs found")
    return dict(sorted(out.items()))


def _is_sae_dir(d: Path) -> bool:
    try:
        detect_format(d)
        return True
    except SAEFormatError:
        return False


def _only_width(root: Path):
    widths = {p.name for p in root.glob("layer_*/width_*") if p.is_dir()}
    if len(widths) == 1:
        return widths.pop().split("_", 1)[1]
    return None


def load_saes(
    sae_dir, n_layers: int, width=None, target_l0: float = 100, layers=None, expected_d_in=None
):
    """Stacked SAEs (leading layer axis) from a folder of per-layer SAEs (any supported format).

    Every model layer needs an SAE: a missing one is an error listing the missing layers, unless
    ``layers`` restricts the set explicitly (the other layers then get all-zero placeholders,
    which select and attribute nothing). ``expected_d_in``: the model's d_model, checked against
    every SAE."""
    root = Path(sae_dir)
    width = width or _only_width(root)
    if layers is not None:
        layers = sorted({int(i) for i in layers})
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise SAEFormatError(f"SAE layers {bad} out of range for a {n_layers}-layer model")
    kw = {} if expected_d_in is None else {"expected_d_in": expected_d_in}
    found = load_sae_set(root, layers=layers, width=width, target_l0=target_l0, **kw)
    missing = sorted(set(range(n_layers)) - set(found))
    if layers is None and missing:
        raise SAEFormatError(
            f"{root}: no SAE for model layers {missing} (of {n_layers}); give the layers to use "
            "explicitly (--sae-layers) to run with SAEs at some layers only"
        )
    stacked, _ = sae_lib.stack_sae_set(found, n_layers)
    return stacked
