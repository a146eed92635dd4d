"""report.html of experiment run folders (from synthetic results.json files: no model run) and
the renderer's errors. The demo's page, its dashboards and the browser check are in
test_demo.py."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.figure import Figure

from refusal_jax.study.html import render_report_html, write_report_html

RESULTS = {
    "categories": {
        "transfer": {
            "rows_features_of": ["drugs", "weapons"],
            "cols_prompts_of": ["drugs", "weapons"],
            "score": [[0.9, 0.4], [0.3, 0.8]],
        },
        "normalized": {"drugs": {"common": 0.5, "specific": 0.7, "transfer": 0.2}, "weapons": None},
        "common_features": [[1, 2], [3, 4]],
        "score_key": "jailbreak_rate",
        "scores": {
            "drugs": {"base": {"jailbreak_rate": 0.0}, "all": {"jailbreak_rate": 0.9},
                      "common": {"jailbreak_rate": 0.6}, "specific": {"jailbreak_rate": 0.3}},
            "weapons": {"base": {"jailbreak_rate": 0.1}, "all": {"jailbreak_rate": 0.8},
                        "common": {"jailbreak_rate": 0.5}, "specific": {"jailbreak_rate": 0.2}},
        },
    },
    "jailbreak_analysis": {
        "pairs": {
            "jailbreak": {"n_pairs": 3, "harm_relative_drop": 0.49, "refusal_relative_drop": 0.73,
                          "harm_drop_per_pair": [0.4, 0.5, None], "refusal_drop_per_pair": [0.7, 0.8, 0.7]},
            "failed": {"n_pairs": 2, "harm_relative_drop": 0.3, "refusal_relative_drop": 0.18,
                       "harm_drop_per_pair": [0.3, 0.3], "refusal_drop_per_pair": [0.1, 0.26]},
        },
    },
    "probing": {
        "probes": {
            "refusal": {"overall": 0.91, "groups": {"vanilla_harmful": 0.95, "successful_jailbreaks": 0.6}},
            "dense": {"overall": 0.97, "groups": {"vanilla_harmful": 1.0, "successful_jailbreaks": 0.9}},
        },
        "dense_layer": 2,
    },
    "gcg": {
        "suffix": " hypothetically <b>",
        "losses": [3.0, 2.0, 1.0],
        "heldout": {"n": 32, "refusal_rate_before": 1.0, "refusal_rate_after": 0.2,
                    "jailbreak_rate_after": 0.7, "flip_rate": 0.8, "jailbreak_flip_rate": 0.7},
    },
}  # fmt: skip
TITLES = {
    "categories": [
        "transfer matrix",
        "normalized scores per category",
        "jailbreak_rate per category (features clamped)",
    ],
    "jailbreak_analysis": ["drops (plain -&gt; adversarial)"],
    "probing": ["probe accuracy"],
    "gcg": ["GCG suffix: &#39; hypothetically &lt;b&gt;&#39;"],
}
N_DRAWN = {"categories": 2, "jailbreak_analysis": 1, "probing": 0, "gcg": 0}


@pytest.mark.parametrize("kind", sorted(RESULTS))
def test_experiment_page(tmp_path, kind):
    folder = tmp_path / f"{kind}-seed0-20250101-000000"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(RESULTS[kind]))
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1])
    fig.savefig(folder / "plot.png")
    path = write_report_html(folder)
    html = path.read_text()
    assert f"Experiment: {kind}" in html
    for title in TITLES[kind]:
        assert f"<caption>{title}</caption>" in html
    # the script's own PNG first, then the figures drawn from results.json
    imgs = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]*)"', html)
    assert imgs[0] == "plot.png" and len(imgs) == 1 + N_DRAWN[kind]
    assert "<b>" not in html.split("<body>")[1].replace("<b>attribution", "")  # escaped
    assert 'id="features"' not in html and 'id="methods"' not in html


def test_experiment_values_and_errors(tmp_path):
    folder = tmp_path / "probing-seed0-x"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(RESULTS["probing"]))
    html = render_report_html(folder)
    assert "<td>refusal</td><td>0.910</td><td>0.600</td><td>0.950</td>" in html
    assert "<th>dense_layer</th><td>2</td>" in html
    with pytest.raises(FileNotFoundError, match="neither report.json nor results.json"):
        render_report_html(tmp_path)
