"""``refusal-jax report RUN_DIR [--features L:I,...]``: rebuild a run folder's ``report.html``
from its saved files (:func:`refusal_jax.study.html.write_report_html`). Features not yet in the
run's dashboards are computed first, on the subject loaded from the run's ``subject.json``
(:func:`refusal_jax.study.dashboards.add_feature_dashboards`), and saved."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from refusal_jax.study.dashboards import add_feature_dashboards, parse_features
from refusal_jax.study.html import write_report_html


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (demo or experiment script)")
    p.add_argument(
        "--features",
        default=None,
        help="extra feature dashboards, LAYER:INDEX,... (computed and saved when missing)",
    )


def cmd_report(args: argparse.Namespace) -> int:
    folder = Path(args.run_dir)
    if not folder.is_dir():
        raise SystemExit(f"report: {folder}: no such run folder")
    try:
        if args.features:
            t0 = time.perf_counter()
            added = add_feature_dashboards(folder, parse_features(args.features))
            if added:
                names = ", ".join(f"{a}:{b}" for a, b in added)
                print(
                    f"computed dashboards for {len(added)} feature(s) not yet in the run "
                    f"({names}) in {time.perf_counter() - t0:.1f} s; saved to {folder}"
                )
        t0 = time.perf_counter()
        path = write_report_html(folder)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"report: {e}") from None
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB, built in {time.perf_counter() - t0:.1f} s)")
    return 0


__all__ = ["add_report_arguments", "cmd_report"]
