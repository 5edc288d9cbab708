"""Hyperparameter search with ``search=<option>`` (conf/search/): real Optuna studies run
by hydra-optuna-sweeper through the real CLI, tracked into a temporary sqlite store."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import Run
from omegaconf import OmegaConf

from lab.config import LogRegConfig, RandomForestConfig, job_section, to_typed
from lab.train import CONFIG_DIR
from tests.conftest import Cli, store_runs


def split_runs(cli: Cli) -> tuple[Run, list[Run]]:
    """The one parent run and the child runs in job order."""
    all_runs = store_runs(cli.uri)
    [parent] = [r for r in all_runs if r.data.tags.get("lab.kind") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("lab.kind") == "job"]
    return parent, sorted(children, key=lambda r: int(r.data.tags["lab.job_num"]))


def study_results(cli: Cli) -> dict[str, Any]:
    loaded = yaml.safe_load((cli.cwd / "outputs" / "sweep" / "optimization_results.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.mark.parametrize(
    ("option", "sweeper", "model"),
    [
        ("grid", "LabSweeper", LogRegConfig),
        ("optuna", "OptunaSweeper", LogRegConfig),
        ("random_forest", "OptunaSweeper", RandomForestConfig),
    ],
)
def test_each_search_option_picks_a_sweeper_and_leaves_the_job_config_valid(
    option: str, sweeper: str, model: type
) -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"search={option}"], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    assert cfg.hydra.sweeper._target_.endswith(sweeper)
    assert cfg.hydra.runtime.choices.search == option
    # `_global_` packages: no `search` key reaches the strictly validated job config
    assert "search" not in job_section(cfg)
    assert type(to_typed(job_section(cfg)).model) is model
    if sweeper == "OptunaSweeper":
        assert cfg.hydra.sweeper.direction == "maximize"
        assert cfg.hydra.sweeper.sampler.seed is not None


def test_optuna_study_tracks_each_trial_under_one_parent_with_the_best_trial(cli: Cli) -> None:
    res = cli.sweep("search=optuna", "hydra.sweeper.n_trials=6")
    assert res.code == 0, res.stderr
    parent, children = split_runs(cli)
    assert len(children) == 6
    assert [c.data.tags["lab.job_num"] for c in children] == ["0", "1", "2", "3", "4", "5"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert parent.info.status == "FINISHED"

    # TPE sampled C from the log-interval of conf/search/optuna.yaml, a new value each trial
    cs = [float(c.data.params["model.C"]) for c in children]
    assert all(0.001 <= c <= 100 for c in cs), cs
    assert len(set(cs)) == 6

    # the best trial: the highest accuracy, the earliest one on a tie (as Optuna picks)
    accs = [c.data.metrics["accuracy"] for c in children]
    best = children[accs.index(max(accs))]
    tags = parent.data.tags
    assert tags["lab.study.direction"] == "maximize"
    assert tags["lab.study.objective"] == "accuracy"
    assert tags["lab.study.sampler"] == "TPESampler"
    assert tags["lab.best.job_num"] == best.data.tags["lab.job_num"]
    assert json.loads(tags["lab.best.params"]) == {"model.C": best.data.params["model.C"]}
    assert parent.data.metrics["best.value"] == max(accs)

    # and the sweeper's own result agrees
    results = study_results(cli)
    assert results["best_value"] == max(accs)
    assert results["best_params"] == {"model.C": float(best.data.params["model.C"])}
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # progress lines know the trial count; the last line names the best trial
    assert "[1/6]" in res.stdout
    assert "[6/6]" in res.stdout
    assert f"lab: best trial: job {tags['lab.best.job_num']}: model.C={best.data.params['model.C']}" in res.stdout


def test_failed_trial_is_a_failed_child_and_the_study_goes_on(cli: Cli) -> None:
    # A genuine runtime failure: iris's smallest class has 50 members, so 60 folds fail in
    # training (validation cannot know the class sizes); the fixed seed samples both.
    res = cli.sweep("search=optuna", "hydra.sweeper.n_trials=6", "split=kfold", "split.n_splits=choice(3,60)")
    assert res.code == 1
    parent, children = split_runs(cli)
    assert len(children) == 6, res.stderr
    failed = [c for c in children if c.info.status == "FAILED"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert failed
    assert finished
    assert len(failed) + len(finished) == 6
    assert f"lab: {len(failed)} of 6 jobs failed" in res.stderr

    # the study went on after the first failure
    first_failure = min(int(c.data.tags["lab.job_num"]) for c in failed)
    assert any(int(c.data.tags["lab.job_num"]) > first_failure for c in finished)

    # each failure is tracked like any failed job: FAILED child, lab.error, traceback artifact
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    for run in failed:
        assert run.data.params["split.n_splits"] == "60"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["lab.error"].startswith("ValueError: split.n_splits=60")
        assert "traceback.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert f"FAILED model.C={run.data.params['model.C']}" in res.stdout
    assert all(run.data.params["split.n_splits"] == "3" for run in finished)

    # the parent ends FAILED, but still names the best finished trial; a failed trial's
    # stand-in value (-inf) never becomes the study's best
    assert parent.info.status == "FAILED"
    accs = [c.data.metrics["accuracy"] for c in finished]
    best = finished[accs.index(max(accs))]
    assert parent.data.metrics["best.value"] == max(accs)
    assert parent.data.tags["lab.best.job_num"] == best.data.tags["lab.job_num"]
    assert json.loads(parent.data.tags["lab.best.params"]) == {
        "model.C": best.data.params["model.C"],
        "split.n_splits": "3",
    }
    results = study_results(cli)
    assert isinstance(results["best_value"], float)
    assert math.isfinite(results["best_value"])
    assert results["best_value"] == max(accs)


@pytest.mark.fresh_store
def test_random_forest_search_samples_its_own_space(cli: Cli) -> None:
    res = cli.sweep("search=random_forest", "hydra.sweeper.n_trials=3", "tracking=none")
    assert res.code == 0, res.stderr
    assert not (cli.cwd / "mlflow.db").exists()
    sweep_dir = cli.cwd / "outputs" / "sweep"
    for n in range(3):
        model = OmegaConf.load(sweep_dir / str(n) / ".hydra" / "config.yaml").model
        assert model.name == "random_forest"
        assert 10 <= model.n_estimators <= 200
        assert 1 <= model.max_depth <= 8
        assert model.criterion in ("gini", "entropy")
    results = study_results(cli)
    assert set(results["best_params"]) == {"model.n_estimators", "model.max_depth", "model.criterion"}
    assert "[3/3]" in res.stdout
    assert "lab: best trial: job " in res.stdout


def test_a_trial_value_from_its_own_hydra_config_is_not_refused_up_front(cli: Cli) -> None:
    """The launch's config is checked before Optuna's first trial, but only for bad values:
    ``${hydra:job.num}`` resolves in each trial, not in the launch."""
    res = cli.run("--multirun", "search=optuna", "seed=${hydra:job.num}", "hydra.sweeper.n_trials=2", "tracking=none")
    assert res.code == 0, res.stderr
    assert "sweep finished: 2 jobs (2 finished)" in res.stdout


def test_a_searched_key_needs_no_valid_value_in_the_launch(cli: Cli, tmp_path: Path) -> None:
    """Each trial sets ``model.C``: a value the launch cannot resolve is no reason to refuse
    the search up front, nor a warning (unlike the same value fixed on the command line)."""
    model_dir = tmp_path / "extra" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "logreg_env.yaml").write_text(
        "defaults:\n  - /schema/model/logreg@_here_\n  - _self_\n\nC: ${oc.env:LAB_TEST_UNSET}\n"
    )
    extra = f"--config-dir={tmp_path / 'extra'}"
    for searched in (
        ["search=optuna", "hydra.sweeper.n_trials=2"],  # by the search's params
        ["search=optuna", "hydra.sweeper.n_trials=2", "model.C=tag(log,interval(0.01,1))"],  # on the command line
        ["hydra/sweeper=basic", "model.C=0.1,1"],  # swept by Hydra's own sweeper
    ):
        res = cli.run("--multirun", extra, "model=logreg_env", "tracking=none", *searched)
        assert res.code == 0, (searched, res.stderr)
        assert "sweep finished: 2 jobs (2 finished)" in res.stdout
        assert "Warning" not in res.stderr


def test_a_study_whose_every_trial_failed_names_no_best(cli: Cli) -> None:
    """The plugin would name a failed trial's stand-in value (-inf) as the best."""
    res = cli.sweep("search=optuna", "hydra.sweeper.n_trials=2", "split=kfold", "split.n_splits=60")
    assert res.code == 1
    assert "lab: best trial: none, no trial finished" in res.stdout
    results = yaml.safe_load((cli.cwd / "outputs" / "sweep" / "optimization_results.yaml").read_text())
    assert results == {"name": "optuna", "best_params": None, "best_value": None}
    parent, children = split_runs(cli)
    assert [c.info.status for c in children] == ["FAILED", "FAILED"]
    assert "best.value" not in parent.data.metrics and "lab.best.params" not in parent.data.tags
