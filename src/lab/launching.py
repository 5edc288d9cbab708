"""Running sweep jobs: Hydra's basic launcher with fewer copies, optionally on forked workers.

Hydra 1.3.8's ``run_job`` copies the whole job config (with its large ``hydra`` node,
~150 OmegaConf nodes here) five times a job: ``HydraConfig.set_config`` twice (a masked
copy each), a deep copy for the task's config and another of ``HydraConfig``'s. That was
the largest cost of a sweep job after the fit itself (py-spy, 200 iris jobs: about a third
of the launcher's time). :func:`run_job` here is Hydra's function with four changes and
nothing else:

- ``HydraConfig`` is set once, and without a copy: Hydra stores a masked copy of the job
  config's ``hydra`` node (``OmegaConf.masked_copy``, ~5 ms), made read-only and parented
  back to the job config; :func:`set_hydra_config` stores that node itself, already
  read-only and parented there. The job's ``runtime.output_dir`` is then written into it,
  which is exactly what Hydra's second call produced.
- The task's config is a deep copy of everything but ``hydra`` (the node is kept out of
  the copy through the ``memo`` argument, then deleted as Hydra deletes it).
- The job's ``hydra_cfg`` (its ``JobReturn.hydra_cfg`` and ``.hydra/hydra.yaml``) is
  ``HydraConfig``'s root itself: it is read-only, and Hydra drops it from the singleton
  when the job ends.
- The ``.hydra/*.yaml`` files are emitted by libyaml (PyYAML's C emitter) with OmegaConf's
  own representers: the same bytes, at a fifth of the cost (``hydra.yaml`` took ~6 ms).

Everything else (callbacks, logging, ``.hydra/`` files, ``chdir``, ``env_set``, the job's
return) is as Hydra does it; a test compares both launchers' results field by field.
``hydra/launcher=basic`` selects Hydra's own.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import multiprocessing as mp
import os
import pickle
import re
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra import version
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _check_hydra_context,
    _flush_loggers,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf._utils import OmegaConfDumper

from lab.provenance import exit_status
from lab.records import redact_text

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import ForkContext

__all__ = [
    "LabLauncher",
    "freeze_imports",
    "launch_forked",
    "launch_joblib",
    "launch_ray",
    "quiet_replaced_launcher_options",
    "run_job",
]

log = logging.getLogger(__name__)


_frozen_modules = 0  # len(sys.modules) at this process's last gc.freeze()


def freeze_imports() -> None:
    """In a process that runs jobs, after its imports (at start-up, and again once its first
    job has imported scikit-learn): what was imported lives as long as the process, so keep
    it out of the garbage collector's full passes. They walk every tracked object (~230k
    with Hydra and scikit-learn loaded) and Hydra's per-job config copies trigger them
    often; and at exit they took ~0.3 s. A no-op unless modules were imported since the
    last call."""
    global _frozen_modules
    if len(sys.modules) > _frozen_modules:
        gc.freeze()
        _frozen_modules = len(sys.modules)


class _CDumper(yaml.CDumper):
    """OmegaConf's YAML dumper (``OmegaConf.to_yaml``) on libyaml's emitter."""


_CDumper.add_representer(str, OmegaConfDumper.str_representer)  # type: ignore[arg-type]


# Where libyaml's text may differ from PyYAML's, found by comparing both on random configs
# (900k of them): a double-quoted scalar (libyaml escapes characters beyond U+FFFF and NEL,
# which PyYAML writes as they are, and folds long double-quoted lines elsewhere), which shows
# in libyaml's text as a line, item or value opening with '"'; and a key that one of them
# writes as a complex key ("? key") and the other not: an empty key (complex in PyYAML), or
# one of 123 characters or more (PyYAML counts the "!!str" tag into its limit of 128) or of
# more than 128 UTF-8 bytes (libyaml's limit). Plain and single-quoted scalars (backslashes,
# colons, non-ASCII text, multi-line strings) came out the same in every case. A match in a
# scalar's own text costs only the slower emitter.
_DOUBLE_QUOTED = re.compile(r'(?:^|[:-] )\s*"', re.MULTILINE)
_KEY_LIMIT = 123  # UTF-8 bytes: never fewer than characters


def _has_ambiguous_key(node: Any) -> bool:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and not 0 < len(key.encode()) < _KEY_LIMIT:
                return True
            if isinstance(value, (dict, list)) and _has_ambiguous_key(value):
                return True
    elif isinstance(node, list):
        return any(isinstance(item, (dict, list)) and _has_ambiguous_key(item) for item in node)
    return False


def libyaml_text(cfg: Any) -> str | None:
    """``OmegaConf.to_yaml(cfg)`` emitted by libyaml, or None where the two emitters may differ."""
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    if _has_ambiguous_key(container):
        return None
    text = str(yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=_CDumper))
    return None if _DOUBLE_QUOTED.search(text) else text


def to_yaml(cfg: Any) -> str:
    """``OmegaConf.to_yaml(cfg)``, the same text: libyaml's (a fifth of the cost), unless the
    two emitters may differ on it (see :func:`libyaml_text`)."""
    return libyaml_text(cfg) or OmegaConf.to_yaml(cfg)


def quiet_replaced_launcher_options() -> None:
    """conf/hydra/launcher/{ray,joblib}.yaml replace the plugins' options on purpose (see
    there); Hydra warns at every composition that they are typed by the plugins' schemas."""
    warnings.filterwarnings("ignore", message="\n'hydra/launcher/(ray|joblib)' is validated against ConfigStore schema")


def _save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """Hydra's ``_save_config``, with :func:`to_yaml`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir / filename), "w", encoding="utf-8") as file:
        file.write(to_yaml(cfg))


def set_hydra_config(config: DictConfig) -> None:
    """``HydraConfig.instance().set_config(config)``, sharing the job config's ``hydra``
    node instead of copying it.

    Hydra stores ``OmegaConf.masked_copy(config, "hydra")`` with the copied node's parent
    set back to ``config``. The node is read-only from here on, and ``config`` is the
    job's own (composed for it, dropped after it), so a copy can never differ from it:
    the root holds the node itself, whose parent stays ``config``.
    """
    OmegaConf.set_readonly(config.hydra, True)
    hydra_node_type = OmegaConf.get_type(config, "hydra")
    assert hydra_node_type is not None and issubclass(hydra_node_type, HydraConf)
    node = config._get_node("hydra")
    assert isinstance(node, DictConfig)
    root = DictConfig(content={})
    root._set_flag("no_deepcopy_set_nodes", True)
    root["hydra"] = node  # re-parents the node to root ...
    root._set_flag("no_deepcopy_set_nodes", None)
    node._set_parent(config)  # ... and back: interpolations reach the job config
    HydraConfig.instance().cfg = root  # type: ignore[assignment]  # as Hydra stores it


def copy_without_hydra(config: DictConfig) -> DictConfig:
    """``deepcopy(config)`` minus its ``hydra`` node, which is never copied."""
    memo = {}
    if "hydra" in config:
        memo[id(config._get_node("hydra"))] = config._get_node("hydra")
    task_cfg = copy.deepcopy(config, memo)
    if "hydra" in task_cfg:
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
    return task_cfg


def run_job(
    task_function: TaskFunction,
    config: DictConfig,
    job_dir_key: str,
    job_subdir_key: str | None,
    hydra_context: HydraContext,
    configure_logging: bool = True,
) -> JobReturn:
    """Hydra's ``hydra.core.utils.run_job`` (1.3.8) copying only the task's config; see the module doc."""
    _check_hydra_context(hydra_context)
    callbacks = hydra_context.callbacks

    old_cwd = os.getcwd()
    orig_hydra_cfg = HydraConfig.instance().cfg

    set_hydra_config(config)
    hydra_cfg = HydraConfig.instance().cfg
    assert isinstance(hydra_cfg, DictConfig)

    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        subdir = str(OmegaConf.select(config, job_subdir_key))
        output_dir = os.path.join(output_dir, subdir)

    for runtime in (config.hydra.runtime, hydra_cfg.hydra.runtime):
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = os.path.abspath(output_dir)

    _chdir = None
    try:
        ret = JobReturn()
        task_cfg = copy_without_hydra(config)
        ret.cfg = task_cfg
        ret.hydra_cfg = hydra_cfg
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        Path(str(output_dir)).mkdir(parents=True, exist_ok=True)

        _chdir = hydra_cfg.hydra.job.chdir
        if _chdir is None:
            # Hydra warns and changes dir only below version_base 1.2; lab.train sets 1.3
            _chdir = not version.base_at_least("1.2")
        if _chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()

        if configure_logging:
            configure_log(config.hydra.job_logging, config.hydra.verbose)

        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", hydra_output)
            _save_config(hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)

        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:  # noqa: BLE001 - as Hydra: the job failed, its return holds why
                ret.return_value = e
                ret.status = JobStatus.FAILED

        ret.task_name = JobRuntime.instance().get("name")

        _flush_loggers()

        callbacks.on_job_end(config=config, job_return=ret)

        return ret
    except SystemExit as exc:  # not a job failure, here as in Hydra: it ends the launch
        from lab.tracking import note_job_exit  # imported by then: lab's callback runs the job

        note_job_exit(exc)  # its traceback in the job's dir, written from the job's process
        raise
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if _chdir:
            os.chdir(old_cwd)


def _start_launch(launcher: Any) -> Path:
    """What Hydra's launchers do first: globals, the launcher's logging, the sweep dir."""
    setup_globals()
    assert launcher.config is not None
    assert launcher.task_function is not None
    assert launcher.hydra_context is not None
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return sweep_dir


def _numbered(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[tuple[int, list[str]]]:
    return [(initial_job_idx + i, list(overrides)) for i, overrides in enumerate(job_overrides)]


def _log_jobs(jobs: list[tuple[int, list[str]]]) -> None:
    for idx, overrides in jobs:
        log.info(f"\t#{idx} : {redact_text(' '.join(filter_overrides(overrides)))}")


class LabLauncher(BasicLauncher):
    """``hydra/launcher=lab``, the default: Hydra's basic launcher running :func:`run_job`.

    With ``n_jobs`` > 1 the jobs run in that many worker processes forked from the launching
    process (:func:`launch_forked`, and the notes above it); with 1 (the default) they run in
    the launching process, one after another, as Hydra's basic launcher runs them.
    """

    def __init__(self, n_jobs: int = 1) -> None:
        super().__init__()
        if n_jobs == -1:  # the CPUs this process may use (Linux), else all of them
            n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if n_jobs < 1:
            from lab.config import ConfigError
            from lab.validation import describe, fail

            error = ConfigError("hydra.launcher.n_jobs", n_jobs, "an integer >= 1, or -1 for one per CPU")
            raise fail(describe(error) or str(error))
        self.n_jobs = n_jobs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        _start_launch(self)
        assert self.config is not None
        jobs = _numbered(job_overrides, initial_job_idx)
        workers = min(self.n_jobs, len(jobs))
        if workers > 1:
            log.info(f"Launching {len(jobs)} jobs locally on {workers} forked worker processes")
            _log_jobs(jobs)
            return launch_forked(self, jobs, workers)
        log.info(f"Launching {len(jobs)} jobs locally")
        from lab.tracking import raise_missed_interrupt

        runs: list[JobReturn] = []
        for job in jobs:
            raise_missed_interrupt()
            _log_jobs([job])
            runs.append(self.run(*job))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # the launcher's, again
        return runs

    def run(self, idx: int, overrides: list[str]) -> JobReturn:
        """Compose job ``idx`` and run it in this process (its logging stays configured)."""
        assert self.hydra_context is not None
        assert self.config is not None
        assert self.task_function is not None
        return _run_sweep_job(
            self.hydra_context, self.task_function, _compose_sweep_job(self.hydra_context, self.config, idx, overrides)
        )


def _compose_sweep_job(
    hydra_context: HydraContext, config: DictConfig, idx: int, overrides: list[str], job_id: str | None = None
) -> DictConfig:
    """Sweep job ``idx`` composed from the launch's ``config``. Its ``hydra.job.id`` is
    ``idx``, as Hydra's basic launcher sets it, unless ``job_id`` formats it as another
    launcher names it (``{name}`` is ``hydra.job.name``, ``{idx}`` the index)."""
    sweep_config = hydra_context.config_loader.load_sweep_config(config, overrides)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = idx if job_id is None else job_id.format(name=sweep_config.hydra.job.name, idx=idx)
        sweep_config.hydra.job.num = idx
    return sweep_config


def _run_sweep_job(hydra_context: HydraContext, task_function: TaskFunction, sweep_config: DictConfig) -> JobReturn:
    """A composed sweep job, run with :func:`run_job`."""
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


# --- n_jobs > 1: worker processes forked from the launching process ---------------------
#
# joblib's loky workers are fresh interpreters, each of which imports Hydra, scikit-learn
# and lab at its first job (~2.4 s each, on the same cores the jobs need), and is sent the
# launch (see launch_joblib below). A forked worker starts as a copy
# of the launching process: everything imported, plugins found, the sweep's composition
# cache filled, HydraConfig set. A job then costs what it costs in the launching process;
# only its index and overrides go to the worker, and its JobReturn comes back.
#
# What a fork must not share is reset in the worker (_init_worker): the launcher's signal
# handlers, and any SQLAlchemy connection pool that MLflow opened in the launching process
# (tracking.background=false creates the sweep's parent run there), per SQLAlchemy's own
# recipe for forked processes. A worker also dies with the launcher (Linux's
# PR_SET_PDEATHSIG): killed outright (SIGKILL, the OOM killer), the launcher would leave its
# workers waiting forever for jobs, and holding open the background publisher's stdin, so
# that the publisher never saw the launch end and never ended its open runs. lab starts no
# thread in the launching process, and forks every worker from the main thread (whose end
# the death signal follows), so no lock is copied while another thread holds it.
#
# The pool is lab's own (_Worker): each worker has its own pipes, and the launching process
# waits on them and on the workers' exits from its main thread. A worker that dies (OOM
# killer, segfault, a signal) breaks the pool: every job still running is stopped, and
# launch raises BrokenProcessPool naming the worker, its death and its job, which fails the
# sweep, as a dead loky worker does under joblib.

_forked_from: LabLauncher | None = None  # the launcher whose jobs a forked worker runs
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(launcher_pid: int) -> None:
    """SIGTERM (default action: exit) to this process when the thread that forked it, the
    launcher's main thread, ends; at once if the launcher is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _init_worker(launcher_pid: int) -> None:
    # The launching process stops its workers with SIGTERM on Ctrl-C or SIGTERM
    # (lab.tracking), and a Ctrl-C in a terminal also reaches them directly: ignored here,
    # so that a job is never cut by KeyboardInterrupt half-way through its callbacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with(launcher_pid)
    store = sys.modules.get("mlflow.store.tracking.sqlalchemy_store")
    if store is not None:
        for engine in list(store.SqlAlchemyStore._engine_map.values()):
            engine.dispose(close=False)  # drop the parent's pooled connections, leave them open for it


def _run_forked_job(idx: int, overrides: list[str]) -> JobReturn:
    assert _forked_from is not None
    return _sendable(_forked_from.run(idx, overrides))


def _sendable(ret: JobReturn) -> JobReturn:
    """``ret``, whose exception (a failed job's) travels back to the launching process: an
    unpicklable one is replaced by a RuntimeError naming it, so that it cannot break the pool."""
    if ret.status == JobStatus.FAILED:
        try:
            pickle.dumps(ret._return_value)
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises, the pool must not break
            ret.return_value = RuntimeError(f"{type(ret._return_value).__name__}: {ret._return_value} ({exc})")
    return ret


def launch_forked(launcher: LabLauncher, jobs: list[tuple[int, list[str]]], workers: int) -> list[JobReturn]:
    """Run ``jobs`` on ``workers`` processes forked from this one; their returns, in job order."""
    from multiprocessing.connection import wait

    from lab.tracking import raise_missed_interrupt

    raise_missed_interrupt()  # before forking workers for this batch (an Optuna sweep has several)
    global _forked_from
    _forked_from = launcher
    # every worker trains: import scikit-learn once, here, rather than in each worker at its
    # first job (~1.5 s each, on the cores the jobs need, and not shared between them)
    import lab.training  # noqa: F401

    freeze_imports()
    context = mp.get_context("fork")
    pool: list[_Worker] = []
    returns: dict[int, JobReturn] = {}  # by position in jobs
    todo = iter(enumerate(jobs))
    try:
        for _ in range(workers):
            pool.append(_Worker(context))
            pool[-1].give(next(todo, None))
        while len(returns) < len(jobs):
            busy = [w for w in pool if w.job is not None]
            ready = set(wait([c for w in busy for c in (w.returns, w.process.sentinel)]))
            raise_missed_interrupt()
            for worker in busy:
                if worker.returns in ready or worker.process.sentinel in ready:
                    position, ret = worker.receive()
                    returns[position] = ret
                    worker.give(next(todo, None))
        return [returns[position] for position in range(len(jobs))]
    except BaseException:
        # interrupted, or a worker died: stop every job still running before unwinding
        for worker in pool:
            worker.process.terminate()
        raise
    finally:
        for worker in pool:
            worker.stop()
        _forked_from = None


class _Worker:
    """A forked worker and its own two pipes: a job's index and overrides go in, its
    :class:`JobReturn` comes back. The launching process keeps only its own ends, and the
    worker alone holds the writing end of its returns, so a worker that dies, even half-way
    through sending a return, is seen as the end of that pipe: never waited on for good.
    (ProcessPoolExecutor's workers share one result pipe, which the executor also holds
    open: a worker killed while sending a return, as a Ctrl-C may, left the executor's
    manager thread waiting for the rest of it forever, and the launch waiting for that
    thread; a test reproduces it.)"""

    def __init__(self, context: ForkContext) -> None:
        jobs_in, self.jobs = context.Pipe(duplex=False)
        self.returns, returns_out = context.Pipe(duplex=False)
        self.process = context.Process(target=_worker_main, args=(os.getpid(), jobs_in, returns_out), daemon=True)
        self.process.start()
        jobs_in.close()
        returns_out.close()
        self.job: tuple[int, tuple[int, list[str]]] | None = None  # (position, job) it runs

    def give(self, job: tuple[int, tuple[int, list[str]]] | None) -> None:
        self.job = job
        if job is not None:
            with contextlib.suppress(OSError):  # it died idle: receive() says so, naming the job
                self.jobs.send(job[1])

    def receive(self) -> tuple[int, JobReturn]:
        """The job's position and return; raises what the job raised outside Hydra's
        capture, or BrokenProcessPool if the worker died before it returned."""
        assert self.job is not None
        position, (idx, overrides) = self.job
        try:
            if not self.returns.poll():  # died, and whatever it forked still holds the pipe
                raise EOFError
            ret, error = self.returns.recv()
        except (EOFError, OSError):
            from concurrent.futures.process import BrokenProcessPool

            from lab.tracking import note_lost_job

            self.process.join(5)
            how = exit_status(self.process.exitcode)
            note_lost_job(idx, f"its worker process {self.process.pid} died ({how}) while it ran this job")
            job = f"job #{idx} returned: {redact_text(' '.join(filter_overrides(overrides)))}"
            raise BrokenProcessPool(f"worker {self.process.pid} died ({how}) before {job}") from None
        if error is not None:
            raise error
        return position, ret

    def stop(self) -> None:
        """End the worker: told to when it is idle, else it was terminated; waited for."""
        with contextlib.suppress(OSError):
            if self.job is None and self.process.is_alive():
                self.jobs.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.jobs.close()
        self.returns.close()


def _worker_main(launcher_pid: int, jobs: Connection, returns: Connection) -> None:
    """A forked worker's life: run each job it is given, send back its return (or what it
    raised outside Hydra's capture, as a pool's worker does), until told to stop."""
    _init_worker(launcher_pid)
    while True:
        try:
            job = jobs.recv()
        except EOFError:  # the launcher is gone
            return
        if job is None:
            return
        try:
            ret, error = _run_forked_job(*job), None
        except BaseException as exc:  # noqa: BLE001 - raised in the launching process, as a pool raises it
            ret, error = None, exc
        try:
            returns.send((ret, error))
        except Exception as exc:  # noqa: BLE001 - pickling failed: nothing was sent yet
            what = f"{type(error).__name__}: {error}" if error is not None else f"job #{job[0]}'s return"
            returns.send((None, RuntimeError(f"{what} could not be sent back from its worker ({exc})")))


# --- hydra/launcher=joblib and =ray: fresh interpreters, sent the launch once each ---------
#
# Hydra's joblib launcher (hydra-joblib-launcher 1.2) sends every job, besides its overrides,
# the launch's HydraContext, config, task function and Hydra's Singleton state (the
# ConfigStore, with every plugin's schemas), pickled again for each job in the launching
# process. The loky worker unpickles them, re-applies the state, which rediscovers every
# Hydra plugin, and runs Hydra's run_job. py-spy, 200 iris jobs on 2 workers: ~465 ms of
# worker time a job, of which the plugin scan 158 ms and the fit 49 ms, plus ~58 ms a job
# of pickling in the launching process, on the same two cores. Hydra's Ray launcher
# (hydra-ray-launcher 1.2) does the same with each Ray task, and composes the job's config
# in the launching process to send it along.
#
# conf/hydra/launcher/{joblib,ray}.yaml point both at lab's subclasses
# (src/hydra_plugins/lab_launcher), which keep the plugins' settings, job ids (``train_<n>``,
# ``job_id_for_<n>``) and where each job is composed, but pickle the launch once per
# launch() and have a worker unpickle and apply it once (:func:`_shipped_launch`). joblib
# sends the bytes with each job; Ray puts them in its object store once, and a task fetches
# them only when its worker does not hold that launch yet. The worker then runs its jobs as
# a forked worker does: Hydra's state set once and carried from job to job (as in a single
# process), and :func:`run_job`. Under joblib a job is composed in its worker, as the
# plugin composes it (the composition cache travels with the loader, filled when lab's
# sweeper validated the jobs); under Ray in the launching process, as that plugin does, and
# sent with its task.

_Launch = tuple[HydraContext, DictConfig, TaskFunction]
_shipped: tuple[str, _Launch] | None = None  # the launch a worker holds, by its id


def _pack_launch(launcher: Any) -> tuple[str, bytes]:
    """The launch as one pickle, and its id: the pickle's hash. An Optuna study launches each
    batch of trials anew, and a worker re-applies a launch only when it is not the one it holds."""
    import hashlib

    from hydra.core.singleton import Singleton
    from joblib.externals import cloudpickle

    # cloudpickle, as loky and Ray use for tasks: the task function is @hydra.main's inner function
    launch = cloudpickle.dumps((launcher.hydra_context, launcher.config, launcher.task_function, Singleton.get_state()))
    return hashlib.sha256(launch).hexdigest(), launch


def _shipped_launch(launch_id: str, fetch: Callable[[], bytes]) -> _Launch:
    """Launch ``launch_id``, whose pickle ``fetch`` returns, applied (as Hydra's launchers
    apply it for every job) only if this process does not hold it yet."""
    global _shipped
    if _shipped is None or _shipped[0] != launch_id:
        from hydra.core.singleton import Singleton

        hydra_context, config, task_function, state = pickle.loads(fetch())
        setup_globals()
        quiet_replaced_launcher_options()  # a worker never ran lab.train's main
        Singleton.set_state(state)
        _shipped = (launch_id, (hydra_context, config, task_function))
    return _shipped[1]


def launch_joblib(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """hydra-joblib-launcher's ``_core.launch``, dispatching :func:`_run_joblib_job`."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed
    from joblib._parallel_backends import LokyBackend
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    sweep_dir = _start_launch(launcher)
    joblib_cfg = launcher.joblib
    joblib_cfg["backend"] = "loky"
    process_joblib_cfg(joblib_cfg)
    settings = ",".join(f"{k}={v}" for k, v in joblib_cfg.items())
    log.info(f"Joblib.Parallel({settings}) is launching {len(job_overrides)} jobs")
    log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
    jobs = _numbered(job_overrides, initial_job_idx)
    _log_jobs(jobs)
    launch_id, launch = _pack_launch(launcher)
    global _shipped
    # joblib runs the jobs in this process when it has one worker (n_jobs=1): there they
    # use the launch itself, as Hydra's launcher would pass it, not a copy
    _shipped = (launch_id, (launcher.hydra_context, launcher.config, launcher.task_function))
    # Each loky worker dies with the launcher from its start, as a forked worker does, job
    # or no job: killed outright, the launcher would leave them idle for joblib's idle
    # timeout (300 s), and finishing jobs no launcher waits for. (Ignored with n_jobs=1.)
    backend = LokyBackend(initializer=_die_with, initargs=(os.getpid(),))
    try:
        runs = Parallel(**{**joblib_cfg, "backend": backend})(
            delayed(_run_joblib_job)(launch_id, launch, idx, overrides) for idx, overrides in jobs
        )
    except TerminatedWorkerError as exc:
        # loky's message is three sentences of guesses; it knows how the workers ended, but
        # not which job the dead one ran (it has killed the others by now, so lab cannot tell)
        codes = re.search(r"exit codes of the workers are (.+)", str(exc))
        how = f" ({codes.group(1).strip()})" if codes else ""
        raise TerminatedWorkerError(
            f"a joblib worker process died{how} with one of the jobs in flight; joblib does not say which"
        ) from exc
    finally:
        _shipped = None
    assert isinstance(runs, list)
    return runs


def _run_joblib_job(launch_id: str, launch: bytes, idx: int, overrides: list[str]) -> JobReturn:
    """Hydra's joblib ``execute_job``, applying the launch only at its first job here."""
    hydra_context, config, task_function = _shipped_launch(launch_id, lambda: launch)
    sweep_config = _compose_sweep_job(hydra_context, config, idx, overrides, "{name}_{idx}")
    return _sendable(_run_sweep_job(hydra_context, task_function, sweep_config))


def launch_ray(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """hydra-ray-launcher's ``_core.launch``, dispatching :func:`_run_ray_job`."""
    import ray
    from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

    sweep_dir = _start_launch(launcher)
    log.info(f"Ray Launcher is launching {len(job_overrides)} jobs, sweep output dir: {sweep_dir}")
    # as the plugin (conf/hydra/launcher/ray.yaml sets the key, to null: Ray's own default)
    launcher.ray_cfg.init.setdefault("object_store_memory", 78643200)
    # ray.init replaces the launcher's SIGTERM handler (with sys.exit), and its core worker
    # installs a native one that aborts the process: a `kill` left the sweep's parent
    # RUNNING. lab's handlers (Python callables) are put back, so that a signal ends the
    # launch as elsewhere; without them (SIG_DFL), Ray's stay, which shut Ray down at exit.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    start_ray(launcher.ray_cfg.init)
    for signum, handler in handlers.items():
        if callable(handler):
            signal.signal(signum, handler)
    remote: dict[str, Any] = OmegaConf.to_container(launcher.ray_cfg.remote, resolve=True)  # type: ignore[assignment]
    task = ray.remote(**remote)(_run_ray_job) if remote else ray.remote(_run_ray_job)
    launch_id, launch = _pack_launch(launcher)
    # inside a list, Ray passes the reference as it is rather than the object: a task fetches
    # the launch from the object store only when its worker does not hold it
    holder = [ray.put(launch)]
    runs = []
    for job in _numbered(job_overrides, initial_job_idx):
        _log_jobs([job])
        # composed here, as the plugin composes it: a composition in a worker would take
        # hydra.runtime.cwd and hydra.job.env_copy from the worker's node
        sweep_config = _compose_sweep_job(launcher.hydra_context, launcher.config, *job, "job_id_for_{idx}")
        runs.append(task.remote(launch_id, holder, sweep_config))
    try:
        return [ray.get(run) for run in runs]
    except BaseException:
        # interrupted, or a task failed to run: jobs not started never start, and a job in
        # flight gets a KeyboardInterrupt in its worker (its run ends KILLED there), rather
        # than running on until Ray shuts down. Ray 2.60 aborts this process when a cancel
        # races the reply of a task that is just returning ("Tried to complete task that was
        # not pending", ray-project/ray#54798): replies in flight get half a second to land,
        # and only the tasks that have not returned are cancelled.
        pending = runs
        with contextlib.suppress(Exception):
            _, pending = ray.wait(runs, num_returns=len(runs), timeout=0.5, fetch_local=False)
        for run in pending:
            with contextlib.suppress(Exception):
                ray.cancel(run)
        raise


def _run_ray_job(launch_id: str, holder: list[Any], sweep_config: DictConfig) -> JobReturn:
    """hydra-ray-launcher's ``_run_job``, applying the launch only at its first job in this worker."""
    import ray

    hydra_context, _, task_function = _shipped_launch(launch_id, lambda: ray.get(holder[0]))
    return _sendable(_run_sweep_job(hydra_context, task_function, sweep_config))
