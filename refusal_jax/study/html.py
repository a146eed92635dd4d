"""``report.html``: one self-contained page per run folder (inline CSS and JS, figures as base64
PNG from matplotlib, no network), rendered with jinja2 from the folder's saved files only
(``report.json``, ``results.json``, ``subject.json``, the dashboards), so it cannot disagree with
them.

Sections: the run (model, SAEs, data, settings, identity, runtime), the method table and plots,
one dashboard per selected feature (:mod:`refusal_jax.study.dashboards`) and, when a
``results.json`` of an experiment script is present, its page (figures first, tables second).
Numbers that come from ``report.json`` carry ``data-key`` / ``data-value`` attributes (the JSON
value, ``repr``) so a browser test can compare the page with the file.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import jinja2
import numpy as np
from matplotlib.figure import Figure

from refusal_jax.core.io import read_json, write_json_atomic, write_text_atomic
from refusal_jax.method.dashboards import density, density_bins
from refusal_jax.study.dashboards import feature_dashboard, load_dashboards
from refusal_jax.study.report import report_figures

TEMPLATES = Path(__file__).parent / "templates"
SET_COLORS = {"harmful": "#d62728", "harmless": "#2ca02c", "jailbreak": "#9467bd"}
# report.json figures and the experiment scripts' PNGs are re-drawn or embedded; these file stems
# are the demo's own (drawn from report.json here, not read back).
DEMO_PNGS = ("rates", "attribution_by_layer")


def png_uri(fig: Figure, dpi: int = 80) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def density_histogram(maxes: dict[str, np.ndarray], n_bins: int = 20) -> dict:
    """Histograms (fraction of prompts per bin) of a feature's max activation per prompt, one
    per prompt set, on shared bins: {"edges": [n_bins + 1], "sets": {name: [n_bins]},
    "ymax"}; the template draws them as an inline SVG."""
    edges = density_bins(*maxes.values(), n_bins=n_bins)
    sets = {name: density(v, edges).tolist() for name, v in maxes.items()}
    ymax = max((max(v) for v in sets.values() if v), default=0.0)
    return {"edges": edges.tolist(), "sets": sets, "ymax": ymax if ymax > 0 else 1.0,
            "n": {name: len(v) for name, v in maxes.items()}}  # fmt: skip


def _fmt(x, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _flat_scalars(obj, prefix: str = "", out=None, limit: int = 200) -> list[tuple[str, str]]:
    """(dotted key, formatted value) of every scalar in a JSON tree (lists of scalars shown
    inline when short)."""
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat_scalars(v, f"{prefix}.{k}" if prefix else str(k), out, limit)
    elif isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            text = ", ".join(_fmt(v) for v in obj[:12]) + (" ..." if len(obj) > 12 else "")
            out.append((prefix, f"[{text}]" if obj else "[]"))
        elif all(isinstance(v, list) and len(v) == 2 for v in obj):
            out.append((prefix, f"{len(obj)} pairs"))
        else:
            for i, v in enumerate(obj[:20]):
                _flat_scalars(v, f"{prefix}[{i}]", out, limit)
    else:
        out.append((prefix, _fmt(obj)))
    return out


def _matrix_figure(mat, rows, cols, title: str) -> Figure:
    fig = Figure(figsize=(0.5 * len(cols) + 2.5, 0.4 * len(rows) + 1.5))
    ax = fig.subplots()
    m = np.array([[np.nan if v is None else v for v in row] for row in mat], np.float64)
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def experiment_page(folder: Path, results: dict) -> dict:
    """Figures (the script's PNGs and plots drawn from ``results``) and tables of an experiment
    run folder's ``results.json``."""
    figures, tables = [], []
    kind = folder.name.split("-seed")[0]
    tr = results.get("transfer")
    if isinstance(tr, dict) and tr.get("score") is not None:  # None: run with --no-transfer
        rows, cols = tr.get("rows_features_of", []), tr.get("cols_prompts_of", [])
        figures.append(
            {
                "title": "transfer: features of (rows) clamped on prompts of (columns)",
                "src": png_uri(_matrix_figure(tr["score"], rows, cols, "transfer score")),
            }
        )
        tables.append(
            {
                "title": "transfer matrix",
                "header": ["features of \\ prompts of", *cols],
                "rows": [[r, *[_fmt(v) for v in row]] for r, row in zip(rows, tr["score"])],
            }
        )
    scores, key = results.get("scores"), results.get("score_key")
    by_cat = isinstance(scores, dict) and all(isinstance(v, dict) for v in scores.values())
    if key and scores and by_cat:
        cats = list(scores)
        conds = [c for c in ("base", "all", "common", "specific") if c in scores[cats[0]]]
        mat = [[(scores[c].get(k) or {}).get(key, float("nan")) for k in conds] for c in cats]
        figures.append(
            {
                "title": f"{key} per category: base, all / common / specific features clamped",
                "src": png_uri(_matrix_figure(mat, cats, conds, key)),
            }
        )
        tables.append(
            {
                "title": f"{key} per category (features clamped)",
                "header": ["category", *conds],
                "rows": [[c, *[_fmt(v) for v in row]] for c, row in zip(cats, mat)],
            }
        )
    if isinstance(results.get("normalized"), dict):
        norm = results["normalized"]
        keys = ["common", "specific", "transfer"]
        tables.append(
            {
                "title": "normalized scores per category",
                "header": ["category", *keys],
                "rows": [[c, *[_fmt((v or {}).get(k)) for k in keys]] for c, v in norm.items()],
            }
        )
    pairs = results.get("pairs")
    if isinstance(pairs, dict) and all(isinstance(v, dict) for v in pairs.values()):
        fig = Figure(figsize=(6, 2.6))
        axs = fig.subplots(1, 2)
        for ax, what in zip(axs, ("harm", "refusal")):
            for name, p in pairs.items():
                v = [x for x in p.get(f"{what}_drop_per_pair", []) if x is not None]
                ax.plot(v, "o", ms=3, label=name)
            ax.set_title(f"{what} features: relative drop per pair", fontsize=8)
            ax.set_xlabel("pair")
            ax.legend(fontsize=7)
        fig.tight_layout()
        figures.append({"title": "jailbreak analysis: drops per prompt pair", "src": png_uri(fig)})
        keys = ["n_pairs", "harm_relative_drop", "refusal_relative_drop"]
        tables.append(
            {
                "title": "drops (plain -> adversarial)",
                "header": ["pairs", *keys],
                "rows": [[n, *[_fmt(p.get(k)) for k in keys]] for n, p in pairs.items()],
            }
        )
    probes = results.get("probes")
    if isinstance(probes, dict):
        grp = lambda p: p.get("groups") or {}
        groups = sorted({g for p in probes.values() for g in (p.get("groups") or {})})
        tables.append(
            {
                "title": "probe accuracy",
                "header": ["probe", "overall", *groups],
                "rows": [
                    [n, _fmt(p.get("overall")), *[_fmt(grp(p).get(g)) for g in groups]]
                    for n, p in probes.items()
                ],
            }
        )
    if "suffix" in results and isinstance(results.get("suffix"), str):
        keys = ["n", "refusal_rate_before", "refusal_rate_after", "jailbreak_rate_after",
                "flip_rate", "jailbreak_flip_rate"]  # fmt: skip
        tables.append(
            {
                "title": f"GCG suffix: {results['suffix']!r}",
                "header": ["prompts", *keys],
                "rows": [
                    [s, *[_fmt(results[s].get(k)) for k in keys]]
                    for s in ("train", "heldout")
                    if isinstance(results.get(s), dict)
                ],
            }
        )
    for png in sorted(folder.glob("*.png")):
        if png.stem not in DEMO_PNGS:
            figures.insert(0, {"title": png.name, "src": file_uri(png)})
    return {
        "kind": kind,
        "figures": figures,
        "tables": tables,
        "scalars": _flat_scalars(
            {k: v for k, v in results.items() if k not in ("samples", "features")}
        ),
    }


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["jsonval"] = lambda v: json.dumps(v)
    return env


def render_report_html(folder) -> str:
    """The HTML of a run folder (see the module docstring)."""
    folder = Path(folder)
    report = read_json(folder / "report.json") if (folder / "report.json").exists() else None
    results = read_json(folder / "results.json") if (folder / "results.json").exists() else None
    subject = read_json(folder / "subject.json") if (folder / "subject.json").exists() else None
    ident = folder / "identity.json"  # what produced the run (refusal_jax.core.identity)
    identity = read_json(ident) if ident.exists() else None
    if report is None and results is None:
        raise FileNotFoundError(f"{folder}: neither report.json nor results.json to render")
    arrays, meta = load_dashboards(folder)
    figures = []
    if report is not None:
        figures = [
            {"title": name.replace("_", " "), "src": png_uri(fig)}
            for name, fig in report_figures(report).items()
        ]
    dashboards = []
    selected = {tuple(p) for p in (report or {}).get("features", {}).get("ours", [])}
    if meta is not None:
        for layer, index in meta["features"]:
            d = feature_dashboard(arrays, meta, layer, index)
            d["selected"] = (layer, index) in selected
            d["hist"] = density_histogram({k: s["max"] for k, s in d["sets"].items()})
            d["fire_rate"] = {k: float(np.mean(s["max"] > 0)) for k, s in d["sets"].items()}
            d["mean_max"] = {k: float(np.mean(s["max"])) for k, s in d["sets"].items()}
            dashboards.append(d)
    # the run's selected features first, each group by attribution rank over all layers
    dashboards.sort(key=lambda d: (not d["selected"], d["rank_global"], d["layer"], d["index"]))
    experiment = experiment_page(folder, results) if results is not None else None
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            folder=folder.name,
            report=report,
            subject=subject,
            identity=identity,
            figures=figures,
            dashboards=dashboards,
            clamp_value=None if meta is None else meta.get("clamp_value"),
            experiment=experiment,
            set_colors=SET_COLORS,
        )
    )


def write_report_html(folder) -> Path:
    """Render and (atomically) write ``<folder>/report.html``; returns its path."""
    path = Path(folder) / "report.html"
    write_text_atomic(path, render_report_html(folder))
    return path


def write_run_report(folder, subject=None) -> Path:
    """What every run folder ends with (the experiment scripts call it after their
    results.json and plots): ``subject.json`` (the subject's load arguments, when given) and
    ``report.html``; returns the HTML's path."""
    if subject is not None:
        write_json_atomic(Path(folder) / "subject.json", subject.source)
    return write_report_html(folder)


__all__ = ["density_histogram", "experiment_page", "png_uri", "render_report_html",
           "write_report_html", "write_run_report"]  # fmt: skip
