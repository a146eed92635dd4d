"""What an experiment runs on: a :class:`Subject` (model, tokenizer, SAEs and the method's
defaults for it) and a :class:`PromptSource` (where its prompts come from).

Two kinds of subject, one API: the embedded model organism (no model folder; its synthetic corpus
stands in for the datasets) or a real model folder with its SAEs and the refusal_direction data.
Every experiment script, the demo and the sweeps go through :func:`load_subject` and
:meth:`Subject.prompts`.
"""

from __future__ import annotations

import dataclasses
import random

import jax.numpy as jnp
from transformers import AutoTokenizer

from ports.loading import load_model
from ports.registry import resolve_model, resolve_sae_dir
from ports.sae import load_saes
from refusal_jax.core.identity import (
    Identity,
    describe_files,
    describe_input,
    describe_tree,
    folder_digest,
)
from refusal_jax.core.sharding import host_device, shard_saes
from refusal_jax.method.judges import HARMBENCH_PROMPT, ClassifierJudge
from refusal_jax.organism import ARTIFACTS, MODEL_DIR, organism_corpus
from refusal_jax.organism import corpus as corpus_mod
from refusal_jax.organism import vocab as vocab_mod
from refusal_jax.organism.tokenizer import load_tokenizer
from refusal_jax.study import data

# A harmful-prompt response of the organism counts as a jailbreak when it is no refusal and opens
# with one of its helpful openers.
ORGANISM_COMPLIANCE = ("Sure", "Here", "Great question", "Of course", "Certainly", "Happy to help")
# The organism's method hyperparameters, as the paper sets c per model (-3 Gemma, -1 Llama):
# chosen on the organism's *validation* split (experiments/calibrate.py) from c in
# {0, -0.5, -1, -2, -3} and F0 size in {10, 20, 40, 80} per layer (F0 40 with c = -0.5 or -1
# jailbreaks 0.97 of the validation prompts; the paper's F0 = 10 0.96 at c = -1; c = -3, the
# paper's Gemma value, pushes the residual stream off distribution: 0.06).
ORGANISM_METHOD = {"clamp_value": -0.5, "n_candidates": 40}
SPLITS = tuple(f"{k}_{p}" for k in ("harmful", "harmless") for p in ("train", "val", "test"))


class PromptSource:
    """Instructions for an experiment: the organism's corpus (``data_dir`` None) or a
    refusal_direction data folder.

    :meth:`split` reads ``harmful_train``, ``harmless_val``, ... On the organism a count ``n``
    draws ``n`` prompts at random (seeded: the same draws in the same order give the same
    prompts) from the split's plain requests; on real data it takes the split's first ``n``, as
    the paper does. :meth:`eval_set` is a benchmark set (HarmBench, ...; on the organism its
    held-out harmful requests). :attr:`corpus` and :meth:`pick` serve the organism-only sets
    (wrapped jailbreaks, plain text)."""

    def __init__(self, data_dir=None, seed: int = 0, *, organism: bool | None = None):
        self.organism = data_dir is None if organism is None else organism
        self.data_dir = None if self.organism else data.data_dir(data_dir)
        self.rng = random.Random(seed)
        self._corpus = None

    @property
    def corpus(self):
        """The organism's corpus (:class:`refusal_jax.organism.corpus.Corpus`)."""
        if not self.organism:
            raise ValueError("a real model's prompts have no organism corpus")
        if self._corpus is None:
            self._corpus = organism_corpus()
        return self._corpus

    def pick(self, xs, n: int | None) -> list:
        """``n`` of ``xs`` at random (all of them, shuffled, when there are fewer)."""
        xs = list(xs)
        return self.rng.sample(xs, len(xs) if n is None else min(n, len(xs)))

    def split(self, name: str, n: int | None = None) -> list[str]:
        if not self.organism:
            return data.split(self.data_dir, name, n)
        if name not in SPLITS:
            raise ValueError(
                f"the organism has no prompt split {name!r}: one of {', '.join(SPLITS)}"
            )
        kind, part = name.split("_")
        xs = self.corpus.prompts(part, harmful=kind == "harmful", wrapped=False)
        return xs if n is None else self.pick(xs, n)

    def eval_set(self, name: str, n: int | None = 100) -> list[str]:
        if self.organism:
            return self.split("harmful_test", n)
        return data.eval_set(self.data_dir, name, n)


@dataclasses.dataclass
class Subject:
    """A model, its tokenizer and SAEs, with the method's defaults for it. ``organism`` is True
    for the embedded model organism."""

    cfg: object
    params: dict
    tokenizer: object
    saes: object  # stacked SAEs (leading layer axis), or None when not loaded
    organism: bool
    data_dir: str | None
    # Default multiply-clamp factor: the paper's -3 (Gemma) on real models; -0.5 on the organism.
    clamp_value: float
    # A harmful-prompt response counts as a jailbreak when it is no refusal and, if given, opens
    # with one of these (the organism's helpful openers).
    compliance_prefixes: tuple[str, ...] | None
    # LA-IG / act position rule (PipelineConfig.skip_positions): 1 (BOS) on the organism,
    # "content" (special tokens and the chat template's constant prefix excluded) on real models
    skip_positions: int | str = 1
    # F0: candidate features per layer (the paper's 10; 40 on the organism, see ORGANISM_METHOD)
    n_candidates: int = 10
    model_dir: str | None = None  # the model folder (None: the organism's)
    sae_dir: str | None = None  # the SAE folder the SAEs were loaded from
    # The arguments of :func:`load_subject` that built it (JSON-able; a run folder saves them as
    # subject.json so ``refusal-jax report`` can load the same subject again).
    source: dict = dataclasses.field(default_factory=dict)

    def prompts(self, seed: int = 0) -> PromptSource:
        """This subject's :class:`PromptSource` (the organism's corpus or ``data_dir``)."""
        return PromptSource(self.data_dir, seed, organism=self.organism)

    def identity(self, settings: dict, inputs: dict | None = None) -> Identity:
        """The :class:`~refusal_jax.core.identity.Identity` of results computed on this subject
        with ``settings``: the model folder's full-content digest, the loaded SAEs' (all bytes,
        None when not loaded), the prompt data's (the data folder, or the organism corpus code)
        and ``inputs`` (other input files, :func:`~refusal_jax.core.identity.describe_input`)."""
        model = describe_input(self.model_dir or MODEL_DIR, None if self.model_dir else "organism")
        saes = None
        if self.saes is not None:
            saes = describe_tree(self.saes, str(self.sae_dir or "organism SAEs"))
        if self.organism:
            data_rec = describe_files(
                "organism corpus", [corpus_mod.__file__, vocab_mod.__file__, vocab_mod.VOCAB_FILE]
            )
        else:
            data_rec = describe_input(data.data_dir(self.data_dir))
        return Identity(model, saes, data_rec, dict(settings), dict(inputs or {}))

    def describe(self) -> dict:
        return {
            "organism": self.organism,
            "family": self.cfg.family,
            "n_layers": self.cfg.n_layers,
            "d_model": self.cfg.d_model,
            "d_sae": int(self.saes.W_dec.shape[-2]),
            "sae_architecture": self.saes.cfg.architecture,
        }


def load_subject(
    model_dir=None,
    sae_dir=None,
    *,
    sae_width: str | None = None,
    target_l0: float = 100.0,
    data_dir=None,
    skip_positions: int | str | None = None,
    with_saes: bool = True,
    sae_layers=None,
    mesh=None,
    dtype=None,
) -> Subject:
    """The organism (no ``model_dir``; ``sae_dir`` defaults to its committed SAEs) or a converted
    or Hugging Face model folder with ``sae_dir``. With a ``mesh`` the parameters and SAEs are
    placed on their shards while they load; ``dtype`` casts both. Every layer needs an SAE of
    the model's d_model unless ``sae_layers`` restricts them (see :func:`ports.sae.load_saes`).
    ``skip_positions``: the LA-IG / act position rule (default 1 on the organism, "content" on
    a model folder). ``model_dir`` may be a hub id (``google/gemma-2-2b-it``) and ``sae_dir`` a
    release name of :data:`ports.registry.RELEASES` (``gemma-scope-2b-pt-res``,
    ``gemma-scope-2-1b-it``, ...), both read from the local Hugging Face cache."""
    default_skip = 1 if model_dir is None else "content"
    skip = default_skip if skip_positions is None else skip_positions
    if sae_dir:
        sae_dir = resolve_sae_dir(sae_dir)
    source = {
        "model_dir": None if model_dir is None else str(model_dir),
        "sae_dir": None if sae_dir is None else str(sae_dir),
        "sae_width": sae_width,
        "target_l0": target_l0,
        "data_dir": None if data_dir is None else str(data_dir),
        "skip_positions": skip_positions,
        "sae_layers": None if sae_layers is None else [int(i) for i in sae_layers],
    }
    if model_dir is not None:
        model_dir = resolve_model(model_dir)
        if with_saes and not sae_dir:
            raise ValueError("a model folder needs its SAEs (sae_dir / --sae-dir)")
        cfg, params = load_model(model_dir, mesh=mesh, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        cfg, params = load_model(MODEL_DIR, mesh=mesh, dtype=dtype)
        tokenizer = load_tokenizer(MODEL_DIR)
        sae_dir = sae_dir or ARTIFACTS / "saes"
    saes = None
    if with_saes:
        kw = dict(layers=sae_layers, expected_d_in=cfg.d_model)
        if mesh is None:
            saes = load_saes(sae_dir, cfg.n_layers, sae_width, target_l0, **kw)
        else:
            with host_device():  # SAEs go to the devices only as shards
                saes = load_saes(sae_dir, cfg.n_layers, sae_width, target_l0, **kw)
            saes = shard_saes(saes, mesh, dtype)
    if model_dir is not None:
        return Subject(
            cfg, params, tokenizer, saes, False, data_dir, -3.0, None, skip,
            model_dir=str(model_dir), sae_dir=sae_dir and str(sae_dir), source=source,
        )  # fmt: skip
    return Subject(
        cfg, params, tokenizer, saes, True, None, ORGANISM_METHOD["clamp_value"],
        ORGANISM_COMPLIANCE, skip, ORGANISM_METHOD["n_candidates"],
        sae_dir=str(sae_dir) if with_saes else None, source=source,
    )  # fmt: skip


def load_classifier(
    folder, dtype=jnp.float32, template: str = HARMBENCH_PROMPT, batch_size: int = 8
) -> ClassifierJudge:
    """The :class:`ClassifierJudge` of an HF (or converted) classifier folder, with a prompt
    template (e.g. one of :data:`refusal_jax.method.judges.PROMPTS`)."""
    cfg, params = load_model(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # the name keys cached verdicts: the classifier's content and dtype, not only its path
    name = f"{folder} ({jnp.dtype(dtype).name}, sha256 {folder_digest(folder)[:16]})"
    return ClassifierJudge.build(
        cfg, params, tokenizer, batch_size=batch_size, template=template, name=name
    )


__all__ = [
    "ORGANISM_COMPLIANCE",
    "ORGANISM_METHOD",
    "SPLITS",
    "PromptSource",
    "Subject",
    "load_classifier",
    "load_subject",
]
