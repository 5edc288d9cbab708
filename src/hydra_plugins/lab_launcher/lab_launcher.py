"""Hydra plugin shims for lab's launchers: ``hydra/launcher=lab`` (the default in
conf/config.yaml), Hydra's basic launcher with a leaner ``run_job``, in process or on forked
workers; and the classes conf/hydra/launcher/{joblib,ray}.yaml select, which send each
worker the launch once. The logic lives in :mod:`lab.launching`.
Hydra only instantiates plugins defined in the ``hydra_plugins`` package, hence the
subclass. No ``from __future__ import annotations`` here: Hydra's plugin scan executes
this module outside ``sys.modules``, where dataclasses cannot resolve string annotations.
"""

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

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


class LabJoblibLauncher(JoblibLauncher):  # type: ignore[misc]  # the plugin ships no types
    """``hydra/launcher=joblib`` (conf/hydra/launcher/joblib.yaml): Hydra's joblib launcher,
    sending each loky worker the launch once; see :func:`lab.launching.launch_joblib`."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launching.launch_joblib(self, job_overrides, initial_job_idx)


# Hydra imports this module at every start (to find plugins), with or without the `ray` extra.
if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher

    class LabRayLauncher(RayLauncher):
        """``hydra/launcher=ray`` (conf/hydra/launcher/ray.yaml): Hydra's Ray launcher, whose
        workers fetch and apply the launch once; see :func:`lab.launching.launch_ray`."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            return launching.launch_ray(self, job_overrides, initial_job_idx)

else:

    class LabRayLauncher(Launcher):  # type: ignore[no-redef]
        """``hydra/launcher=ray`` without the `ray` extra: refused, naming the fix. (Concrete,
        or Hydra's plugin scan would skip it and report an unknown class.)"""

        def __init__(self, **_: Any) -> None:
            from lab.validation import fail

            raise fail("error: hydra/launcher=ray: needs the `ray` extra (uv sync --locked --extra ray)")

        def setup(self, **_: Any) -> None:
            raise NotImplementedError

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            raise NotImplementedError
