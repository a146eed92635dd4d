"""The one CLI error path: a user error is one line ``error: ...`` and exit 2; --debug shows the
traceback; a bug keeps its traceback."""

from __future__ import annotations

import numpy as np
import pytest

from refusal_jax.core.errors import (
    ArgumentParser,
    NonFiniteError,
    UsageError,
    UserError,
    check_finite,
    check_number,
    run_cli,
)


def _fails(argv):
    raise UserError("bad thing (--flag)")


def test_user_error_is_one_line_exit_2(capsys, monkeypatch):
    monkeypatch.delenv("REFUSAL_JAX_DEBUG", raising=False)
    assert run_cli(_fails, []) == 2
    err = capsys.readouterr().err
    assert err == "error: bad thing (--flag)\n"


def test_debug_flag_and_env_show_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv("REFUSAL_JAX_DEBUG", raising=False)
    seen = []
    assert run_cli(lambda a: (seen.append(a), _fails(a)), ["--debug", "x"]) == 2
    assert seen == [["x"]]  # --debug is taken out of argv
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("REFUSAL_JAX_DEBUG", "1")
    assert run_cli(_fails, []) == 2
    assert "Traceback" in capsys.readouterr().err


def test_missing_file_names_it(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("REFUSAL_JAX_DEBUG", raising=False)
    assert run_cli(lambda a: open(tmp_path / "nope.json").read(), []) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "nope.json" in err[0]


def test_bug_keeps_its_traceback():
    def bug(argv):
        raise KeyError("internal")

    with pytest.raises(KeyError):
        run_cli(bug, [])


def test_argparse_errors_raise_usage_error_naming_the_flag():
    p = ArgumentParser(prog="x")
    p.add_argument("--n", type=int)
    with pytest.raises(UsageError, match="--n"):
        p.parse_args(["--n", "z"])


def test_check_finite_and_number():
    check_finite(np.ones(3), "ok")
    with pytest.raises(NonFiniteError, match="direction: 1 of 3"):
        check_finite(np.array([1.0, np.nan, 2.0]), "direction")
    assert check_number("2.5", "--x") == 2.5
    for bad in ("nan", "abc", "-1"):
        with pytest.raises(UserError, match="--x"):
            check_number(bad, "--x", minimum=0)
