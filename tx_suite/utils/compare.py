"""Compare finished runs from their local run records (plain Python + matplotlib, no Lightning, no W&B).

A run directory is ``<runs_dir>/<experiment>/<run_id>/`` as written by ``tx-suite fit|validate|test``
(see docs/cli.md): ``metrics.csv`` (every logged metric), ``config.yaml`` (the resolved config) and
``run_info.json`` (status, seed, versions). This module reads them and builds what
``tx-suite compare`` and notebook 3 show:

* :func:`resolve_run_dirs`: run directories named by paths, experiment directories/names or globs;
* :func:`load_run` / :func:`load_runs`: one :class:`Run` per directory (metric series, config, info);
  runs without metrics found by expanding a name or glob are skipped (:func:`find_runs`);
* :func:`summarize`: final and best value of each metric, per run;
* :func:`config_diff`: the config keys (flattened, dotted) whose values differ between runs;
* :func:`info_diff`: differences in seed, git commit and package versions (``run_info.json``);
* :func:`plot_curves`: learning curves of the shared metrics, one panel per metric, one line per run;
* :func:`format_report` (text) and :func:`html_report` (one self-contained HTML file, PNG inlined).

Example::

    from tx_suite.utils.compare import load_runs, summarize, config_diff, plot_curves
    runs = load_runs(["runs/vit_mnist"])          # every run of an experiment
    summarize(runs)                                # {label: {metric: {"final": .., "best": ..}}}
    config_diff(runs)                              # {"model.init_args.lr": [0.001, 0.003]}
    plot_curves(runs).savefig("curves.png")
"""

from __future__ import annotations

import base64
import csv
import glob
import html
import io
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
INFO_FILE = "run_info.json"
#: Metric name prefixes shown by default (``lr-*`` from LearningRateMonitor and the like are left out).
STAGES = ("train/", "val/", "test/")
#: Name fragments that say whether lower or higher is better, for the "best" column.
#: Checked first: a VQ codebook's usage and perplexity are better when more codes are in use.
HIGHER_IS_BETTER_FIRST = ("codebook",)
LOWER_IS_BETTER = ("loss", "ppl", "perplexity", "err", "nll", "fid", "wer", "cer", "bpd", "bits", "mse", "mae")
HIGHER_IS_BETTER = ("acc", "bleu", "chrf", "f1", "precision", "recall", "auc", "iou", "psnr", "ssim", "top")


class NotARunError(FileNotFoundError):
    """A path given to compare is not a run directory (nor an experiment directory holding runs)."""


@dataclass
class Run:
    """The local record of one run.

    Attributes:
        path: the run directory.
        experiment, run_id: its two path components (``run_info.json`` wins for the experiment).
        series: ``{metric: [(step, value), ...]}`` sorted by step; when a step was logged twice (a
            resumed run re-did steps after a crash) the later row wins.
        config: the resolved ``config.yaml``, or for a resumed run its newest
            ``config.resume-<time>.yaml`` (``{}`` if missing).
        info: ``run_info.json`` (``{}`` if missing).
    """

    path: Path
    experiment: str
    run_id: str
    series: dict[str, list[tuple[int, float]]]
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.run_id}"

    @property
    def status(self) -> str | None:
        """Status of the latest (possibly resumed) invocation that trained: finished, failed,
        interrupted, running. A resume that ended before training (``"trained": false``) left
        the run as it was."""
        records = [r for r in (self.info.get("resumes") or [self.info]) if r.get("trained", True)]
        return (records or [self.info])[-1].get("status")

    @property
    def last_step(self) -> int:
        """Step of the last logged value: Lightning's ``global_step`` when it was logged, which
        for a training step is the count of optimizer steps before it (a 40-step run ends at 39)."""
        return max((s for values in self.series.values() for s, _ in values), default=0)

    @property
    def monitor(self) -> tuple[str | None, str]:
        """``(checkpoint.monitor, checkpoint.mode)`` from the config."""
        ckpt = self.config.get("checkpoint") or {}
        return ckpt.get("monitor"), ckpt.get("mode") or "min"


# ------------------------------------------------------------------------------------------ reading
def _float(raw: str | None) -> float | None:
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` -> ``{metric: [(step, value), ...]}`` sorted by step, one value per step.

    Empty cells are skipped; NaN and infinite values are kept (a run that diverged must not look
    healthy); the ``epoch`` and ``step`` columns are not metrics. A step logged more than once keeps
    its last value (rows are in logging order).
    """
    by_step: dict[str, dict[int, float]] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            step = _float(row.get("step"))
            step = int(step) if step is not None and math.isfinite(step) else 0
            for key, raw in row.items():
                if key in ("step", "epoch") or key is None:
                    continue
                value = _float(raw)
                if value is not None:
                    by_step.setdefault(key, {})[step] = value
    return {k: sorted(v.items()) for k, v in by_step.items()}


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in (METRICS_FILE, INFO_FILE))


def _runs_below(root: Path) -> list[Path]:
    """Run directories one or two levels below ``root`` (an experiment dir or a runs/ root)."""
    found = [p for p in sorted(root.iterdir()) if is_run_dir(p)]
    if not found:
        found = [q for p in sorted(root.iterdir()) if p.is_dir() for q in sorted(p.iterdir()) if is_run_dir(q)]
    return found


def resolve_run_dirs(targets: Sequence[str], runs_dir: str | Path = "runs") -> list[Path]:
    """The run directories named by ``targets``, in order, without duplicates.

    Each target is a run directory, an experiment directory (all its runs), the name of an
    experiment under ``runs_dir``, or a glob (``'runs/vit_*/*'``, expanded here when the shell did
    not). No targets means every run under ``runs_dir``.

    Raises:
        NotARunError: a target does not exist, matches nothing, or is a directory that holds no
            run records (the message names it and says what a run directory looks like).
    """
    return list(_resolve(targets, runs_dir))


def _resolve(targets: Sequence[str], runs_dir: str | Path) -> dict[Path, bool]:
    """``{run_dir: named}`` in order; ``named`` is True when a target was that run directory itself
    (False when it was found by expanding an experiment, a glob or the whole ``runs_dir``)."""
    runs_dir = Path(runs_dir)
    out: dict[Path, bool] = {}

    def add(paths: Iterable[Path], named: bool) -> None:
        for p in paths:
            p = p.resolve()
            out[p] = out.get(p, False) or named

    for target in list(targets) or [str(runs_dir)]:
        path = Path(target)
        if not path.exists() and any(c in target for c in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(target))]
            dirs = [p for p in matches if is_run_dir(p)] or [q for p in matches if p.is_dir() for q in _runs_below(p)]
            if not dirs:
                raise NotARunError(f"no run directories match {target!r}")
            add(dirs, False)
            continue
        if not path.exists() and not path.is_absolute() and len(path.parts) == 1 and (runs_dir / target).is_dir():
            path = runs_dir / target  # an experiment name
        if not path.exists():
            raise NotARunError(f"no such run, experiment or directory: {target} (runs are under {runs_dir}/<experiment>/<run_id>/)")
        if is_run_dir(path):
            add([path], True)
            continue
        below = _runs_below(path) if path.is_dir() else []
        if not below:
            raise NotARunError(
                f"not a run directory: {target} (expected <runs_dir>/<experiment>/<run_id>/ with {METRICS_FILE}, "
                f"{CONFIG_FILE} and {INFO_FILE}, or a directory of such runs)"
            )
        add(below, False)
    return out


def load_run(path: str | Path) -> Run:
    """Read one run directory.

    Raises:
        NotARunError: ``path`` is not a run directory, or it has no ``metrics.csv`` (e.g. it was run
            with ``--trainer.logger=false``).
    """
    path = Path(path)
    if not is_run_dir(path):
        raise NotARunError(f"not a run directory: {path} (no {METRICS_FILE} or {INFO_FILE})")
    if not (path / METRICS_FILE).is_file():
        raise NotARunError(f"run {path} has no {METRICS_FILE} (it failed before logging, or ran with "
                           "--trainer.fast_dev_run or --trainer.logger=false)")
    info = json.loads((path / INFO_FILE).read_text()) if (path / INFO_FILE).is_file() else {}
    # A resumed run's newest config (config.resume-<time>.yaml, names sort by time) is what it ran last.
    configs = [p for p in [path / CONFIG_FILE, *sorted(path.glob("config.resume-*.yaml"))] if p.is_file()]
    config = yaml.safe_load(configs[-1].read_text()) if configs else {}
    return Run(
        path=path,
        experiment=str(info.get("experiment") or path.parent.name),
        run_id=path.name,
        series=read_metrics(path / METRICS_FILE),
        config=config if isinstance(config, dict) else {},
        info=info,
    )


def _subcommand(path: Path) -> str | None:
    """The ``tx-suite`` sub-command that made a run (``run_info.json``), if recorded."""
    try:
        return json.loads((path / INFO_FILE).read_text()).get("subcommand")
    except (OSError, ValueError, AttributeError):
        return None


NO_METRICS_REASON = f"run(s) without {METRICS_FILE} (failed before logging, fast_dev_run or --trainer.logger=false)"
PREDICT_REASON = "predict run(s) (predict logs no metrics)"


def _skip_reason(path: Path) -> str:
    """Why :func:`find_runs` skipped ``path``: no ``metrics.csv`` (naming it is an error too), else
    the evaluation sub-command that made it (naming it includes it)."""
    sub = _subcommand(path)
    if not (path / METRICS_FILE).is_file():
        return PREDICT_REASON if sub == "predict" else NO_METRICS_REASON
    return f"{sub} run(s)" if sub and sub != "fit" else NO_METRICS_REASON


def find_runs(targets: Sequence[str] = (), runs_dir: str | Path = "runs") -> tuple[list[Run], list[Path]]:
    """``(runs, skipped)``: :func:`load_run` for every directory :func:`resolve_run_dirs` finds,
    except, among those found by expanding an experiment, a glob or the whole ``runs_dir``:

    * runs without ``metrics.csv`` (a run that failed before logging, a ``--trainer.fast_dev_run``
      or a ``--trainer.logger=false`` run), which would fail the whole comparison;
    * ``validate``/``test``/``predict`` runs when ``fit`` runs are among them: they log other
      metrics (``test/...``) than training runs, so a table of both shares no metric at all.

    Those are returned in ``skipped``. A run directory named on its own is always loaded (and
    still raises :class:`NotARunError` without ``metrics.csv``).
    """
    found = _resolve(targets, runs_dir)
    with_metrics = {p for p in found if (p / METRICS_FILE).is_file()}
    training = {p for p in found if _subcommand(p) in ("fit", None)}  # None: no or an older run_info.json
    any_fit = any(not named and p in with_metrics and p in training for p, named in found.items())
    runs: list[Run] = []
    skipped: list[Path] = []
    for path, named in found.items():
        if not named and (path not in with_metrics or (any_fit and path not in training)):
            skipped.append(path)
        else:
            runs.append(load_run(path))
    return runs, skipped


def load_runs(targets: Sequence[str] = (), runs_dir: str | Path = "runs") -> list[Run]:
    """The runs of :func:`find_runs` (same errors); skipped runs are reported with a warning."""
    runs, skipped = find_runs(targets, runs_dir)
    if skipped:
        warnings.warn(skipped_message(skipped), stacklevel=2)
    return runs


def skipped_message(skipped: Sequence[Path]) -> str:
    """One line naming the runs :func:`find_runs` skipped, grouped by why. Only evaluation runs
    (``validate``/``test``/``predict``) are included when named; a run without ``metrics.csv`` is
    then an error, so the line offers naming only for the former."""
    groups: dict[str, list[str]] = {}
    for p in skipped:
        groups.setdefault(_skip_reason(p), []).append(f"{p.parent.name}/{p.name}")
    parts = [f"{len(names)} {reason}: {', '.join(names)}" for reason, names in groups.items()]
    kinds = [reason.split()[0] for reason in groups if reason not in (NO_METRICS_REASON, PREDICT_REASON)]
    hint = f" (name a {'/'.join(kinds)} run directory to include it)" if kinds else ""
    return f"skipped {'; '.join(parts)}{hint}"


# ---------------------------------------------------------------------------------------- summaries
def labels(runs: Sequence[Run]) -> list[str]:
    """Short unique names: the run id when all runs share an experiment, else ``experiment/run_id``,
    and for runs of the same experiment and id in different runs directories, as many trailing
    path components as tell them apart (tables and plots are keyed by these names)."""
    if len({r.experiment for r in runs}) <= 1 and len({r.run_id for r in runs}) == len(runs):
        return [r.run_id for r in runs]
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    depth = max(len(r.path.resolve().parts) for r in runs)
    for k in range(3, depth + 1):
        names = ["/".join(r.path.resolve().parts[-k:]) for r in runs]
        if len(set(names)) == len(names):
            return names
    return [f"{r.name} #{i + 1}" for i, r in enumerate(runs)]  # the same directory named twice


def shared_metrics(runs: Sequence[Run], prefixes: Sequence[str] = STAGES) -> list[str]:
    """Metric names logged by every run (sorted), restricted to ``prefixes`` (empty: all)."""
    if not runs:
        return []
    common = set.intersection(*(set(r.series) for r in runs))
    return sorted(m for m in common if not prefixes or m.startswith(tuple(prefixes)))


def best_mode(metric: str, run: Run | None = None) -> str | None:
    """``"min"``, ``"max"`` or None (unknown): the run's ``checkpoint.mode`` for its monitored metric,
    else a guess from the name (``loss``/``ppl``/... lower, ``acc``/``bleu``/... higher)."""
    if run is not None:
        monitor, mode = run.monitor
        if metric == monitor:
            return mode
    leaf = metric.rsplit("/", 1)[-1].lower()
    if any(k in leaf for k in HIGHER_IS_BETTER_FIRST):
        return "max"
    if any(k in leaf for k in LOWER_IS_BETTER):
        return "min"
    if any(k in leaf for k in HIGHER_IS_BETTER):
        return "max"
    return None


def summarize(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{label: {metric: {"final", "best", "best_step", "mode"}}}`` for each run and metric.

    ``final`` is the last logged value, NaN or infinite included; ``best`` is the min or max of the
    run's finite values (see :func:`best_mode`; None when the direction is unknown or no value is
    finite) and ``best_step`` its step.
    ``metrics`` defaults to :func:`shared_metrics`. A metric a run did not log is left out of its dict.
    """
    metrics = shared_metrics(runs) if metrics is None else list(metrics)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, run in zip(labels(runs), runs):
        row: dict[str, dict[str, Any]] = {}
        for m in metrics:
            values = run.series.get(m)
            if not values:
                continue
            mode = best_mode(m, run)
            entry: dict[str, Any] = {"final": values[-1][1], "best": None, "best_step": None, "mode": mode}
            finite = [sv for sv in values if math.isfinite(sv[1])]
            if mode is not None and finite:
                pick = min if mode == "min" else max
                step, best = pick(finite, key=lambda sv: sv[1])
                entry.update(best=best, best_step=step)
            row[m] = entry
        out[label] = row
    return out


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> ``{"model.init_args.lr": 0.001, "trainer.logger.0.class_path": ...}``."""
    if isinstance(config, dict):
        items: Iterable[tuple[Any, Any]] = config.items()
    elif isinstance(config, list) and any(isinstance(v, (dict, list)) for v in config):
        items = enumerate(config)
    else:
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, (dict, list)) and value and (isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value)):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _run_specific(value: Any, run: Run) -> bool:
    """True for values that name the run itself (its directory, id): they always differ."""
    if not isinstance(value, str) or not value:
        return False
    named = f"{run.experiment}/{run.run_id}"  # the W&B run name
    if str(run.path) in value or value in (run.run_id, named):
        return True
    # A path through the run directory, relative to where it ran (runs/<exp>/<id>/checkpoints).
    parts = Path(value).parts
    return any(parts[i:i + 2] == (run.experiment, run.run_id) for i in range(len(parts) - 1))


def config_diff(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """The flattened config keys whose values differ between runs: ``{key: [value per run]}``.

    Values that name the run itself (the run directory, checkpoint directory, logger ``save_dir``,
    W&B id, a resumed run's ``ckpt_path`` into its own ``checkpoints/``) count as unset, as does a
    key missing from a run's config, which shows as None: a run resumed in place differs from a
    fresh one by nothing in its config, and a key null in one run and absent in another is no
    difference either.
    """
    flats = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [f.get(key) for f in flats]
        if all(_same(v, values[0]) for v in values[1:]):  # a copied run: the same "own" path is no difference
            continue
        compared = [None if _run_specific(v, r) else v for v, r in zip(values, runs)]
        if any(not _same(v, compared[0]) for v in compared[1:]):
            out[key] = values
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as written in the config, not as Python compares: ``1 == 1.0 == True`` in Python, but
    ``limit_val_batches: 1`` is one batch and ``1.0`` all of them, and ``seed_everything: false``
    is no seed where ``0`` is seed 0."""
    return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)


#: run_info.json fields whose differences :func:`info_diff` reports (reproducibility).
INFO_KEYS = ("seed", "deterministic", "git.commit", "git.dirty", "versions.")


def _info_values(run: Run) -> dict[str, Any]:
    """The run's :data:`INFO_KEYS` values; where a resume that trained ran with another value
    (a new commit, an upgraded torch), the list of the values in the order they were used."""
    records = [run.info] + [r for r in run.info.get("resumes") or [] if r.get("trained", True)]
    used: dict[str, list[Any]] = {}
    for flat in map(flatten, records):
        for key, value in flat.items():
            if key.startswith(INFO_KEYS) and not any(_same(value, v) for v in used.setdefault(key, [])):
                used[key].append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in used.items()}


def info_diff(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """Differences in what the runs were made of (``run_info.json``): seed, determinism, git commit
    and dirty flag, package versions. ``{key: [value per run]}``, keys prefixed ``run_info.``. A run
    resumed under another value (``resumes`` in its ``run_info.json``) gives the list of its values,
    first to last, so it differs from a run made with its first value only."""
    flats = [_info_values(r) for r in runs]
    keys = sorted(k for k in set().union(*flats) if k.startswith(INFO_KEYS)) if flats else []
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [f.get(key) for f in flats]
        if any(not _same(v, values[0]) for v in values[1:]):
            out[f"run_info.{key}"] = values
    return out


def curve_labels(runs: Sequence[Run], diff: dict[str, list[Any]] | None = None, max_keys: int = 2) -> list[str]:
    """Legend labels: :func:`labels`, plus the differing config values (``lr=0.003``) when at most
    ``max_keys`` keys differ (besides experiment, runs_dir and tags)."""
    base = labels(runs)
    diff = config_diff(runs) if diff is None else diff
    keys = [k for k in diff if not k.startswith(("experiment", "runs_dir", "tags"))]
    if len(keys) > max_keys:
        return base
    if not keys:
        return base
    out = []
    for i, label in enumerate(base):
        values = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(diff[k][i])}" for k in keys)
        out.append(f"{label} ({values})")
    return out


# ---------------------------------------------------------------------------------------- plotting
def plot_curves(runs: Sequence[Run], metrics: Sequence[str] | None = None, ncols: int = 3):
    """Learning curves: one panel per metric (x = global step), one line per run.

    Args:
        runs: the runs to draw.
        metrics: metric names (default: the :func:`shared_metrics` of the runs that some run
            logged more than once; single values such as ``test/*`` make no curve).
        ncols: panels per row.

    Returns:
        A :class:`matplotlib.figure.Figure` (built without pyplot, so nothing is shown or kept
        open; save it with ``fig.savefig(path)``). Runs that did not log a metric get no line in
        its panel.
    """
    from matplotlib.figure import Figure

    if metrics is None:
        metrics = [m for m in shared_metrics(runs) if any(len(r.series.get(m, [])) > 1 for r in runs)]
    metrics = list(metrics)
    n = max(len(metrics), 1)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    names = curve_labels(runs)
    for ax, metric in zip(axes, metrics):
        for run, name in zip(runs, names):
            values = [sv for sv in run.series.get(metric) or [] if math.isfinite(sv[1])]  # the table shows the rest
            if not values:
                continue
            steps, ys = zip(*values)
            ax.plot(steps, ys, marker="o" if len(values) <= 20 else None, markersize=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    if metrics:
        handles, legend = axes[0].get_legend_handles_labels()
        fig.legend(handles, legend, loc="outside lower center", ncols=min(len(runs), 2), fontsize="small")
    return fig


def figure_png(fig) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------- reports
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def report_rows(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The comparison as a table: header (``""``, ``""``, one column per run) and rows of strings.

    Rows: status, last logged step, then ``final`` and ``best`` for each metric (``best`` as ``value @step``),
    then one row per differing config key and per differing ``run_info.json`` field
    (:func:`info_diff`: seed, git commit, package versions).
    """
    metrics = shared_metrics(runs) if metrics is None else list(metrics)
    names = labels(runs)
    summary = summarize(runs, metrics)
    rows = [["status", "", *[_fmt(r.status) for r in runs]], ["last step", "", *[str(r.last_step) for r in runs]]]
    for m in metrics:
        cells = [summary[n].get(m) for n in names]
        rows.append([m, "final", *[_fmt(c["final"]) if c else "-" for c in cells]])
        if any(c and c["best"] is not None for c in cells):
            rows.append(["", "best", *[f"{_fmt(c['best'])} @{c['best_step']}" if c and c["best"] is not None else "-"
                                       for c in cells]])
    for key, values in config_diff(runs).items():
        rows.append([key, "config", *[_fmt(v) for v in values]])
    for key, values in info_diff(runs).items():
        rows.append([key, "run_info", *[_fmt(v) for v in values]])
    return ["", "", *names], rows


def format_report(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> str:
    """:func:`report_rows` as aligned text, runs side by side."""
    header, rows = report_rows(runs, metrics)
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def html_report(runs: Sequence[Run], metrics: Sequence[str] | None = None, png: bytes | None = None,
                title: str = "tx-suite compare") -> str:
    """One self-contained HTML page: the table of :func:`report_rows` and the curves as an inline PNG."""
    header, rows = report_rows(runs, metrics)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cls = ' class="config"' if row[1] in ("config", "run_info") else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    paths = "".join(f"<li><code>{esc(str(r.path))}</code></li>" for r in runs)
    img = (f'<img alt="learning curves" src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png else "")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-family: monospace; }}
tr.config td {{ background: #fff6e0; }}
img {{ max-width: 100%; margin-top: 1em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>Final and best value of each metric shared by the runs (best: min for losses, max for accuracy/BLEU,
the checkpoint mode for the monitored metric); config keys that differ are highlighted.</p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(body)}
</tbody></table>
{img}
<h2>Runs</h2><ul>{paths}</ul>
</body></html>
"""
