"""A sweep's summary, read from its job dirs: one row per job, and the mean ± std of each
metric across seeds for each otherwise-identical config.

It reads only the outputs dir (``.hydra/overrides.yaml``, ``metrics.json``,
``traceback.txt``), so it works with tracking off and for an interrupted sweep.
``.hydra`` stands for the sweep's ``hydra.output_subdir``, which may be another name or
none at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from lab.outputs import METRICS_FILE, TRACEBACK_FILE, job_status, read_metrics, read_output_subdir, read_overrides
from lab.records import RECORD_FILE, TERMINAL, join_overrides, split_overrides

__all__ = [
    "STUDY_RESULTS",
    "Group",
    "JobRow",
    "Summary",
    "job_dirs",
    "jobs",
    "same_value",
    "saved_output_subdir",
    "summarize_rows",
    "summarize_sweep",
]

SEED_KEY = "seed"  # jobs that differ only by it form one group (given as seed=, +seed= or ++seed=)
STUDY_RESULTS = "optimization_results.yaml"  # hydra-optuna-sweeper's best params and value, in the sweep dir


def jobs(n: int) -> str:
    """``1 job``, ``3 jobs``."""
    return f"{n} job" if n == 1 else f"{n} jobs"


@dataclass
class JobRow:
    job: str  # the job's subdir, normally its number
    overrides: list[str] | None  # None: not known (the job saved none, and has no record)
    status: str
    metrics: dict[str, float]
    error: str = ""

    @property
    def config_key(self) -> str | None:
        """The overrides without the seed, as typed: jobs that share it differ only by seed.
        None when the overrides are not known: such a job is in no group."""
        overrides = self._without_seed()
        return None if overrides is None else join_overrides(overrides)

    @property
    def group_key(self) -> str | None:
        """:attr:`config_key` in one spelling: ``model.C=1``, ``model.C=1.0``, ``1e0`` and
        ``++model.C=1`` set the same config, and their jobs form one group."""
        overrides = self._without_seed()
        return None if overrides is None else join_overrides(map(_one_spelling, overrides))

    def _without_seed(self) -> list[str] | None:
        if self.overrides is None:
            return None
        return [o for o in self.overrides if o.split("=", 1)[0].lstrip("+") != SEED_KEY]

    @property
    def params(self) -> dict[str, str]:
        return dict(o.lstrip("+~").split("=", 1) for o in self.overrides or [] if "=" in o)

    @property
    def shown_overrides(self) -> str:
        """As in the ``lab.overrides`` tag: one line that splits back into the overrides."""
        return "(unknown)" if self.overrides is None else join_overrides(self.overrides)


_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def same_value(value: str) -> str:
    """One spelling of an override's value, for comparing: a number's exact value
    (``1``, ``1.0``, ``1e0`` and ``01`` are all ``1``), anything else as it is. A string
    field given numerals (``tracking.experiment=1`` and ``=1.0``) would compare equal too;
    no sweep of lab's configs varies one that way."""
    return str(Decimal(value).normalize()) if _NUMBER.fullmatch(value) else value


def _one_spelling(override: str) -> str:
    """``key=value`` with the value in :func:`same_value`'s spelling and no ``+``/``++``:
    setting, adding and force-adding a key give the same config (``~`` deletes: kept)."""
    key, sep, value = override.partition("=")
    return f"{key.lstrip('+')}={same_value(value)}" if sep else override


@dataclass
class Group:
    config: str  # the first member's config_key, as typed
    n: int
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    members: list[JobRow] = field(default_factory=list, compare=False, repr=False)


@dataclass
class Summary:
    rows: list[JobRow]
    groups: list[Group]
    metric_names: list[str]

    @property
    def failed(self) -> list[JobRow]:
        return [r for r in self.rows if r.status != "FINISHED"]

    def best(self, metric: str) -> Group | None:
        scored = [g for g in self.groups if metric in g.mean]
        return max(scored, key=lambda g: g.mean[metric]) if scored else None

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["job", "overrides", "status", *self.metric_names, "error"])
        for r in self.rows:
            writer.writerow(
                [r.job, r.shown_overrides, r.status, *(_cell(r.metrics.get(m)) for m in self.metric_names), r.error]
            )
        return out.getvalue()

    def to_markdown(self) -> str:
        names = self.metric_names
        lines = ["## Jobs", "", _md_row(["job", "overrides", "status", *names]), _md_row(["---"] * (3 + len(names)))]
        for r in self.rows:
            status = r.status if not r.error else f"{r.status}: {r.error}"
            cells = [_fmt(r.metrics.get(m)) for m in names]
            lines.append(_md_row([r.job, f"`{r.shown_overrides}`", _md(status), *cells]))
        lines += ["", "## Mean ± std across seeds", ""]
        lines += [_md_row(["config", "n", *names]), _md_row(["---"] * (2 + len(names)))]
        for g in self.groups:
            cells = [f"{_fmt(g.mean.get(m))} ± {_fmt(g.std.get(m))}" if m in g.mean else "" for m in names]
            lines.append(_md_row([f"`{g.config or '(defaults)'}`", str(g.n), *cells]))
        return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_JOB_FILES = {RECORD_FILE, METRICS_FILE, TRACEBACK_FILE}


def saved_output_subdir(sweep_dir: Path) -> str | None:
    """The sweep's ``hydra.output_subdir`` as its ``multirun.yaml`` holds it (lab's sweeper
    and Hydra's basic one save that file; the Optuna sweeper does not): ``.hydra`` when the
    file or the key is missing, or the value is an interpolation."""
    try:
        subdir = read_output_subdir(sweep_dir / "multirun.yaml")
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return ".hydra"
    return ".hydra" if subdir is not None and "${" in subdir else subdir


def job_dirs(sweep_dir: Path, bare: bool = False, output_subdir: str | None = ".hydra") -> list[Path]:
    """The job dirs of a sweep, in job order: every dir below it that holds ``.hydra/``
    (``hydra.output_subdir``), a job record, metrics or a traceback. With ``bare``, also
    every leaf dir that holds none of these (hidden dirs aside): a job stopped right after
    Hydra created its dir, before it wrote ``.hydra/``."""
    parts = Path(output_subdir).parts if output_subdir is not None else None
    marker = parts[0] if parts else None  # the top dir of ``.hydra``; none when it is "." or absent
    markers = (_JOB_FILES | {"hydra.yaml"}) if parts == () else _JOB_FILES  # "." puts Hydra's files in the job dir
    dirs = []
    for root, subdirs, files in os.walk(sweep_dir):
        path = Path(root)
        is_job = path != sweep_dir and (marker in subdirs or not markers.isdisjoint(files))
        subdirs[:] = [] if is_job else [d for d in subdirs if not d.startswith(".")]
        if is_job or (bare and not subdirs and path != sweep_dir):
            dirs.append(path)
    return sorted(dirs, key=lambda d: (int(d.name) if d.name.isdigit() else math.inf, str(d)))


def failure_reason(job_dir: Path, record: dict[str, Any]) -> str:
    """Why the job failed, in one line: its record's ``error``, else the exception's line
    in its ``traceback.txt`` (the first line after the last frame, not the file's last
    line, which for a message of several lines is the message's last)."""
    if isinstance(record.get("error"), str) and record["error"]:
        return str(record["error"]).strip().splitlines()[0]
    try:
        lines = (job_dir / TRACEBACK_FILE).read_text().strip().splitlines()
    except OSError:
        return ""
    last_frame = max((i for i, line in enumerate(lines) if line.startswith("  File ")), default=-1)
    return next((line for line in lines[last_frame + 1 :] if not line.startswith(" ")), lines[-1] if lines else "")


def _read_record(job_dir: Path) -> dict[str, Any]:
    """The job's record as JSON ({} when absent or unreadable)."""
    try:
        record = json.loads((job_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def summarize_sweep(sweep_dir: Path, output_subdir: str | None = ".hydra", dirs: list[Path] | None = None) -> Summary:
    """One row per job dir of the sweep: ``dirs``, by default all its :func:`job_dirs`.

    ``output_subdir`` is the sweep's ``hydra.output_subdir``, where each job's overrides
    are; without it they come from the job's record (tracked jobs), else are unknown. The
    status is the record's when it is final (MLflow's and the summary's must agree), else
    what the outputs dir shows.
    """
    rows: list[JobRow] = []
    for job_dir in job_dirs(sweep_dir, output_subdir=output_subdir) if dirs is None else dirs:
        record = _read_record(job_dir)
        tags = record.get("tags")
        overrides = read_overrides(job_dir, output_subdir)
        if overrides is None and isinstance(tags, dict) and isinstance(tags.get("lab.overrides"), str):
            overrides = split_overrides(tags["lab.overrides"])
        status = str(record["status"]) if record.get("status") in TERMINAL else job_status(job_dir)
        metrics = (read_metrics(job_dir) or {}).get("metrics", {})
        error = failure_reason(job_dir, record) if status == "FAILED" else ""
        rows.append(JobRow(str(job_dir.relative_to(sweep_dir)), overrides, status, metrics, error))
    return summarize_rows(rows)


def summarize_rows(rows: list[JobRow]) -> Summary:
    """Group the FINISHED rows by config, wherever the rows came from (job dirs, or the
    child runs of a sweep's parent run in MLflow)."""
    names = sorted({m for r in rows for m in r.metrics})
    by_config: dict[str, list[JobRow]] = {}
    for r in rows:
        if r.status == "FINISHED" and r.group_key is not None:
            by_config.setdefault(r.group_key, []).append(r)
    groups = []
    for key, members in by_config.items():
        g = Group(members[0].config_key or key, len(members), members=members)
        for m in names:
            values = [r.metrics[m] for r in members if m in r.metrics]
            if values:
                g.mean[m] = statistics.fmean(values)
                g.std[m] = statistics.pstdev(values) if len(values) > 1 else 0.0
        groups.append(g)
    return Summary(rows, groups, names)
