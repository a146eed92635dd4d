"""Sparse autoencoders: pytrees and pure functions (:mod:`.saes`) and their training
(:mod:`.train`).

``from refusal_jax import sae as sae_lib`` gives the SAE API of :mod:`refusal_jax.sae.saes`;
training is :mod:`refusal_jax.sae.train` (imported on its own: it pulls in optax and orbax).
"""

from refusal_jax.sae.saes import (
    ARCHITECTURES,
    NORMALIZATIONS,
    SAE,
    SAEConfig,
    SAESet,
    SpliceSAE,
    ZeroAblate,
    activation,
    batchtopk_train,
    check_shapes,
    decode,
    encode,
    encode_features,
    encode_pre,
    error_term,
    fold_b_dec_into_b_enc,
    fold_input_scale,
    param_shapes,
    reconstruct,
    sae_layer,
    splice_patch,
    stack_sae_set,
    stack_saes,
    topk_mask,
    unstack_saes,
    zeros,
)

__all__ = [
    "ARCHITECTURES",
    "NORMALIZATIONS",
    "SAE",
    "SAEConfig",
    "SAESet",
    "SpliceSAE",
    "ZeroAblate",
    "activation",
    "batchtopk_train",
    "check_shapes",
    "decode",
    "encode",
    "encode_features",
    "encode_pre",
    "error_term",
    "fold_b_dec_into_b_enc",
    "fold_input_scale",
    "param_shapes",
    "reconstruct",
    "sae_layer",
    "splice_patch",
    "stack_sae_set",
    "stack_saes",
    "topk_mask",
    "unstack_saes",
    "zeros",
]
