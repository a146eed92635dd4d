"""Real weights end to end (slow; skips without the file): SmolLM2-135M-Instruct (the Q4_1 GGUF
of the parity check, $REFUSAL_JAX_SMOLLM2_GGUF) -> ``train-sae --model-dir`` on one middle
layer with a few hundred chat prompts and a short schedule -> the summary reports the content
FVU, the excluded positions (its chat template's system header and special tokens) and no sink
domination -> ``refusal-jax demo --model-dir/--sae-dir`` on it with small counts runs."""

import json
import os
import time
from pathlib import Path

import pytest

from ports.gguf import main as gguf_main
from refusal_jax.cli import main as cli_main

GGUF = os.environ.get(
    "REFUSAL_JAX_SMOLLM2_GGUF",
    str(Path.home() / ".cache" / "refusal_jax" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"),
)
DATA = Path(os.environ.get("REFUSAL_JAX_SHARED", "/work/shared/datasets")) / "refusal_direction"
LAYER = 15  # of 30
# Measured 2026-12-03 (2 CPU cores, quiet), 30 steps: prompt prefix 24 tokens (system header),
# specials {0, 1, 2}; 20350 training tokens seen, 12480 excluded positions, 0 norm outliers;
# content FVU 0.425, L0 21.0, cos 0.903, alive 0.97; excluded FVU 0.788 holding 99% of the
# variance; CE recovered 0.877 (content positions; -0.41 when spliced at the sinks too).
# train-sae 49 s, with the demo 122 s (60 steps: content FVU 0.331, CE recovered 0.917, 130 s).


@pytest.mark.slow
@pytest.mark.optimized  # its 135M-parameter programs run long and no other test shares them
def test_smollm2_train_sae_content_and_demo(tmp_path, monkeypatch):
    if not Path(GGUF).is_file():
        pytest.skip(f"SmolLM2 GGUF not found at {GGUF} (set REFUSAL_JAX_SMOLLM2_GGUF)")
    if not (DATA / "splits" / "harmful_train.json").is_file():
        pytest.skip(f"refusal_direction data not found in {DATA} (set REFUSAL_JAX_SHARED)")
    t0 = time.perf_counter()
    model = tmp_path / "smollm2"
    gguf_main(["--gguf", GGUF, "--out", str(model)])
    # 320 chat prompts: 160 harmful + 160 harmless training instructions
    strings = [
        r["instruction"]
        for k in ("harmful", "harmless")
        for r in json.loads((DATA / "splits" / f"{k}_train.json").read_text())[:160]
    ]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(strings))
    sae_dir = tmp_path / "saes"
    argv = [
        "train-sae", "--model-dir", str(model), "--prompts", str(prompts), "--layers", str(LAYER),
        "--out", str(sae_dir), "--architecture", "batchtopk", "--k", "16", "--d-sae", "512",
        "--steps", "30", "--batch-size", "512", "--lr", "2e-3", "--lr-warmup", "5",
        "--seqs-per-step", "16", "--reuse", "4", "--eval-seqs", "16", "--checkpoint-every", "1000",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    t_train = time.perf_counter() - t0
    summary = json.loads((sae_dir / "summary.json").read_text())
    data, groups = summary["data"], summary["layers"][str(LAYER)]["groups"]
    rule = data["content_rule"]
    # SmolLM2's template: <|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...
    assert rule["prefix_length"] >= 20 and {0, 1, 2} <= set(rule["special_ids"])
    assert data["counts"]["excluded_positions"] > 0.3 * data["counts"]["tokens"]
    assert summary["warnings"] == []  # no sink domination in the training data
    assert data["half_variance_token_fraction"][0] > 0.1
    content = groups["content"]
    assert content["n_tokens"] > 100 and 0 < content["fvu"] < 0.9
    assert groups["excluded"]["n_tokens"] > 0
    print(
        f"\nSmolLM2 layer {LAYER}: content FVU {content['fvu']:.3f} L0 {content['l0']:.1f} "
        f"cos {content['cosine']:.3f} alive {content['alive_fraction']:.2f}; excluded FVU "
        f"{groups['excluded']['fvu']:.3f} (variance share {groups['excluded']['variance_share']:.2f}); "
        f"tokens {data['counts']['tokens']}, excluded positions "
        f"{data['counts']['excluded_positions']}, outliers {data['counts']['outliers']}; "
        f"prefix {rule['prefix_length']}; train {t_train:.0f} s"
    )
    # the demo on the real model with the trained SAE at its one layer (--sae-layers)
    monkeypatch.setenv("REFUSAL_JAX_DATA", str(DATA))
    runs = tmp_path / "runs"
    argv = [
        "demo", "--model-dir", str(model), "--sae-dir", str(sae_dir), "--n-train", "8",
        "--n-test", "4", "--n-steps", "2", "--n-features", "4", "--n-candidates", "4",
        "--max-new-tokens", "4", "--best-layer", str(LAYER), "--sae-layers", str(LAYER),
        "--out", str(runs), "--quiet",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["config"]["skip_positions"] == "content"
    assert report["config"]["batch_size"] == 8  # 8 + 4 prompts: one batch of 8, not 32 rows
    assert set(report["methods"]) >= {"base", "AS", "ours", "act"}
    print(f"train-sae + demo: {time.perf_counter() - t0:.0f} s")
