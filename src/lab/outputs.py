"""A job's outputs dir: the files that ``lab`` writes next to Hydra's ``.hydra/`` and log.

::

    <job dir>/
      .hydra/{config,hydra,overrides}.yaml   written by Hydra
      train.log                              the job log (Hydra's job logging)
      metrics.json                           metrics and timings of a finished job
      model.pkl                              the fitted estimator (pickle; also the MLflow model's data)
      traceback.txt                          only when the job raised
      tracking.json, tracking.synced.json    the MLflow record and its receipt (lab.records)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lab.records import HYDRA_FILES, PENDING_NOTE, RECORD_FILE, SYNCED_FILE, read_json

if TYPE_CHECKING:
    from lab.training import TrainResult

__all__ = [
    "METRICS_FILE",
    "MODEL_FILE",
    "MTIME_SLACK_S",
    "TRACEBACK_FILE",
    "clear_earlier_run",
    "file_written_since",
    "hydra_files_written",
    "job_artifacts",
    "job_status",
    "last_written",
    "launch_kind",
    "read_metrics",
    "read_output_subdir",
    "read_overrides",
    "why_not_creatable",
    "write_failure",
    "write_result",
    "written_since",
]

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pkl"
TRACEBACK_FILE = "traceback.txt"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when PyYAML has it
# File times come from a coarse clock and are compared with time.time(): allow this much.
# What an earlier launch left in a re-used dir is older by more, since a launch spends
# over a second importing before its first job.
MTIME_SLACK_S = 0.5


def job_artifacts(job_dir: Path, output_subdir: str | None) -> list[str]:
    """The files of ``job_dir`` its MLflow run gets as artifacts, as its record lists them:
    Hydra's files (from ``output_subdir``, if written), metrics, traceback and the job's
    log (``<hydra.job.name>.log``: ``train.log`` unless renamed)."""
    names = [METRICS_FILE, TRACEBACK_FILE]
    if output_subdir is not None:
        names = [f"{output_subdir}/{name}" for name in HYDRA_FILES] + names
    logs = sorted(p.name for p in job_dir.glob("*.log") if p.is_file())
    return [n for n in names if (job_dir / n).exists()] + logs


def clear_earlier_run(job_dir: Path) -> None:
    """At a job's start, remove what an earlier run left in its dir (a fixed
    ``hydra.run.dir``, a re-used ``hydra.sweep.dir``): its metrics, model, traceback and
    tracking files would otherwise pass for this job's (a failed job with the earlier
    accuracy, a finished one logging the earlier traceback). Hydra's files and the log stay."""
    record = job_dir / RECORD_FILE
    if record.exists():
        from lab.records import JobRecord

        with contextlib.suppress(OSError, ValueError, TypeError):
            earlier = JobRecord.load(job_dir)
            if not earlier.synced:  # never reached MLflow: it is lost now, so say so
                print(
                    f"lab: warning: {job_dir} held a record not yet in MLflow ({earlier.status}, "
                    f"{earlier.tags.get('lab.overrides', '')!r}); this run replaces it. "
                    "Run `python -m lab.runs sync` before re-using a dir to keep such records.",
                    file=sys.stderr,
                )
    for name in (METRICS_FILE, MODEL_FILE, TRACEBACK_FILE, RECORD_FILE, SYNCED_FILE, PENDING_NOTE):
        (job_dir / name).unlink(missing_ok=True)


def write_result(result: TrainResult, job_dir: Path) -> None:
    """Write the fitted model, then the metrics of a finished job (``metrics.json`` marks it
    finished: :func:`job_status`)."""
    # Plain pickle, the format of MLflow's sklearn flavour with serialization_format="pickle":
    # the publisher logs these bytes as they are, without loading them, so they are written
    # to a temporary name and renamed: a job killed mid-write leaves no truncated model.
    partial = job_dir / f".{MODEL_FILE}.partial"
    with open(partial, "wb") as f:
        pickle.dump(result.model, f, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(job_dir / MODEL_FILE)
    (job_dir / METRICS_FILE).write_text(
        json.dumps({"metrics": result.metrics, "timing": result.timing}, indent=2, sort_keys=True) + "\n"
    )


def write_failure(exc: BaseException, job_dir: Path) -> str:
    """Write the traceback of a failed job; returns the exception's one-line summary."""
    (job_dir / TRACEBACK_FILE).write_text("".join(traceback.format_exception(exc)))
    return summarize(exc)


def summarize(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_metrics(job_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((job_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data


def read_overrides(job_dir: Path, output_subdir: str | None = ".hydra") -> list[str] | None:
    """The job's overrides as Hydra saved them in its ``hydra.output_subdir``; None when it
    saved none (``hydra.output_subdir=null``, or a job stopped before it wrote them)."""
    if output_subdir is None:
        return None
    try:
        saved = yaml.safe_load((job_dir / output_subdir / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(o) for o in saved] if isinstance(saved, list) else None


def read_output_subdir(saved: Path) -> str | None:
    """``hydra.output_subdir`` as a file Hydra saved holds it: a job's ``hydra.yaml`` or a
    sweep's ``multirun.yaml``. Raises OSError, yaml.YAMLError, KeyError or TypeError when
    the file is unreadable or has no such key."""
    subdir = yaml.load(saved.read_text(), Loader=_YAML_LOADER)["hydra"]["output_subdir"]
    return None if subdir is None else str(subdir)


def launch_kind(path: Path, output_subdir: str | None = ".hydra") -> str | None:
    """What wrote the dir ``path``: ``"run"`` (a single run), ``"sweep"``, ``"sweep job"``, or
    None (nothing lab or Hydra wrote). Told by its record (``lab.kind``, ``parent_uid``),
    else by a sweep's ``multirun.yaml``, else by the mode in the ``hydra.yaml`` saved for it
    (in ``output_subdir``, or in the subdir that file names), else by its metrics beside a
    sweep's file."""
    try:
        record = read_json(path / RECORD_FILE)
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict):
        tags = record.get("tags")
        if isinstance(tags, dict) and tags.get("lab.kind") == "sweep":
            return "sweep"
        return "sweep job" if record.get("parent_uid") else "run"
    if (path / "multirun.yaml").is_file():  # an untracked sweep's
        return "sweep"
    saved = [path / output_subdir / "hydra.yaml"] if output_subdir is not None else []
    for hydra_file in (f for f in [*saved, path / "hydra.yaml", *path.glob("*/hydra.yaml")] if f.is_file()):
        try:
            hydra = yaml.load(hydra_file.read_text(), Loader=_YAML_LOADER)["hydra"]
            subdir, mode = hydra["output_subdir"], hydra["mode"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
        # only a file saved for `path` itself: with output_subdir=. a sweep's jobs save theirs
        # in 0/, 1/…, one level below the sweep dir, where a job's own subdir would be
        if subdir is not None and Path(str(subdir)) == hydra_file.parent.relative_to(path):
            return {"RUN": "run", "MULTIRUN": "sweep job"}.get(str(mode))
    if (path / METRICS_FILE).is_file():  # an untracked job's, its Hydra files not written
        return "sweep job" if (path.parent / "multirun.yaml").is_file() else "run"
    return None


def read_sweep_dir(hydra_file: Path) -> Path | None:
    """The sweep dir a job's saved ``hydra.yaml`` names (``hydra.sweep.dir``, relative to
    the dir it was launched from), or None for a single run's job, an interpolation, or a
    file that cannot be read."""
    try:
        hydra = yaml.load(hydra_file.read_text(), Loader=_YAML_LOADER)["hydra"]
        if hydra["mode"] != "MULTIRUN":
            return None
        sweep_dir, cwd = str(hydra["sweep"]["dir"]), str(hydra["runtime"]["cwd"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return None if "${" in sweep_dir else Path(cwd) / sweep_dir


def last_written(job_dir: Path, output_subdir: str | None = ".hydra") -> float:
    """When a job last wrote a file in ``job_dir`` or in its ``output_subdir`` (or created
    the dir, if it holds nothing yet), in epoch seconds (-inf if it is gone). A re-used dir keeps the
    times of what an earlier launch left, so this tells a job of the current launch from
    those (see :data:`MTIME_SLACK_S`)."""
    times = _entry_times(job_dir)
    if output_subdir is not None:
        times += _entry_times(job_dir / output_subdir)
    if not times:  # a job stopped right after Hydra created its dir
        try:
            return job_dir.stat().st_mtime
        except OSError:
            return -math.inf
    return max(times)


def written_since(mtime: float | None, start_s: float) -> bool:
    """Whether a file written at ``mtime`` (epoch seconds) belongs to a job or launch that
    started at ``start_s``: what an earlier one left in a re-used dir is older (see
    :data:`MTIME_SLACK_S`)."""
    return mtime is not None and mtime >= start_s - MTIME_SLACK_S


def file_written_since(path: Path, start_s: float) -> bool:
    """:func:`written_since` for the file at ``path``; False when there is none."""
    try:
        return written_since(path.stat().st_mtime, start_s)
    except OSError:
        return False


def hydra_files_written(job_dir: Path, output_subdir: str | None) -> float | None:
    """When Hydra wrote the job's ``.hydra/`` files, which it does just before the job's
    callbacks start it (epoch seconds); None without them."""
    if output_subdir is None:
        return None
    times = []
    for name in HYDRA_FILES:
        with contextlib.suppress(OSError):
            times.append((job_dir / output_subdir / name).stat().st_mtime)
    return min(times, default=None)


# Written by the publisher, which may be finishing an earlier launch's records: not a job's.
_NOT_THE_JOBS = {SYNCED_FILE, PENDING_NOTE}


def _entry_times(directory: Path) -> list[float]:
    times = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if entry.name in _NOT_THE_JOBS or entry.name.endswith(".tmp"):
            continue
        try:
            times.append(entry.stat(follow_symlinks=False).st_mtime)
        except OSError:  # removed while looking
            continue
    return times


def job_status(job_dir: Path) -> str:
    """FINISHED, FAILED, or KILLED (started, but left neither metrics nor a traceback)."""
    if (job_dir / METRICS_FILE).exists():
        return "FINISHED"
    if (job_dir / TRACEBACK_FILE).exists():
        return "FAILED"
    return "KILLED"


def why_not_creatable(path: str) -> str | None:
    """Why ``path`` cannot be made a dir (as ``os.strerror`` says it), or None. Tried in its
    nearest existing ancestor, with a dir that is removed again: nothing is left behind."""
    import errno
    import tempfile

    target = Path(os.path.abspath(path))
    if target.is_dir():
        return None
    if target.exists() or target.is_symlink():
        return os.strerror(errno.EEXIST)
    base = target.parent
    while not (base.exists() or base.is_symlink()):
        base = base.parent
    if not base.is_dir():
        return os.strerror(errno.ENOTDIR)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lab-probe-", dir=base))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
