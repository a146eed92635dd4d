"""``refusal-jax train-sae`` and ``refusal-jax convert-sae`` (wired in by :mod:`refusal_jax.cli`
through :func:`add_sae_commands`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ports import sae as sae_io
from ports.loading import load_model
from refusal_jax.cli.common import number_list
from refusal_jax.core.errors import UsageError
from refusal_jax.core.identity import IdentityMismatch, describe_input, describe_tree
from refusal_jax.core.io import check_separate, write_json_atomic
from refusal_jax.core.positions import content_positions
from refusal_jax.method.prompts import encode_prompts
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


def _read_strings(path: Path) -> list[str]:
    """Strings of a JSON list / JSONL file (strings, or records with an ``instruction``,
    ``prompt`` or ``text`` field) or a folder of .txt files (one text per file)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UsageError(f"{path}: no .txt files")
        return [f.read_text() for f in files]
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    text = path.read_text()
    if path.suffix == ".jsonl":
        recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.suffix == ".json":
        recs = json.loads(text)
        if not isinstance(recs, list):
            raise UsageError(f"{path}: expected a JSON list")
    else:
        return [text]
    out = []
    for i, r in enumerate(recs):
        if isinstance(r, dict):
            r = next((r[k] for k in ("instruction", "prompt", "text") if k in r), None)
        if not isinstance(r, str) or not r.strip():
            raise UsageError(f"{path}: record {i} is not a non-empty string (or instruction/text)")
        out.append(r)
    return out


def _text_tokens(tokenizer, texts, context: int, pad: int):
    """Plain texts tokenized (the tokenizer's own special tokens, e.g. BOS, added) and cut into
    windows of ``context`` tokens, left padded: (ids, mask) [N, context]."""
    import numpy as np

    rows = []
    for t in texts:
        ids = tokenizer(t)["input_ids"]
        rows += [ids[i : i + context] for i in range(0, len(ids), context) if ids[i : i + context]]
    ids = np.full((len(rows), context), pad, np.int32)
    mask = np.zeros((len(rows), context), np.int32)
    for i, r in enumerate(rows):
        ids[i, context - len(r) :], mask[i, context - len(r) :] = r, 1
    return ids, mask


def _prefix(text: str):
    return int(text) if text.isdigit() else text


def _model_tokens(args, model_cfg):
    """(ids, mask, tokenizer or None, default prefix mode) of --tokens / --prompts / --text."""
    import numpy as np

    given = [a for a in ("tokens", "prompts", "text") if getattr(args, a)]
    if len(given) != 1:
        raise UsageError("with --model-dir give exactly one of --tokens, --prompts, --text")
    if args.tokens:
        with np.load(args.tokens, allow_pickle=False) as z:
            return z["input_ids"], z["attention_mask"], None, "data"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    if args.prompts:
        strings = [s for f in args.prompts for s in _read_strings(f)]
        ids, mask = encode_prompts(tok, strings, max_length=model_cfg.max_position_embeddings)
        return ids, mask, tok, "template"
    strings = [s for f in args.text for s in _read_strings(f)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    context = min(args.context, model_cfg.max_position_embeddings)
    ids, mask = _text_tokens(tok, strings, context, pad)
    return ids, mask, tok, "none"


def _cmd_train(args) -> int:
    import sys

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
    outlier = args.outlier_factor or None
    model = None
    if args.activations:
        acts = np.load(args.activations, mmap_mode="r", allow_pickle=False)
        layers = _layers(args.layers) if args.layers else None
        content = None
        inputs = {"activations": describe_input(args.activations)}
        if args.content_mask:
            content = np.load(args.content_mask, allow_pickle=False)
            inputs["content_mask"] = describe_input(args.content_mask)
        else:
            print(
                "note: stored activations without --content-mask: special/prefix positions "
                "cannot be told apart; only norm outliers are left out",
                file=sys.stderr,
            )
        source = sae_train.ArraySource(
            acts, args.batch_size, seed=args.seed, layers=layers, content=content,
            exclude=not args.no_exclude, outlier_factor=outlier,
        )  # fmt: skip
    else:
        if not (args.model_dir and args.layers):
            raise UsageError("give --activations, or --model-dir with --layers and data")
        model_cfg, params = load_model(args.model_dir)
        ids, mask, tok, prefix = _model_tokens(args, model_cfg)
        if args.prefix != "auto":
            prefix = _prefix(args.prefix)
        n_eval = min(args.eval_seqs, len(ids) // 4)
        order = np.random.default_rng([args.seed, 3]).permutation(len(ids))
        ev, tr = order[:n_eval], np.sort(order[n_eval:])
        positions = content_positions(
            tok, model_cfg=model_cfg, special=not args.include_special, prefix=prefix,
            ids=ids, mask=mask, skip_first=args.skip_first,
        )  # fmt: skip
        source = sae_train.ModelSource(
            params, model_cfg, (ids[tr], mask[tr]), _layers(args.layers), args.batch_size,
            seqs_per_step=args.seqs_per_step, seed=args.seed, positions=positions,
            exclude=not args.no_exclude, outlier_factor=outlier,
            eval_tokens=(ids[np.sort(ev)], mask[np.sort(ev)]), reuse=args.reuse,
        )  # fmt: skip
        model = (params, model_cfg, ids[np.sort(ev)], mask[np.sort(ev)])
        inputs = {
            "model": describe_input(args.model_dir),
            "tokens": describe_tree((ids, mask), "training token ids and mask"),
        }
    out = Path(args.out)
    ckpt = out / "checkpoints"
    try:
        res = sae_train.train_sae(
            source, tcfg, ckpt_dir=ckpt, checkpoint_every=args.checkpoint_every, log_every=10,
            inputs=inputs,
        )  # fmt: skip
    except IdentityMismatch as err:
        raise UsageError(f"--out {out}: {err}") from None
    summary = {
        "train_config": dataclasses.asdict(tcfg),
        "data": res.data,
        "warnings": res.warnings,
        "layers": {},
    }
    for i, (layer, sae) in enumerate(res.sae_set().items()):
        x = source.batch(tcfg.n_steps + 1)[i]  # a batch of training (content) tokens
        metrics = {k: float(v) for k, v in sae_train.reconstruction_metrics(sae, x).items()}
        if model is not None:
            params, model_cfg, ids, mask = model
            ce = sae_train.ce_loss_recovered
            metrics.update(ce(params, model_cfg, sae, layer, ids, mask, source.positions))
            every = ce(params, model_cfg, sae, layer, ids, mask)  # also at the sinks
            metrics["recovered_all_positions"] = every["recovered"]
        if res.eval:
            metrics["groups"] = res.eval[i]
        hook = f"blocks.{layer}.hook_resid_post"
        sae_io.save_saelens(sae, out / f"layer_{layer}", hook_name=hook)
        summary["layers"][str(layer)] = metrics
        print(f"layer {layer}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float)
        ))  # fmt: skip
        for g, m in (res.eval[i] if res.eval else {}).items():
            print(
                f"  {g:8s} tokens {m['n_tokens']:6d}  FVU {m['fvu']:.4f}  L0 {m['l0']:.1f}  "
                f"alive {m['alive_fraction']:.2f}  cos {m['cosine']:.3f}  "
                f"variance share {m['variance_share']:.2f}"
            )
    c = res.data.get("counts", {})
    print(
        f"training tokens seen {c.get('tokens', 0)}, excluded positions "
        f"{c.get('excluded_positions', 0)}, norm outliers {c.get('outliers')}"
    )
    for w in res.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
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
    src.add_argument("--content-mask", default=None, help=".npy [N] bool: content rows")
    src.add_argument("--model-dir", default=None, help="converted or HF model folder")
    src.add_argument("--tokens", default=None, help=".npz with input_ids and attention_mask [N, T]")
    src.add_argument(
        "--prompts",
        nargs="+",
        default=None,
        help="prompt files (JSON list / JSONL of strings or {instruction|prompt|text}), "
        "chat formatted with the model's template",
    )
    src.add_argument(
        "--text", nargs="+", default=None, help="plain text: folders of .txt files or JSONL"
    )
    src.add_argument("--context", type=int, default=256, help="--text window length (tokens)")
    src.add_argument(
        "--layers", type=number_list(int), default=None, help="comma-separated resid_post layers"
    )
    src.add_argument("--seqs-per-step", type=int, default=8)
    src.add_argument(
        "--reuse", type=int, default=1, help="steps drawing from one forward pass (model runs)"
    )
    src.add_argument(
        "--eval-seqs",
        type=int,
        default=32,
        help="held-out sequences (at most a quarter) for the group metrics and CE recovered",
    )
    pos = t.add_argument_group("positions (what the SAE is trained on)")
    pos.add_argument(
        "--prefix",
        default="auto",
        help="constant prefix to exclude: template (the chat template's), data (shared by "
        "every sequence), none, or a token count; auto: template for --prompts, data for "
        "--tokens, none for --text",
    )
    pos.add_argument("--skip-first", type=int, default=1, help="always exclude this many first")
    pos.add_argument(
        "--include-special", action="store_true", help="keep special tokens (BOS/EOS/...)"
    )
    pos.add_argument(
        "--no-exclude",
        action="store_true",
        help="train on every real token (metrics still split content / excluded)",
    )
    pos.add_argument(
        "--outlier-factor",
        type=float,
        default=10.0,
        help="leave out (and count) tokens with norm > this x the median; 0 keeps them",
    )
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
