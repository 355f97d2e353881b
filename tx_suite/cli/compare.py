"""``tx-suite compare``: the metrics of several runs side by side, from their local run records.

Reads ``metrics.csv``, ``config.yaml`` and ``run_info.json`` of each run directory (no Lightning,
no W&B, works offline). For each metric it shows the last logged value; for the run's monitored
metric (``checkpoint.monitor``) also the best value by ``checkpoint.mode``.

Examples::

    tx-suite compare                               # every run under runs/
    tx-suite compare multi30k_de_en_quickstart     # the runs of one experiment
    tx-suite compare runs/a/2025... runs/b/2025... --metrics val/loss,val/bleu --json
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml


def _float(value: str) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` -> {metric: [(step, value), ...]} in file order (empty cells skipped)."""
    series: dict[str, list[tuple[int, float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, raw in row.items():
                if key in ("step", "epoch") or key is None:
                    continue
                value = _float(raw)
                if value is not None:
                    series.setdefault(key, []).append((step, value))
    return series


def summarize_run(run_dir: Path) -> dict[str, Any]:
    """Summary of one run: ids, status, steps, last value of each metric, best monitored value."""
    info = json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").is_file() else {}
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    series = read_metrics(run_dir / "metrics.csv")
    ckpt_cfg = (config or {}).get("checkpoint") or {}
    monitor, mode = ckpt_cfg.get("monitor"), ckpt_cfg.get("mode", "min")
    summary: dict[str, Any] = {
        "experiment": info.get("experiment", run_dir.parent.name),
        "run_id": run_dir.name,
        "subcommand": info.get("subcommand"),
        "status": (info.get("resumes") or [info])[-1].get("status"),
        "steps": max((s for values in series.values() for s, _ in values), default=0),
        "last": {k: v[-1][1] for k, v in series.items()},
        "monitor": monitor,
        "best": None,
        "path": str(run_dir),
    }
    if monitor in series:
        pick = max if mode == "max" else min
        summary["best"] = pick(v for _, v in series[monitor])
    return summary


def find_runs(targets: list[str], runs_dir: Path) -> list[Path]:
    """Run directories (holding metrics.csv) named by ``targets``: run dirs, experiment dirs or names."""
    roots = [Path(t) if Path(t).exists() else runs_dir / t for t in targets] or [runs_dir]
    runs: list[Path] = []
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"no run or experiment at {root}")
        if (root / "metrics.csv").is_file():
            runs.append(root)
        else:
            runs.extend(sorted(p.parent for p in root.glob("*/metrics.csv")))
            runs.extend(sorted(p.parent for p in root.glob("*/*/metrics.csv")))
    return list(dict.fromkeys(runs))


def format_table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """An aligned text table: one line per run, one column per metric (last value)."""
    header = ["experiment", "run_id", "cmd", "status", "steps", *metrics, "best(monitor)"]
    lines = [header]
    for r in rows:
        best = f"{r['best']:.4g} ({r['monitor']})" if r["best"] is not None else "-"
        values = [f"{r['last'][m]:.4g}" if m in r["last"] else "-" for m in metrics]
        lines.append([r["experiment"], r["run_id"], r["subcommand"] or "-", r["status"] or "-", str(r["steps"]),
                      *values, best])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tx-suite compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="run directories, experiment directories or experiment names")
    parser.add_argument("--runs_dir", default=os.environ.get("TX_SUITE_RUNS_DIR", "runs"))
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metric names (default: every val/* and test/* metric)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    runs = find_runs(args.targets, Path(args.runs_dir))
    if not runs:
        print(f"tx-suite compare: no runs with metrics.csv under {args.targets or args.runs_dir}", file=sys.stderr)
        return 1
    rows = [summarize_run(r) for r in runs]
    if args.metrics:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    else:
        metrics = sorted({m for r in rows for m in r["last"] if m.startswith(("val/", "test/"))})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, metrics))
    return 0
