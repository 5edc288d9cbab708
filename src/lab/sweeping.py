"""The sweep loop behind ``hydra/sweeper=lab``.

Hydra's basic sweeper creates the sweep dir, then composes and launches batch by batch,
and re-raises the first failed job at the end of a batch, which skips
``on_multirun_end``. Here every job is composed and validated first, so a sweep with one
bad value is rejected before anything exists; then all jobs run, and failures are
reported by :class:`lab.tracking.TrackingCallback` once the sweep is over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.core.utils import JobReturn
from omegaconf import DictConfig, OmegaConf, open_dict

from lab.config import ConfigError, TrainConfig
from lab.validation import (
    DEFAULT_SUBDIR,
    check_job,
    describe,
    fail,
    hydra_config,
    job_hydra_config,
    shown_options,
    sweep_subdir,
)

__all__ = ["LAUNCH_WIDE", "check_launch_wide", "run_sweep"]

# Tracking settings the launch reads once, for all its jobs: one sweep is one parent run,
# in one store and experiment, published one way. A job may turn tracking off, not on.
LAUNCH_WIDE = ("uri", "experiment", "background", "timeout_s")


def run_sweep(sweeper: BasicSweeper, arguments: list[str]) -> list[list[JobReturn]]:
    assert sweeper.config is not None
    assert sweeper.launcher is not None
    assert sweeper.hydra_context is not None
    loader = sweeper.hydra_context.config_loader
    _check_launch_settings(sweeper.config)
    params = sweeper._parse_config()
    params.extend(arguments)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params)
    try:
        batches = sweeper.split_arguments(overrides, sweeper.max_batch_size)
    except ValueError as exc:  # range(1,3,0)
        raise fail(describe(_sweep_problem(overrides, loader) or exc) or f"error: {exc}") from None

    n_jobs = sum(len(b) for b in batches)
    if n_jobs == 0:
        no_jobs = ConfigError("--multirun", " ".join(o.input_line or "" for o in overrides), "at least one job")
        raise fail(describe(_sweep_problem(overrides, loader) or no_jobs) or "")
    job_dirs: dict[str, int] = {}  # a job's dir -> the first job that writes into it
    with hydra_config(sweeper.config):
        for idx, job in enumerate(job for batch in batches for job in batch):
            try:
                cfg = loader.load_sweep_config(sweeper.config, list(job))
                with open_dict(cfg):  # numbered as the launcher numbers it: ${hydra:job.num} resolves
                    cfg.hydra.job.id = cfg.hydra.job.num = idx
                with job_hydra_config(cfg):
                    check_launch_wide(sweeper.config, check_job(cfg))
                    _check_own_dir(cfg, idx, job_dirs)
            except Exception as exc:  # a usage error gets one line naming its job; others go on up
                message = describe(exc)
                if message is None:
                    raise
                raise fail(f"{message} (in sweep job: {' '.join(job)})") from None  # fail redacts

    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = ConfigError("hydra.sweep.dir", str(sweep_dir), f"a dir that can be created here ({exc.strerror})")
        raise fail(describe(error) or str(error)) from None
    for callback in sweeper.hydra_context.callbacks.callbacks:
        hook: Any = getattr(callback, "on_sweep_validated", None)
        if hook is not None:
            hook(config=sweeper.config, n_jobs=n_jobs)
    OmegaConf.save(sweeper.config, sweep_dir / "multirun.yaml")
    returns: list[list[JobReturn]] = []
    done = 0
    for batch in batches:
        results = sweeper.launcher.launch(batch, initial_job_idx=done)
        done += len(batch)
        returns.append(list(results))
    return returns


def _sweep_problem(overrides: list[Override], loader: ConfigLoader) -> ConfigError | None:
    """The first sweep override that gives no value (``seed=range(1,1)``,
    ``model=glob(nomatch*)``) or cannot be enumerated (``seed=range(1,3,0)``), else None."""
    for override in overrides:
        if not override.is_sweep_override():
            continue
        key, value = override.get_key_element(), override.get_value_string()
        try:
            values = list(override.sweep_string_iterator())
        except ValueError as exc:
            return ConfigError(key, value, f"a sweep Hydra can enumerate ({exc})")
        except Exception:  # noqa: BLE001 - interval() and other sweeps Hydra does not enumerate here
            continue
        if not values:
            if isinstance(override.value(), Glob):  # Hydra's glob() picks among a group's options
                options = shown_options(loader.get_group_options(override.key_or_group))
                allowed = (
                    f"a glob() matching at least one option of {key}: {options}"
                    if options
                    else f"a sweep of values; glob() picks options of a config group (model=glob(*)), not of {key}"
                )
                return ConfigError(key, value, allowed)
            return ConfigError(key, value, "a sweep of at least one value")
    return None


def _check_own_dir(cfg: DictConfig, idx: int, job_dirs: dict[str, int]) -> None:
    """Job ``idx`` writes into a dir no earlier job of the sweep writes into: jobs sharing
    one (``hydra.sweep.subdir=x``) would overwrite each other's outputs, and the sweep's
    summary would count one job. Raises :class:`ConfigError`."""
    subdir = sweep_subdir(cfg)
    if subdir is None:  # the default: the job's number
        return
    first = job_dirs.setdefault(os.path.normpath(subdir), idx)
    if first != idx:
        raise ConfigError(
            "hydra.sweep.subdir",
            subdir,
            f"a dir of each job's own, but job #{first} writes into it too (lab's default: {DEFAULT_SUBDIR})",
        )


def check_launch_wide(launch: DictConfig, job: TrainConfig) -> None:
    """Refuse a sweep job whose tracking differs from its launch's where only the launch's
    counts (:data:`LAUNCH_WIDE`, and tracking turned on in an untracked launch): its params
    would name a store or experiment its run is not in, or its record would never be
    published. Raises :class:`ConfigError`."""
    for key in LAUNCH_WIDE:
        value, launch_value = getattr(job.tracking, key), OmegaConf.select(launch, f"tracking.{key}")
        if value != launch_value:
            raise ConfigError(
                f"tracking.{key}",
                value,
                "one value for the whole sweep (one parent run, in one store): set it once, not per job",
            )
    if job.tracking.enabled and not OmegaConf.select(launch, "tracking.enabled"):
        raise ConfigError(
            "tracking.enabled",
            True,
            "false in every job when the launch is untracked; to track only some jobs, track the launch "
            "and turn tracking off in the others",
        )


def _check_launch_settings(config: DictConfig) -> None:
    """Sweeper and launcher settings that Hydra or joblib would only assert on, or fail the
    sweep's jobs on, once its parent run exists."""
    batch = OmegaConf.select(config, "hydra.sweeper.max_batch_size")
    if batch is not None and batch < 1:
        error = ConfigError("hydra.sweeper.max_batch_size", batch, "an integer >= 1, or null for a single batch")
        raise fail(describe(error) or str(error))
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if target.endswith("JoblibLauncher"):
        problem = _joblib_problem(config)
        if problem is not None:
            raise fail(describe(problem) or str(problem))


def _joblib_problem(config: DictConfig) -> ConfigError | None:
    """The first of hydra-joblib-launcher's settings that joblib would refuse, by joblib's
    own rules (``joblib.Parallel``, and the expression ``pre_dispatch`` is evaluated as),
    given as the launcher passes them: else it refuses them at launch, the parent run made."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel
    from joblib._utils import eval_expr

    launcher = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    assert isinstance(launcher, dict)
    settings = {str(key): value for key, value in launcher.items() if key != "_target_"}
    process_joblib_cfg(settings)  # as the launcher does: "8" is 8
    if settings.get("n_jobs") == 0:
        return ConfigError("hydra.launcher.n_jobs", 0, "an integer >= 1, or -1 for one per CPU (-2: all but one, …)")
    for key, value in settings.items():
        if key in ("backend", "n_jobs"):  # the launcher always uses loky
            continue
        try:
            if key == "pre_dispatch" and isinstance(value, str) and value != "all":
                eval_expr(value.replace("n_jobs", "1"))
            else:
                Parallel(backend="loky", **{key: value})
        except Exception as exc:  # noqa: BLE001 - joblib's refusal, whatever its type
            return ConfigError(f"hydra.launcher.{key}", value, f"a value joblib takes ({exc})")
    return None
