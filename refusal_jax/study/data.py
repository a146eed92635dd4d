"""Prompt datasets: the refusal_direction layout, read strictly.

Layout (``--data-dir`` or ``$REFUSAL_JAX_DATA``)::

    splits/{harmful,harmless}_{train,val,test}.json   [{"instruction": str, "category": str|null}]
    processed/{advbench,harmbench_test,jailbreakbench,...}.json   same records

Malformed files raise :class:`DatasetError` naming the file and the first bad record.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
from pathlib import Path

from refusal_jax.core.errors import DataError
from refusal_jax.core.io import read_json_file

ENV_VAR = "REFUSAL_JAX_DATA"
EVAL_SETS = ("harmbench_test", "jailbreakbench", "advbench")


class DatasetError(DataError):
    """A dataset file is missing, empty or malformed."""


def _read_text(path: Path) -> str:
    """A dataset file's text (UTF-8); a file that is not UTF-8 is a :class:`DatasetError`
    naming it and the byte offset."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a folder, not a dataset file") from None


def _open_text(path: Path) -> io.StringIO:
    """:func:`_read_text` as a file object for :mod:`csv` (line endings kept as ``newline=""``)."""
    return io.StringIO(_read_text(path), newline="")


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
    records = read_json_file(path, DatasetError, "dataset file")
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


CHQA_FIELDS = {"category": ("category",), "question": ("question", "prompt")}


def _chqa_record(path, where: str, rec) -> tuple[str, str]:
    """(category, question) of one CategoricalHarmfulQA record, keys matched case-insensitively
    (``Category``/``Question`` in declare-lab's files, ``category``/``prompt`` in mirrors)."""
    if not isinstance(rec, dict):
        raise DatasetError(
            f"{path}: {where} is not a record with Category and Question: {rec!r:.100}"
        )
    keys = {str(k).strip().lower(): k for k in rec}
    got = {}
    for field, names in CHQA_FIELDS.items():
        name = next((keys[n] for n in names if n in keys), None)
        if name is None:
            raise DatasetError(
                f"{path}: {where} has no {field} column (expected one of {names}, "
                f"case-insensitive; got {sorted(rec)})"
            )
        value = rec[name]
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{path}: {where} has an empty or non-text {name}: {value!r:.100}")
        got[field] = value.strip()
    return got["category"], got["question"]


def categorical_harmful_qa(path, n_per_category: int | None = None) -> dict[str, list[str]]:
    """CategoricalHarmfulQA (declare-lab/CategoricalHarmfulQA: 11 categories x 5 subcategories x
    10 questions) -> {category: [question, ...]} in file order.

    Accepted layouts: a CSV with a header (``Category``, ``Subcategory``, ``Question``); a JSON
    list of such records; JSON Lines of them; or nested JSON ``{category: {subcategory:
    [question, ...]}}``. Column names match case-insensitively and ``prompt`` may stand for
    ``Question``. Anything else raises :class:`DatasetError` naming the file and the row."""

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() == ".csv":
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise DatasetError(f"{path}: empty file (expected a header row)")
            for i, row in enumerate(reader, start=2):  # line 1 is the header
                if None in row:
                    raise DatasetError(f"{path}: line {i} has more fields than the header")
                pairs.append(_chqa_record(path, f"line {i}", row))
    else:
        text = _read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = []
            for i, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    data.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}: line {i} is not JSON ({e})") from e
            where = lambda i: f"line {i + 1}"
        else:
            where = lambda i: f"record {i}"
        if isinstance(data, dict) and any(isinstance(v, str) for v in data.values()):
            data = [data]  # a single record (one line of JSON Lines)
        if isinstance(data, dict):
            for cat, subs in data.items():
                if not isinstance(subs, dict):
                    raise DatasetError(f"{path}: category {cat!r} must map subcategories to lists")
                for sub, qs in subs.items():
                    if not isinstance(qs, list):
                        raise DatasetError(f"{path}: {cat!r} / {sub!r} is not a list of questions")
                    for i, q in enumerate(qs):
                        rec = {"category": cat, "question": q}
                        pairs.append(_chqa_record(path, f"{cat!r} / {sub!r} item {i}", rec))
        elif isinstance(data, list):
            pairs = [_chqa_record(path, where(i), rec) for i, rec in enumerate(data)]
        else:
            raise DatasetError(f"{path}: expected a list of records or a category mapping")
    if not pairs:
        raise DatasetError(f"{path}: no questions")
    out: dict[str, list[str]] = {}
    for cat, q in pairs:
        out.setdefault(cat, []).append(q)
    return {c: qs[:n_per_category] for c, qs in out.items()}


WILDJAILBREAK_TYPES = (
    "vanilla_harmful",
    "vanilla_benign",
    "adversarial_harmful",
    "adversarial_benign",
)


def _wildjailbreak_rows(path, need: set):
    """Rows of a WildJailbreak TSV (allenai/wildjailbreak: train.tsv has ``vanilla``,
    ``adversarial``, ``completion``, ``data_type``; eval.tsv has ``adversarial``, ``label``,
    ``data_type``), checked: the ``need`` columns, as many fields as the header, a known
    data_type. Yields (line number, row)."""

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise DatasetError(
                f"{path}: expected tab-separated columns {sorted(need)}, got {reader.fieldnames}"
            )
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num  # the record's first line (fields may span lines)
            if None in row or any(v is None for v in row.values()):
                raise DatasetError(
                    f"{path}: line {line} does not have the header's {len(reader.fieldnames)} "
                    "tab-separated fields"
                )
            if row["data_type"] not in WILDJAILBREAK_TYPES:
                raise DatasetError(
                    f"{path}: line {line}: data_type {row['data_type']!r} is not one of "
                    f"{WILDJAILBREAK_TYPES}"
                )
            yield line, row


def wildjailbreak_pairs(path, n: int | None = None) -> list[tuple[str, str]]:
    """(adversarial, vanilla) prompt pairs of the ``adversarial_harmful`` rows of a WildJailbreak
    train-style TSV (each adversarial prompt with the plain request it was made from)."""
    out = []
    for line, row in _wildjailbreak_rows(path, {"vanilla", "adversarial", "data_type"}):
        if row["data_type"] != "adversarial_harmful":
            continue
        adv, van = row["adversarial"].strip(), row["vanilla"].strip()
        if not adv or not van:
            raise DatasetError(f"{path}: line {line} has an empty vanilla or adversarial prompt")
        out.append((adv, van))
        if n is not None and len(out) >= n:
            break
    if not out:
        raise DatasetError(f"{Path(path)}: no adversarial_harmful rows")
    return out


def wildjailbreak_prompts(path, data_type: str, n: int | None = None) -> list[str]:
    """The prompts of one ``data_type`` of a WildJailbreak TSV (train or eval layout): the
    ``adversarial`` column for adversarial_* rows, ``vanilla`` for vanilla_* rows."""
    if data_type not in WILDJAILBREAK_TYPES:
        raise ValueError(f"data_type {data_type!r}: expected one of {WILDJAILBREAK_TYPES}")
    column = data_type.split("_")[0]
    out = []
    for line, row in _wildjailbreak_rows(path, {column, "data_type"}):
        if row["data_type"] != data_type:
            continue
        text = row[column].strip()
        if not text:
            raise DatasetError(f"{path}: line {line} ({data_type}) has an empty {column} prompt")
        out.append(text)
        if n is not None and len(out) >= n:
            break
    if not out:
        raise DatasetError(f"{Path(path)}: no {data_type} rows")
    return out


def adv_suffixes(path) -> list[tuple[str, list[str]]]:
    """The refusal_sae suffix CSV: columns ``goal`` and ``response`` (a Python list literal of
    candidate suffix strings) -> [(goal, [suffix, ...])]. Literals only: no code is evaluated."""

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file")
    out = []
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"goal", "response"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: expected columns goal, response; got {reader.fieldnames}")
        end = reader.line_num
        for row in reader:
            i, end = end + 1, reader.line_num  # the record's first line (fields may span lines)
            goal = (row["goal"] or "").strip()
            try:
                suffixes = ast.literal_eval(row["response"] or "")
            except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
                raise DatasetError(f"{path}: line {i}: response is not a list literal ({e})") from e
            if (
                not goal
                or not isinstance(suffixes, list)
                or not suffixes
                or not all(isinstance(s, str) and s.strip() for s in suffixes)
            ):
                raise DatasetError(
                    f"{path}: line {i}: need a goal and a non-empty list of suffix strings"
                )
            out.append((goal, [s.strip() for s in suffixes]))
    if not out:
        raise DatasetError(f"{path}: no rows")
    return out
