"""The main job (``refusal-jax demo``): the paper's pipeline on the embedded model organism, or on
a converted real model with its SAEs and the refusal_direction data.

Writes a run folder ``<out>/demo-seed<seed>-<time>`` with ``report.json``, ``report.md``,
``rates.png``, ``attribution_by_layer.png``, ``subject.json`` (how to load the subject again),
the feature dashboards (``dashboards.*``, ``run_arrays.safetensors``) and ``report.html``; the
same seed gives the same report (up to the runtime field).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from refusal_jax.core.io import write_json_atomic, write_text_atomic
from refusal_jax.study.pipeline import PipelineConfig, PromptData, run_pipeline
from refusal_jax.study.runs import new_run_folder
from refusal_jax.study.subject import PromptSource, Subject


def demo_prompts(source: PromptSource, n_train: int, n_test: int, eval_set: str) -> PromptData:
    """Train prompts (harmful/harmless train splits) and held-out test prompts (the eval set,
    harmless test split); on the organism its plain requests, and its wrapped (jailbreak)
    harmful test requests for the feature dashboards (drawn last, so the others are unchanged)."""
    return PromptData(
        harmful_train=source.split("harmful_train", n_train),
        harmless_train=source.split("harmless_train", n_train),
        harmful_test=source.eval_set(eval_set, n_test),
        harmless_test=source.split("harmless_test", n_test),
        jailbreak_test=(
            source.pick(source.corpus.prompts("test", harmful=True, wrapped=True), n_test)
            if source.organism
            else None
        ),
    )


def run_demo(
    subject: Subject,
    *,
    out="runs",
    seed: int = 0,
    n_train: int = 64,
    n_test: int = 64,
    eval_set: str = "harmbench_test",
    best_layer: int | None = None,
    n_steps: int = 10,
    alpha_rule: str = "left",
    n_features: int = 20,
    n_candidates: int | None = None,
    clamp_value: float | None = None,
    max_new_tokens: int = 24,
    progress: bool = True,
) -> tuple[dict, object]:
    """The pipeline on ``subject`` with the subject's defaults where a setting is None; returns
    (report, run folder)."""
    data = demo_prompts(subject.prompts(seed), n_train, n_test, eval_set)
    pc = PipelineConfig(
        best_layer=best_layer,
        n_steps=n_steps,
        alpha_rule=alpha_rule,
        n_features=n_features,
        n_candidates=subject.n_candidates if n_candidates is None else n_candidates,
        clamp_value=subject.clamp_value if clamp_value is None else clamp_value,
        compliance_prefixes=subject.compliance_prefixes,
        skip_positions=subject.skip_positions,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    folder = new_run_folder(out, "demo", seed)
    write_json_atomic(folder / "subject.json", subject.source)
    # what produced this run: model and SAEs by content, the prompt data, every setting
    settings = {"pipeline": dataclasses.asdict(pc), "n_train": n_train, "n_test": n_test}
    subject.identity(settings | {"eval_set": eval_set}).save(folder)
    try:
        report = run_pipeline(
            subject.params, subject.cfg, subject.tokenizer, subject.saes, data, pc, folder,
            progress=progress,
        )  # fmt: skip
    except BaseException as e:
        mark_failed(folder, e)
        raise
    return report, folder


def mark_failed(folder, error: BaseException) -> None:
    """After a failed run: remove ``folder`` if it is empty, else write ``FAILED`` (the error,
    one line) into it, so no run folder looks finished or silently empty."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    elif folder.is_dir():
        line = " ".join(str(error).split()) or type(error).__name__
        write_text_atomic(folder / "FAILED", f"{type(error).__name__}: {line}\n")


__all__ = ["demo_prompts", "mark_failed", "run_demo"]
