"""Hydra plugin shim for lab's launcher (``hydra/launcher=lab``, the default in conf/config.yaml).

Hydra's basic launcher with a leaner ``run_job``, in process or on forked workers; the logic
lives in :mod:`lab.launching`.
Hydra only instantiates plugins defined in the ``hydra_plugins`` package, hence the
subclass. No ``from __future__ import annotations`` here: Hydra's plugin scan executes
this module outside ``sys.modules``, where dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from lab import launching


@dataclass
class LabLauncherConf:
    """Runs the jobs one after another in the launching process, like Hydra's basic launcher,
    or on ``n_jobs`` worker processes forked from it."""

    _target_: str = "hydra_plugins.lab_launcher.lab_launcher.LabLauncher"
    # Worker processes: 1 runs the jobs in the launching process; -1 is one per CPU.
    n_jobs: int = 1


ConfigStore.instance().store(group="hydra/launcher", name="lab", node=LabLauncherConf, provider="lab")


class LabLauncher(launching.LabLauncher):
    """See :class:`lab.launching.LabLauncher`."""
