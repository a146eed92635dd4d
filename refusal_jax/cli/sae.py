"""``refusal-jax train-sae`` and ``refusal-jax convert-sae`` (wired in by :mod:`refusal_jax.cli`
through :func:`add_sae_commands`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ports import sae as sae_io
from ports.loading import load_model
from refusal_jax.cli.common import number_list
from refusal_jax.core.errors import UsageError
from refusal_jax.core.identity import IdentityMismatch, describe_input
from refusal_jax.core.io import check_separate, write_json_atomic
from refusal_jax.sae import train as sae_train


def _layers(layers) -> list[int]:
    return [int(t) for t in layers]


def _cmd_convert(args) -> int:

    check_separate(args.out, args.src, "out", "src")
    kw = {}
    if args.expected_d_in is not None:
        kw["expected_d_in"] = args.expected_d_in
    fmt = args.format if args.format != "auto" else sae_io.detect_format(args.src)
    if fmt == "llamascope":
        kw["saelens_5_5_2"] = args.saelens_5_5_2
    elif args.saelens_5_5_2:
        raise UsageError("--saelens-5-5-2 applies to LlamaScope SAEs only")
    if fmt == "saelens" and args.input_scale is not None:
        kw["input_scale"] = args.input_scale
    sae = sae_io.load_sae(args.src, format=fmt, **kw)
    if args.to == "saelens":
        out = sae_io.save_saelens(sae, args.out, hook_name=args.hook_name)
    else:
        out = sae_io.save_gemmascope(sae, args.out)
    c = sae.cfg
    print(f"{args.src} ({fmt}: {c.architecture}, d_in {c.d_in}, d_sae {c.d_sae}) -> {out}")
    return 0


def _cmd_train(args) -> int:
    import numpy as np

    tcfg = sae_train.TrainConfig(
        architecture=args.architecture,
        d_sae=args.d_sae,
        k=args.k,
        n_steps=args.steps,
        lr=args.lr,
        lr_warmup_steps=args.lr_warmup,
        sparsity_coeff=args.sparsity_coeff,
        sparsity_warmup_steps=args.sparsity_warmup,
        bandwidth=args.bandwidth,
        init_threshold=args.init_threshold,
        dead_steps=args.dead_steps,
        seed=args.seed,
    )
    model = None
    if args.activations:
        acts = np.load(args.activations, mmap_mode="r", allow_pickle=False)
        layers = _layers(args.layers) if args.layers else None
        source = sae_train.ArraySource(acts, args.batch_size, seed=args.seed, layers=layers)
        inputs = {"activations": describe_input(args.activations)}
    else:
        if not (args.model_dir and args.tokens and args.layers):
            raise UsageError("give --activations, or --model-dir with --tokens and --layers")

        model_cfg, params = load_model(args.model_dir)
        with np.load(args.tokens, allow_pickle=False) as z:
            ids, mask = z["input_ids"], z["attention_mask"]
        source = sae_train.ModelSource(
            params,
            model_cfg,
            (ids, mask),
            _layers(args.layers),
            args.batch_size,
            seqs_per_step=args.seqs_per_step,
            seed=args.seed,
        )
        model = (params, model_cfg, ids[: args.eval_seqs], mask[: args.eval_seqs])
        inputs = {"model": describe_input(args.model_dir), "tokens": describe_input(args.tokens)}
    out = Path(args.out)
    ckpt = out / "checkpoints"
    try:
        res = sae_train.train_sae(
            source, tcfg, ckpt_dir=ckpt, checkpoint_every=args.checkpoint_every, log_every=10,
            inputs=inputs,
        )  # fmt: skip
    except IdentityMismatch as err:
        raise UsageError(f"--out {out}: {err}") from None
    summary = {"train_config": dataclasses.asdict(tcfg), "layers": {}}
    for i, (layer, sae) in enumerate(res.sae_set().items()):
        x = source.batch(tcfg.n_steps + 1)[i]
        metrics = {k: float(v) for k, v in sae_train.reconstruction_metrics(sae, x).items()}
        if model is not None:
            params, model_cfg, ids, mask = model
            metrics.update(sae_train.ce_loss_recovered(params, model_cfg, sae, layer, ids, mask))
        hook = f"blocks.{layer}.hook_resid_post"
        sae_io.save_saelens(sae, out / f"layer_{layer}", hook_name=hook)
        summary["layers"][str(layer)] = metrics
        print(f"layer {layer}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    write_json_atomic(out / "history.json", res.history)  # every record, across resumes
    write_json_atomic(out / "summary.json", summary)
    return 0


def add_sae_commands(subparsers) -> None:
    """Add ``train-sae`` and ``convert-sae`` to an argparse subparsers object."""
    c = subparsers.add_parser(
        "convert-sae", help="convert a GemmaScope / SAELens / LlamaScope / sparsify SAE"
    )
    c.add_argument("src", help="SAE file or folder")
    c.add_argument("out", help="output folder")
    c.add_argument("--to", choices=("saelens", "gemmascope"), default="saelens")
    formats = ("auto", "gemmascope", "saelens", "llamascope", "sparsify")
    c.add_argument("--format", choices=formats, default="auto")
    c.add_argument("--expected-d-in", type=int, default=None, help="the model's d_model")
    c.add_argument("--hook-name", default=None, help="hook name written to the SAELens cfg")
    c.add_argument("--input-scale", type=float, default=None, help="SAELens scaling factor")
    c.add_argument(
        "--saelens-5-5-2",
        action="store_true",
        help="LlamaScope: keep the unscaled threshold as sae_lens 5.5.2 did (inflates L0)",
    )
    c.set_defaults(func=_cmd_convert)

    t = subparsers.add_parser("train-sae", help="train SAEs on model activations (optax)")
    src = t.add_argument_group("data")
    src.add_argument("--activations", default=None, help=".npy activations [N, d] or [L, N, d]")
    src.add_argument("--model-dir", default=None, help="converted or HF model folder")
    src.add_argument("--tokens", default=None, help=".npz with input_ids and attention_mask [N, T]")
    src.add_argument(
        "--layers", type=number_list(int), default=None, help="comma-separated resid_post layers"
    )
    src.add_argument("--seqs-per-step", type=int, default=8)
    src.add_argument("--eval-seqs", type=int, default=32, help="sequences for CE loss recovered")
    t.add_argument("--out", required=True, help="output folder (SAELens folders per layer)")
    t.add_argument(
        "--architecture", choices=("jumprelu", "topk", "batchtopk", "relu"), default="jumprelu"
    )
    t.add_argument("--d-sae", type=int, required=True)
    t.add_argument("--k", type=int, default=None)
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--lr-warmup", type=int, default=100)
    t.add_argument("--sparsity-coeff", type=float, default=1e-3)
    t.add_argument("--sparsity-warmup", type=int, default=0)
    t.add_argument("--bandwidth", type=float, default=0.05)
    t.add_argument("--init-threshold", type=float, default=0.1)
    t.add_argument("--dead-steps", type=int, default=100)
    t.add_argument("--checkpoint-every", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_train)
