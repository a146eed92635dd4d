"""The model organism: a small Gemma-2 chat model trained here to refuse harmful requests.

``load_organism()`` returns ``(cfg, params, tokenizer)`` from the committed Hugging Face folder
``artifacts/model`` (also loadable with ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer``).
``organism_corpus()`` is the synthetic corpus it was trained on (its splits are the held-out
evaluation sets). ``python -m refusal_jax.organism.train --out DIR`` retrains it from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

from ports.hf import load_hf
from refusal_jax.organism.corpus import build_corpus
from refusal_jax.organism.tokenizer import load_tokenizer

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MODEL_DIR = ARTIFACTS / "model"


def load_organism(folder=None, dtype=None):
    """``(ModelConfig, params, tokenizer)`` of the committed organism (or of ``folder``)."""
    import jax.numpy as jnp

    folder = Path(folder) if folder is not None else MODEL_DIR
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no organism at {folder}; train one with "
            "`python -m refusal_jax.organism.train --out DIR`"
        )
    cfg, params = load_hf(folder, dtype=dtype or jnp.float32)
    return cfg, params, load_tokenizer(folder)


def organism_corpus(folder=None):
    """The corpus the organism in ``folder`` (default: the committed one) was trained on: its
    ``organism.json`` records the corpus seed (a folder without a record: seed 0)."""

    record = Path(folder if folder is not None else MODEL_DIR) / "organism.json"
    seed = 0
    if record.exists():
        seed = json.loads(record.read_text()).get("train_config", {}).get("corpus_seed", 0)
    return build_corpus(seed)


__all__ = ["ARTIFACTS", "MODEL_DIR", "load_organism", "organism_corpus"]
