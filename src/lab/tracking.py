"""The Hydra callback that mirrors every job into MLflow and reports progress.

Each job writes its MLflow record to its own outputs dir (:mod:`lab.records`) at start and
at end; :mod:`lab.publishing` turns records into runs, either in one background process
per launch (the default: started by ``lab.train`` before its own imports, it imports
MLflow meanwhile, and is the only sqlite writer), or inside each job
(``tracking.background=false``, for jobs on other hosts). Whatever happens, every
started job ends FINISHED, FAILED or KILLED.

Process model under Hydra 1.3: ``on_run_start``/``on_multirun_*`` run in the launching
process; ``on_job_*`` run wherever the job runs (a loky or Ray worker), on a pickled copy
of this object. So everything a job needs is set before jobs fan out, and is picklable.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from lab import outputs
from lab.config import job_container
from lab.provenance import config_fingerprint, environment_tags, exit_status, process_start, process_state
from lab.publishing import (
    configure_client_env,
    note_pending,
    pin_uri,
    redact,
    resolve_experiment,
    resolve_uri,
)
from lab.records import (
    PENDING_NOTE,
    QUEUE_DIR,
    RECORD_FILE,
    SYNCED_FILE,
    JobRecord,
    enqueue,
    join_overrides,
    read_json,
    redact_text,
)
from lab.summary import STUDY_RESULTS, JobRow, Summary, failure_reason, jobs, summarize_sweep
from lab.validation import UsageError, refused_as_usage, task_overrides

__all__ = ["Interrupted", "TrackingCallback", "flatten_params", "job_params"]

OBJECTIVE = "accuracy"  # the metric lab.train returns, which a search sweeper optimises
PENDING_EXIT = 3  # trained and written to outputs/, but not (yet) in MLflow
REPEAT_S = 1.0  # a signal repeated within this long after the first is the same one, delivered twice


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: raised in the launching process so every layer unwinds."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def flatten_params(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys for a resolved config tree, e.g. ``{"model.C": "0.5"}``; lists become
    ``key.0``, because MLflow rejects ``[`` in keys."""
    items: dict[str, str] = {}
    if isinstance(node, dict):
        pairs = list(node.items())
    elif isinstance(node, list):
        pairs = [(str(i), v) for i, v in enumerate(node)]
    else:
        return {prefix.rstrip("."): str(node)}
    for key, value in pairs:
        if isinstance(value, dict | list) and value:
            items.update(flatten_params(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = str(value)
    return items


def job_params(job_config: DictConfig) -> dict[str, str]:
    """The MLflow params of a job: its resolved config (without ``hydra``) flattened by
    :func:`flatten_params`, with credentials redacted from ``tracking.uri``."""
    params = flatten_params(job_container(job_config))
    if "tracking.uri" in params:
        params["tracking.uri"] = redact(params["tracking.uri"])
    return params


def _record_uid(job_dir: Path) -> str | None:
    """The uid of the record in ``job_dir``, if it holds a readable one."""
    try:
        return str(read_json(job_dir / RECORD_FILE)["uid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _drop_receipt(job_dir: Path) -> None:
    """Before a new record goes into a re-used dir: the receipt and the failure note there
    are an earlier run's, and would pass for the new record's."""
    for stale in (SYNCED_FILE, PENDING_NOTE):
        (job_dir / stale).unlink(missing_ok=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Launch:
    """What the launching process decided once, for every job of this launch."""

    uid: str
    uri: str  # real URI, for the in-job publisher; never written to disk or tags
    started: float  # epoch seconds
    experiment: str
    env_tags: dict[str, str]
    background: bool = True
    sweep_dir: str | None = None
    n_jobs: int | None = None
    parent_run_id: str | None = None  # set up front only when jobs publish themselves
    # the launch's own overrides and process, for the sweep's record (which a job may write)
    overrides: list[str] = field(default_factory=list)
    host: str = ""
    pid: int = 0
    pid_start: str | None = None  # lab.provenance.process_start(pid)
    # MLFLOW_* of the launching process (URI, credentials, HTTP time-outs): a job on a Ray
    # or SLURM worker does not inherit that environment, so on_job_start applies it.
    client_env: dict[str, str] | None = None


_launching: TrackingCallback | None = None  # the launch's callback, in the launching process


def refused() -> None:
    """The launch was refused as bad input (lab.train exits 2). Its end then records
    nothing, unless some job already ran (Hydra's basic sweeper validates each job only
    when it runs it)."""
    if _launching is not None:
        _launching._refused = True


_running_job: Path | None = None  # this process's job, from lab's on_job_start to its on_job_end
_exited_job: Path | None = None  # the job that called sys.exit, ending the launch


def note_job_exit(exc: SystemExit) -> Path | None:
    """The dir of the job that raised ``exc``, if one was running: a job (its task or a
    callback) called ``sys.exit``. Hydra does not catch that as a job failure, and neither
    does lab: it ends the launch, as in Hydra. Its traceback goes into the job's dir, so that
    the record the launch's end leaves says why (:meth:`TrackingCallback._end_open_record`),
    and the dir travels with ``exc`` out of a worker process."""
    global _running_job, _exited_job
    job_dir, _running_job = _running_job, None
    if isinstance(exc, UsageError):  # lab's own refusal of the job's config: no job failure
        return None
    if job_dir is not None and job_dir.is_dir():
        with contextlib.suppress(OSError):  # a full disk must not hide the exit itself
            outputs.write_failure(exc, job_dir)
        exc.lab_job_dir = str(job_dir)  # type: ignore[attr-defined]
    found = getattr(exc, "lab_job_dir", None)
    _exited_job = Path(found) if found else None
    return _exited_job


_launch_failure: str | None = None  # why the launcher itself failed (a worker died, say)
_lost_jobs: dict[str, str] = {}  # job num -> why it was lost with its worker process


def note_launch_failure(cause: str) -> bool:
    """A sweep's launcher failed with ``cause`` (one line, e.g. ``BrokenProcessPool: worker
    12 died (killed by SIGKILL) before job #1 returned``): the launch's end says so in the
    parent run and in every job it stops, which would otherwise only say that it stopped.
    False, noting nothing, outside a sweep: a single run's failure is its job's."""
    global _launch_failure
    if _launching is None or _launching.launch is None or _launching.launch.sweep_dir is None:
        return False
    _launch_failure = cause
    return True


def note_lost_job(job_num: int, reason: str) -> None:
    """Job ``job_num`` ended with its worker process (``reason``: how): its record says so."""
    _lost_jobs[str(job_num)] = reason


def raise_missed_interrupt() -> None:
    """Raise again an interrupt that was swallowed. lab's SIGINT/SIGTERM handler raises
    :class:`Interrupted` wherever the main thread is; in a finalizer (an object's
    ``__del__`` or a weakref callback, which the garbage collector runs at any point)
    Python only prints "Exception ignored in ..." and goes on, and the sweep would run to
    its end. The launcher calls this between jobs, so that the launch stops there."""
    if _launching is not None and _launching._signal is not None and not _launching._ending:
        raise Interrupted(_launching._signal)


def received_signal() -> int | None:
    """The SIGINT or SIGTERM that interrupted the launch, if one did. An interrupt may reach
    lab.train as a plain KeyboardInterrupt (Ray's ``ray.get`` raises its own)."""
    return _launching._signal if _launching is not None else None


class TrackingCallback(Callback):
    """Hydra callback: outputs-dir records, MLflow runs, a progress line per job."""

    def __init__(self) -> None:
        self.launch: _Launch | None = None
        self._publisher_proc: subprocess.Popen[bytes] | None = None
        self._publisher_assigned = False  # it was told what to publish (_assign_publisher)
        self._config: DictConfig | None = None
        self._done = False
        self._signal: int | None = None  # the first SIGINT or SIGTERM, and when it came
        self._signal_at = 0.0
        self._sweep_saved = False  # this process has seen the sweep's record written
        self._ending = False  # _finish is recording the launch's end: signals wait
        self._opening_store = False  # MLflow may be creating the store (DDL): signals wait
        self._publisher_reported = False
        self._inline_broken: str | None = None  # why this process stopped publishing inline
        self._inline_failures = 0  # inline publications failed in a row
        self._inline_reported: set[str] = set()  # failures said on stderr, each once
        self._refused = False  # the launch was refused as bad input (lab.train, exit 2)

    def __getstate__(self) -> dict[str, Any]:
        # Jobs get a pickled copy: only the launch facts travel, not the publisher process.
        return {
            "launch": self.launch,
            "_publisher_proc": None,
            "_publisher_assigned": False,
            "_config": None,
            "_done": True,
            "_signal": None,
            "_signal_at": 0.0,
            "_sweep_saved": False,
            "_ending": False,
            "_opening_store": False,
            "_publisher_reported": False,
            "_inline_broken": None,
            "_inline_failures": 0,
            "_inline_reported": set(),
        }

    def _on_signal(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self._signal is not None:
            if signum == self._signal and now - self._signal_at < REPEAT_S:
                # The same interrupt, delivered twice: `uv run` without a terminal forwards
                # a SIGINT to its child, which a `kill` of the process group has also sent.
                return
            # A second signal while we are already unwinding exits at once.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._signal, self._signal_at = signum, now
        if self._ending:
            # Every job has returned and the launch's end is being recorded (summary, plot,
            # parent run; about a second): cut off, it would leave the parent RUNNING and
            # modules half-imported. _finish raises once it is done.
            print("lab: interrupted; recording the launch's end first (again to stop at once)", file=sys.stderr)
            return
        # Stop jobs in worker processes too (a `kill` reaches only us; joblib would let
        # running jobs finish): they end KILLED. The publisher is spared, to record it.
        spare = self._publisher_proc.pid if self._publisher_proc else None
        for pid in _child_pids():
            if pid != spare:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        if self._opening_store:
            # Cut off mid-migration, a new sqlite store is left half-made for good (sqlite
            # does not roll DDL back there): _open_store raises once the store is whole.
            message = "lab: interrupted; letting MLflow finish setting up its store (again to stop at once)"
            print(message, file=sys.stderr)
            return
        raise Interrupted(signum)

    def _at_exit(self) -> None:
        """The launch ended without on_run_end/on_multirun_end: interrupted, or the launcher
        itself raised (e.g. a worker process died)."""
        self._finish("KILLED" if self._signal is not None else "FAILED")

    # --- launching process ---------------------------------------------------------

    def _enabled(self, config: DictConfig) -> bool:
        return bool(OmegaConf.select(config, "tracking.enabled", default=False))

    def _start(self, config: DictConfig, sweep_dir: str | None) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        tracking = config.tracking
        uri = pin_uri(resolve_uri(tracking.uri))  # jobs that chdir still write to this store
        self.launch = _Launch(
            uid=uuid.uuid4().hex[:16],
            uri=uri,
            started=time.time(),
            experiment=resolve_experiment(tracking.experiment),
            env_tags=environment_tags() if tracking.enabled else {},
            background=bool(tracking.background),
            sweep_dir=sweep_dir,
            overrides=task_overrides(config),
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=process_start(os.getpid()),
        )
        atexit.register(self._at_exit)
        global _launching
        _launching = self
        if not (tracking.enabled and tracking.background):
            from lab import publishing

            publishing.release()  # the one lab.train started early is not needed
        if not tracking.enabled:
            return
        configure_client_env(tracking.timeout_s)
        self.launch.client_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
        if tracking.background:
            from lab import publishing

            self._publisher_proc = publishing.take()  # ours from here: _on_signal spares it
            # lab's sweeper validates every job first (on_sweep_validated): a refused sweep
            # must not have the publisher drain events an earlier, killed launch left in its dir
            if not (sweep_dir is not None and _labs_sweeper(config)):
                self._assign_publisher(config)

    def _assign_publisher(self, config: DictConfig) -> None:
        """Tell the publisher what to publish, once; it reads its queue from then on."""
        from lab import publishing

        if self._publisher_proc is None or self._publisher_assigned:
            return
        assert self.launch is not None
        self._publisher_proc = publishing.assign(
            self._publisher_proc,
            self._queue_dir(config),
            self.launch.uri,
            # a sweep's store is opened at its first event: none for a sweep refused by validation
            open_store=self.launch.sweep_dir is None,
            env=self.launch.client_env or {},
        )
        self._publisher_assigned = True

    def _queue_dir(self, config: DictConfig) -> Path:
        root = self.launch.sweep_dir if self.launch and self.launch.sweep_dir else config.hydra.run.dir
        return Path(root) / QUEUE_DIR

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._config = config
        with refused_as_usage(config, "tracking: "):  # e.g. ${hydra:runtime.cwd} in tracking.uri resolves
            self._start(config, None)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._config = config
        with refused_as_usage(config, "tracking: "):
            self._start(config, _pin_sweep_dir(config))
        study = _optuna_sweeper(config)
        # Optuna's sweeper never calls on_sweep_validated; it runs n_trials jobs, except
        # that a grid sampler stops early at the grid's size, which is not known here.
        if study is not None and "GridSampler" not in str(OmegaConf.select(study, "sampler._target_")):
            assert self.launch is not None
            self.launch.n_jobs = int(study.n_trials)

    def on_sweep_validated(self, config: DictConfig, n_jobs: int) -> None:
        """Called by lab's sweeper once every job's config is valid, before any job runs."""
        assert self.launch is not None
        self.launch.n_jobs = n_jobs
        self._assign_publisher(config)
        if self._enabled(config) and not config.tracking.background:
            launch = self.launch

            def create_parent(publisher: Any) -> None:
                launch.parent_run_id = publisher.parent_run(self._sweep_record(config))

            # Unreachable store: the jobs still run, and their records stay pending (the
            # sweep's too, written by its first job), as with background publishing.
            self._publish_inline(create_parent, None)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        job_return: JobReturn = kwargs["job_return"]
        self._finish(None, job_failed=job_return.status != JobStatus.COMPLETED)
        if job_return.status == JobStatus.COMPLETED and self._enabled(config):
            synced = Path(config.hydra.runtime.output_dir) / SYNCED_FILE
            if synced.exists():
                receipt = read_json(synced)
                print(
                    f"mlflow run {receipt['run_id']} (experiment {receipt['experiment_id']}, {receipt['tracking_uri']})"
                )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish(None)

    def _sweep_record(self, config: DictConfig) -> JobRecord:
        assert self.launch is not None
        assert self.launch.sweep_dir is not None
        return JobRecord(
            uid=self.launch.uid,
            job_dir=self.launch.sweep_dir,
            run_name=f"sweep-{Path(self.launch.sweep_dir).name}",
            experiment=self.launch.experiment,
            tracking_uri=redact(self.launch.uri),
            status="RUNNING",
            start_time=int(self.launch.started * 1000),
            params={},
            tags={
                **self.launch.env_tags,
                "lab.sweep_uid": self.launch.uid,
                "lab.overrides": join_overrides(self.launch.overrides),
                "lab.output_dir": self.launch.sweep_dir,
                "lab.kind": "sweep",
                "lab.host": self.launch.host,
                **_pid_tags(self.launch.pid, self.launch.pid_start),
            },
        )

    def _finish(self, status: str | None, job_failed: bool = False) -> None:
        """End this launch exactly once: on normal return (status None: derived from the jobs)
        or from atexit (KILLED after a signal, FAILED when the launcher itself raised).
        Waits for the publisher, so the MLflow store is complete when the command returns.

        A first signal during this is deferred (:meth:`_on_signal`): the end is recorded as
        it stands, then the interrupt goes on unwinding (exit 130/143). ``job_failed``: a
        single run's job raised, so Hydra exits 1 after this.
        """
        if self._done or self.launch is None:
            return
        self._done = True
        self._ending = True
        try:
            self._end(status, job_failed)
        finally:
            self._ending = False
            if status is None and self._signal is not None:
                raise Interrupted(self._signal)

    def _end(self, status: str | None, job_failed: bool) -> None:
        config = self._config
        assert config is not None and self.launch is not None
        dirs = None
        if status is not None:
            # No worker may start or end a job once we decide what the open ones became.
            _stop_workers(spare=self._publisher_proc.pid if self._publisher_proc else None)
            if self._enabled(config):
                for job_dir in self._job_dirs(config, bare=True):
                    self._end_open_record(job_dir, status)
        elif self._enabled(config):
            # Every job has returned: a record still open, or missing from a dir this launch
            # wrote, is one whose end or start was never written (lab's on_job_end or
            # on_job_start raised, which Hydra turns into a warning).
            dirs = self._job_dirs(config)
            for job_dir in dirs:
                self._end_open_record(job_dir, "FAILED", returned=True)
        ours = self._launch_dirs(config, dirs)  # after any open records were ended above
        if self._refused and not ours:
            # bad input, refused before any job ran: a re-used sweep dir keeps the earlier
            # sweep's summary and record, and MLflow gets no parent run, as with a new dir
            self._wait_for_publisher()
            return
        summary = None
        if self.launch.sweep_dir is not None and Path(self.launch.sweep_dir).exists():
            summary = self._write_summary(config, status, ours)
        self._wait_for_publisher()
        pending = self._pending(ours) if self._enabled(config) else []
        if pending:
            print(
                f"lab: {len(pending)} of this launch's MLflow records are pending (see tracking.error.txt "
                f"in {', '.join(str(p) for p in pending[:3])}{' …' if len(pending) > 3 else ''}); "
                "upload them with `python -m lab.runs sync`",
                file=sys.stderr,
            )
        if status is not None:
            return  # from atexit: the interrupt or the launcher's own error sets the exit code
        if summary is not None and summary.failed:
            failed = "".join(f"\n  #{r.job} {r.shown_overrides}: {r.error or r.status}" for r in summary.failed)
            print(f"lab: {len(summary.failed)} of {jobs(len(summary.rows))} failed:{failed}", file=sys.stderr)
            raise SystemExit(1)  # a failed job says more than pending records
        if pending and not job_failed:  # a failed single run: Hydra exits 1 after this
            raise SystemExit(PENDING_EXIT)

    def _wait_for_publisher(self) -> None:
        """Let the background publisher drain, and say so if it died doing it."""
        proc = self._publisher_proc
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        code = proc.wait()
        if code not in (0, PENDING_EXIT) and not self._publisher_reported:
            self._publisher_reported = True
            how = exit_status(code)
            print(f"lab: the MLflow publisher (pid {proc.pid}) stopped early ({how})", file=sys.stderr)
            if self._config is not None:
                # What it did not publish is found pending by its receipts (_pending); the
                # events it left would make the next publisher in this dir publish them twice.
                shutil.rmtree(self._queue_dir(self._config), ignore_errors=True)

    def _pending(self, ours: list[Path]) -> list[Path]:
        """This launch's job dirs, and its sweep dir, whose MLflow run is behind their record:
        after a failed attempt (``tracking.error.txt``), or none at all (a publisher that died).
        Only this launch's records count: an untracked job's dir may hold an earlier one's."""
        assert self.launch is not None
        records = {d: self._own_record(d) for d in ours}
        sweep_dir = Path(self.launch.sweep_dir) if self.launch.sweep_dir else None
        if sweep_dir is not None and _record_uid(sweep_dir) == self.launch.uid:
            with contextlib.suppress(OSError, ValueError, TypeError):
                records[sweep_dir] = JobRecord.load(sweep_dir)
        pending = []
        for job_dir, record in records.items():
            if record is None:
                continue
            if (job_dir / PENDING_NOTE).exists():
                pending.append(job_dir)
            elif not record.synced:
                note_pending(record, "the publisher ended before it published this record")
                pending.append(job_dir)
        return pending

    def _job_dirs(self, config: DictConfig, bare: bool = False) -> list[Path]:
        """This launch's job dirs (see :func:`lab.summary.job_dirs` for ``bare``)."""
        assert self.launch is not None
        if self.launch.sweep_dir is None:
            run_dir = Path(os.path.abspath(str(config.hydra.run.dir)))  # as Hydra's run_job makes it
            return [run_dir] if run_dir.exists() else []
        from lab.summary import job_dirs

        return job_dirs(Path(self.launch.sweep_dir), bare=bare, output_subdir=_output_subdir(config))

    def _launch_dirs(self, config: DictConfig, dirs: list[Path] | None = None) -> list[Path]:
        """The job dirs of this launch only, among ``dirs`` (default: :meth:`_job_dirs`): a
        re-used sweep dir also holds earlier ones'. Those holding this launch's record, and,
        for a job it ran untracked (a tracked sweep over ``tracking=none,mlflow``), those
        whose ``.hydra/`` files it wrote (without them: any file, except what the publisher
        writes, which may be finishing an earlier launch's records there)."""
        dirs = self._job_dirs(config) if dirs is None else dirs
        if not self._enabled(config):
            return [d for d in dirs if self._touched(d) is not None]
        assert self.launch is not None
        subdir, started = _output_subdir(config), self.launch.started

        def ours(job_dir: Path) -> bool:
            if self._own_record(job_dir) is not None:
                return True
            if subdir is None:
                return self._touched(job_dir) is not None
            return outputs.written_since(outputs.hydra_files_written(job_dir, subdir), started)

        return [d for d in dirs if ours(d)]

    def _end_open_record(self, job_dir: Path, status: str, returned: bool = False) -> None:
        """A job the launch left RUNNING, or without a record: KILLED after a signal, FAILED
        if the launcher broke or, when every job has ``returned``, its start or end was never
        recorded; FINISHED if it trained and wrote its metrics, so nothing is lost."""
        assert self.launch is not None and self._config is not None
        record = self._own_record(job_dir)
        rebuilt = record is None
        if record is None:
            record = self._rebuilt_record(job_dir, returned)
            if record is None:
                return
        elif record.finished:
            if not (self.launch.background or record.synced):
                # published from this process, and cut off by the interrupt (or a failure)
                # before MLflow had it all: again, while the launch's end holds signals
                self._submit(record, job_dir)
            return
        if outputs.file_written_since(job_dir / outputs.METRICS_FILE, record.start_time / 1000):
            # Trained and written, stopped only before its bookkeeping: nothing was lost.
            # (Not metrics an earlier launch left in a re-used dir.)
            _complete(record, job_dir, None, log_model=bool(self._config.tracking.log_model))
            self._submit(record, job_dir)
            return
        record.status, record.end_time = status, _now_ms()
        # the job's own failure says more: a failed on_job_end, or sys.exit in the job
        own = outputs.file_written_since(job_dir / outputs.TRACEBACK_FILE, record.start_time / 1000)
        if returned:
            record.error = (
                failure_reason(job_dir, {})
                if own
                else f"the job returned, but its record was never {'written' if rebuilt else 'completed'}"
            )
        else:
            record.error = (
                self._interruption(status)
                or (failure_reason(job_dir, {}) if own else None)
                or _lost_jobs.get(record.tags.get("lab.job_num", ""))
            )
            if record.error is None and _launch_failure is not None:
                # not this job's doing: stopped from outside, as by a signal
                record.status, record.error = "KILLED", f"stopped with the launch, which failed: {_launch_failure}"
            record.error = record.error or "the launcher stopped before this job returned"
        record.tags["lab.error"] = record.error
        record.artifacts = outputs.job_artifacts(job_dir, record.output_subdir)
        record.save()
        self._submit(record, job_dir)

    def _rebuilt_record(self, job_dir: Path, returned: bool) -> JobRecord | None:
        """The record ``on_job_start`` would have written in ``job_dir``, for a job stopped in
        the few ms between Hydra creating its dir and on_job_start, or whose on_job_start
        failed; saved, and started when Hydra wrote the job's files (just before
        on_job_start), else at the dir's last write. None for a dir this launch did not
        touch, for a job it ran untracked, and, once every job has ``returned``, for one
        whose config is not there to tell."""
        assert self.launch is not None and self._config is not None
        changed = self._touched(job_dir)
        if changed is None:
            return None  # left by an earlier launch (a re-used sweep dir), untouched by this one
        written = outputs.hydra_files_written(job_dir, _output_subdir(self._config))
        fresh = written is not None and outputs.written_since(written, self.launch.started)
        saved = self._saved_config(job_dir) if fresh else None  # not an earlier launch's files
        if saved is not None and not self._job_tracked(saved):
            return None  # a job this launch ran untracked (a sweep over tracking settings)
        if saved is None and returned:
            return None  # it ran, but without its config it cannot be told from an untracked one
        started = written if written is not None and fresh else changed
        record = self._record_from_dir(job_dir, saved, start_time=int(started * 1000))
        _drop_receipt(job_dir)
        self._save_sweep_record(record, self._config)
        return record

    def _own_record(self, job_dir: Path) -> JobRecord | None:
        """The record a job of this launch wrote in ``job_dir``, if any (not one an earlier
        launch left in a re-used dir)."""
        assert self.launch is not None
        if not (job_dir / RECORD_FILE).exists():
            return None
        try:
            record = JobRecord.load(job_dir)
        except (OSError, ValueError, TypeError):  # unreadable: not one this launch wrote
            return None
        return record if record.uid.startswith(f"{self.launch.uid}-") else None

    def _touched(self, job_dir: Path) -> float | None:
        """When this launch last wrote in ``job_dir`` (epoch seconds); None if it did not:
        the dir is what an earlier launch left in a re-used sweep dir."""
        assert self.launch is not None and self._config is not None
        changed = outputs.last_written(job_dir, _output_subdir(self._config))
        return changed if outputs.written_since(changed, self.launch.started) else None

    def _saved_config(self, job_dir: Path) -> DictConfig | None:
        """The job's config with its ``hydra`` node, from the files ``run_job`` saved in
        ``job_dir``; None when they are missing or half-written."""
        assert self.launch is not None and self._config is not None
        subdir = _output_subdir(self._config)
        if subdir is None:
            return None
        try:
            config = OmegaConf.load(job_dir / subdir / "config.yaml")
            hydra = OmegaConf.load(job_dir / subdir / "hydra.yaml")
        except Exception:  # noqa: BLE001 - absent, or cut off mid-write (any YAML or OmegaConf error)
            return None
        if not (isinstance(config, DictConfig) and isinstance(hydra, DictConfig) and "hydra" in hydra):
            return None
        with open_dict(config):
            config.hydra = hydra.hydra
        numbered = OmegaConf.select(config, "hydra.job.num", default=None) is not None
        return config if numbered == (self.launch.sweep_dir is not None) else None

    def _job_tracked(self, config: DictConfig) -> bool:
        """Whether a job whose config is ``config`` is tracked (yes if that cannot be resolved here)."""
        try:
            return self._enabled(config)
        except Exception:  # noqa: BLE001 - an interpolation that does not resolve in the launcher
            return True

    def _record_from_dir(self, job_dir: Path, config: DictConfig | None, start_time: int) -> JobRecord:
        """The record ``on_job_start`` would have written for ``job_dir``, from its saved
        ``config`` (see :meth:`_saved_config`; interpolations resolve here, in the launching
        process); without it, one that names only the job's dir, and its number when the
        dir is named by it (``hydra.sweep.subdir`` is ``${hydra.job.num}``)."""
        assert self.launch is not None and self._config is not None
        if config is not None:
            with contextlib.suppress(Exception):  # an interpolation that does not resolve here
                return self._job_record(config, job_dir, start_time, pid=None)  # the job's pid is not known
        name = job_dir.name
        if self.launch.sweep_dir is None:
            return self._new_record(job_dir, start_time, None, params={}, tags={}, config=self._config)
        subdir = OmegaConf.to_container(self._config.hydra.sweep, resolve=False).get("subdir")  # type: ignore[union-attr]
        if name.isdigit() and subdir == "${hydra.job.num}":
            return self._new_record(
                job_dir, start_time, name, params={}, tags={"lab.job_num": name}, config=self._config
            )
        where = job_dir.relative_to(self.launch.sweep_dir).as_posix()
        return self._new_record(
            job_dir, start_time, where, params={}, tags={}, config=self._config, uid_key=f"dir:{where}"
        )

    def _write_summary(self, config: DictConfig, status: str | None, ours: list[Path]) -> Summary:
        assert self.launch is not None
        assert self.launch.sweep_dir is not None
        sweep_dir = Path(self.launch.sweep_dir)
        summary = summarize_sweep(sweep_dir, _output_subdir(config), ours)
        from lab.report import write_report  # here: job processes import this module and never report

        write_report(sweep_dir, summary)
        final = status or ("FAILED" if summary.failed else "FINISHED")
        counts = Counter(r.status.lower() for r in summary.rows)
        print(
            f"lab: sweep {final.lower()}: {jobs(len(summary.rows))} ("
            + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f"){self._never_started(summary)}; summary {sweep_dir / 'summary.md'}"
        )
        study = _optuna_sweeper(config)
        direction = _directions(study)[0] if study is not None else "maximize"
        trial = _best_trial(summary, direction) if study is not None else None
        if study is not None:
            print(
                f"lab: best trial: job {trial.job}: {trial.shown_overrides} → "
                f"{OBJECTIVE}={trial.metrics[OBJECTIVE]:.4f} ({direction})"
                if trial is not None
                else "lab: best trial: none, no trial finished"
            )
            results = sweep_dir / STUDY_RESULTS
            if trial is None and results.exists():
                # the plugin names as best a failed trial's stand-in value (_keep_study_going)
                results.write_text(
                    "# lab: no trial finished, so there is no best; see summary.md\n"
                    "name: optuna\nbest_params: null\nbest_value: null\n"
                )
        if self._enabled(config):
            record = self._sweep_record(config)
            record.status, record.end_time = final, _now_ms()
            record.artifacts = ["summary.csv", "summary.md", "report.png"]
            record.metrics = {"jobs": len(summary.rows), **{f"jobs_{s}": counts[s] for s in ("failed", "killed")}}
            if final != "FINISHED":
                record.error = self._sweep_error(status, summary)
                record.tags["lab.error"] = record.error[:5000]
            best = summary.best("accuracy")
            if best is not None:
                record.tags["lab.best.config"] = best.config
                record.metrics.update({f"best.{k}": v for k, v in best.mean.items()})
            if study is not None:
                record.tags.update(_study_tags(study, direction))
                if (sweep_dir / STUDY_RESULTS).exists():
                    record.artifacts.append(STUDY_RESULTS)
            if trial is not None:
                fixed = set(task_overrides(config))  # the launch's own overrides, the same in every trial
                params = {k: v for k, v in trial.params.items() if f"{k}={v}" not in fixed}
                record.tags["lab.best.job_num"] = trial.job
                record.tags["lab.best.params"] = json.dumps(params, sort_keys=True)
                record.metrics["best.value"] = trial.metrics[OBJECTIVE]
            record.save()
            if config.tracking.background:
                self._assign_publisher(config)  # stopped before lab's sweeper had validated the jobs
                enqueue(self._queue_dir(config), "sweep_end", {"job_dir": str(sweep_dir)})
            else:
                self._publish_inline(lambda p: p.finish_parent(record), record)
        return summary

    def _interruption(self, status: str) -> str | None:
        """``lab.error`` of a job or sweep the launch's end leaves ``status``, if a signal did it."""
        if status == "KILLED" and self._signal is not None:
            return f"interrupted by {signal.Signals(self._signal).name}"
        return None

    def _never_started(self, summary: Summary) -> str:
        """``; 2 of 4 jobs never started`` when the launch ended before some of its jobs ran."""
        total = self.launch.n_jobs if self.launch is not None else None
        if not total or total <= len(summary.rows):
            return ""
        return f"; {total - len(summary.rows)} of {jobs(total)} never started"

    def _sweep_error(self, status: str | None, summary: Summary) -> str:
        """Why the sweep did not finish, in one line, for its parent run's ``lab.error``."""
        if status is not None:
            reason = self._interruption(status)
            if reason is None and _exited_job is not None and self.launch is not None and self.launch.sweep_dir:
                job = os.path.relpath(_exited_job, self.launch.sweep_dir)
                reason = f"job {job} exited the launch: {failure_reason(_exited_job, {})}"
            if reason is None and _launch_failure is not None:
                reason = f"the launcher failed: {_launch_failure}"
            return (reason or "the launcher stopped before the sweep ended") + self._never_started(summary)
        first = summary.failed[0]
        return (
            f"{len(summary.failed)} of {jobs(len(summary.rows))} did not finish; "
            f"#{first.job} {first.shown_overrides}: {first.error or first.status}"
        )

    # --- job process -----------------------------------------------------------------

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _running_job
        _running_job = Path(config.hydra.runtime.output_dir)
        if self.launch is not None and self.launch.client_env:
            os.environ.update(self.launch.client_env)  # before anything resolves ${oc.env:MLFLOW_...}
        job_dir = Path(config.hydra.runtime.output_dir)
        outputs.clear_earlier_run(job_dir)
        if self.launch is None or not self._enabled(config):
            return
        record = self._job_record(config, job_dir, _now_ms(), pid=os.getpid())
        self._save_sweep_record(record, config)
        record.save()
        self._submit(record, job_dir)

    def _save_sweep_record(self, record: JobRecord, config: DictConfig) -> None:
        """A sweep's first job writes the sweep's record, which its parent run is made from
        (over the one an earlier launch left in a re-used sweep dir)."""
        assert self.launch is not None
        if record.parent_dir is None or self._sweep_saved:
            return
        sweep_dir = Path(record.parent_dir)
        if _record_uid(sweep_dir) != self.launch.uid:
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                earlier = JobRecord.load(sweep_dir)
                if not earlier.synced:  # its parent run never got its end and summary: say so
                    print(
                        f"lab: warning: {sweep_dir} held an earlier sweep's record not yet in MLflow "
                        f"({earlier.status}); this sweep replaces it. Its jobs' pending records still sync, "
                        "under their own sweep's parent run if MLflow has it. Run `python -m lab.runs sync` "
                        "before re-using a sweep dir to keep such records.",
                        file=sys.stderr,
                    )
            _drop_receipt(sweep_dir)
            self._sweep_record(config).save()
        self._sweep_saved = True

    def _job_record(self, config: DictConfig, job_dir: Path, start_time: int, pid: int | None) -> JobRecord:
        """The RUNNING record of the job whose config (with its ``hydra`` node) is ``config``."""
        num = OmegaConf.select(config, "hydra.job.num", default=None)
        tags = {
            "lab.overrides": join_overrides(task_overrides(config)),
            "lab.config_sha256": config_fingerprint(config),
        }
        if pid is not None:
            tags |= _pid_tags(pid, process_start(pid))
        if num is not None:
            tags["lab.job_num"] = str(num)
        name = None if num is None else str(num)
        return self._new_record(job_dir, start_time, name, params=job_params(config), tags=tags, config=config)

    def _new_record(
        self,
        job_dir: Path,
        start_time: int,
        name: str | None,
        params: dict[str, str],
        tags: dict[str, str],
        config: DictConfig,
        uid_key: str | None = None,
    ) -> JobRecord:
        """A RUNNING job record: ``job-<name>`` of this launch's sweep, or a single run when
        ``name`` is None; its uid ends in ``uid_key`` (default: the name). ``config`` (with
        its ``hydra`` node) tells where the job's ``.hydra/`` files are."""
        assert self.launch is not None
        in_sweep = name is not None
        key = uid_key or name or "run"
        uid = f"{self.launch.uid}-{key}"
        all_tags = {
            **self.launch.env_tags,
            **tags,
            "lab.output_dir": str(job_dir),
            "lab.job_uid": uid,
            "lab.host": socket.gethostname(),
            "lab.kind": "job",
        }
        if in_sweep:
            all_tags["lab.sweep_uid"] = self.launch.uid
        return JobRecord(
            uid=uid,
            job_dir=str(job_dir),
            run_name=f"job-{name}" if in_sweep else f"run-{job_dir.name}",
            experiment=self.launch.experiment,
            tracking_uri=redact(self.launch.uri),
            status="RUNNING",
            start_time=start_time,
            parent_uid=self.launch.uid if in_sweep else None,
            parent_dir=self.launch.sweep_dir if in_sweep else None,
            params=params,
            tags=all_tags,
            output_subdir=_output_subdir(config),
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        global _running_job
        _running_job = None
        job_dir = Path(config.hydra.runtime.output_dir)
        num = OmegaConf.select(config, "hydra.job.num", default=None)
        error = None
        if job_return.status == JobStatus.FAILED:
            error = outputs.write_failure(job_return._return_value, job_dir)
            _log_to_file_only(f"job failed: {error}\n" + (job_dir / outputs.TRACEBACK_FILE).read_text())
            _keep_study_going(config, job_return)
        self._print_progress(config, num, job_dir, error)
        if self.launch is None or not self._enabled(config) or not (job_dir / RECORD_FILE).exists():
            return
        _complete(JobRecord.load(job_dir), job_dir, error, log_model=bool(config.tracking.log_model))
        self._submit(JobRecord.load(job_dir), job_dir)

    def _print_progress(self, config: DictConfig, num: int | None, job_dir: Path, error: str | None) -> None:
        if num is None:
            if error is None:
                data = outputs.read_metrics(job_dir) or {}
                shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(data.get("metrics", {}).items()))
                print(f"{shown} ({job_dir})")
            else:
                print(f"lab: traceback in {job_dir / outputs.TRACEBACK_FILE}", file=sys.stderr)
            return
        total = f"/{self.launch.n_jobs}" if self.launch and self.launch.n_jobs else ""
        overrides = redact_text(" ".join(task_overrides(config)))
        if error is not None:
            line = f"[{num + 1}{total}] FAILED {overrides} → {error}"
        else:
            data = outputs.read_metrics(job_dir) or {}
            metrics, timing = data.get("metrics", {}), data.get("timing", {})
            shown = f"accuracy={metrics['accuracy']:.3f}" if "accuracy" in metrics else ""
            line = f"[{num + 1}{total}] {overrides} → {shown} ({timing.get('total_s', 0):.2f} s)"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def _submit(self, record: JobRecord, job_dir: Path) -> None:
        assert self.launch is not None
        if self.launch.background:
            root = Path(self.launch.sweep_dir) if self.launch.sweep_dir else job_dir
            enqueue(root / QUEUE_DIR, "job", {"job_dir": str(job_dir)})
            return
        sweep = JobRecord.load(record.parent_dir) if record.parent_dir else None
        # search: each call has a fresh Publisher, so the job's end finds the run its start made
        self._publish_inline(lambda p: p.publish(record, sweep, search=True), record)

    def _open_store(self, publisher_type: Any) -> Any:
        """``Publisher(uri)``, which creates and migrates the store when there is none yet,
        with a Ctrl-C or SIGTERM held until it is done (:meth:`_on_signal`)."""
        assert self.launch is not None
        earlier = self._signal
        self._opening_store = True
        try:
            publisher = publisher_type(self.launch.uri)
        finally:
            self._opening_store = False
        if self._signal is not None and earlier is None and not self._ending:
            raise Interrupted(self._signal)
        return publisher

    def _publish_inline(self, action: Any, record: JobRecord | None) -> None:
        """Publish from this process; a failure leaves ``record`` pending (noted in its job
        dir). Once the store could not be opened, or two publications in a row failed, the
        store is taken to be down for the rest of this process: later records are left
        pending at once instead of each waiting for time-outs (the background publisher's
        rule)."""
        from lab.publishing import Publisher, error_line

        assert self.launch is not None
        if self._inline_broken is not None:
            if record is not None:
                note_pending(record, self._inline_broken)
            return
        opened = False
        try:
            publisher = self._open_store(Publisher)
            opened = True
            if self.launch.parent_run_id and self.launch.sweep_dir:
                publisher._parents[self.launch.uid] = self.launch.parent_run_id
            action(publisher)
            self._inline_failures = 0
        except Exception as exc:  # noqa: BLE001 - tracking must never lose the job's result
            reason = error_line(exc)
            self._inline_failures += 1
            if not opened or self._inline_failures >= 2:
                self._inline_broken = reason
            if reason not in self._inline_reported:  # a job's start and end, failing alike
                self._inline_reported.add(reason)
                print(
                    f"lab: tracking to {redact(self.launch.uri)} failed ({reason[:300]}); records stay pending "
                    "in each job's tracking.json; upload them later with `python -m lab.runs sync`",
                    file=sys.stderr,
                )
            if record is not None:
                note_pending(record, reason)


def _pid_tags(pid: int, start: str | None) -> dict[str, str]:
    """``lab.pid`` and, where Linux tells it, ``lab.pid_start``: with ``lab.host``, what
    ``lab.runs reap`` checks before it takes a RUNNING run's process to be gone."""
    return {"lab.pid": str(pid)} | ({} if start is None else {"lab.pid_start": start})


def _pin_sweep_dir(config: DictConfig) -> str:
    """The sweep dir, made absolute for every job. Launchers compose each job's config anew
    from ``hydra.overrides.hydra``, and a job may run in another working dir (a Ray worker
    runs in its cluster's), where a relative dir would land elsewhere."""
    sweep_dir = str(config.hydra.sweep.dir)  # resolves ${now:...} once, cached for the jobs
    absolute = os.path.abspath(sweep_dir)
    if absolute != sweep_dir:
        # quoted for Hydra's override grammar: backslashes double only before a quote
        quoted = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), absolute)
        with read_write(config.hydra):
            config.hydra.sweep.dir = absolute
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{quoted}'")
    return absolute


def _output_subdir(config: DictConfig) -> str | None:
    """``hydra.output_subdir``: where each job's ``.hydra/`` files go (None: not written)."""
    subdir = config.hydra.output_subdir
    return None if subdir is None else str(subdir)


def _complete(record: JobRecord, job_dir: Path, error: str | None, log_model: bool) -> None:
    """Fill a job's record from its outputs dir once the job has returned, and save it."""
    record.end_time = _now_ms()
    data = outputs.read_metrics(job_dir) or {}
    record.metrics = {**data.get("metrics", {}), **{f"timing.{k}": v for k, v in data.get("timing", {}).items()}}
    if error is None:
        record.status = "FINISHED"
        if log_model and (job_dir / outputs.MODEL_FILE).exists():
            record.model = outputs.MODEL_FILE
    else:
        record.status, record.error = "FAILED", error
        record.tags["lab.error"] = error[:5000]
    record.artifacts = outputs.job_artifacts(job_dir, record.output_subdir)
    record.save()


def _stop_workers(spare: int | None, grace_s: float = 5.0) -> None:
    """Wait for worker processes (children other than the publisher and loky's resource
    tracker) to exit; SIGKILL the ones still there after ``grace_s``."""

    def workers() -> list[int]:
        found = []
        for pid in _child_pids():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            state = process_state(pid)
            if pid != spare and b"resource_tracker" not in cmdline and state is not None and state[0] != "Z":
                found.append(pid)
        return found

    deadline = time.monotonic() + grace_s
    while workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in workers():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _child_pids() -> list[int]:
    """Direct children of this process (Linux /proc; elsewhere none are found)."""
    pids: list[int] = []
    for children in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in children.read_text().split()]
    return pids


def _log_to_file_only(message: str) -> None:
    """Hydra 1.3 leaves a failed job's traceback out of its log: add it to the log file
    only, since the console already got a one-line summary."""
    record = logging.LogRecord("lab.train", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _labs_sweeper(config: DictConfig) -> bool:
    """Whether ``hydra.sweeper`` is lab's, which calls on_sweep_validated before any job."""
    return "hydra_plugins.lab_sweeper." in str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))


def _optuna_sweeper(config: DictConfig) -> DictConfig | None:
    """``hydra.sweeper`` when it is hydra-optuna-sweeper's (``search=optuna`` and the like), else None."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    if isinstance(sweeper, DictConfig) and "hydra_optuna_sweeper" in str(sweeper.get("_target_", "")):
        return sweeper
    return None


def _directions(sweeper: DictConfig) -> list[str]:
    """The study's directions as Optuna names them; the sweeper takes a string, a
    ``Direction`` enum (its default) or a list of either."""
    value = sweeper.get("direction")
    items = list(value) if isinstance(value, ListConfig | list) else [value]
    return [str(getattr(d, "name", d)).lower() for d in items]


def _keep_study_going(config: DictConfig, job_return: JobReturn) -> None:
    """Hand hydra-optuna-sweeper a failed trial's worst possible value, so its study goes on.

    The sweeper (1.2.0, ``OptunaSweeperImpl.sweep``) reads each trial's
    ``JobReturn.return_value``, which re-raises a failed job's exception; it then tells
    Optuna the trial failed and re-raises, which ends the study and skips
    ``on_multirun_end``. This runs after the failure is written to the job dir and its
    record, and only the sweeper reads the return afterwards: it tells Optuna the trial
    completed with -inf (maximize) or +inf (minimize), which TPE ranks last and
    ``best_trial`` never picks unless every trial failed. The sweep still ends FAILED.
    """
    sweeper = _optuna_sweeper(config)
    if sweeper is None:
        return
    worst = [-math.inf if d == "maximize" else math.inf for d in _directions(sweeper)]
    job_return.status = JobStatus.COMPLETED
    job_return.return_value = worst[0] if len(worst) == 1 else worst


def _best_trial(summary: Summary, direction: str) -> JobRow | None:
    """The finished job with the best objective; on a tie the earliest, as Optuna picks."""
    scored = [r for r in summary.rows if r.status == "FINISHED" and OBJECTIVE in r.metrics]
    if not scored:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(scored, key=lambda r: sign * r.metrics[OBJECTIVE])  # max keeps the first of equals


def _study_tags(sweeper: DictConfig, direction: str) -> dict[str, str]:
    sampler = str(OmegaConf.select(sweeper, "sampler._target_", default="")).rsplit(".", 1)[-1]
    return {
        "lab.study.direction": direction,
        "lab.study.objective": OBJECTIVE,
        "lab.study.sampler": sampler,
        "lab.study.n_trials": str(sweeper.get("n_trials")),
    }
