"""The composition cache (lab.composition) must be invisible: for every kind of override,
each job's config, its .hydra files, its metrics and its MLflow content equal what plain
Hydra composition gives (and, end to end, what Hydra's own launcher gives)."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from lab.composition import CachingConfigLoader
from lab.config import job_section, register_configs
from lab.train import CONFIG_DIR
from tests.conftest import Cli, store_runs

register_configs()

# (sweep overrides, whether later jobs should come from the cache)
SWEEPS = [
    (["seed=1,2,3"], True),
    (["seed=1,2", "model.C=0.1,1"], True),
    (["seed=range(1,4)"], True),
    (["model=logreg,svm", "model.C=0.5,2"], True),  # group sweep: one entry per group choice
    (["data=iris,wine", "seed=1,2"], True),
    (["split=kfold", "split.n_splits=3,4"], True),
    (["model=random_forest", "model.max_depth=null,3"], True),
    (["model.C=${seed}", "seed=2,3"], True),  # interpolation as a value
    (["tracking.experiment=a,'b c'"], True),  # quoted string
    (["tracking.uri=null,sqlite:///x.db"], True),
    (["model.C=choice(0.1,1)", "model.solver=lbfgs,saga"], True),
    (["++seed=5,6"], False),  # force-add: structure, composed every time
    (["seed=1,2", "++seed=5"], False),  # a key both swept and force-added: in Hydra's order
    (["~seed", "model.C=0.1,1"], True),  # the deletion is structure, model.C a leaf
    (["hydra.job.chdir=false", "seed=1,2"], True),  # hydra.* keys are structure
]


def _jobs(loader: ConfigLoaderImpl, overrides: list[str]) -> list[list[str]]:
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize(("overrides", "cached"), SWEEPS, ids=[" ".join(o) for o, _ in SWEEPS])
def test_cached_composition_equals_hydra(overrides: list[str], cached: bool) -> None:
    plain = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = plain.load_configuration("config", overrides=overrides, run_mode=RunMode.MULTIRUN)
    loader = CachingConfigLoader(ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR)))
    jobs = _jobs(plain, overrides)
    assert len(jobs) >= 2
    for job in jobs:
        fast = loader.load_sweep_config(master, list(job))
        slow = plain.load_sweep_config(master, list(job))
        # unresolved: the whole config; resolved: the job's part (hydra's ${now:} differs per call)
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(slow), job
        assert OmegaConf.to_yaml(job_section(fast), resolve=True) == OmegaConf.to_yaml(job_section(slow), resolve=True)
        assert fast.hydra.overrides.task == slow.hydra.overrides.task
        assert fast.hydra.job.override_dirname == slow.hydra.job.override_dirname
    assert (loader.hits > 0) == cached
    # every distinct structure is composed by Hydra exactly once
    assert loader.hits + loader.misses == len(jobs) or not cached


def test_same_key_twice_is_composed_by_hydra_in_order() -> None:
    plain = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = plain.load_configuration("config", overrides=["seed=1,2"], run_mode=RunMode.MULTIRUN)
    loader = CachingConfigLoader(plain)
    for job in (["seed=1", "model.C=2"], ["seed=2", "model.C=3", "model.C=4"], ["seed=3", "model.C=5", "model.C=6"]):
        fast = loader.load_sweep_config(master, job)
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(plain.load_sweep_config(master, job))
    assert loader.hits == 0


def test_cached_config_is_not_shared_between_jobs() -> None:
    plain = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = plain.load_configuration("config", overrides=["seed=1,2"], run_mode=RunMode.MULTIRUN)
    loader = CachingConfigLoader(plain)
    first = loader.load_sweep_config(master, ["seed=1"])
    first.hydra.job.num = 0  # what a launcher does
    first.model.C = 99.0
    second = loader.load_sweep_config(master, ["seed=2"])
    assert second.model.C == 1.0
    assert OmegaConf.select(second, "hydra.job.num") is None or second.hydra.job.num != 0


def test_bad_leaf_value_fails_like_hydra() -> None:
    plain = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = plain.load_configuration("config", overrides=["seed=1,x"], run_mode=RunMode.MULTIRUN)
    loader = CachingConfigLoader(plain)
    loader.load_sweep_config(master, ["seed=1"])
    with pytest.raises(ConfigCompositionException) as fast:
        loader.load_sweep_config(master, ["seed=x"])
    with pytest.raises(ConfigCompositionException) as slow:
        plain.load_sweep_config(master, ["seed=x"])
    assert type(fast.value) is type(slow.value)
    assert str(fast.value) == str(slow.value)


def _comparable_tags(tags: dict[str, str]) -> dict[str, str]:
    varying = (
        *("lab.output_dir", "lab.pid", "lab.pid_start", "lab.job_uid", "lab.sweep_uid"),
        *("mlflow.parentRunId", "lab.overrides"),
    )
    return {k: v for k, v in tags.items() if k not in varying}


# joblib's workers compose from the cache they are sent; forked workers from the one they inherit
LAUNCHERS = {"lab": ["hydra/launcher=lab"], "forked": ["hydra.launcher.n_jobs=2"], "joblib": ["hydra/launcher=joblib"]}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_fast_path_and_plain_hydra_give_the_same_outputs_and_mlflow_content(cli: Cli, launcher: str) -> None:
    sweep = ["seed=1,2", "model=logreg,svm", "model.C=0.5,2"]
    assert cli.run("--multirun", *sweep, "hydra.sweep.dir=outputs/fast", *LAUNCHERS[launcher]).code == 0
    plain_hydra = ["hydra.sweeper.compose_cache=false", "hydra/launcher=basic"]  # Hydra's composition and run_job
    assert cli.run("--multirun", *sweep, "hydra.sweep.dir=outputs/plain", *plain_hydra).code == 0
    fast, plain = cli.cwd / "outputs" / "fast", cli.cwd / "outputs" / "plain"
    for n in range(8):
        for name in ("config.yaml", "overrides.yaml"):
            assert (fast / str(n) / ".hydra" / name).read_text() == (plain / str(n) / ".hydra" / name).read_text()
        h_fast = yaml.safe_load((fast / str(n) / ".hydra" / "hydra.yaml").read_text())["hydra"]
        h_plain = yaml.safe_load((plain / str(n) / ".hydra" / "hydra.yaml").read_text())["hydra"]
        for h in (h_fast, h_plain):
            h["sweep"].pop("dir")
            h["runtime"].pop("output_dir")
            h["sweeper"].pop("compose_cache")
            h.pop("launcher")
            if launcher == "joblib":
                h["job"].pop("id")  # joblib's launcher names jobs train_<n>, the basic one <n>
            h["runtime"]["choices"].pop("hydra/launcher")
            h["overrides"]["hydra"] = [o for o in h["overrides"]["hydra"] if "sweep" not in o and "launcher" not in o]
        assert h_fast == h_plain
        m_fast = json.loads((fast / str(n) / "metrics.json").read_text())["metrics"]
        m_plain = json.loads((plain / str(n) / "metrics.json").read_text())["metrics"]
        assert m_fast == m_plain
    jobs = [r for r in store_runs(cli.uri) if r.data.tags.get("lab.kind") == "job"]
    by_sweep: dict[str, dict[str, tuple[object, ...]]] = {"fast": {}, "plain": {}}
    for r in jobs:
        which = "fast" if "/outputs/fast/" in r.data.tags["lab.output_dir"] else "plain"
        metrics = {k: v for k, v in r.data.metrics.items() if not k.startswith("timing.")}
        by_sweep[which][r.data.tags["lab.job_num"]] = (r.data.params, metrics, _comparable_tags(r.data.tags))
    assert len(by_sweep["fast"]) == len(by_sweep["plain"]) == 8
    assert by_sweep["fast"] == by_sweep["plain"]
