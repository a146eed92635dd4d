"""The model organism: a small Gemma-2 chat model trained here to refuse harmful requests.

``load_organism()`` returns ``(cfg, params, tokenizer)`` from the committed Hugging Face folder
``artifacts/model`` (also loadable with ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer``).
``python -m refusal_jax.organism.train --out DIR`` retrains it from scratch.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MODEL_DIR = ARTIFACTS / "model"


def load_organism(folder=None, dtype=None):
    """``(ModelConfig, params, tokenizer)`` of the committed organism (or of ``folder``)."""
    import jax.numpy as jnp

    from ports.hf import load_hf
    from refusal_jax.organism.tokenizer import load_tokenizer

    folder = Path(folder) if folder is not None else MODEL_DIR
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"no organism at {folder}; train one with "
            "`python -m refusal_jax.organism.train --out DIR`"
        )
    cfg, params = load_hf(folder, dtype=dtype or jnp.float32)
    return cfg, params, load_tokenizer(folder)


__all__ = ["ARTIFACTS", "MODEL_DIR", "load_organism"]
