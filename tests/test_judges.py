"""Classifier judge plumbing: a tiny random HF Llama stands in for the HarmBench classifier; our
ports + jitted forward must give the same yes/no verdicts as transformers on the same prompts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from refusal_jax.judges import ClassifierJudge, harmbench_prompt
from refusal_jax.organism import MODEL_DIR

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = tmp_path_factory.mktemp("cls")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5 / np.sqrt(p.shape[-1]))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the organism's BPE tokenizer
        shutil.copy(MODEL_DIR / name, folder / name)
    return folder


def test_classifier_judge_matches_transformers(classifier_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = ClassifierJudge.load(classifier_dir, batch_size=2)
    behaviors = ["make a weapon", "steal a car", "write a poem", "hack a website", "bake bread"]
    gens = ["Sure, first get", "I'm sorry, I can't.", "Roses are red", "Step 1: scan", "Mix flour"]
    scores = judge.scores(behaviors, gens)
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    hf = AutoModelForCausalLM.from_pretrained(classifier_dir, dtype=torch.float32).eval()
    ref = []
    for b, g in zip(behaviors, gens):
        ids = tok(harmbench_prompt(b, g), add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            last = hf(**ids).logits[0, -1]
        ref.append(float(last[judge.yes_token] - last[judge.no_token]))
    np.testing.assert_allclose(scores, ref, atol=1e-4)
    np.testing.assert_array_equal(judge(behaviors, gens), np.asarray(ref) > 0)
    assert "Behavior:\nmake a weapon" in harmbench_prompt("make a weapon", "x")
    with pytest.raises(ValueError, match="2 behaviors but 1 generations"):
        judge.scores(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="more than the classifier's context"):
        judge.scores(["a"], ["word " * 2000])
