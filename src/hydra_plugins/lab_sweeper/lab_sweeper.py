"""Hydra plugin shim for lab's sweeper (``hydra/sweeper=lab``, the default in conf/config.yaml).

Hydra only instantiates plugins from the ``hydra_plugins`` package, so this thin class
lives here and its logic lives in :mod:`lab.sweeping` and :mod:`lab.composition`,
imported when a sweep starts. No ``from __future__ import annotations`` here: Hydra's
plugin scan executes this module outside ``sys.modules``, where dataclasses cannot
resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class LabSweeperConf:
    """Like Hydra's basic sweeper: the cartesian product of the sweep overrides."""

    _target_: str = "hydra_plugins.lab_sweeper.lab_sweeper.LabSweeper"
    # Jobs per launcher call; null launches them all at once (the launcher bounds parallelism).
    max_batch_size: int | None = None
    # Sweep overrides kept in the config, as for the basic sweeper: {model.C: "0.1,1"}.
    params: dict[str, str] = field(default_factory=dict)
    # Compose each config structure once and derive leaf-only variants from it
    # (lab.composition); false composes every job from scratch, as Hydra's basic sweeper does.
    compose_cache: bool = True


ConfigStore.instance().store(group="hydra/sweeper", name="lab", node=LabSweeperConf, provider="lab")


class LabSweeper(BasicSweeper):
    """Validates every job before the first one runs, runs all jobs even when some fail,
    and leaves failure reporting to lab's tracking callback."""

    def __init__(
        self, max_batch_size: int | None, params: dict[str, str] | None = None, compose_cache: bool = True
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.compose_cache = compose_cache

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if self.compose_cache:
            from lab.composition import CachingConfigLoader

            hydra_context = HydraContext(
                config_loader=CachingConfigLoader(hydra_context.config_loader), callbacks=hydra_context.callbacks
            )
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from lab.sweeping import run_sweep

        return run_sweep(self, arguments)
