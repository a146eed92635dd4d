"""What a pipeline run folder shows a reader: ``report.md`` and the PNG plots, rendered from the
report dict that is also written as ``report.json`` (so they cannot disagree with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

from refusal_jax.core.io import save_figure_atomic


def render_markdown(report: dict) -> str:
    lines = [
        "# refusal_jax pipeline report",
        "",
        f"Model: {report['model']['family']}, {report['model']['n_layers']} layers; "
        f"SAEs: {report['sae']['architecture']} width {report['sae']['d_sae']}; best layer "
        f"{report['best_layer']}; runtime {report['runtime_s']:.1f} s.",
        "",
        "| method | features | jailbreak (harmful) | refusal (harmful) | refusal (harmless) "
        "| CE change (harmless) |",
        "|---|---|---|---|---|---|",
    ]
    for name in report["methods"]:
        r = report["methods"][name]
        lines.append(
            f"| {name} | {r['n_features']} | {r['jailbreak_rate']:.2f} | "
            f"{r['harmful_refusal_rate']:.2f} | {r['harmless_refusal_rate']:.2f} | "
            f"{r['harmless_ce_change']:+.3f} |"
        )
    lines += ["", "Ranking by jailbreak rate: " + " > ".join(report["ranking_by_jailbreak"]), ""]
    return "\n".join(lines)


def report_figures(report: dict) -> dict[str, Figure]:
    """The run's plots as matplotlib figures, by file stem: ``rates`` (jailbreak rate and
    harmless refusal per method) and ``attribution_by_layer``."""
    names = list(report["methods"])
    jb = [report["methods"][m]["jailbreak_rate"] for m in names]
    hr = [report["methods"][m]["harmless_refusal_rate"] for m in names]
    x = np.arange(len(names))
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.bar(x - 0.2, jb, 0.4, label="jailbreak rate (harmful)")
    ax.bar(x + 0.2, hr, 0.4, label="refusal rate (harmless)")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Rates per method (held-out prompts)")
    fig.tight_layout()
    figs = {"rates": fig}
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    ax.bar(np.arange(len(report["attribution_by_layer"])), report["attribution_by_layer"])
    ax.axvline(report["best_layer"], color="k", ls="--", lw=1, label="best layer")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean sum |A| over features")
    ax.set_title("LA-IG attribution by layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs["attribution_by_layer"] = fig
    return figs


def plot_report(report: dict, out_dir: Path) -> None:
    """``rates.png`` and ``attribution_by_layer.png`` in ``out_dir``."""
    for name, fig in report_figures(report).items():
        save_figure_atomic(fig, Path(out_dir) / f"{name}.png", dpi=120)


__all__ = ["plot_report", "render_markdown", "report_figures"]
