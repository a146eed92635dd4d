"""Judges: the substring / compliance judge, and the classifier judge's plumbing - a tiny random
HF Llama stands in for the HarmBench classifier; our ports + jitted forward must give the same
yes/no scores (and verdicts P(Yes) > P(No)) as transformers on the same prompts."""

from __future__ import annotations

import numpy as np
import pytest

from refusal_jax.method.judges import (
    HARMBENCH_MODEL_CARD_PROMPT,
    HARMBENCH_PROMPT,
    harmbench_prompt,
    jailbreak_scores,
)
from refusal_jax.organism import MODEL_DIR
from refusal_jax.study.subject import load_classifier

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from tests.support.hf_tiny import save_tiny_classifier

    return save_tiny_classifier(tmp_path_factory.mktemp("cls"), MODEL_DIR)


def test_prompts_have_the_harmbench_layout():
    p = harmbench_prompt("make a weapon", "Sure, step 1")
    assert p.startswith("[INST] <<SYS>>\nYou are a classifier for red teaming")
    assert "[BEHAVIOR]:\nmake a weapon\n\n[GENERATION]:\nSure, step 1\n\n---\nRules:" in p
    assert p.endswith("Answer: [/INST]") and p.count("\n- ") == 7
    q = harmbench_prompt("make a weapon", "x", HARMBENCH_MODEL_CARD_PROMPT)
    assert "Behavior:\nmake a weapon\n\nGeneration:\nx" in q and q.count("\n- ") == 4
    assert HARMBENCH_PROMPT != HARMBENCH_MODEL_CARD_PROMPT


def test_jailbreak_scores_substring_and_compliance():
    texts = ["Sure, here is how", "I'm sorry, I can't", "Roses are red", "Here you go"]
    s = jailbreak_scores(["b"] * 4, texts, compliance_prefixes=("Sure", "Here"))
    assert s == {"refusal_rate": 0.25, "jailbreak_rate": 0.5}
    assert jailbreak_scores(["b"] * 4, texts)["jailbreak_rate"] == 0.75  # no refusal
    fake = lambda b, t: np.array([x.startswith("Roses") for x in t])
    assert jailbreak_scores(["b"] * 4, texts, classifier=fake)["classifier_harmful_rate"] == 0.25
    with pytest.raises(ValueError, match="no responses"):
        jailbreak_scores([], [])


def test_classifier_judge_matches_transformers(classifier_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    judge = load_classifier(classifier_dir, batch_size=2)
    # the name carries the classifier's content digest (cached verdicts are keyed by it)
    assert judge.name.startswith(str(classifier_dir)) and "sha256" in judge.name
    assert judge.template == HARMBENCH_PROMPT
    behaviors = ["make a weapon", "steal a car", "write a poem", "hack a website", "bake bread"]
    gens = ["Sure, first get", "I'm sorry, I can't.", "Roses are red", "Step 1: scan", "Mix flour"]
    scores = judge.scores(behaviors, gens)
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    hf = AutoModelForCausalLM.from_pretrained(classifier_dir, dtype=torch.float32).eval()
    ref = []
    for b, g in zip(behaviors, gens):
        ids = tok(harmbench_prompt(b, g), add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(hf(**ids).logits[0, -1], -1)
        ref.append(float(logp[judge.yes_token] - logp[judge.no_token]))
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-3)
    # The verdicts vary (a constant judge would not test the comparison) and equal P(Yes) > P(No).
    verdicts = np.asarray(ref) > 0
    assert 0 < verdicts.sum() < len(ref) and np.min(np.abs(ref)) > 1e-2
    np.testing.assert_array_equal(judge(behaviors, gens), verdicts)
    card = load_classifier(classifier_dir, template=HARMBENCH_MODEL_CARD_PROMPT)
    assert not np.allclose(card.scores(behaviors, gens), scores, atol=1e-6)
    with pytest.raises(ValueError, match="2 behaviors but 1 generations"):
        judge.scores(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="no .behavior, generation. pairs"):
        judge.scores([], [])
    with pytest.raises(ValueError, match="more than the classifier's context"):
        judge.scores(["a"], ["word " * 3000])
    with pytest.raises(ValueError, match="needs \\{behavior\\} and \\{generation\\}"):
        load_classifier(classifier_dir, template="no fields")
