"""The sweep report: the files a person opens when a sweep ends.

This module owns the report in a sweep's outputs dir: ``summary.csv`` and ``summary.md``
(the tables of :mod:`lab.summary`) and ``report.png``, one panel per metric and swept
numeric parameter showing the mean ± std across seeds, with the best config (highest
mean accuracy) marked. :class:`lab.tracking.TrackingCallback` writes it at the end of
every sweep and attaches it to the sweep's parent MLflow run.

``python -m lab.report SWEEP`` writes it again, for a sweep dir or for the run id of a
sweep's parent run; interrupted sweeps included (their unfinished jobs are KILLED or
FAILED rows). Given a run id whose sweep dir is gone, it rebuilds the rows from the
parent's child runs in MLflow. Whenever it knows the parent run, it logs the files to it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.outputs import launch_kind, read_sweep_dir, summarize, why_not_creatable
from lab.publishing import check_uri, configure_client_env, pin_uri, quiet_mlflow_logging, redact, resolve_uri
from lab.records import RECORD_FILE, SYNCED_FILE, read_json, split_overrides
from lab.summary import (
    SEED_KEY,
    STUDY_RESULTS,
    Group,
    JobRow,
    Summary,
    job_dirs,
    jobs,
    same_value,
    saved_output_subdir,
    summarize_rows,
    summarize_sweep,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "PLOT_FILE",
    "REPORT_FILES",
    "main",
    "numeric_parameters",
    "summary_from_runs",
    "use_log_scale",
    "write_plot",
    "write_report",
]

PLOT_FILE = "report.png"
REPORT_FILES = ("summary.csv", "summary.md", PLOT_FILE)
BEST_METRIC = "accuracy"
LOG_SCALE_DECADES = 2.0
RUN_ID = re.compile(r"[0-9a-f]{32}")
# Beyond this many distinct values, the swept values no longer fit as tick labels.
MAX_VALUE_TICKS = 8
MAX_LABEL = 60
# Beyond this many lines in one panel, colours repeat and the legend buries the data.
MAX_SERIES = 6
BEST_COLOR = "#f2b705"
HEADER_CHARS_PER_INCH = 13  # of 9.5 pt text at the PNG's 110 dpi


def write_report(out_dir: Path, summary: Summary, title: str | None = None) -> Summary:
    """Write ``summary.csv``, ``summary.md`` and ``report.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        The sweep's outputs dir, or any dir to write the report into.
    summary
        The rows to report.
    title
        The plot's title; by default names ``out_dir``.

    Returns
    -------
    Summary
        The summary the files were written from.

    Notes
    -----
    A failure to draw the plot is printed, not raised, and leaves no ``report.png``: at
    the end of a sweep, a plotting bug must not cost the sweep its tables and the end of
    its parent run.
    """
    (out_dir / "summary.csv").write_text(summary.to_csv())
    (out_dir / "summary.md").write_text(summary.to_markdown())
    plot = out_dir / PLOT_FILE
    # An old plot must never pass for the plot of these rows.
    plot.unlink(missing_ok=True)
    try:
        write_plot(summary, plot, title or f"sweep {out_dir}")
    except Exception as exc:  # noqa: BLE001 - see Notes
        print(f"lab: {plot} not written: {summarize(exc)}", file=sys.stderr)
    return summary


# --- what to plot ----------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _varied_parameters(rows: Sequence[JobRow]) -> dict[str, set[str]]:
    """Override keys (the seed aside) that take more than one value across the jobs."""
    seen: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.params.items():
            seen.setdefault(key, set()).add(same_value(value))
    return {key: values for key, values in seen.items() if key != SEED_KEY and len(values) > 1}


def numeric_parameters(rows: Sequence[JobRow]) -> list[str]:
    """The swept numeric parameters: override keys, the seed aside, whose values vary
    across jobs and all parse as finite numbers; in the order the overrides name them.

    Parameters
    ----------
    rows
        The sweep's jobs, finished or not: what was swept does not depend on what finished.

    Returns
    -------
    list of str
        Parameter names as in the overrides, without Hydra's ``+``/``~`` prefix.
    """
    return [
        key for key, values in _varied_parameters(rows).items() if all(_number(value) is not None for value in values)
    ]


def use_log_scale(values: Sequence[float]) -> bool:
    """Whether positive ``values`` span at least two decades, where a linear axis would
    squeeze the small values into one point."""
    if not values or min(values) <= 0:
        return False
    return math.log10(max(values) / min(values)) >= LOG_SCALE_DECADES


def _shorten(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Plan:
    """The summary rearranged for plotting: each group's params and its finished jobs."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self.members = {group.config: group.members for group in summary.groups}
        self.params = {config: rows[0].params for config, rows in self.members.items()}
        self.varied = list(_varied_parameters(summary.rows))
        self.numeric = numeric_parameters(summary.rows)
        self.best = summary.best(BEST_METRIC)
        shared = [row.params for row in summary.rows if row.overrides is not None]
        self.constant = {
            key: value
            for key, value in (shared[0] if shared else {}).items()
            if key != SEED_KEY
            and all(key in params and same_value(params[key]) == same_value(value) for params in shared)
        }

    def label(self, group: Group, without: str | None = None) -> str:
        """What tells this group apart from the others: its values of the varied
        parameters (but ``without``); what every job shares is said once, in the header."""
        params = self.params[group.config]
        return " ".join(f"{key}={params[key]}" for key in self.varied if key != without and key in params)

    def header(self, title: str) -> str:
        summary = self.summary
        finished = len(summary.rows) - len(summary.failed)
        lines = [f"{title}: {finished} of {jobs(len(summary.rows))} finished"]
        if self.constant:
            lines.append(_shorten("in every job: " + " ".join(f"{k}={v}" for k, v in self.constant.items()), 120))
        if self.best is not None:
            mean, std = self.best.mean[BEST_METRIC], self.best.std[BEST_METRIC]
            tied = sum(1 for group in summary.groups if group.mean.get(BEST_METRIC) == mean) - 1
            lines.append(
                f"best config (highest mean {BEST_METRIC}): {_shorten(self.label(self.best) or '(defaults)')}"
                f" → {mean:.4f} ± {std:.4f} over {self.best.n} seed{'s' if self.best.n != 1 else ''}"
                + (f" (tied with {tied} other{'s' if tied != 1 else ''}; the first is marked)" if tied else "")
            )
        sizes = sorted({group.n for group in summary.groups})
        if sizes:
            n = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
            lines.append(f"mean ± std across seeds (n = {n} per config); small dots: single jobs")
        if summary.failed:
            statuses: dict[str, int] = {}
            for row in summary.failed:
                statuses[row.status] = statuses.get(row.status, 0) + 1
            counts = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
            lines.append(f"not plotted: {counts} (see summary.md)")
        return "\n".join(lines)


# --- drawing ---------------------------------------------------------------------------


def write_plot(summary: Summary, path: Path, title: str) -> None:
    """Draw the report's plot into the PNG file ``path``.

    Each metric against each swept numeric parameter, one line per combination of the
    other varied parameters, the best config starred; with no swept numeric parameter,
    each metric per config; with nothing finished, a note saying so. So the file always
    exists after a sweep.

    Parameters
    ----------
    summary
        The sweep's rows and groups.
    path
        The PNG to write.
    title
        The first line of the figure's title, e.g. the sweep's dir.
    """
    # Imported here, not at the top: lab.tracking runs in every job process, and only the
    # launching process draws. Figure plus the Agg canvas, not pyplot, so drawing touches
    # no global backend state of the process that hosts it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plan = _Plan(summary)
    metrics = [m for m in summary.metric_names if any(m in group.mean for group in summary.groups)]
    header = plan.header(title)
    if not metrics:
        figure = Figure(figsize=(7.0, 2.6), layout="constrained")
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no finished job: nothing to plot", ha="center", va="center", fontsize=12)
    elif plan.numeric:
        columns, rows = len(plan.numeric), len(metrics)
        lines = max(
            len({plan.label(group, without=parameter) for group in summary.groups}) for parameter in plan.numeric
        )
        legend_lines = 1 + (lines if lines <= MAX_SERIES else 2)
        figure = Figure(figsize=(max(6.4, 5.0 * columns), 1.6 + 3.3 * rows + 0.16 * legend_lines), layout="constrained")
        grid = figure.subplots(rows, columns, squeeze=False)
        for row, metric in enumerate(metrics):
            for column, parameter in enumerate(plan.numeric):
                _draw_against(grid[row][column], plan, metric, parameter, legend=row == 0)
    else:
        height = 1.8 + 0.42 * len(summary.groups)
        figure = Figure(figsize=(max(6.4, 4.6 * len(metrics)), max(3.0, height)), layout="constrained")
        grid = figure.subplots(1, len(metrics), squeeze=False, sharey=True)
        for column, metric in enumerate(metrics):
            _draw_per_config(grid[0][column], plan, metric, first=column == 0)
    # Wrapped to the figure's width: a suptitle wider than the figure is cut off, not shrunk.
    width = int(figure.get_figwidth() * HEADER_CHARS_PER_INCH)
    figure.suptitle("\n".join(textwrap.fill(line, width) for line in header.splitlines()), fontsize=9.5)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=110)


def _style(axes: Axes) -> None:
    axes.grid(alpha=0.3)
    axes.spines["top"].set_visible(False)
    axes.spines["right"].set_visible(False)


def _legend_above(axes: Axes) -> None:
    # Above the panel, not inside it: inside, it hides the lines it explains. One column,
    # so that a long label makes the legend taller, not the panel narrower.
    handles, labels = axes.get_legend_handles_labels()
    # The star first, the grey rest last: matplotlib would order them by artist type.
    order = sorted(range(len(labels)), key=lambda i: (not labels[i].startswith("best"), labels[i].startswith("other")))
    axes.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="lower left",
        bbox_to_anchor=(0.0, 1.02),
        fontsize=8,
        frameon=False,
        borderaxespad=0.0,
    )


def _star(axes: Axes, x: float, y: float) -> None:
    axes.scatter(
        [x],
        [y],
        marker="*",
        s=280,
        color=BEST_COLOR,
        edgecolors="black",
        linewidths=0.8,
        zorder=5,
        label=f"best config (highest mean {BEST_METRIC})",
    )


def _draw_against(axes: Axes, plan: _Plan, metric: str, parameter: str, legend: bool) -> None:
    """One metric against one numeric parameter: a line per combination of the other
    varied parameters, mean ± std, the best config starred."""
    series: dict[str, list[tuple[float, Group]]] = {}
    for group in plan.summary.groups:
        value = plan.params[group.config].get(parameter)
        x = _number(value) if value is not None else None
        if x is not None and metric in group.mean:
            series.setdefault(plan.label(group, without=parameter), []).append((x, group))
    best_series = plan.label(plan.best, without=parameter) if plan.best is not None else None
    # With many lines, colours repeat and a legend no longer fits: show all of them in grey
    # for the spread, and colour only the line of the best config.
    crowded = len(series) > MAX_SERIES
    colored = 0
    for label, points in sorted(series.items()):
        points.sort(key=lambda point: point[0])
        xs = [x for x, _ in points]
        means = [group.mean[metric] for _, group in points]
        stds = [group.std[metric] for _, group in points]
        if crowded and label != best_series:
            axes.plot(xs, means, color="0.65", linewidth=1.0, alpha=0.7, zorder=1)
            continue
        color = f"C{colored % 10}"
        colored += 1
        lower = [m - s for m, s in zip(means, stds, strict=True)]
        upper = [m + s for m, s in zip(means, stds, strict=True)]
        axes.fill_between(xs, lower, upper, color=color, alpha=0.12, linewidth=0)
        shown = _shorten(label) if label else "mean ± std"
        axes.errorbar(
            xs, means, yerr=stds, color=color, marker="o", markersize=5, linewidth=1.6, capsize=3, label=shown
        )
        for x, group in points:
            singles = [row.metrics[metric] for row in plan.members[group.config] if metric in row.metrics]
            axes.scatter([x] * len(singles), singles, color=color, s=10, alpha=0.45, linewidths=0, zorder=3)
    if crowded:
        others = ", ".join(key for key in plan.varied if key != parameter)
        axes.plot(
            [], [], color="0.65", linewidth=1.0, label=f"other values of {others} ({len(series) - colored} lines)"
        )
    best = plan.best
    if best is not None and metric in best.mean:
        value = plan.params[best.config].get(parameter)
        x = _number(value) if value is not None else None
        if x is not None:
            _star(axes, x, best.mean[metric])
    xs = sorted({x for points in series.values() for x, _ in points})
    if use_log_scale(xs):
        axes.set_xscale("log")
    if 0 < len(xs) <= MAX_VALUE_TICKS:
        # The swept values as typed in the overrides read better than a generic scale.
        typed = {_number(v): v for g in plan.summary.groups if (v := plan.params[g.config].get(parameter)) is not None}
        axes.set_xticks(xs, [typed.get(x, f"{x:g}") for x in xs])
        axes.minorticks_off()
    axes.margins(x=0.06, y=0.1)  # room for the star at an edge
    axes.set_xlabel(parameter)
    axes.set_ylabel(metric)
    _style(axes)
    if legend:
        _legend_above(axes)


def _draw_per_config(axes: Axes, plan: _Plan, metric: str, first: bool) -> None:
    """One metric per config, for sweeps without a numeric parameter: mean ± std as a
    point with error bars, a row per config, the best config starred."""
    groups = [group for group in plan.summary.groups if metric in group.mean]
    positions = list(range(len(groups)))
    means = [group.mean[metric] for group in groups]
    stds = [group.std[metric] for group in groups]
    axes.errorbar(means, positions, xerr=stds, fmt="o", color="C0", markersize=6, capsize=4, label="mean ± std")
    for position, group in zip(positions, groups, strict=True):
        singles = [row.metrics[metric] for row in plan.members[group.config] if metric in row.metrics]
        axes.scatter(singles, [position] * len(singles), color="C0", s=12, alpha=0.45, linewidths=0, zorder=3)
        if plan.best is not None and group.config == plan.best.config:
            _star(axes, group.mean[metric], position)
    axes.set_yticks(positions, [_shorten(plan.label(group) or "(defaults)") for group in groups])
    axes.invert_yaxis()  # the first config on top, as in summary.md
    axes.margins(y=0.5 / max(1, len(groups)))
    axes.set_xlabel(metric)
    _style(axes)
    if first:
        _legend_above(axes)


# --- rows from MLflow --------------------------------------------------------------------


def summary_from_runs(children: Sequence[Run]) -> Summary:
    """The summary of a sweep rebuilt from its child runs, for when its dir is gone.

    Parameters
    ----------
    children
        The child runs of the sweep's parent run.

    Returns
    -------
    Summary
        One row per child, in job order: its ``lab.overrides`` (:func:`~lab.records.split_overrides`), its
        MLflow status, its metrics without the ``timing.*`` ones (as in ``metrics.json``)
        and the first line of its ``lab.error``.
    """
    rows = []
    for run in sorted(children, key=_job_order):
        tags = run.data.tags
        metrics = {key: value for key, value in run.data.metrics.items() if not key.startswith("timing.")}
        error = (tags.get("lab.error") or "").strip().splitlines()
        rows.append(
            JobRow(
                job=tags.get("lab.job_num") or run.info.run_name or run.info.run_id,
                overrides=split_overrides(tags["lab.overrides"]) if "lab.overrides" in tags else None,
                status=run.info.status,
                metrics=metrics,
                error=error[0] if error and run.info.status != "FINISHED" else "",
            )
        )
    return summarize_rows(rows)


def _job_order(run: Run) -> tuple[float, str]:
    number = run.data.tags.get("lab.job_num", "")
    return (int(number) if number.isdigit() else math.inf, run.info.run_name or "")


def _child_runs(client: MlflowClient, parent: Run) -> list[Run]:
    children: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        children.extend(page)
        token = page.token
        if not token:
            return children


def _summarize(sweep_dir: Path) -> Summary:
    """A sweep dir's summary, its jobs' ``.hydra/`` files found where the sweep's
    ``multirun.yaml`` says they went."""
    return summarize_sweep(sweep_dir, saved_output_subdir(sweep_dir))


def _has_jobs(sweep_dir: Path) -> bool:
    return bool(job_dirs(sweep_dir, output_subdir=saved_output_subdir(sweep_dir)))


def _is_sweep_dir(path: Path) -> bool:
    """Whether ``path`` is a sweep's dir, not a job's: Hydra saved the sweep's config there
    (basic and lab's sweepers), Optuna its results, or it holds a sweep's record."""
    if (path / "multirun.yaml").exists() or (path / STUDY_RESULTS).exists():
        return True
    try:
        tags = read_json(path / RECORD_FILE).get("tags")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(tags, dict) and tags.get("lab.kind") == "sweep"


def _sweep_dirs_below(path: Path, output_subdir: str | None) -> list[Path]:
    """The sweep dirs below ``path`` that hold its job dirs, or are taken for one: a dir
    above sweeps (``outputs/``) would make one report of all their jobs, or of the sweeps.
    A sweep dir that has none of :func:`_is_sweep_dir`'s marks (an untracked Optuna sweep
    stopped early) is the one its jobs' ``hydra.yaml`` names; one job is read per dir."""
    found: dict[Path, None] = {}
    asked: set[Path] = set()
    top = path.resolve()
    for job_dir in job_dirs(path, output_subdir=output_subdir):
        d = job_dir
        while d != path:  # job_dirs walks down from path
            if _is_sweep_dir(d):
                found[d] = None
            d = d.parent
        if job_dir.parent == path or job_dir.parent in asked:
            continue
        asked.add(job_dir.parent)
        # where the job's launch put it: `path`'s own output_subdir is a guess (no multirun.yaml)
        saved = [job_dir / output_subdir / "hydra.yaml"] if output_subdir is not None else []
        hydra_file = next((f for f in [*saved, *job_dir.glob("*/hydra.yaml")] if f.is_file()), None)
        named = read_sweep_dir(hydra_file) if hydra_file is not None else None
        if named is None or not named.is_dir():
            continue
        named = named.resolve()  # the job's own sweep dir, not one it was copied from (lab.reproduce)
        if named != top and named.is_relative_to(top) and job_dir.resolve().is_relative_to(named):
            found[path / named.relative_to(top)] = None
    return list(found)


def _sweep_dir_of(parent: Run, children: Sequence[Run]) -> Path | None:
    """The parent run's sweep dir, if it still exists here and is that sweep's.

    The children's ``lab.output_dir`` is absolute; the parent's may be relative to where
    the sweep was launched, so a dir found there is trusted only if its record carries
    the parent's ``lab.sweep_uid``.
    """
    candidates = []
    job_paths = [run.data.tags["lab.output_dir"] for run in children if "lab.output_dir" in run.data.tags]
    if job_paths:
        candidates.append(Path(os.path.commonpath(job_paths)) if len(job_paths) > 1 else Path(job_paths[0]).parent)
    if "lab.output_dir" in parent.data.tags:
        candidates.append(Path(parent.data.tags["lab.output_dir"]))
    uid = parent.data.tags.get("lab.sweep_uid")
    for candidate in candidates:
        try:
            record = read_json(candidate / RECORD_FILE)
        except (OSError, ValueError):
            continue
        if uid is not None and record.get("uid") == uid and _has_jobs(candidate):
            return candidate
    return None


# --- the command -------------------------------------------------------------------------


class _UsageError(Exception):
    """A bad argument: exit 2 with this message."""


def _store_problem(uri: str) -> str | None:
    """Why ``uri`` cannot hold the run: checked before MLflow, which would create an empty store."""
    problem = check_uri(uri)
    if problem is None and uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            problem = f"no sqlite store at {path}"
    return problem


def _client(uri: str, timeout_s: float) -> MlflowClient:
    configure_client_env(timeout_s)
    import mlflow

    quiet_mlflow_logging()
    return mlflow.MlflowClient(tracking_uri=uri)


def _get_run(client: MlflowClient, run_id: str) -> Run | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _log(client: MlflowClient, run_id: str, out_dir: Path) -> list[str]:
    logged = []
    for name in REPORT_FILES:
        if (out_dir / name).exists():
            client.log_artifact(run_id, str(out_dir / name))
            logged.append(name)
    return logged


def _from_run_id(args: argparse.Namespace, uri: str) -> tuple[Path, Summary, MlflowClient, str]:
    run_id = args.sweep
    problem = _store_problem(uri)
    if problem is not None:
        raise _UsageError(f"tracking URI {redact(uri)}: {problem} (set --tracking-uri or MLFLOW_TRACKING_URI)")
    client = _client(uri, args.timeout)
    parent = _get_run(client, run_id)
    if parent is None:
        raise _UsageError(f"SWEEP {run_id}: no such run in {redact(uri)}")
    if parent.data.tags.get("lab.kind") != "sweep":
        above = parent.data.tags.get("mlflow.parentRunId")
        hint = f"; its sweep's parent run is {above}" if above else ""
        raise _UsageError(f"SWEEP {run_id}: run {parent.info.run_name!r} is not a sweep's parent run{hint}")
    children = _child_runs(client, parent)
    sweep_dir = _sweep_dir_of(parent, children)
    if sweep_dir is not None:
        out_dir = args.out or sweep_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = write_report(out_dir, _summarize(sweep_dir), title=f"sweep {sweep_dir}")
        print(f"lab: report of {sweep_dir} (parent run {run_id})")
    else:
        out_dir = args.out or Path(f"report-{run_id}")
        out_dir.mkdir(parents=True, exist_ok=True)
        title = f"sweep {parent.info.run_name} (MLflow run {run_id[:8]})"
        summary = write_report(out_dir, summary_from_runs(children), title=title)
        where = parent.data.tags.get("lab.output_dir", "(unknown)")
        print(f"lab: sweep dir {where} is gone; report rebuilt from {len(children)} child runs in {redact(uri)}")
    return out_dir, summary, client, run_id


def _run(args: argparse.Namespace) -> int:
    uri = resolve_uri(args.tracking_uri)
    target = Path(args.sweep)
    client: MlflowClient | None = None
    run_id: str | None = None
    receipt: dict[str, Any] = {}
    if target.is_dir():
        if not _has_jobs(target):
            raise _UsageError(
                f"SWEEP {args.sweep!r}: no job dirs in it (subdirs with .hydra/ or metrics.json); "
                "is it a sweep's outputs dir?"
            )
        sweeps = _sweep_dirs_below(target, saved_output_subdir(target))
        if sweeps:
            shown = ", ".join(str(d) for d in sweeps[:3]) + (" …" if len(sweeps) > 3 else "")
            raise _UsageError(f"SWEEP {args.sweep!r} holds sweep dirs, not job dirs: pass one of them ({shown})")
        output_subdir = saved_output_subdir(target)
        single = (
            []
            if _is_sweep_dir(target)
            else [d for d in job_dirs(target, output_subdir=output_subdir) if launch_kind(d, output_subdir) == "run"]
        )
        if single:
            shown = ", ".join(str(d) for d in single[:3]) + (" …" if len(single) > 3 else "")
            raise _UsageError(f"SWEEP {args.sweep!r} holds single runs ({shown}), not a sweep's jobs")
        out_dir = args.out or target
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = write_report(out_dir, _summarize(target), title=f"sweep {target}")
        if (target / SYNCED_FILE).exists():
            receipt = read_json(target / SYNCED_FILE)
            run_id = receipt.get("run_id")
    elif RUN_ID.fullmatch(args.sweep):
        out_dir, summary, client, run_id = _from_run_id(args, uri)
    elif target.exists():
        raise _UsageError(f"SWEEP {args.sweep!r}: not a directory")
    else:
        raise _UsageError(f"SWEEP {args.sweep!r}: neither an existing dir nor an MLflow run id (32 hex digits)")
    finished = len(summary.rows) - len(summary.failed)
    print(
        f"lab: {jobs(len(summary.rows))}, {finished} finished; wrote "
        + ", ".join(str(out_dir / n) for n in REPORT_FILES)
    )
    code = 0
    if not (out_dir / PLOT_FILE).exists():
        code = 1
    if args.no_log or run_id is None:
        if run_id is None:
            print("lab: not logged to MLflow: no parent run known (the sweep dir has no tracking.synced.json)")
        return code
    if client is None:
        problem = _store_problem(uri)
        tracked_in = receipt.get("tracking_uri")
        if problem is not None:
            same = tracked_in and pin_uri(tracked_in) == redact(pin_uri(uri))
            hint = f"; the sweep was tracked in {tracked_in}" if tracked_in and not same else ""
            print(f"lab: not logged to run {run_id}: tracking URI {redact(uri)}: {problem}{hint}", file=sys.stderr)
            return 1
        client = _client(uri, args.timeout)
        if _get_run(client, run_id) is None:
            print(f"lab: not logged: run {run_id} is not in {redact(uri)}", file=sys.stderr)
            return 1
    logged = _log(client, run_id, out_dir)
    print(f"lab: logged {', '.join(logged)} to parent run {run_id} in {redact(uri)}")
    return code


def main(argv: list[str] | None = None) -> None:
    """``python -m lab.report SWEEP``: exit 0 when written (and logged), 1 when something
    failed on the way, 2 for a bad argument."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.report",
        description="Write a sweep's report (summary.csv, summary.md, report.png) again, and log it to its parent run.",
    )
    parser.add_argument("sweep", metavar="SWEEP", help="a sweep's outputs dir, or the run id of its parent run")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument(
        "--out",
        default=None,
        help="write the report here (default: the sweep dir, or ./report-<run id> when the sweep dir is gone)",
    )
    parser.add_argument("--no-log", action="store_true", help="write the files only; log nothing to MLflow")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        parser.error(f"--timeout {args.timeout}: seconds per request, a finite number > 0")
    if args.out is not None:
        problem = why_not_creatable(args.out) if args.out.strip() else "empty"
        if problem:
            parser.error(f"--out {args.out!r}: a dir to write the report in, that can be created here ({problem})")
        args.out = Path(args.out)
    try:
        code = _run(args)
    except _UsageError as exc:
        parser.error(str(exc))
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for a command-line user
        print(f"lab: report failed: {summarize(exc)}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
