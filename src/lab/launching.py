"""Running sweep jobs in the launching process: Hydra's basic launcher, with fewer copies.

Hydra 1.3.8's ``run_job`` copies the whole job config (with its large ``hydra`` node,
~150 OmegaConf nodes here) five times a job: ``HydraConfig.set_config`` twice (a masked
copy each), a deep copy for the task's config and another of ``HydraConfig``'s. That was
the largest cost of a sweep job after the fit itself (py-spy, 200 iris jobs: about a third
of the launcher's time). :func:`run_job` here is Hydra's function with three changes and
nothing else:

- ``HydraConfig`` is set once; the job's ``runtime.output_dir`` is then written into both
  the config and ``HydraConfig``'s copy, which is exactly what the second call produced.
  That copy (``OmegaConf.masked_copy(config, "hydra")``, 5.3 ms) is made by pickling the
  ``hydra`` node (2.3 ms): :func:`set_hydra_config`.
- The task's config is a deep copy of everything but ``hydra`` (the node is kept out of
  the copy through the ``memo`` argument, then deleted as Hydra deletes it).
- The job's ``hydra_cfg`` (its ``JobReturn.hydra_cfg`` and ``.hydra/hydra.yaml``) is
  ``HydraConfig``'s copy itself: it is read-only, and Hydra drops it from the singleton
  when the job ends.
- The ``.hydra/*.yaml`` files are emitted by libyaml (PyYAML's C emitter) with OmegaConf's
  own representers: the same bytes, at a fifth of the cost (``hydra.yaml`` took ~6 ms).

Everything else (callbacks, logging, ``.hydra/`` files, ``chdir``, ``env_set``, the job's
return) is as Hydra does it; a test compares both launchers' results field by field.
``hydra/launcher=basic`` selects Hydra's own.
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

__all__ = ["LabLauncher", "freeze_imports", "run_job"]

log = logging.getLogger(__name__)


@functools.cache
def freeze_imports() -> None:
    """Once per process that runs jobs (the launcher, or a joblib/Ray/submitit worker at its
    first job): what was imported lives as long as the process, so keep it out of the
    garbage collector's full passes. They walk every tracked object (~230k with Hydra and
    scikit-learn loaded) and Hydra's per-job config copies trigger them often; and at exit
    they took ~0.3 s."""
    gc.freeze()


class _CDumper(yaml.CDumper):
    """OmegaConf's YAML dumper (``OmegaConf.to_yaml``) on libyaml's emitter."""


_CDumper.add_representer(str, OmegaConfDumper.str_representer)  # type: ignore[arg-type]


def to_yaml(cfg: Any) -> str:
    """``OmegaConf.to_yaml(cfg)``, the same text, emitted by libyaml.

    The two emitters differ only in what they escape: libyaml escapes characters beyond
    U+FFFF and NEL (``\\U0001F642``, ``\\N``) where PyYAML writes them as they are. Any
    backslash in libyaml's text therefore sends the config to ``OmegaConf.to_yaml``.
    """
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    text = str(yaml.dump(container, default_flow_style=False, allow_unicode=True, sort_keys=False, Dumper=_CDumper))
    return OmegaConf.to_yaml(cfg) if "\\" in text else text


def _save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """Hydra's ``_save_config``, with :func:`to_yaml`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir / filename), "w", encoding="utf-8") as file:
        file.write(to_yaml(cfg))


def masked_hydra_copy(config: DictConfig) -> DictConfig:
    """``OmegaConf.masked_copy(config, "hydra")``: a new root holding a copy of the ``hydra``
    node, made by pickling the node (its parent detached meanwhile, so only it is copied)
    instead of OmegaConf's node-by-node deep copy."""
    node = config._get_node("hydra")
    assert isinstance(node, DictConfig)
    node._set_parent(None)
    try:
        data = pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        node._set_parent(config)
    root = DictConfig(content={})
    root._set_flag("no_deepcopy_set_nodes", True)  # the node is a fresh copy already
    root["hydra"] = pickle.loads(data)
    root._set_flag("no_deepcopy_set_nodes", None)
    return root


def set_hydra_config(config: DictConfig) -> None:
    """``HydraConfig.instance().set_config(config)`` with :func:`masked_hydra_copy`."""
    OmegaConf.set_readonly(config.hydra, True)
    hydra_node_type = OmegaConf.get_type(config, "hydra")
    assert hydra_node_type is not None and issubclass(hydra_node_type, HydraConf)
    masked = masked_hydra_copy(config)
    masked.hydra._set_parent(config)
    HydraConfig.instance().cfg = masked  # type: ignore[assignment]  # as Hydra stores it


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
    """Hydra's ``hydra.core.utils.run_job`` (1.3.8) with two fewer config copies; see the module doc."""
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
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg
        if _chdir:
            os.chdir(old_cwd)


class LabLauncher(BasicLauncher):
    """``hydra/launcher=lab``, the default: Hydra's basic launcher running :func:`run_job`."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None
        assert self.config is not None
        assert self.task_function is not None

        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = self.config.hydra.sweep.dir
        Path(str(sweep_dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        runs: list[JobReturn] = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            lst = " ".join(filter_overrides(overrides))
            log.info(f"\t#{idx} : {lst}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            ret = run_job(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            runs.append(ret)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs
