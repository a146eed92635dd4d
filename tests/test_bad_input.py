"""The bad-input matrix (issue 13, classes 2-6): every case asserts the exception type or exit
code AND that the message names the file, tensor, key or flag.

Classes: 2 non-finite values, 3 silent defaults, 4 late failures (validation before compute),
5 cryptic errors / one-line CLI errors, 6 lost data. Tiny models built here (no torch), the
organism for the command line cases.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ports import sae as sae_io
from ports.hf import load_hf, read_hf_config, save_hf
from ports.hf import main as hf_main
from ports.safetensors_io import CheckpointError, load_file, save_file
from refusal_jax.cli import main as cli_main
from refusal_jax.core.checkpoint import load_converted, save_model
from refusal_jax.core.config import UnsupportedConfigError, gemma2_config
from refusal_jax.core.errors import (
    NonFiniteError,
    UserError,
    run_cli,
)
from refusal_jax.core.model import InputError, forward, generate, init_params
from refusal_jax.method.judges import judge_responses
from refusal_jax.method.laig import la_ig
from refusal_jax.sae import train as sae_train
from refusal_jax.study import data
from tests.support.paths import REPO, load_script
from tests.support.saes import random_sae

CFG = gemma2_config(
    vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, d_mlp=32,
    max_position_embeddings=32, sliding_window=8,
)  # fmt: skip
PARAMS = init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture
def hf_dir(tmp_path):
    save_hf(PARAMS, CFG, tmp_path / "hf")
    return tmp_path / "hf"


def _edit_config(folder, **kw):
    path = folder / "config.json"
    d = json.loads(path.read_text())
    for k, v in kw.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d))


_DROP = object()


def _edit_tensor(folder, name, fn):
    path = folder / "model.safetensors"
    t = {k: np.array(v) for k, v in load_file(path).items()}
    t[name] = fn(t[name])
    save_file(t, path)


# ----------------------------------------------------------------------------- command line
# (argv, text the one error line must contain); the organism; nothing may be computed, so no
# run folder may appear.
CLI_CASES = [
    (["demo", "--best-layer", "99"], "--best-layer 99"),
    (["demo", "--best-layer", "x"], "--best-layer"),
    (["demo", "--data-dir", "/nonexistent"], "--data-dir"),
    (["demo", "--eval-set", "advbench"], "--eval-set"),
    (["demo", "--n-candidates", "5000"], "--n-candidates 5000"),
    (["demo", "--n-features", "0"], "--n-features"),
    (["demo", "--clamp-value", "nan"], "--clamp-value"),
    (["demo", "--n-steps", "0"], "--n-steps"),
    (["demo", "--alpha-rule", "lobatto", "--n-steps", "1"], "--alpha-rule lobatto --n-steps 1"),
    (["demo", "--alpha-rule", "simpson"], "--alpha-rule"),
    (["sweep", "laig", "--out", "{out}/s", "--alpha-rule", "radau", "--n-steps", "0"], "--n-steps"),
    (["demo", "--sae-layers", "1,x"], "--sae-layers"),
    (["demo", "--sae-layers", "7"], "layers [7]"),
    (["demo", "--model-dir", "/nonexistent-model"], "--sae-dir"),
    (["sweep", "laig", "--out", "{out}/sweep", "--best-layer", "-1"], "--best-layer -1"),
    (["convert-sae", "{out}", "{out}"], "is src"),
    (["convert-sae", "{out}", "{out}/sub"], "is inside src"),
    (
        [
            "train-sae",
            "--activations",
            "a.npy",
            "--out",
            "{out}/t",
            "--d-sae",
            "8",
            "--layers",
            "0,x",
        ],
        "--layers",
    ),
    (
        ["train-sae", "--activations", "{out}/missing.npy", "--out", "{out}/t", "--d-sae", "8"],
        "missing.npy",
    ),
]


@pytest.mark.parametrize("argv,named", CLI_CASES, ids=[" ".join(c[0][:3]) for c in CLI_CASES])
def test_cli_user_error_is_one_line_exit_2_before_compute(argv, named, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = [a.format(out=out) for a in argv]
    if argv[0] == "demo":
        argv += ["--out", str(out)]
    t0 = time.perf_counter()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    assert not out.exists() or not any(out.iterdir())  # no (empty) run folder left behind
    assert time.perf_counter() - t0 < 60  # failed at validation, not after the pipeline


SCRIPT_CASES = [
    ("calibrate", ["--clamp-values", "0,x"], "--clamp-values"),
    ("calibrate", ["--clamp-values", "0,inf"], "--clamp-values"),
    ("calibrate", ["--candidates", "10,5000"], "--candidates 5000"),
    ("benchmark", ["--best-layer", "4"], "--best-layer 4"),
    ("benchmark", ["--induction-values", ""], "--induction-values"),
    ("probing", ["--alpha-rule", "lobatto", "--n-steps", "1"], "--alpha-rule lobatto"),
]


@pytest.mark.parametrize("name,argv,named", SCRIPT_CASES)
def test_experiment_script_errors(name, argv, named, tmp_path, capsys):
    out = tmp_path / "runs"
    assert run_cli(load_script(name).main, [*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert cli_main(["demo", "--best-layer", "99", "--out", str(tmp_path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_ports_module_one_line_in_a_subprocess(tmp_path):
    """``python -m ports.hf`` for a missing folder: one line naming it, exit 2."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env.pop("REFUSAL_JAX_DEBUG", None)
    r = subprocess.run(
        [sys.executable, "-m", "ports.hf", "--hf-dir", str(tmp_path / "nope"), "--out",
         str(tmp_path / "o")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no config.json"]


# ----------------------------------------------------------------------------- model config
def test_gemma2_softcaps_default_as_in_transformers(hf_dir):
    _edit_config(hf_dir, attn_logit_softcapping=_DROP, final_logit_softcapping=_DROP)
    cfg, _ = read_hf_config(hf_dir)
    assert (cfg.attn_softcap, cfg.final_softcap) == (50.0, 30.0)
    _edit_config(hf_dir, attn_logit_softcapping=None)  # explicit null: off, as in transformers
    assert read_hf_config(hf_dir)[0].attn_softcap is None


CONFIG_CASES = [
    ({"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types"),
    ({"hidden_size": _DROP}, "hidden_size"),
    ({"vocab_size": "64"}, "vocab_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"rms_norm_eps": -1.0}, "rms_norm_eps"),
    ({"final_logit_softcapping": "thirty"}, "final_logit_softcapping"),
    ({"model_type": "gpt2"}, "model_type"),
]


@pytest.mark.parametrize("edit,key", CONFIG_CASES, ids=[c[1] for c in CONFIG_CASES])
def test_bad_config_names_the_key_and_file(hf_dir, edit, key):
    _edit_config(hf_dir, **edit)
    with pytest.raises(UnsupportedConfigError, match=key) as e:
        read_hf_config(hf_dir)
    assert "config.json" in str(e.value)


def test_malformed_config_json_names_the_file(hf_dir):
    (hf_dir / "config.json").write_text('{"model_type": "gemma2",')
    with pytest.raises(UnsupportedConfigError, match=r"config\.json: malformed JSON"):
        read_hf_config(hf_dir)


# ----------------------------------------------------------------------------- weights
EMBED = "model.embed_tokens.weight"
Q1 = "model.layers.1.self_attn.q_proj.weight"


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(hf_dir, value):
    def poison(a):
        a[3, 2] = value
        return a

    _edit_tensor(hf_dir, Q1, poison)
    with pytest.raises(CheckpointError, match=rf"{Q1}.*NaN or infinite"):
        load_hf(hf_dir)


def test_non_finite_converted_weights_named(tmp_path):
    params = jax.tree.map(lambda a: a, PARAMS)
    params["layers"]["q"] = params["layers"]["q"].at[1, 0, 0].set(jnp.nan)
    save_model(tmp_path / "conv", CFG, params)
    with pytest.raises(UserError, match=r"layers\.q at layers \[1\]"):
        load_converted(tmp_path / "conv")


def test_truncated_safetensors_names_file_and_tensor(hf_dir):
    path = hf_dir / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated file: tensor '"):
        load_hf(hf_dir)


def test_shape_mismatch_names_key_and_shapes(hf_dir):
    _edit_tensor(hf_dir, EMBED, lambda a: a[:, :8].copy())
    with pytest.raises(CheckpointError, match=rf"{EMBED}.*\(64, 8\).*\(64, 16\)"):
        load_hf(hf_dir)


# ----------------------------------------------------------------------------- SAEs
def _saelens(tmp_path, hook="blocks.0.hook_resid_post", **cfg_edit):
    sae = random_sae("jumprelu", d_in=16)
    folder = sae_io.save_saelens(sae, tmp_path / "sae", hook_name=hook)
    if cfg_edit:
        d = json.loads((folder / "cfg.json").read_text())
        d.update(cfg_edit)
        (folder / "cfg.json").write_text(json.dumps(d))
    return folder


def test_saelens_string_booleans_parsed_strictly(tmp_path):
    folder = _saelens(tmp_path, apply_b_dec_to_input="false")
    assert sae_io.load_saelens(folder).cfg.apply_b_dec_to_input is False
    folder = _saelens(tmp_path, apply_b_dec_to_input="no thanks")
    with pytest.raises(sae_io.SAEFormatError, match="apply_b_dec_to_input='no thanks'"):
        sae_io.load_saelens(folder)


@pytest.mark.parametrize("hook", ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"])
def test_non_resid_post_sae_is_refused_naming_the_hook(tmp_path, hook):
    folder = _saelens(tmp_path, hook=hook)
    with pytest.raises(sae_io.SAEFormatError, match=hook):
        sae_io.load_saelens(folder)


@pytest.mark.parametrize("value,what", [(np.nan, "NaN"), (-0.5, "negative")])
def test_bad_thresholds_refused(tmp_path, value, what):
    folder = _saelens(tmp_path)
    t = {k: np.array(v) for k, v in load_file(folder / "sae_weights.safetensors").items()}
    t["threshold"][5] = value
    save_file(t, folder / "sae_weights.safetensors")
    with pytest.raises(sae_io.SAEFormatError, match=f"threshold.*{what}"):
        sae_io.load_saelens(folder)


def test_sae_d_in_must_match_the_model(tmp_path):
    folder = _saelens(tmp_path)
    with pytest.raises(sae_io.SAEFormatError, match="d_in is 16 but the model's d_model is 32"):
        sae_io.load_sae(folder, expected_d_in=32)


def test_missing_layer_sae_is_an_error_unless_layers_are_given(tmp_path):
    for layer in (0, 2):
        sae_io.save_saelens(
            random_sae("jumprelu", d_in=16, seed=layer), tmp_path / f"layer_{layer}",
            hook_name=f"blocks.{layer}.hook_resid_post",
        )  # fmt: skip
    with pytest.raises(sae_io.SAEFormatError, match=r"no SAE for model layers \[1, 3\]"):
        sae_io.load_saes(tmp_path, n_layers=4)
    stacked = sae_io.load_saes(tmp_path, n_layers=4, layers=[0, 2])
    assert np.abs(np.asarray(stacked.W_dec[1])).sum() == 0  # the user asked for 0 and 2 only


# ----------------------------------------------------------------------------- model inputs
IDS = np.array([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]], np.int32)
MASK = (np.arange(6)[None] >= np.array([[2], [0]])).astype(np.int32)


def _bad_inputs(kind):
    ids, mask = IDS.copy(), MASK.copy()
    if kind == "vocab":
        ids[1, 3] = 64
    elif kind == "negative":
        ids[0, 5] = -1
    elif kind == "right":
        mask = mask[:, ::-1].copy()
    elif kind == "long":
        ids, mask = np.tile(ids, (1, 6)), np.ones((2, 36), np.int32)
    return ids, mask


@pytest.mark.parametrize(
    "fn,kind,named",
    [
        ("forward", "vocab", "input_ids holds token id 64"),
        ("forward", "right", "attention_mask row 0 is not left padded"),
        (
            "forward",
            "long",
            "input_ids has 36 positions, more than the model.s max_position_embeddings 32",
        ),
        ("generate", "negative", "input_ids holds token id -1"),
        ("la_ig", "vocab", "input_ids holds token id 64"),
    ],
)
def test_public_entry_points_check_concrete_inputs(fn, kind, named):
    ids, mask = _bad_inputs(kind)
    call = {
        "forward": lambda: forward(PARAMS, CFG, ids, mask),
        "generate": lambda: generate(PARAMS, CFG, ids, mask, max_new_tokens=2),
        "la_ig": lambda: la_ig(PARAMS, CFG, ids, mask, jnp.ones(16), refusal_token=3, n_steps=2),
    }[fn]
    with pytest.raises(InputError, match=f"{fn}: {named}"):
        call()


@pytest.mark.parametrize(
    "direction,err,named",
    [(np.zeros(16), UserError, "all zeros"), (np.full(16, np.nan), NonFiniteError, "16 of 16")],
)
def test_la_ig_refuses_zero_and_non_finite_directions(direction, err, named):
    with pytest.raises(err, match=f"la_ig direction.*{named}"):
        la_ig(PARAMS, CFG, IDS, MASK, direction, refusal_token=3, n_steps=2)


# ----------------------------------------------------------------------------- datasets
DATASET_CASES = [
    (b'\xff\xfe[{"instruction": "x"}]', "not UTF-8"),
    (b"", "not valid JSON"),
    (b"[]", "non-empty JSON list"),
    (b'[{"instruction": "  "}]', "record 0 has an empty instruction"),
    (b'[{"prompt": "x"}]', "record 0 has no string 'instruction'"),
]


@pytest.mark.parametrize("raw,named", DATASET_CASES, ids=[c[1] for c in DATASET_CASES])
def test_bad_dataset_files_name_the_path(tmp_path, raw, named):
    (tmp_path / "splits").mkdir()
    path = tmp_path / "splits" / "harmful_train.json"
    path.write_bytes(raw)
    with pytest.raises(data.DatasetError, match=named) as e:
        data.split(tmp_path, "harmful_train")
    assert str(path) in str(e.value)


def test_non_utf8_csv_names_the_path(tmp_path):
    path = tmp_path / "catqa.csv"
    path.write_bytes(b"Category,Subcategory,Question\nA,B,caf\xe9\n")
    with pytest.raises(data.DatasetError, match=f"{path}: not UTF-8"):
        data.categorical_harmful_qa(path)


# ----------------------------------------------------------------------------- checked results
@pytest.mark.parametrize("prefixes", [None, ("Sure",)])
def test_judges_never_count_empty_responses(prefixes):
    texts = ["", "   \n", "Sure, here it is", "I cannot help"]
    refused, complied = judge_responses(texts, prefixes)
    assert complied.tolist() == [False, False, True, False]
    assert refused.tolist() == [False, False, False, True]


def test_sae_training_stops_on_a_non_finite_loss():
    acts = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    acts[::3, 2] = np.nan
    tcfg = sae_train.TrainConfig(d_sae=16, n_steps=4, lr_warmup_steps=1)
    source = sae_train.ArraySource(acts, 16)
    with pytest.raises(NonFiniteError, match="SAE training"):
        sae_train.train_sae(source, tcfg, log_every=2)


# ----------------------------------------------------------------------------- nothing lost
@pytest.mark.parametrize("where", ["same", "inside"])
def test_conversion_out_equal_to_or_inside_input_is_refused(hf_dir, where, capsys):
    before = {p.name: p.read_bytes() for p in hf_dir.iterdir()}
    out = hf_dir if where == "same" else hf_dir / "converted"
    assert run_cli(hf_main, ["--hf-dir", str(hf_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--hf-dir" in err
    assert {p.name: p.read_bytes() for p in hf_dir.iterdir()} == before


def test_failed_conversion_keeps_the_previous_folder(tmp_path, monkeypatch):
    from refusal_jax.core import checkpoint

    save_model(tmp_path / "conv", CFG, PARAMS)
    _, good = load_converted(tmp_path / "conv")

    def boom(path, tree):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_pytree", boom)
    other = jax.tree.map(lambda a: a + 1, PARAMS)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_model(tmp_path / "conv", CFG, other)
    _, kept = load_converted(tmp_path / "conv")
    jax.tree.map(np.testing.assert_array_equal, kept, good)


@pytest.mark.slow
def test_sigkill_during_conversion_keeps_the_previous_folder(hf_dir, tmp_path):
    """SIGKILL ``python -m ports.hf`` while it converts into an existing folder: the previous
    good folder is intact, and a rerun ends identical to an uninterrupted conversion."""
    out = tmp_path / "conv"
    save_model(out, CFG, jax.tree.map(lambda a: a * 0 + 1, PARAMS))  # the previous good folder
    _, previous = load_converted(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "ports.hf", "--hf-dir", str(hf_dir), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    tmp = out.with_name(f".{out.name}.converting")
    deadline = time.time() + 240
    while not tmp.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == -signal.SIGKILL and not (out / "params").exists():
        pytest.fail("the previous folder was destroyed")
    _, now = load_converted(out)
    reference = load_hf(hf_dir)[1]
    same_as_previous = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(now), jax.tree.leaves(previous))
    )
    same_as_new = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(now), jax.tree.leaves(reference))
    )
    assert same_as_previous or same_as_new  # never a mixture, never missing
    assert run_cli(hf_main, ["--hf-dir", str(hf_dir), "--out", str(out)]) == 0
    _, rerun = load_converted(out)
    jax.tree.map(np.testing.assert_array_equal, rerun, reference)
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failed_run_folder_is_removed_or_marked(tmp_path):
    from refusal_jax.study.demo import mark_failed

    empty, partial = tmp_path / "empty", tmp_path / "partial"
    empty.mkdir()
    partial.mkdir()
    (partial / "cache.json").write_text("{}")
    err = NonFiniteError("pipeline stage 'LA-IG': feature attributions: 3 of 9 values are NaN")
    mark_failed(empty, err)
    mark_failed(partial, err)
    assert not empty.exists()
    assert "stage 'LA-IG'" in (partial / "FAILED").read_text()


@pytest.mark.parametrize("name,raw", [("shard-3.safetensors", b"\x10\x00garbage"),
                                      ("result.json", b'{"a": 1,')])  # fmt: skip
def test_damaged_result_files_are_named(tmp_path, name, raw):
    from refusal_jax.core.io import load_arrays, read_json

    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(UserError, match=name):
        (load_arrays if name.endswith(".safetensors") else read_json)(path)
