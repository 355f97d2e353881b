"""``tx-suite compare``: runs side by side, from their local run records (no Lightning, no W&B).

Reads ``metrics.csv``, ``config.yaml`` and ``run_info.json`` of each run directory
(:mod:`tx_suite.utils.compare`) and prints, one column per run: status, last logged step, the final and best
value of every metric the runs share, the config keys whose values differ, and differences in
seed, git commit or package versions (``run_info.json``). It also writes the
learning curves as a PNG and a self-contained HTML report (table + inline PNG).

Examples::

    tx-suite compare                                  # every run under runs/
    tx-suite compare mnist_vit                        # the runs of one experiment (or runs/mnist_vit)
    tx-suite compare runs/a/2025... runs/b/2025...    # chosen runs, from any experiments
    tx-suite compare 'runs/mnist_vit/202511*' --metrics val/loss,val/acc --out /tmp/cmp
    tx-suite compare mnist_vit --json                 # the same data as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from tx_suite.utils.compare import (
    METRICS_FILE,
    STAGES,
    config_diff,
    figure_png,
    info_diff,
    format_report,
    html_report,
    labels,
    find_runs,
    plot_curves,
    shared_metrics,
    skipped_message,
    summarize,
)
from tx_suite.utils.option_parser import OptionParser
from tx_suite.utils.runs import default_runs_dir

PNG_NAME = "curves.png"
HTML_NAME = "report.html"


def build_parser() -> argparse.ArgumentParser:
    parser = OptionParser(
        prog="tx-suite compare", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("targets", nargs="*",
                        help="run directories, experiment directories or names, or globs (default: all runs)")
    parser.add_argument("--runs_dir", default=default_runs_dir(),
                        help="root of the run directories (default: $TX_SUITE_RUNS_DIR or runs)")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metric names (default: every train/, val/, test/ metric all runs share)")
    parser.add_argument("--out", default=None,
                        help=f"directory for {PNG_NAME} and {HTML_NAME} (default: <runs_dir>/_compare)")
    parser.add_argument("--no_plot", action="store_true", help="print the table only; write no files")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.runs_dir = os.path.expanduser(args.runs_dir)  # `--runs_dir=~/x`: the shell leaves that ~ alone
    runs, skipped = find_runs(args.targets, args.runs_dir)  # NotARunError -> one line, exit 2 (tx_suite.cli.main)
    if skipped:
        print(f"tx-suite compare: {skipped_message(skipped)}", file=sys.stderr)
    if not runs:
        print(f"tx-suite compare: no runs with {METRICS_FILE} to compare", file=sys.stderr)
        return 1
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        logged = {m for r in runs for m in r.series}
        unknown = [m for m in metrics if m not in logged]
        if unknown:
            known = len(unknown) < len(metrics)
            # Some names right: show those. None: an error, before an empty plot replaces a report.
            print(f"tx-suite compare: {'' if known else 'error: '}no run logged {', '.join(unknown)}; logged: "
                  f"{', '.join(sorted(m for m in logged if m.startswith(STAGES)))}", file=sys.stderr)
            if not known:
                return 2
            metrics = [m for m in metrics if m in logged]
        elif not metrics:
            print("tx-suite compare: error: --metrics names no metric", file=sys.stderr)
            return 2
    else:
        metrics = shared_metrics(runs)
        others = sorted({m for r in runs for m in r.series if m.startswith(STAGES)} - set(metrics))
        if others:
            print(f"tx-suite compare: showing the {len(metrics)} metrics all runs share; not shared: "
                  f"{', '.join(others)}", file=sys.stderr)

    files: dict[str, str] = {}
    if not args.no_plot:
        out = Path(args.out) if args.out else Path(args.runs_dir) / "_compare"
        if out.exists() and not out.is_dir():
            print(f"tx-suite compare: error: --out {out} is a file; it names a directory for "
                  f"{PNG_NAME} and {HTML_NAME}", file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
        curves = [m for m in metrics if any(len(r.series.get(m, [])) > 1 for r in runs)] or metrics
        png = figure_png(plot_curves(runs, curves))
        (out / PNG_NAME).write_bytes(png)
        (out / HTML_NAME).write_text(html_report(runs, metrics, png), encoding="utf-8")
        files = {"png": str(out / PNG_NAME), "html": str(out / HTML_NAME)}

    if args.json:
        summary = summarize(runs, metrics)
        diff = config_diff(runs)
        rows = []
        for i, (label, run) in enumerate(zip(labels(runs), runs)):
            monitor, _ = run.monitor
            rows.append({
                "label": label, "experiment": run.experiment, "run_id": run.run_id, "path": str(run.path),
                "subcommand": run.info.get("subcommand"), "status": run.status, "last_step": run.last_step,
                "monitor": monitor, "best": (summary[label].get(monitor) or {}).get("best") if monitor else None,
                "last": {m: v[-1][1] for m, v in run.series.items()},
                "metrics": summary[label],
                "config": {k: v[i] for k, v in diff.items()},
            })
        print(json.dumps(_json_safe({"metrics": metrics, "config_diff": list(diff), "run_info_diff": info_diff(runs),
                                     "runs": rows, "skipped": [str(p) for p in skipped], "files": files}),
                         indent=2, default=str, allow_nan=False))
        return 0
    print(format_report(runs, metrics))
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


def _json_safe(value):
    """NaN and infinite floats as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (a diverged run's final
    loss): JSON has no such numbers, and ``NaN`` tokens break strict parsers such as ``jq``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
