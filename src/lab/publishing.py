"""Publishing job records to MLflow: the only module that writes to a tracking store.

:class:`Publisher` turns a :class:`~lab.records.JobRecord` into one MLflow run: params and
metrics in batches, tags, artifacts, the model, and the terminal status. It is idempotent:
a run is found again by its ``lab.job_uid`` tag, so publishing a record twice never makes
a duplicate. The sweep's parent run is created lazily, when its first job is published,
so a sweep rejected by validation leaves nothing in the store.

``python -m lab.publishing`` is the background publisher of a launch. ``python -m
lab.train`` starts it first thing (:func:`start_early`), so that importing MLflow (~1.5 s)
overlaps the launcher's own imports and composition; the tracking callback then claims it
(:func:`take`) and tells it on stdin where the queue is (:func:`assign`): at once, except
for a sweep on lab's sweeper, which it tells once every job is validated (or, if the
launch is stopped before that, when the launch's end is recorded), so that a refused
sweep publishes nothing left in a re-used sweep dir by an earlier launch. It opens the
store while the first job runs, then drains the queue that the jobs fill (see
:mod:`lab.records`) until its stdin closes. A publisher nobody claims (tracking off, bad
input) is terminated before it has touched anything (:func:`release`); none is started
when the command line already turns background publishing off (:func:`may_publish_in_background`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from lab.outputs import job_artifacts
from lab.records import (
    HYDRA_FILES,
    PENDING_NOTE,
    PUBLISHER_FILE,
    SYNCED_FILE,
    JobRecord,
    read_json,
    redact_text,
    write_json,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["Publisher", "configure_client_env", "error_line", "note_pending", "pin_uri", "redact", "resolve_uri"]

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "lab"
SUPPORTED_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")
# MLflow's limits: 100 params and tags (and 1000 metrics) per batch, 6000 characters per
# param value. Each batch takes up to 100 of each.
PARAM_BATCH, PARAM_VALUE_MAX = 100, 6000


def resolve_uri(uri: str | None) -> str:
    """The tracking URI a job uses: the config's, else ``MLFLOW_TRACKING_URI``, else MLflow's default."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def pin_uri(uri: str) -> str:
    """``uri`` with a relative sqlite path made absolute against the cwd: the launch's store,
    wherever a job runs (``hydra.job.chdir=true`` moves each job into its outputs dir)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def resolve_experiment(name: str | None) -> str:
    return name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def check_uri(uri: str) -> str | None:
    """Why ``uri`` cannot be used, or None. The ``file:`` store refuses to start in MLflow 3."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0] or ("databricks" if uri == "databricks" else "")  # MLflow's bare form
    if scheme not in SUPPORTED_SCHEMES:
        return f"scheme {scheme or '(none)'!r} is not supported; use one of " + ", ".join(SUPPORTED_SCHEMES)
    if scheme == "sqlite" and (not uri.startswith("sqlite:///") or uri.rstrip("/") == "sqlite:" or ":memory:" in uri):
        # sqlite:// and sqlite:///:memory: are in-memory stores: they vanish with the process that writes them
        return "a database file, e.g. sqlite:///mlflow.db (relative) or sqlite:////abs/path/mlflow.db"
    if scheme in ("http", "https"):
        try:
            port = parts.port  # a ValueError when out of range
        except ValueError:
            port = -1
        if not parts.hostname or port == -1:
            return f"a server's address, with a port of 0-65535, e.g. {scheme}://127.0.0.1:5000"
    return None


def redact(uri: str) -> str:
    """``https://user:token@host/`` → ``https://***@host/``: credentials never reach a record or a log."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def configure_client_env(timeout_s: float) -> None:
    """Bound MLflow's HTTP retries before it is imported: a dead server fails in seconds, not minutes."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creating or migrating a sqlite store across processes: concurrent alembic
    migrations of a fresh file corrupt it for good (``_alembic_tmp_*`` tables)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# tables every MLflow store has had from its first version on
STORE_TABLES = {"experiments", "runs", "metrics", "params", "tags"}


_SIDE = ("wal", "shm", "journal")  # the files sqlite keeps beside a database


def _prepare_sqlite_store(uri: str) -> None:
    """Create a missing sqlite store aside and rename it into place; refuse another
    program's database. Called under :func:`_store_lock`.

    Creating a store runs ~70 migrations (~2 s), which MLflow runs in place and not as
    one transaction: a creation cut short (SIGKILL, power loss) left a file that MLflow
    could neither use nor migrate ("table spans already exists"). Built beside it and
    renamed, the store at ``path`` is whole or absent; a cut creation leaves only
    ``<name>.creating``, which the next one replaces. A deleted store's WAL is removed
    first: replayed into the new file, it brought the deleted store's experiments back, or
    left a file sqlite called malformed.
    """
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

        aside = path.with_name(f"{path.name}.creating")
        # A -wal, -shm or -journal beside no store is a deleted store's (left by a process
        # killed while it had it open, or one that never closed it, as lab did before
        # close_stores): sqlite would replay its pages into the new file.
        leftovers = [aside, *(path.with_name(f"{name}-{kind}") for name in (path.name, aside.name) for kind in _SIDE)]
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        engine = create_sqlalchemy_engine(f"sqlite:///{aside}")  # type: ignore[no-untyped-call]
        try:
            _initialize_tables(engine)  # type: ignore[no-untyped-call]  # as SqlAlchemyStore() does
        finally:
            engine.dispose()
        os.replace(aside, path)
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables = {name for name in tables if not name.startswith(("alembic_", "sqlite_"))}
        if tables and not STORE_TABLES.issubset(tables):
            # MLflow would add its ~40 tables to it
            raise RuntimeError(
                f"{path} is a database but not an MLflow store (no "
                f"{', '.join(sorted(STORE_TABLES - tables))} table): set tracking.uri to another file"
            )
        # WAL, kept in the file: readers such as the UI then never block the writer, and
        # writers don't block readers. MLflow sets ``busy_timeout = 20000`` on every
        # session, which absorbs writer contention.
        db.execute("PRAGMA journal_mode=WAL")


def _reach_database(uri: str) -> None:
    """Connect once to a PostgreSQL or MySQL store, within ``tracking.timeout_s``, or raise.
    MLflow opens one by trying ten times over ~100 s (``create_sqlalchemy_engine_with_retry``),
    each attempt bounded only by the driver's own time-out: an unreachable database held
    every record that long before it was left pending."""
    if urlsplit(uri).scheme.split("+")[0] not in ("postgresql", "mysql"):
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    timeout = max(1, round(float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"))))  # configure_client_env
    engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args={"connect_timeout": timeout})
    try:
        engine.connect().close()
    finally:
        engine.dispose()


class Publisher:
    """Writes records into one tracking store.

    Parameters
    ----------
    uri
        The real tracking URI (may hold credentials; only its redacted form is ever logged).
    """

    def __init__(self, uri: str) -> None:
        import mlflow

        quiet_mlflow_logging()
        self.uri = uri
        _reach_database(uri)
        with _store_lock(uri):
            _prepare_sqlite_store(uri)
            # MlflowClient() itself migrates an older store, and adds the Default experiment
            self.client: MlflowClient = mlflow.MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)
        self._experiments: dict[str, str] = {}
        self._parents: dict[str, str] = {}  # sweep uid -> parent run id
        self._runs: dict[str, str] = {}  # job uid -> run id, for runs made by this publisher
        self._sent_tags: dict[str, dict[str, str]] = {}  # job uid -> the tags its run was created with
        self._finished: set[str] = set()  # job uids whose final record this publisher wrote
        self._repos: dict[str, Any] = {}  # run id -> its artifact repository
        # job uids whose create_run raised: the store may hold the run all the same (a
        # reply lost to a time-out), so it is looked up before another is made
        self._uncertain: set[str] = set()

    # --- experiments and run lookup ----------------------------------------------------

    def experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiments[name] = self.client.create_experiment(name)
                except Exception:  # another process created it first
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        raise
                    self._experiments[name] = found.experiment_id
            else:
                self._experiments[name] = found.experiment_id
        return self._experiments[name]

    def find_run(self, experiment_id: str, tag: str, value: str, kind: str) -> str | None:
        """The run of ``kind`` (``lab.kind``: job or sweep) whose ``tag`` is ``value``: a
        sweep's job runs carry its ``lab.sweep_uid`` too."""
        query = f"tags.`{tag}` = '{value}' and tags.`lab.kind` = '{kind}'"
        runs = self.client.search_runs([experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    # --- parent runs -------------------------------------------------------------------

    def parent_run(self, sweep: JobRecord) -> str:
        """The sweep's parent run, created on first use (or found again after a crash)."""
        if sweep.uid not in self._parents:
            exp = self.experiment_id(sweep.experiment)
            run_id = self.find_run(exp, "lab.sweep_uid", sweep.uid, kind="sweep")
            if run_id is None:
                run = self.client.create_run(
                    exp, start_time=sweep.start_time, tags=_clean(sweep.tags), run_name=sweep.run_name
                )
                run_id = run.info.run_id
                self._remember_repo(run_id, run.info.artifact_uri)
                self._log_batch(run_id, sweep.params, {}, time_ms=sweep.start_time)
            self._parents[sweep.uid] = run_id
        return self._parents[sweep.uid]

    def finish_parent(self, sweep: JobRecord) -> str:
        """Attach the sweep's summary to its parent run and end it with the sweep's status."""
        run_id = self.parent_run(sweep)
        self._log_batch(run_id, {}, sweep.metrics, time_ms=sweep.end_time or _now_ms(), tags=sweep.tags)
        self._log_artifacts(run_id, sweep)
        self.client.set_terminated(run_id, status=sweep.status, end_time=sweep.end_time)
        self._receipt(run_id, sweep)
        return run_id

    # --- job runs ----------------------------------------------------------------------

    def publish(self, record: JobRecord, sweep: JobRecord | None = None, search: bool = False) -> str:
        """Create or complete the MLflow run of ``record``; returns its run id.

        ``search=True`` looks the run up by its ``lab.job_uid`` tag first (for ``sync``,
        where an earlier attempt may have got part of the way).
        """
        if record.uid in self._finished:
            # the start and end events of a job both point at its record; when the
            # publisher lags, the first already found it final
            return self._runs[record.uid]
        exp = self.experiment_id(record.experiment)
        run_id = self._runs.get(record.uid)
        if run_id is None and (search or record.uid in self._uncertain):
            run_id = self.find_run(exp, "lab.job_uid", record.uid, kind="job")
        tags = dict(record.tags)
        if sweep is not None:
            tags["mlflow.parentRunId"] = self.parent_run(sweep)
        if run_id is None:
            self._uncertain.add(record.uid)
            run = self.client.create_run(exp, start_time=record.start_time, tags=_clean(tags), run_name=record.run_name)
            self._uncertain.discard(record.uid)
            run_id = run.info.run_id
            self._runs[record.uid] = run_id
            self._sent_tags[record.uid] = tags
            self._remember_repo(run_id, run.info.artifact_uri)
        if not record.finished:
            return run_id
        # What the run already holds: nothing but its creation tags if this publisher made
        # it (a job's start event), else ask the store (a retry, or `lab.runs sync`).
        if record.uid in self._sent_tags:
            existing_params: dict[str, str] = {}
            existing_tags = self._sent_tags.pop(record.uid)
        else:
            data = self.client.get_run(run_id).data
            existing_params, existing_tags = data.params, data.tags
        params = {k: v for k, v in record.params.items() if k not in existing_params}
        new_tags = {k: v for k, v in tags.items() if existing_tags.get(k) != v}
        self._log_batch(run_id, params, record.metrics, time_ms=record.end_time or _now_ms(), tags=new_tags)
        if "lab.error" in existing_tags and "lab.error" not in tags:
            # the run was ended FAILED or KILLED for want of news (`lab.runs reap`, or the
            # publisher after a lost launcher), and the job's record says it did not fail
            self.client.delete_tag(run_id, "lab.error")
        self._log_artifacts(run_id, record)
        self.client.set_terminated(run_id, status=record.status, end_time=record.end_time)
        self._receipt(run_id, record)
        self._finished.add(record.uid)
        return run_id

    def _receipt(self, run_id: str, record: JobRecord) -> None:
        """Write the record's receipt, ``tracking.synced.json``; a note that an earlier
        attempt failed (``tracking.error.txt``) is no longer true."""
        job_dir = Path(record.job_dir)
        receipt = {
            "uid": record.uid,
            "run_id": run_id,
            "experiment_id": self.experiment_id(record.experiment),
            "tracking_uri": redact(self.uri),
            "status": record.status,
        }
        write_json(job_dir / SYNCED_FILE, receipt)
        (job_dir / PENDING_NOTE).unlink(missing_ok=True)

    def _log_batch(
        self,
        run_id: str,
        params: dict[str, str],
        metrics: dict[str, float],
        time_ms: int,
        tags: dict[str, str] | None = None,
    ) -> None:
        """As few ``log_batch`` calls as MLflow's limits allow (one for a lab job)."""
        from mlflow.entities import Metric, Param

        plist = [Param(k, v[:PARAM_VALUE_MAX]) for k, v in _clean(params).items()]
        mlist = [Metric(k, float(v), time_ms, 0) for k, v in metrics.items()]
        tlist = _tags(tags or {})
        for i in range(0, max(len(plist), len(mlist), len(tlist), 1), PARAM_BATCH):
            batch = (plist[i : i + PARAM_BATCH], mlist[i : i + PARAM_BATCH], tlist[i : i + PARAM_BATCH])
            if any(batch):
                self.client.log_batch(run_id, params=batch[0], metrics=batch[1], tags=batch[2])

    def _remember_repo(self, run_id: str, artifact_uri: str) -> None:
        """Keep the artifact repository of a run, as MLflow's client makes it: for a run
        this publisher created, from the URI its creation returned, where the client would
        look it up with a ``get_run`` (the run's every param, metric and tag, ~15 ms on
        sqlite) before its first artifact."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        if urlsplit(artifact_uri).scheme in NEEDS_PYARROW:
            let_in_pyarrow()
        artifact_uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, self.uri)  # type: ignore[no-untyped-call]
        self._repos[run_id] = get_artifact_repository(artifact_uri, tracking_uri=self.uri)

    def _log_artifact(self, run_id: str, local_path: str, artifact_path: str | None, directory: bool = False) -> None:
        if run_id not in self._repos:  # a run this publisher found rather than created
            self._remember_repo(run_id, self.client.get_run(run_id).info.artifact_uri)
        repo = self._repos[run_id]
        if directory:
            repo.log_artifacts(local_path, artifact_path)
        else:
            repo.log_artifact(local_path, artifact_path)

    def _log_artifacts(self, run_id: str, record: JobRecord) -> None:
        """The record's files; text files (the ``.hydra/`` configs, summaries, logs) with any
        credentials in URLs redacted (:func:`~lab.records.redact_text`): a ``tracking.uri``
        override with a token must not reach the store in ``config.yaml``."""
        import tempfile

        job_dir = Path(record.job_dir)
        subdir = record.output_subdir
        hydra_files = set() if subdir is None else {f"{subdir}/{name}" for name in HYDRA_FILES}
        with contextlib.ExitStack() as cleanup:
            for rel in record.artifacts:
                path = job_dir / rel
                if path.exists():
                    parent = str(Path(rel).parent)
                    if rel in hydra_files:
                        parent = ".hydra"  # wherever hydra.output_subdir put them locally
                    clean = _redacted_text(path)
                    if clean is not None:  # a copy without the credentials goes instead
                        tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="lab-redacted-"))
                        path = Path(tmp) / path.name
                        path.write_text(clean, encoding="utf-8", errors="surrogateescape")
                    self._log_artifact(run_id, str(path), None if parent == "." else parent)
        if record.model and (job_dir / record.model).exists():
            self._log_model(run_id, job_dir / record.model)

    def _log_model(self, run_id: str, path: Path) -> None:
        """Log the job's pickled estimator as an MLflow sklearn model (``runs:/<id>/model``).

        The job wrote ``model.pkl`` in the format of MLflow's sklearn flavour with
        ``serialization_format="pickle"``, so the publisher only adds the metadata around
        those bytes (:func:`write_model_dir`) and logs the directory: no scikit-learn import,
        no unpickling and re-pickling (15 MB for a 300-tree forest), no pip inference in a
        subprocess (~3 s a model), and no LoggedModel entity with its extra round trips.
        """
        import tempfile

        try:
            # next to the pickle, so that it can be hard-linked rather than copied
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".mlflow-model-") as tmp:
                write_model_dir(path, Path(tmp) / "model")
                self._log_artifact(run_id, f"{tmp}/model", "model", directory=True)
        except Exception as exc:  # noqa: BLE001 - the run keeps its metrics; say why the model is missing
            reason = f"{type(exc).__name__}: {exc}"[:5000]
            self.client.set_tag(run_id, "lab.model_error", reason)
            print(f"lab: could not log the model of run {run_id}: {reason[:300]}", file=sys.stderr)


@functools.cache
def locked_requirements() -> list[str]:
    """Exact versions of what loading the model needs, from this (uv.lock-pinned) environment."""
    return [f"{name}=={version(name)}" for name in ("mlflow", "scikit-learn", "numpy", "scipy")]


@functools.cache
def _environment_files() -> dict[str, str]:
    """``requirements.txt``, ``conda.yaml`` and ``python_env.yaml`` as ``mlflow.sklearn.save_model``
    writes them for :func:`locked_requirements` (made with MLflow's own helpers, once)."""
    import yaml
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv

    reqs = locked_requirements()
    python_env = {k: v for k, v in _PythonEnv.current().to_dict().items() if v}  # type: ignore[no-untyped-call]
    return {
        "requirements.txt": "\n".join(reqs),
        "conda.yaml": yaml.safe_dump(
            _mlflow_conda_env(additional_pip_deps=reqs),  # type: ignore[no-untyped-call]
            default_flow_style=False,
        ),
        "python_env.yaml": yaml.safe_dump(python_env, sort_keys=False, default_flow_style=False),
    }


def write_model_dir(pickled: Path, dest: Path) -> None:
    """An MLflow sklearn model directory around an estimator pickled with plain ``pickle``:
    what ``mlflow.sklearn.save_model(model, dest, serialization_format="pickle",
    pip_requirements=locked_requirements())`` writes, without needing the model object
    (tests/test_publishing.py compares the two). The pickle is hard-linked when possible."""
    from mlflow.models import Model
    from mlflow.utils import PYTHON_VERSION

    dest.mkdir(parents=True)
    data = dest / "model.pkl"
    try:
        os.link(pickled, data)
    except OSError:
        shutil.copyfile(pickled, data)
    model = Model()
    # What mlflow.pyfunc.add_to_model adds, spelled out: importing mlflow.pyfunc imports
    # pandas, which the publisher keeps out (NOT_IN_PUBLISHER).
    model.add_flavor(
        "python_function",
        loader_module="mlflow.sklearn",
        model_path=data.name,
        predict_fn="predict",
        python_version=PYTHON_VERSION,
        env={"conda": "conda.yaml", "virtualenv": "python_env.yaml"},
    )
    model.add_flavor(
        "sklearn",
        pickled_model=data.name,
        sklearn_version=version("scikit-learn"),
        serialization_format="pickle",
        code=None,
        skops_trusted_types=None,
    )
    model.model_size_bytes = data.stat().st_size
    model.save(str(dest / "MLmodel"))
    for name, text in _environment_files().items():
        (dest / name).write_text(text)


TEXT_SUFFIXES = (".yaml", ".md", ".csv", ".json", ".txt", ".log")


def _redacted_text(path: Path) -> str | None:
    """The text of ``path`` with credentials in URLs redacted, when it is a text file that
    holds any; else None (the file goes as it is)."""
    if path.suffix not in TEXT_SUFFIXES:
        return None
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    clean = redact_text(text)
    return None if clean == text else clean


def _tags(tags: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in _clean(tags).items()]


def _clean(values: dict[str, str]) -> dict[str, str]:
    """Tag or param values with credentials in URLs redacted (an error message, an override)."""
    return {k: redact_text(v) for k, v in values.items()}


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the background publisher process ------------------------------------------------


def _events(queue_dir: Path) -> list[Path]:
    try:
        return sorted(p for p in queue_dir.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []


class _Session:
    """The background publisher's state: which jobs it has seen and whether the store works."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.publisher: Publisher | None = None
        self.broken: str | None = None  # why tracking is unavailable; records then stay pending
        self.failures = 0  # consecutive failed records
        self.open_jobs: dict[str, JobRecord] = {}  # started, not yet finished
        self.sweeps: dict[str, JobRecord] = {}
        self.ended_sweeps: set[str] = set()  # the launcher sent their end
        self.reported: set[str] = set()  # failures said on stderr, each once

    def connect(self) -> Publisher | None:
        """The publisher, or None once tracking is judged unavailable."""
        if self.broken is None and self.publisher is None:
            try:
                self.publisher = Publisher(self.uri)
            except Exception as exc:  # noqa: BLE001 - an unreachable store leaves every record pending
                self.broken = error_line(exc)
                self._report(f"tracking to {redact(self.uri)} failed ({self.broken[:300]})")
        return None if self.broken else self.publisher

    def _report(self, message: str) -> None:
        if message in self.reported:  # a job's start and end, failing alike
            return
        self.reported.add(message)
        print(
            f"lab: {message}; records stay pending in each job's tracking.json; "
            "upload them later with `python -m lab.runs sync`",
            file=sys.stderr,
            flush=True,
        )

    def attempt(self, record: JobRecord, action: Callable[[Publisher], object]) -> None:
        """Publish one record. A failure leaves it pending (noted in its job dir); two in a
        row mean the store is down, and the rest are left pending at once instead of each
        waiting for time-outs."""
        publisher = self.connect()
        if publisher is None:
            note_pending(record, self.broken or "tracking unavailable")
            return
        try:
            action(publisher)
            self.failures = 0
        except Exception as exc:  # noqa: BLE001
            self.failures += 1
            reason = error_line(exc)
            note_pending(record, reason)
            if self.failures >= 2:
                self.broken = reason
            self._report(f"publishing {record.job_dir} to {redact(self.uri)} failed ({reason[:300]})")

    def publish_job(self, record: JobRecord) -> None:
        sweep = self.sweep_of(record)
        self.attempt(record, lambda p: p.publish(record, sweep))

    def sweep_of(self, record: JobRecord) -> JobRecord | None:
        if record.parent_uid is None:
            return None
        if record.parent_uid not in self.sweeps:
            self.sweeps[record.parent_uid] = JobRecord.load(record.parent_dir or Path(record.job_dir).parent)
        return self.sweeps[record.parent_uid]

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "job":
            record = JobRecord.load(event["job_dir"])
            if record.finished:
                self.open_jobs.pop(record.uid, None)
            else:
                self.open_jobs[record.uid] = record
            self.publish_job(record)
        elif kind == "sweep_end":
            sweep_record = JobRecord.load(event["job_dir"])
            self.sweeps[sweep_record.uid] = sweep_record
            self.ended_sweeps.add(sweep_record.uid)
            self.attempt(sweep_record, lambda p: p.finish_parent(sweep_record))

    def abandon_open_jobs(self) -> None:
        """The launcher went away without finishing these jobs (SIGKILL, the OOM killer): they
        were stopped from outside, with it or by its end, so they end KILLED, saying why, and
        no run stays RUNNING. (Not judged by whether the job's process still answers: a dead
        worker answers until init reaps it, so that would be a race.)"""
        for record in list(self.open_jobs.values()):
            fresh = JobRecord.load(record.job_dir)
            if not fresh.finished:
                fresh.status = "KILLED"
                fresh.error = (
                    fresh.error or f"the launching process{self._launcher_of(fresh)} ended before this job did"
                )
                fresh.end_time = _now_ms()
                fresh.tags["lab.error"] = fresh.error
                fresh.artifacts = job_artifacts(Path(fresh.job_dir), fresh.output_subdir)  # its log says how far it got
                fresh.save()
            self.publish_job(fresh)

    def _launcher_of(self, record: JobRecord) -> str:
        """`` <pid>`` of the process that launched ``record``'s job, or "" if unknown (its
        sweep's record unreadable, or now another launch's in a re-used sweep dir)."""
        if record.parent_uid is None:
            return f" {record.tags.get('lab.pid')}"  # a single run runs in its launching process
        try:
            sweep = self.sweep_of(record)
        except (OSError, ValueError, TypeError, KeyError):
            return ""
        return f" {sweep.tags.get('lab.pid')}" if sweep is not None and sweep.uid == record.parent_uid else ""

    def abandon_open_sweeps(self) -> None:
        """The launcher went away without ending its sweep (SIGKILL, the OOM killer): end the
        parent run FAILED, saying why, as ``lab.runs reap`` would, so it does not stay RUNNING."""
        for uid, sweep in list(self.sweeps.items()):
            if uid in self.ended_sweeps:
                continue
            try:
                fresh = JobRecord.load(sweep.job_dir)
            except (OSError, ValueError, TypeError, KeyError):
                continue  # gone or unreadable: `lab.runs reap` ends its parent run
            if fresh.uid != uid:  # a re-used sweep dir: another launch's record now
                continue
            if not fresh.finished:
                fresh.status, fresh.end_time = "FAILED", _now_ms()
                fresh.error = f"the launching process {fresh.tags.get('lab.pid')} ended before its sweep did"
                fresh.tags["lab.error"] = fresh.error
                fresh.save()
            self.attempt(fresh, functools.partial(Publisher.finish_parent, sweep=fresh))


def error_line(exc: BaseException) -> str:
    """One line: the exception type and the most telling part of its message."""
    text = " ".join(str(exc).split())
    if "Caused by" in text:  # urllib3 buries "Connection refused" at the end
        text = text[text.rindex("Caused by") :]
    # SQLAlchemy's: "(raised as a result of Query-invoked autoflush; ...) (sqlite3.
    # OperationalError) database is locked [SQL: <statement>] [parameters: ...] (Background
    # on this error at: <url>)": the driver's error is what says what happened
    text = text.replace(_AUTOFLUSH_NOTE, "").partition(" [SQL: ")[0].partition(" (Background on this error")[0]
    return f"{type(exc).__name__}: {text}"


_AUTOFLUSH_NOTE = (
    "(raised as a result of Query-invoked autoflush; consider using a session.no_autoflush "
    "block if this flush is occurring prematurely) "
)


def note_pending(record: JobRecord, reason: str) -> None:
    """Say in the job's outputs dir that its record did not reach MLflow, and why."""
    (Path(record.job_dir) / PENDING_NOTE).write_text(
        f"tracking failed for this job: {reason}\nIts record stays in tracking.json; "
        "run `python -m lab.runs sync` to upload it.\n"
    )


def serve(queue_dir: Path, uri: str, open_store: bool) -> int:
    """Drain ``queue_dir`` until stdin closes and the queue is empty.

    :func:`main` has already imported MLflow. The store is opened at once for a single run
    (already validated), but only at the first event for a sweep: a sweep rejected by
    validation (lab's sweeper tells this process its task only after it; other sweepers
    validate later) creates no store.
    """
    session = _Session(uri)
    # while this file names a live publisher, `lab.runs sync` leaves this launch's records to it
    presence = queue_dir / PUBLISHER_FILE
    with contextlib.suppress(OSError):
        queue_dir.mkdir(parents=True, exist_ok=True)
        presence.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    if open_store:
        session.connect()
    open_input = True
    while True:
        events = _events(queue_dir)
        for path in events:
            try:
                session.handle(read_json(path))
            except Exception:  # noqa: BLE001 - one bad event must not stop the others
                traceback.print_exc()
            path.unlink(missing_ok=True)
        if events:
            continue
        if not open_input:
            break
        ready, _, _ = select.select([sys.stdin], [], [], 0.02)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            open_input = False  # the launcher is done (or gone): drain once more, then stop
    if session.open_jobs:
        session.abandon_open_jobs()
    session.abandon_open_sweeps()
    presence.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # absent, or late events: they stay for `lab.runs sync`
        queue_dir.rmdir()
    return 0 if session.broken is None and session.failures == 0 else 3


def quiet_mlflow_logging() -> None:
    """MLflow logs store migrations at INFO and a pip-version warning per model; the
    publisher reports failures itself, so keep only MLflow's errors. Not the SQL store's
    (a locked or unreachable database): it logs each with its whole traceback (~90 lines)
    before raising it, and lab reports the error it raises in one line."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


# --- starting and instructing the background publisher (launching process side) ---------

_early: subprocess.Popen[bytes] | None = None  # started by lab.train, not yet claimed


def spawn() -> subprocess.Popen[bytes]:
    """A new background publisher. It gets its own session, so a Ctrl-C reaches only the
    launcher, which decides what the interrupted jobs became and then lets it drain."""
    return subprocess.Popen([sys.executable, "-m", "lab.publishing"], stdin=subprocess.PIPE, start_new_session=True)


def start_early(argv: list[str], conf_dir: Path) -> None:
    """Start the publisher before the launcher's own imports (``python -m lab.train`` only),
    unless the command line already says that no job will publish in the background."""
    global _early
    if may_publish_in_background(argv, conf_dir):
        _early = spawn()


# Hydra's options that print something and run no job.
_NO_JOB_OPTIONS = frozenset(
    {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
)


def may_publish_in_background(argv: list[str], conf_dir: Path) -> bool:
    """Whether a launch with these arguments may need the background publisher: a guess
    from the literal words, before Hydra is even imported, that errs towards yes. A false
    yes costs an import that is then stopped (~1 s of the other core, ~200 MB for a while);
    a false no only costs the overlap, as the tracking callback then starts one itself.

    No for Hydra's print-only options, and for the last ``tracking.enabled`` or
    ``tracking.background`` override, else the chosen ``tracking=<group>`` file's value,
    being ``false`` (``tracking=none``, ``tracking=server``).
    """
    words: dict[str, str] = {}
    for arg in argv:
        key, is_override, value = arg.partition("=")
        if key in _NO_JOB_OPTIONS:
            return False
        if is_override:
            words[key.lstrip("+")] = value
    group: dict[str, Any] = {}
    if "tracking" in words:  # a sweep over groups ("none,mlflow") names no file
        path = conf_dir / "tracking" / f"{words['tracking']}.yaml"
        try:
            import yaml

            group = yaml.safe_load(path.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - absent, unreadable or odd: Hydra will say; here, yes
            return True
        if not isinstance(group, dict):
            return True
    settings = (words.get(f"tracking.{key}", group.get(key)) for key in ("enabled", "background"))
    return all(str(setting).lower() != "false" for setting in settings)


def take() -> subprocess.Popen[bytes]:
    """The publisher started early if it is still alive, else a new one."""
    global _early
    proc, _early = _early, None
    return proc if proc is not None and proc.poll() is None else spawn()


def release() -> None:
    """Stop an unclaimed early publisher (tracking is off, or the input was rejected): it
    has only been importing, so nothing is lost."""
    global _early
    if _early is not None:
        with contextlib.suppress(OSError):
            _early.terminate()
            if _early.stdin is not None:
                _early.stdin.close()
    _early = None


def assign(
    proc: subprocess.Popen[bytes], queue_dir: Path, uri: str, open_store: bool, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Tell ``proc`` what to publish (one JSON line on its stdin: the queue, the store, and
    the launcher's ``MLFLOW_*`` variables, which it was started before); returns the
    publisher that took it (a new one if ``proc`` had died)."""
    task = {"queue_dir": str(queue_dir), "uri": uri, "open_store": open_store, "env": env}
    line = json.dumps(task).encode() + b"\n"
    for attempt in (proc, None):
        current = attempt or spawn()
        assert current.stdin is not None
        try:
            current.stdin.write(line)
            current.stdin.flush()
            return current
        except BrokenPipeError:
            continue
    raise RuntimeError("could not start the background publisher")


def _read_task() -> dict[str, Any] | None:
    """The first line of stdin (unbuffered: :func:`serve` then watches the same fd), or None at EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(sys.stdin.fileno(), 1)
        if not chunk:
            return None
        data += chunk
    task: dict[str, Any] = json.loads(data)
    return task


# Imported by MLflow's own imports but not used by a publisher: pandas, which MLflow's
# dataset modules import when it is installed (it is, being a dependency of mlflow) and go
# on without otherwise, and pyarrow, which pandas loads (needed only for artifacts on
# HDFS, below). Left out, warm_up takes 1.7 s instead of 2.2 s and leaves the publisher
# at 139 MB resident instead of 181 MB. Only in this process: code running in the
# launcher (a user's callback, say) may want them.
NOT_IN_PUBLISHER = ("pandas", "pyarrow")
# Artifact stores whose MLflow repository needs pyarrow (HdfsArtifactRepository)
NEEDS_PYARROW = ("hdfs", "viewfs")


def let_in_pyarrow() -> None:
    """Undo :data:`NOT_IN_PUBLISHER` for pyarrow, for a run whose artifacts go to HDFS:
    MLflow's HDFS repository imports pyarrow's file system classes when its module is
    imported (in ``import mlflow``), and goes on without them if that fails; imported
    again, it has them."""
    if "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
        import importlib

        import mlflow.store.artifact.hdfs_artifact_repo as hdfs

        del sys.modules["pyarrow"]
        importlib.reload(hdfs)


def warm_up() -> None:
    """What a tracked job needs, done while the launcher is still importing and composing,
    on the other core: MLflow (~1.0–1.2 s), its SQL store (~0.7 s), and the model metadata.
    Touches no store and writes nothing. scikit-learn, pandas and pyarrow are never imported here."""
    for name in NOT_IN_PUBLISHER:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "import name" raises ImportError
    import mlflow.models  # the MLmodel of a logged model
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - sqlite and PostgreSQL stores

    quiet_mlflow_logging()
    _environment_files()


def main() -> None:
    warm_up()
    # MLflow's modules live as long as the process: keep them out of the collector's full
    # passes (pydantic's schemas alone made exiting take ~0.65 s).
    gc.freeze()
    task = _read_task()
    if task is None:
        sys.exit(0)  # not needed: tracking is off, or the input was rejected
    os.environ.update(task["env"])
    code = serve(Path(task["queue_dir"]), task["uri"], task["open_store"])
    close_stores()
    sys.exit(code)


def close_stores() -> None:
    """Close this process's connections to its SQL stores, which MLflow pools for the
    process's life. Closing the last connection to a sqlite store checkpoints its WAL into
    the file and removes it: left open, the WAL kept a run's last writes (~100 KB after one
    run), so that a copy of ``mlflow.db`` alone lacked the runs. (A store that another
    process, the UI say, still has open keeps its WAL until that one closes it.)"""
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:
        for engine in list(store.SqlAlchemyStore._engine_map.values()):
            with contextlib.suppress(Exception):  # what is written is written: never a reason to fail
                engine.dispose()


if __name__ == "__main__":
    main()
