"""Every experiment script with ``--resume`` opens its run folder through the shared helper that
binds it to its identity (tests/study/test_run_identity.py covers the helper's cases), and none
builds an unbound cache of its own."""

import pytest

from tests.support.paths import EXPERIMENTS

SCRIPTS = ("gcg", "probing", "jailbreak_analysis", "benchmark", "categories", "calibrate")


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_run_folder_is_bound_to_its_identity(name):
    src = (EXPERIMENTS / f"{name}.py").read_text()
    assert "open_run_from_args(args, " in src
    assert "Cache(" not in src and "run_folder(args" not in src
