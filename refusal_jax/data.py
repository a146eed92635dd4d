"""Prompt datasets: the refusal_direction layout, read strictly.

Layout (``--data-dir`` or ``$REFUSAL_JAX_DATA``)::

    splits/{harmful,harmless}_{train,val,test}.json   [{"instruction": str, "category": str|null}]
    processed/{advbench,harmbench_test,jailbreakbench,...}.json   same records

Malformed files raise :class:`DatasetError` naming the file and the first bad record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV_VAR = "REFUSAL_JAX_DATA"
EVAL_SETS = ("harmbench_test", "jailbreakbench", "advbench")


class DatasetError(ValueError):
    """A dataset file is missing, empty or malformed."""


def data_dir(path=None) -> Path:
    """The data folder: ``path``, else ``$REFUSAL_JAX_DATA``; errors name both when absent."""
    p = path or os.environ.get(ENV_VAR)
    if not p:
        raise DatasetError(f"no data folder: pass --data-dir or set ${ENV_VAR}")
    p = Path(p)
    if not p.is_dir():
        raise DatasetError(f"data folder {p} does not exist")
    return p


def read_instructions(path, *, with_category: bool = False):
    """Read a JSON list of {"instruction", "category"} records."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(records, list) or not records:
        raise DatasetError(f"{path}: expected a non-empty JSON list of records")
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("instruction"), str):
            raise DatasetError(f"{path}: record {i} has no string 'instruction': {rec!r:.100}")
        if not rec["instruction"].strip():
            raise DatasetError(f"{path}: record {i} has an empty instruction")
        out.append(
            (rec["instruction"], rec.get("category")) if with_category else rec["instruction"]
        )
    return out


def split(folder, name: str, n: int | None = None) -> list[str]:
    """``splits/{name}.json`` (e.g. harmful_train), the first ``n`` records."""
    return read_instructions(data_dir(folder) / "splits" / f"{name}.json")[:n]


def eval_set(folder, name: str, n: int | None = 100) -> list[str]:
    """``processed/{name}.json`` (the paper evaluates the first 100)."""
    return read_instructions(data_dir(folder) / "processed" / f"{name}.json")[:n]


def categorical_harmful_qa(path, n_per_category: int | None = None) -> dict[str, list[str]]:
    """CategoricalHarmfulQA-style CSV (declare-lab/CategoricalHarmfulQA): columns ``Category``,
    ``Subcategory``, ``Question`` -> {category: [question, ...]} in file order."""
    import csv

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"Category", "Question"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetError(
                f"{path}: expected columns {sorted(need)} (and Subcategory), got "
                f"{reader.fieldnames}"
            )
        out: dict[str, list[str]] = {}
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            cat, q = (row.get("Category") or "").strip(), (row.get("Question") or "").strip()
            if not cat or not q:
                raise DatasetError(f"{path}: line {i} has an empty Category or Question: {row}")
            out.setdefault(cat, []).append(q)
    if not out:
        raise DatasetError(f"{path}: no rows")
    return {c: qs[:n_per_category] for c, qs in out.items()}


def wildjailbreak_pairs(path, n: int | None = None) -> list[tuple[str, str]]:
    """(adversarial, vanilla) prompt pairs from a WildJailbreak-style TSV (allenai/wildjailbreak:
    columns ``vanilla``, ``adversarial``, ``completion``, ``data_type``), rows whose data_type is
    ``adversarial_harmful``."""
    import csv

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        need = {"vanilla", "adversarial", "data_type"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns {sorted(need)}, got {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            if row["data_type"] != "adversarial_harmful":
                continue
            adv, van = (row["adversarial"] or "").strip(), (row["vanilla"] or "").strip()
            if not adv or not van:
                raise DatasetError(f"{path}: line {i} has an empty vanilla or adversarial prompt")
            out.append((adv, van))
    if not out:
        raise DatasetError(f"{path}: no adversarial_harmful rows")
    return out[:n]


def adv_suffixes(path) -> list[tuple[str, list[str]]]:
    """The refusal_sae suffix CSV: columns ``goal`` and ``response`` (a Python list literal of
    candidate suffix strings) -> [(goal, [suffix, ...])]. Literals only: no code is evaluated."""
    import ast
    import csv

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"goal", "response"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns goal, response; got {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            goal = (row["goal"] or "").strip()
            try:
                suffixes = ast.literal_eval(row["response"] or "")
            except (ValueError, SyntaxError) as e:
                raise DatasetError(f"{path}: line {i}: response is not a list literal ({e})") from e
            if (
                not goal
                or not isinstance(suffixes, list)
                or not all(isinstance(s, str) for s in suffixes)
            ):
                raise DatasetError(f"{path}: line {i}: need a goal and a list of suffix strings")
            out.append((goal, suffixes))
    if not out:
        raise DatasetError(f"{path}: no rows")
    return out
