"""refusal_jax: refusal in language models, studied with sparse autoencoders, in JAX."""

from refusal_jax.core.config import PRESETS, ModelConfig, UnsupportedConfigError, config_from_hf
from refusal_jax.core.model import (
    ForwardOutput,
    GenerateOutput,
    forward,
    forward_fn,
    generate,
    init_params,
    param_shapes,
)
from refusal_jax.core.patches import AddVector, Compose, Identity, PatchContext, PromptOnly

__all__ = [
    "PRESETS",
    "AddVector",
    "Compose",
    "ForwardOutput",
    "GenerateOutput",
    "Identity",
    "ModelConfig",
    "PatchContext",
    "PromptOnly",
    "UnsupportedConfigError",
    "config_from_hf",
    "forward",
    "forward_fn",
    "generate",
    "init_params",
    "param_shapes",
]
