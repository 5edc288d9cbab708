"""``python -m lab.reproduce`` as a user runs it: real training runs and sweeps through the
CLI, a real sqlite store, then a reproduction by run id or by outputs dir, checked in the
store through MlflowClient."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Run

from lab.reproduce import changes_report
from tests.conftest import Cli, Result
from tests.test_cli import by_kind, runs

SUCCESS = "reproduced: {} metrics identical (timings excluded)"


def reproduce(cli: Cli, target: str) -> Result:
    return cli.run(target, module="lab.reproduce")


def quality(run: Run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if not k.startswith("timing.")}


def only_run(cli: Cli, kind: str) -> Run:
    [run] = by_kind(runs(cli), kind)
    return run


def assert_complete_reproduction(cli: Cli, original: Run) -> Run:
    """The new run reproduces ``original``: tagged, same params, config and quality metrics."""
    reproduction = only_run(cli, "reproduction")
    tags = reproduction.data.tags
    assert reproduction.info.status == "FINISHED"
    assert tags["lab.reproduces"] == original.info.run_id
    assert tags["lab.config_sha256"] == original.data.tags["lab.config_sha256"]
    assert tags["lab.sklearn_version"] == version("scikit-learn")
    assert "mlflow.parentRunId" not in tags
    assert reproduction.info.experiment_id == original.info.experiment_id
    assert reproduction.data.params == original.data.params
    assert quality(reproduction) == quality(original)
    assert {"timing.fit_s", "timing.total_s"} <= reproduction.data.metrics.keys()
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    downloads = cli.cwd / "downloads"
    config_texts = [
        Path(
            client.download_artifacts(run.info.run_id, ".hydra/config.yaml", str(downloads / run.info.run_id))
        ).read_text()
        for run in (original, reproduction)
    ]
    assert config_texts[0] == config_texts[1]
    assert "metrics.json" in {a.path for a in client.list_artifacts(reproduction.info.run_id)}
    job_dir = Path(tags["lab.output_dir"])
    assert job_dir.parent.parent == cli.cwd / "outputs" / "reproductions"
    for name in (".hydra/config.yaml", "metrics.json", "model.pkl", "tracking.json", "tracking.synced.json"):
        assert (job_dir / name).exists(), name
    assert json.loads((job_dir / "metrics.json").read_text())["metrics"] == quality(original)
    return reproduction


def test_reproduce_by_run_id_makes_a_new_identical_run(cli: Cli) -> None:
    assert cli.train("model.C=0.5", "seed=3").code == 0
    original = only_run(cli, "job")

    res = reproduce(cli, original.info.run_id)

    assert res.code == 0, res.stderr
    assert SUCCESS.format(2) in res.stdout
    reproduction = assert_complete_reproduction(cli, original)
    assert f"new run {reproduction.info.run_id} tagged lab.reproduces={original.info.run_id}" in res.stdout
    # the new run carries a model that predicts like the original's
    from lab.training import load_dataset

    mlflow.set_tracking_uri(cli.uri)
    X, _ = load_dataset("iris")
    before = mlflow.sklearn.load_model(f"runs:/{original.info.run_id}/model").predict(X)
    after = mlflow.sklearn.load_model(f"runs:/{reproduction.info.run_id}/model").predict(X)
    assert (before == after).all()


def test_reproduce_by_outputs_dir_finds_the_run_in_its_receipt(cli: Cli) -> None:
    assert cli.train("data=wine", "model=svm").code == 0
    original = only_run(cli, "job")

    res = reproduce(cli, "outputs/run")

    assert res.code == 0, res.stderr
    assert f"reproducing run {original.info.run_id} (outputs/run)" in res.stdout
    assert SUCCESS.format(2) in res.stdout
    assert_complete_reproduction(cli, original)


def test_hydra_files_of_another_output_subdir_are_logged_under_hydra_and_reproduce(cli: Cli) -> None:
    assert cli.train("model.C=0.5", "hydra.output_subdir=meta/sub").code == 0
    original = only_run(cli, "job")
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    logged = {a.path for a in client.list_artifacts(original.info.run_id, ".hydra")}
    assert logged == {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}
    top = {a.path for a in client.list_artifacts(original.info.run_id)}
    assert "meta" not in top
    assert {"metrics.json", "train.log"} <= top  # the job's other files stay where they were

    for target in (original.info.run_id, "outputs/run"):
        res = reproduce(cli, target)
        assert res.code == 0, res.stderr
        assert SUCCESS.format(2) in res.stdout


@pytest.mark.parametrize("by", ["run id", "outputs dir"])
def test_a_config_that_used_hydra_interpolations_reproduces(cli: Cli, by: str) -> None:
    """The logged config keeps ``${hydra:…}`` unresolved; it resolves from the job's saved
    hydra.yaml, to what the job saw."""
    assert cli.train("tracking.experiment=${hydra:runtime.choices.model}", "model=svm").code == 0
    [original] = by_kind(runs(cli, "svm"), "job")
    assert original.data.params["tracking.experiment"] == "svm"

    res = reproduce(cli, original.info.run_id if by == "run id" else "outputs/run")

    assert res.code == 0, res.stderr
    assert SUCCESS.format(2) in res.stdout
    [reproduction] = by_kind(runs(cli, "svm"), "reproduction")
    assert reproduction.data.params == original.data.params
    assert reproduction.data.tags["lab.config_sha256"] == original.data.tags["lab.config_sha256"]
    assert quality(reproduction) == quality(original)

    # and the reproduction reproduces in turn: it keeps the hydra.yaml its config needs
    job_dir = reproduction.data.tags["lab.output_dir"]
    again = reproduce(cli, reproduction.info.run_id if by == "run id" else job_dir)

    assert again.code == 0, again.stderr
    assert len(by_kind(runs(cli, "svm"), "reproduction")) == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "tracking.experiment=${hydra:runtime.choices.model}",
            "uses ${hydra:…}, but the job's saved .hydra/hydra.yaml is missing",
        ),
        ("tracking.experiment=at-${now:%H-%M-%S-%f}", "uses ${now:…}, which cannot be reproduced"),
        (  # OmegaConf allows blanks around a resolver's name
            "tracking.experiment=${ hydra :runtime.choices.model}",
            "uses ${hydra:…}, but the job's saved .hydra/hydra.yaml is missing",
        ),
        ("tracking.experiment=at-${ now:%H-%M-%S-%f}", "uses ${now:…}, which cannot be reproduced"),
    ],
    ids=["hydra", "now", "hydra, blanks", "now, blanks"],
)
def test_a_config_whose_values_cannot_be_resolved_again_gives_exit_2(cli: Cli, override: str, expected: str) -> None:
    assert cli.train("tracking=none", override).code == 0
    (cli.cwd / "outputs" / "run" / ".hydra" / "hydra.yaml").unlink()

    res = reproduce(cli, "outputs/run")

    assert res.code == 2
    assert res.stderr.strip().startswith(f"error: the logged config of outputs/run {expected}"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (cli.cwd / "outputs" / "reproductions").exists()


def test_a_config_that_resolves_differently_here_is_refused(cli: Cli) -> None:
    """``${oc.env:…}`` reads the environment of the reproduction: another value would train
    another job, and identical metrics would not make it a reproduction."""
    assert cli.train("model.max_iter=${oc.env:LAB_TEST_MAX_ITER}", LAB_TEST_MAX_ITER="200").code == 0
    original = only_run(cli, "job")

    res = cli.run(original.info.run_id, module="lab.reproduce", LAB_TEST_MAX_ITER="300")

    assert res.code == 2, res.stdout
    assert res.stderr.strip() == (
        f"error: the logged config of run {original.info.run_id} resolves differently here: model.max_iter=300, "
        "but 200 in the original; an interpolation (${oc.env:…}?) reads this environment: set it as the "
        "original's to reproduce it"
    )
    assert not (cli.cwd / "outputs" / "reproductions").exists()
    res = cli.run(original.info.run_id, module="lab.reproduce", LAB_TEST_MAX_ITER="200")
    assert res.code == 0, res.stderr
    assert SUCCESS.format(2) in res.stdout


def test_a_config_edited_after_the_run_is_refused_as_edited(cli: Cli) -> None:
    """A plain value that is not the original's was changed in the saved file: no
    environment can make it resolve as before, so the reason names the edit, not ${oc.env:…}."""
    assert cli.train("model.max_iter=200", "tracking.log_model=false").code == 0
    config_file = cli.cwd / "outputs" / "run" / ".hydra" / "config.yaml"
    text = config_file.read_text()
    assert "max_iter: 200" in text and "  C: 1.0" in text
    config_file.write_text(text.replace("max_iter: 200", "max_iter: 300").replace("  C: 1.0", "  C: 0.5"))

    res = reproduce(cli, "outputs/run")

    assert res.code == 2, res.stdout
    run_id = only_run(cli, "job").info.run_id
    assert res.stderr.strip() == (
        f"error: the logged config of run {run_id} (outputs/run) says model.C=0.5, but the original ran with 1.0 "
        "(and 1 more: model.max_iter): the config was edited after the run; restore it to reproduce the original"
    )
    assert not (cli.cwd / "outputs" / "reproductions").exists()


def test_reproduce_a_child_of_a_sweep(cli: Cli) -> None:
    assert cli.sweep("split=kfold", "seed=1,2").code == 0
    child = next(r for r in by_kind(runs(cli), "job") if r.data.tags["lab.job_num"] == "1")

    res = reproduce(cli, child.info.run_id)

    assert res.code == 0, res.stderr
    assert SUCCESS.format(4) in res.stdout  # accuracy, f1_macro and their std across folds
    assert_complete_reproduction(cli, child)


def test_reproduce_after_the_outputs_dir_was_deleted(cli: Cli) -> None:
    assert cli.train("model=random_forest", "model.n_estimators=10").code == 0
    original = only_run(cli, "job")
    shutil.rmtree(cli.cwd / "outputs")

    res = reproduce(cli, original.info.run_id)

    assert res.code == 0, res.stderr
    assert SUCCESS.format(2) in res.stdout
    assert_complete_reproduction(cli, original)


def test_a_changed_metric_and_environment_are_reported_with_exit_1(cli: Cli) -> None:
    assert cli.train().code == 0
    original = only_run(cli, "job")
    run_id = original.info.run_id
    accuracy = original.data.metrics["accuracy"]
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    # a later value of the metric, logged through the real client, becomes the run's accuracy
    client.log_metric(run_id, "accuracy", 0.5, step=1)

    res = reproduce(cli, run_id)

    assert res.code == 1, res.stderr
    assert "NOT reproduced: 1 of 2 metrics differ (timings excluded):" in res.stdout
    assert f"  accuracy: original 0.5, now {accuracy!r} (now - original = {accuracy - 0.5!r})" in res.stdout
    assert "f1_macro:" not in res.stdout
    assert "changed since the original: nothing" in res.stdout

    # the original claims another scikit-learn
    client.set_tag(run_id, "lab.sklearn_version", "0.0.1")

    res = reproduce(cli, run_id)

    assert res.code == 1, res.stderr
    assert "  accuracy: original 0.5," in res.stdout
    assert f"changed since the original:\n  lab.sklearn_version: 0.0.1 -> {version('scikit-learn')}\n" in res.stdout
    # each attempt is still a complete run that says what it reproduces
    reproductions = by_kind(runs(cli), "reproduction")
    assert len(reproductions) == 2
    assert all(r.data.tags["lab.reproduces"] == run_id for r in reproductions)
    assert all(r.data.metrics["accuracy"] == accuracy for r in reproductions)


@pytest.mark.fresh_store
@pytest.mark.parametrize("subdir", [".hydra", ".", "meta/sub"])  # ".": Hydra's files are in the job dir
def test_an_untracked_job_is_compared_with_its_metrics_file(cli: Cli, subdir: str) -> None:
    assert cli.train("tracking=none", "split=kfold", f"hydra.output_subdir={subdir}").code == 0

    res = reproduce(cli, "outputs/run")

    assert res.code == 0, res.stderr
    assert "no original run: it was not tracked; comparing with its metrics.json" in res.stdout
    assert "no MLflow run: tracking is disabled in the config" in res.stdout
    assert SUCCESS.format(4) in res.stdout
    assert not (cli.cwd / "mlflow.db").exists()
    [job_dir] = (cli.cwd / "outputs" / "reproductions").glob("*/*")
    original = json.loads((cli.cwd / "outputs" / "run" / "metrics.json").read_text())["metrics"]
    assert json.loads((job_dir / "metrics.json").read_text())["metrics"] == original


@pytest.mark.fresh_store
def test_bad_arguments_give_one_line_and_exit_2(cli: Cli) -> None:
    missing = reproduce(cli, "0" * 32)  # no store at all: none is created
    assert missing.code == 2
    assert (
        missing.stderr.strip()
        == f"error: no MLflow store at {cli.uri}; set MLFLOW_TRACKING_URI to the original's store"
    )
    assert not (cli.cwd / "mlflow.db").exists()

    assert cli.train().code == 0
    unknown = reproduce(cli, "0" * 32)
    assert unknown.code == 2
    assert unknown.stderr.strip() == f"error: no run '{'0' * 32}' in {cli.uri}"

    not_a_job = reproduce(cli, "outputs")
    assert not_a_job.code == 2
    assert not_a_job.stderr.strip().startswith("error: outputs has no .hydra/config.yaml")

    for res in (missing, unknown, not_a_job):
        assert "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert [r.data.tags["lab.kind"] for r in runs(cli)] == ["job"]
    assert not (cli.cwd / "outputs" / "reproductions").exists()


def test_a_job_that_saved_no_config_is_refused_saying_why(cli: Cli) -> None:
    """``hydra.output_subdir=null``: Hydra wrote no config.yaml, and MLflow has none either."""
    assert cli.train("hydra.output_subdir=null", "tracking.log_model=false").code == 0
    by_dir = reproduce(cli, "outputs/run")
    assert (by_dir.code, by_dir.stderr) == (
        2,
        "error: outputs/run ran with hydra.output_subdir=null: Hydra saved no config.yaml for it, "
        "and lab.reproduce runs a job again from that file\n",
    )
    [run] = runs(cli)
    by_id = reproduce(cli, run.info.run_id)
    assert (by_id.code, by_id.stderr) == (
        2,
        f"error: run {run.info.run_id} has no .hydra/config.yaml artifact; "
        "a job run with hydra.output_subdir=null saves none\n",
    )
    assert len(runs(cli)) == 1


def test_a_config_that_no_longer_validates_gives_exit_2(cli: Cli) -> None:
    assert cli.train("tracking=none").code == 0
    config_file = cli.cwd / "outputs" / "run" / ".hydra" / "config.yaml"
    # as if the run had been made when LogRegConfig still had a `penalty` field
    config_file.write_text(config_file.read_text().replace("solver: lbfgs", "solver: lbfgs\n  penalty: l2"))

    res = reproduce(cli, "outputs/run")

    assert res.code == 2
    assert res.stderr.strip() == (
        "error: the logged config of outputs/run no longer validates: "
        "model.penalty: unknown key; allowed: C, max_iter, name, solver"
    )
    assert not (cli.cwd / "outputs" / "reproductions").exists()


def test_nothing_changed_is_not_claimed_between_two_dirty_trees() -> None:
    """lab records the commit and lab.git_dirty, not the uncommitted changes: between two
    dirty trees it cannot say that nothing changed."""
    line = "  lab.sklearn_version: 0.0.1 -> 1.9.1"
    assert changes_report([line], dirty=True) == "changed since the original:\n" + line
    assert changes_report([], dirty=False) == "changed since the original: nothing"
    both_dirty = changes_report([], dirty=True)
    assert both_dirty.startswith("changed since the original: nothing that lab records, but ")
    assert "uncommitted changes (lab.git_dirty=true)" in both_dirty
