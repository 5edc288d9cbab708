"""A sweep's summary, read from its job dirs: one row per job, and the mean ± std of each
metric across seeds for each otherwise-identical config.

It reads only the outputs dir (``.hydra/overrides.yaml``, ``metrics.json``,
``traceback.txt``), so it works with tracking off and for an interrupted sweep.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lab.outputs import TRACEBACK_FILE, job_status, read_metrics
from lab.records import RECORD_FILE, TERMINAL

__all__ = ["Group", "JobRow", "Summary", "summarize_rows", "summarize_sweep"]

SEED_KEYS = ("seed", "+seed")


@dataclass
class JobRow:
    job: str  # the job's subdir, normally its number
    overrides: list[str]
    status: str
    metrics: dict[str, float]
    error: str = ""

    @property
    def config_key(self) -> str:
        """The overrides without the seed: jobs that share it differ only by seed."""
        return " ".join(o for o in self.overrides if o.split("=", 1)[0] not in SEED_KEYS)

    @property
    def params(self) -> dict[str, str]:
        return dict(o.lstrip("+~").split("=", 1) for o in self.overrides if "=" in o)


@dataclass
class Group:
    config: str
    n: int
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)


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
                [r.job, " ".join(r.overrides), r.status, *(_cell(r.metrics.get(m)) for m in self.metric_names), r.error]
            )
        return out.getvalue()

    def to_markdown(self) -> str:
        names = self.metric_names
        lines = ["## Jobs", "", "| job | overrides | status | " + " | ".join(names) + " |"]
        lines.append("|" + " --- |" * (3 + len(names)))
        for r in self.rows:
            cells = [_fmt(r.metrics.get(m)) for m in names]
            status = r.status if not r.error else f"{r.status}: {r.error}"
            lines.append(f"| {r.job} | `{' '.join(r.overrides)}` | {_md(status)} | " + " | ".join(cells) + " |")
        lines += ["", "## Mean ± std across seeds", "", "| config | n | " + " | ".join(names) + " |"]
        lines.append("|" + " --- |" * (2 + len(names)))
        for g in self.groups:
            cells = [f"{_fmt(g.mean.get(m))} ± {_fmt(g.std.get(m))}" if m in g.mean else "" for m in names]
            lines.append(f"| `{g.config or '(defaults)'}` | {g.n} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def job_dirs(sweep_dir: Path, bare: bool = False, output_subdir: str | None = ".hydra") -> list[Path]:
    """The job dirs of a sweep, in job order: every dir below it that holds ``.hydra/``
    (``hydra.output_subdir``) or a job record. With ``bare``, also every leaf dir that holds
    neither (hidden dirs aside): a job stopped right after Hydra created its dir, before it
    wrote ``.hydra/``."""
    marker = Path(output_subdir).parts[0] if output_subdir else None
    dirs = []
    for root, subdirs, files in os.walk(sweep_dir):
        path = Path(root)
        is_job = path != sweep_dir and (marker in subdirs or RECORD_FILE in files)
        subdirs[:] = [] if is_job else [d for d in subdirs if not d.startswith(".")]
        if is_job or (bare and not subdirs and path != sweep_dir):
            dirs.append(path)
    return sorted(dirs, key=lambda d: (int(d.name) if d.name.isdigit() else math.inf, str(d)))


def _error(job_dir: Path) -> str:
    try:
        lines = (job_dir / TRACEBACK_FILE).read_text().strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _status(job_dir: Path) -> str:
    """The job's MLflow status when it has a final record (the two must agree), else what
    its outputs dir shows."""
    try:
        record = json.loads((job_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return job_status(job_dir)
    return str(record["status"]) if record.get("status") in TERMINAL else job_status(job_dir)


def summarize_sweep(sweep_dir: Path) -> Summary:
    rows: list[JobRow] = []
    for job_dir in job_dirs(sweep_dir):
        try:
            overrides = [str(o) for o in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []]
        except OSError:
            overrides = []
        metrics = (read_metrics(job_dir) or {}).get("metrics", {})
        status = _status(job_dir)
        error = _error(job_dir) if status == "FAILED" else ""
        rows.append(JobRow(str(job_dir.relative_to(sweep_dir)), overrides, status, metrics, error))
    return summarize_rows(rows)


def summarize_rows(rows: list[JobRow]) -> Summary:
    """Group the FINISHED rows by config, wherever the rows came from (job dirs, or the
    child runs of a sweep's parent run in MLflow)."""
    names = sorted({m for r in rows for m in r.metrics})
    by_config: dict[str, list[JobRow]] = {}
    for r in rows:
        if r.status == "FINISHED":
            by_config.setdefault(r.config_key, []).append(r)
    groups = []
    for config, members in by_config.items():
        g = Group(config, len(members))
        for m in names:
            values = [r.metrics[m] for r in members if m in r.metrics]
            if values:
                g.mean[m] = statistics.fmean(values)
                g.std[m] = statistics.pstdev(values) if len(values) > 1 else 0.0
        groups.append(g)
    return Summary(rows, groups, names)
