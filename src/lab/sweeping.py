"""The sweep loop behind ``hydra/sweeper=lab``.

Hydra's basic sweeper creates the sweep dir, then composes and launches batch by batch,
and re-raises the first failed job at the end of a batch, which skips
``on_multirun_end``. Here every job is composed and validated first, so a sweep with one
bad value is rejected before anything exists; then all jobs run, and failures are
reported by :class:`lab.tracking.TrackingCallback` once the sweep is over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from omegaconf import OmegaConf

from lab.config import ConfigError
from lab.validation import check_job, describe, fail, hydra_config

__all__ = ["run_sweep"]


def run_sweep(sweeper: BasicSweeper, arguments: list[str]) -> list[list[JobReturn]]:
    assert sweeper.config is not None
    assert sweeper.launcher is not None
    assert sweeper.hydra_context is not None
    loader = sweeper.hydra_context.config_loader
    params = sweeper._parse_config()
    params.extend(arguments)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params)
    batches = sweeper.split_arguments(overrides, sweeper.max_batch_size)

    with hydra_config(sweeper.config):
        for batch in batches:
            for job in batch:
                try:
                    check_job(loader.load_sweep_config(sweeper.config, list(job)))
                except ConfigError as exc:
                    raise fail(f"{describe(exc)} (in sweep job: {' '.join(job)})") from None
    n_jobs = sum(len(b) for b in batches)
    for callback in sweeper.hydra_context.callbacks.callbacks:
        hook: Any = getattr(callback, "on_sweep_validated", None)
        if hook is not None:
            hook(config=sweeper.config, n_jobs=n_jobs)

    sweep_dir = Path(sweeper.config.hydra.sweep.dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(sweeper.config, sweep_dir / "multirun.yaml")
    returns: list[list[JobReturn]] = []
    done = 0
    for batch in batches:
        results = sweeper.launcher.launch(batch, initial_job_idx=done)
        done += len(batch)
        returns.append(list(results))
    return returns
