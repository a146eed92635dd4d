"""The package's dependency rule, read from the source: no import cycle, no upward import.

Layers, lowest first (docs/ARCHITECTURE.md):

    core  <  sae  <  {ports, method}  <  organism  <  study  <  cli

A module may import its own layer and the layers below it. ``ports`` and ``method`` are siblings
and do not import each other. ``refusal_jax/__init__.py`` is the curated public surface and may
import only ``core`` (and ``sae``). Experiment scripts and tests sit above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

RANK = {"core": 0, "sae": 1, "ports": 2, "method": 2, "organism": 3, "study": 4, "cli": 5}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "ports":
        return "ports"
    if parts[0] == "refusal_jax" and len(parts) > 1 and parts[1] in RANK:
        return parts[1]
    return None


def project_modules() -> dict[str, Path]:
    mods = {}
    for root in ("refusal_jax", "ports"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import submodule` depends on the submodule, `from pkg import name` on pkg
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [s for s in subs if s in known]
            if len(names) < len(subs):
                names.append(node.module)
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                out.add(n)
    return out


MODULES = project_modules()
GRAPH = {m: imports_of(p, set(MODULES)) - {m} for m, p in MODULES.items()}


def test_the_rule_covers_every_module():
    unplaced = [m for m in MODULES if m != "refusal_jax" and layer_of(m) is None]
    assert not unplaced, f"modules outside every layer: {unplaced}"
    assert len(MODULES) > 30


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_or_sideways_import(module):
    if module == "refusal_jax":  # the public surface: core and sae only
        bad = {i for i in GRAPH[module] if layer_of(i) not in ("core", "sae")}
        assert not bad, f"refusal_jax/__init__.py imports {sorted(bad)}"
        return
    mine = layer_of(module)
    bad = []
    for imp in GRAPH[module]:
        theirs = layer_of(imp)
        if theirs is None:  # the package root: only its submodules are imported in practice
            continue
        if RANK[theirs] > RANK[mine] or (RANK[theirs] == RANK[mine] and theirs != mine):
            bad.append(f"{imp} ({theirs})")
    assert not bad, f"{module} ({mine}) imports from above or beside its layer: {bad}"


def test_no_import_cycle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_a_violation(tmp_path):
    """The rule is not vacuous: an upward import in a synthetic module is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("from refusal_jax.study.pipeline import run_pipeline\n")
    found = imports_of(bad, set(MODULES))
    assert "refusal_jax.study.pipeline" in found
    assert RANK[layer_of("refusal_jax.study.pipeline")] > RANK["core"]
