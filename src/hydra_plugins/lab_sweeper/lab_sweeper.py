"""Hydra plugin shim for lab's sweeper (``hydra/sweeper=lab``, the default in conf/config.yaml).

Hydra only instantiates plugins from the ``hydra_plugins`` package, so this thin class
lives here and its logic lives in :mod:`lab.sweeping`, imported when a sweep starts.
No ``from __future__ import annotations`` here: Hydra's plugin scan executes this module
outside ``sys.modules``, where dataclasses cannot resolve string annotations.
"""
# ruff: noqa: UP006, UP035

from dataclasses import dataclass
from typing import Any, Dict, List

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class LabSweeperConf:
    """Like Hydra's basic sweeper: the cartesian product of the sweep overrides."""

    _target_: str = "hydra_plugins.lab_sweeper.lab_sweeper.LabSweeper"
    # Jobs per launcher call; null launches them all at once (the launcher bounds parallelism).
    max_batch_size: int | None = None
    # Sweep overrides kept in the config, as for the basic sweeper: {model.C: "0.1,1"}.
    params: Dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="lab", node=LabSweeperConf, provider="lab")


class LabSweeper(BasicSweeper):
    """Validates every job before the first one runs, runs all jobs even when some fail,
    and leaves failure reporting to lab's tracking callback."""

    def sweep(self, arguments: List[str]) -> Any:
        from lab.sweeping import run_sweep

        return run_sweep(self, arguments)
