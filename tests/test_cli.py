"""The CLI as a user runs it: a subprocess, a temporary sqlite store, then a look at the
outputs dir and at the store through MlflowClient."""

from __future__ import annotations

import csv
import io
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.entities import Run

from tests.conftest import ROOT, Cli, just_exe, publishers_in, store_runs


def runs(cli: Cli, experiment: str = "lab") -> list[Run]:
    return store_runs(cli.uri, experiment)


def by_kind(all_runs: list[Run], kind: str) -> list[Run]:
    return sorted((r for r in all_runs if r.data.tags.get("lab.kind") == kind), key=lambda r: r.info.run_name)


@pytest.mark.fresh_store
def test_single_run_writes_outputs_and_one_complete_mlflow_run(cli: Cli) -> None:
    res = cli.train("model.C=0.5", "seed=3")
    assert res.code == 0, res.stderr
    run_dir = cli.cwd / "outputs" / "run"
    for name in (
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
        "metrics.json",
        "model.pkl",
        "train.log",
        "tracking.json",
        "tracking.synced.json",
    ):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert "training logreg on iris" in (run_dir / "train.log").read_text()

    [run] = runs(cli)
    assert run.info.status == "FINISHED"
    assert run.info.run_id in res.stdout
    p = run.data.params
    assert p["seed"] == "3"
    assert p["model.C"] == "0.5"
    assert p["split.test_size"] == "0.2"
    assert p["data.name"] == "iris"
    assert not any(k.startswith("hydra") for k in p)
    assert run.data.metrics["accuracy"] == metrics["accuracy"]
    assert run.data.metrics["f1_macro"] == metrics["f1_macro"]
    tags = run.data.tags
    assert tags["lab.overrides"] == "model.C=0.5 seed=3"
    assert tags["lab.output_dir"].endswith("outputs/run")
    assert len(tags["lab.config_sha256"]) == 64
    assert len(tags["lab.uv_lock_sha256"]) == 64
    assert tags["lab.python_version"].count(".") == 2
    assert tags["lab.sklearn_version"]
    assert "mlflow.parentRunId" not in tags

    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "train.log", ".hydra"} <= paths
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
    assert hydra_files == {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}
    mlflow.set_tracking_uri(cli.uri)
    model = mlflow.sklearn.load_model(f"runs:/{run.info.run_id}/model")
    from lab.training import load_dataset

    X, _ = load_dataset("iris")
    local = pickle.loads((run_dir / "model.pkl").read_bytes())
    assert (model.predict(X) == local.predict(X)).all()


def test_same_config_twice_gives_same_fingerprint_and_metrics(cli: Cli) -> None:
    assert cli.run("seed=4", "hydra.run.dir=outputs/a").code == 0
    assert cli.run("seed=4", "hydra.run.dir=outputs/b").code == 0
    a, b = runs(cli)
    assert a.data.metrics["accuracy"] == b.data.metrics["accuracy"]
    assert a.data.tags["lab.config_sha256"] == b.data.tags["lab.config_sha256"]


def test_sweep_makes_one_parent_with_a_child_per_job_and_a_summary(cli: Cli) -> None:
    res = cli.sweep("seed=1,2", "model.C=0.1,1")
    assert res.code == 0, res.stderr
    all_runs = runs(cli)
    [parent] = by_kind(all_runs, "sweep")
    children = by_kind(all_runs, "job")
    assert len(children) == 4
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.tags["lab.job_num"] for c in children) == ["0", "1", "2", "3"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert {(c.data.params["seed"], c.data.params["model.C"]) for c in children} == {
        ("1", "0.1"),
        ("1", "1.0"),
        ("2", "0.1"),
        ("2", "1.0"),
    }
    sweep_dir = cli.cwd / "outputs" / "sweep"
    for n in range(4):
        assert (sweep_dir / str(n) / "metrics.json").exists()
        assert (sweep_dir / str(n) / ".hydra" / "config.yaml").exists()
    summary = (sweep_dir / "summary.md").read_text()
    assert "Mean ± std across seeds" in summary
    assert "`model.C=0.1`" in summary
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    assert {"summary.csv", "summary.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    # progress: one line per job, then where the summary is
    assert res.stdout.count("→ accuracy=") == 4
    assert "[4/4]" in res.stdout
    assert "summary.md" in res.stdout
    # group stats match the children
    import statistics

    accs = [c.data.metrics["accuracy"] for c in children if c.data.params["model.C"] == "1.0"]
    line = next(ln for ln in summary.splitlines() if ln.startswith("| `model.C=1`"))
    assert f"{statistics.fmean(accs):.4f} ± {statistics.pstdev(accs):.4f}" in line


def test_failed_job_is_failed_run_with_traceback_and_others_still_run(cli: Cli) -> None:
    res = cli.sweep("split=kfold", "split.n_splits=5,60")
    assert res.code == 1
    assert "1 of 2 jobs failed" in res.stderr
    assert "#1 split=kfold split.n_splits=60" in res.stderr
    all_runs = runs(cli)
    [parent] = by_kind(all_runs, "sweep")
    ok, bad = by_kind(all_runs, "job")
    assert parent.info.status == "FAILED"
    assert ok.info.status == "FINISHED"
    assert bad.info.status == "FAILED"
    assert bad.data.tags["lab.error"].startswith("ValueError: split.n_splits=60")
    assert parent.data.tags["lab.error"].startswith(
        "1 of 2 jobs did not finish; #1 split=kfold split.n_splits=60: ValueError: split.n_splits=60"
    )
    assert (parent.data.metrics["jobs_failed"], parent.data.metrics["jobs_killed"]) == (1, 0)
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    path = client.download_artifacts(bad.info.run_id, "traceback.txt", str(cli.cwd))
    assert "Traceback" in Path(path).read_text()
    job_dir = cli.cwd / "outputs" / "sweep" / "1"
    assert "ValueError" in (job_dir / "train.log").read_text()
    assert "FAILED" in (cli.cwd / "outputs" / "sweep" / "summary.csv").read_text()


def test_single_run_failure_is_recorded_and_reported(cli: Cli) -> None:
    res = cli.train("split=kfold", "split.n_splits=60")
    assert res.code == 1
    assert "ValueError: split.n_splits=60" in res.stderr
    assert "Traceback" not in res.stderr
    [run] = runs(cli)
    assert run.info.status == "FAILED"
    assert (cli.cwd / "outputs" / "run" / "traceback.txt").exists()


PARALLEL = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], "forked": ["hydra.launcher.n_jobs=2"]}
SVM_SWEEP = ("seed=1,2,3", "model=svm", "tracking=none")


def sweep_metrics(cli: Cli, *overrides: str) -> dict[int, dict[str, float]]:
    res = cli.sweep(*SVM_SWEEP, *overrides)
    assert res.code == 0, res.stderr
    assert not (cli.cwd / "mlflow.db").exists()
    sweep_dir = cli.cwd / "outputs" / "sweep"
    return {n: json.loads((sweep_dir / str(n) / "metrics.json").read_text())["metrics"] for n in range(3)}


@pytest.fixture(scope="module")
def hydra_basic_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, float]]:
    """The sweep's metrics with Hydra's own basic launcher, the reference."""
    return sweep_metrics(Cli(tmp_path_factory.mktemp("hydra-basic")), "hydra/launcher=basic")


@pytest.mark.fresh_store
@pytest.mark.parametrize("launcher", ["lab", *PARALLEL])
def test_sequential_and_parallel_sweeps_give_identical_metrics(
    cli: Cli, launcher: str, hydra_basic_metrics: dict[int, dict[str, float]]
) -> None:
    assert len(hydra_basic_metrics) == 3
    assert sweep_metrics(cli, *PARALLEL.get(launcher, [])) == hydra_basic_metrics


@pytest.mark.parametrize("launcher", list(PARALLEL))
@pytest.mark.parametrize("background", ["true", "false"])
def test_parallel_sweep_tracks_every_job(cli: Cli, launcher: str, background: str) -> None:
    """Jobs on worker processes, published by the background publisher or by each job itself
    (which forked workers do with a copy of the launcher's MLflow store, once it made the
    parent run)."""
    res = cli.sweep("seed=1,2,3,4", f"tracking.background={background}", *PARALLEL[launcher])
    assert res.code == 0, res.stderr
    all_runs = runs(cli)
    [parent] = by_kind(all_runs, "sweep")
    children = by_kind(all_runs, "job")
    assert len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert len({c.data.tags["lab.pid"] for c in children} - {parent.data.tags["lab.pid"]}) >= 1


@pytest.mark.parametrize("background", ["true", "false"])
def test_sweeps_into_the_same_dir_each_get_their_own_parent(cli: Cli, background: str) -> None:
    """The second sweep's jobs overwrite the first's job dirs and find its sweep record in
    the sweep dir: they must still hang under a parent run of their own."""
    for seeds in ("1,2", "3,4"):
        res = cli.sweep(f"seed={seeds}", f"tracking.background={background}", "tracking.log_model=false")
        assert res.code == 0, res.stderr
    all_runs = runs(cli)
    parents = by_kind(all_runs, "sweep")
    assert len(parents) == 2
    assert len(by_kind(all_runs, "job")) == 4
    for parent in parents:
        children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert [c.data.tags["lab.kind"] for c in children] == ["job", "job"]
        assert {c.data.tags["lab.sweep_uid"] for c in children} == {parent.data.tags["lab.sweep_uid"]}
        assert parent.info.status == "FINISHED"
        assert parent.info.start_time <= min(c.info.start_time for c in children)


@pytest.mark.parametrize("extra", [[], ["hydra.output_subdir=null"]])
def test_a_sweep_over_tracking_tracks_only_the_tracked_jobs(cli: Cli, extra: list[str]) -> None:
    res = cli.sweep("tracking.enabled=true,false", "tracking.log_model=false", *extra)
    assert res.code == 0, res.stderr
    all_runs = runs(cli)
    [job] = by_kind(all_runs, "job")
    assert job.data.params["tracking.enabled"] == "True"
    [parent] = by_kind(all_runs, "sweep")
    assert job.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_a_tracked_sweeps_summary_counts_its_untracked_jobs(cli: Cli) -> None:
    """The sweep's summary and its failure report are about every job it ran, tracked or not."""
    res = cli.sweep("tracking=none,mlflow", "split=kfold", "split.n_splits=5,60", "tracking.log_model=false")
    assert res.code == 1
    assert "2 of 4 jobs failed" in res.stderr
    assert "#1 tracking=none split=kfold split.n_splits=60" in res.stderr
    assert "#3 tracking=mlflow split=kfold split.n_splits=60" in res.stderr
    rows = list(csv.DictReader(io.StringIO((cli.cwd / "outputs" / "sweep" / "summary.csv").read_text())))
    assert [(r["job"], r["status"]) for r in rows] == [
        ("0", "FINISHED"),
        ("1", "FAILED"),
        ("2", "FINISHED"),
        ("3", "FAILED"),
    ]
    assert len(by_kind(runs(cli), "job")) == 2


def test_environment_overrides_experiment_name(cli: Cli) -> None:
    assert cli.train(MLFLOW_EXPERIMENT_NAME="mine").code == 0
    assert len(runs(cli, "mine")) == 1


@pytest.mark.fresh_store
def test_tracking_none_writes_outputs_but_no_store(cli: Cli) -> None:
    res = cli.train("tracking=none")
    assert res.code == 0, res.stderr
    assert (cli.cwd / "outputs" / "run" / "metrics.json").exists()
    assert not (cli.cwd / "mlflow.db").exists()
    assert not (cli.cwd / "mlruns").exists()


@pytest.mark.fresh_store
@pytest.mark.parametrize("args", [["tracking=none"], ["model.C=-1"], ["--multirun", "seed=1,2", "tracking=none"]])
def test_the_early_publisher_leaves_nothing_when_not_needed(cli: Cli, args: list[str]) -> None:
    """lab.train starts the publisher before knowing the config; after an untracked or a
    rejected launch no publisher process is left and no store was created."""
    cli.run(*args)
    deadline = time.monotonic() + 2
    while publishers_in(cli.cwd) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert publishers_in(cli.cwd) == []
    assert not (cli.cwd / "mlflow.db").exists()


@pytest.mark.parametrize(
    "args", [["tracking=none"], ["tracking.background=false"], ["--multirun", "seed=1,2", "tracking=none"]]
)
def test_no_publisher_is_started_when_the_command_line_needs_none(cli: Cli, args: list[str]) -> None:
    """An untracked launch, or one whose jobs publish themselves, never starts the background
    publisher: it would import MLflow on the other core (~200 MB) only to be stopped."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.train", *args], cwd=cli.cwd, env=cli.env(), stdout=subprocess.DEVNULL
    )
    seen: set[int] = set()
    while proc.poll() is None:
        seen.update(publishers_in(cli.cwd))
        time.sleep(0.01)
    assert proc.returncode == 0
    assert seen == set()


def test_default_run_dirs_never_collide(cli: Cli) -> None:
    a = cli.run("tracking=none")
    b = cli.run("tracking=none")
    assert a.code == b.code == 0
    dirs = list((cli.cwd / "outputs" / "runs").glob("*/*"))
    assert len(dirs) == 2
    assert all(len(d.name.split("-")) == 4 for d in dirs)  # H-M-S-microseconds


@pytest.mark.parametrize("background", ["true", "false"])
def test_jobs_that_chdir_still_write_to_the_launchs_relative_sqlite_store(cli: Cli, background: str) -> None:
    """``hydra.job.chdir=true`` moves a job into its outputs dir; a relative store URI still
    names the store where the command was started, for the job's own publishing too."""
    res = cli.sweep(
        "seed=1,2",
        "hydra.job.chdir=true",
        f"tracking.background={background}",
        "tracking.log_model=false",
        MLFLOW_TRACKING_URI="sqlite:///mlflow.db",
    )
    assert res.code == 0, res.stderr
    assert not list((cli.cwd / "outputs").rglob("mlflow.db"))
    all_runs = runs(cli)
    [parent] = by_kind(all_runs, "sweep")
    children = by_kind(all_runs, "job")
    assert len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)


@pytest.mark.parametrize(
    "args",
    [
        ["seed=${threads}", "tracking.experiment=my exp", "tracking=none"],
        ["--multirun", "seed=choice(1,2)", "model.C='0.5'", "tracking=none"],
    ],
)
def test_just_passes_each_override_through_as_typed(cli: Cli, args: list[str]) -> None:
    """Recipe arguments reach lab.train as the words the user typed: no shell expansion
    (``${threads}``), no syntax errors (``choice(1,2)``), no word splitting or unquoting."""
    proc = subprocess.run(
        [just_exe(), "--justfile", str(ROOT / "justfile"), "--working-directory", str(cli.cwd), "train", *args],
        cwd=cli.cwd,
        env=cli.env(UV_PROJECT=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    saved = sorted((cli.cwd / "outputs").glob("*/*/*/**/overrides.yaml"))
    overrides = [o for o in args if o != "--multirun"]
    assert saved and all(yaml.safe_load(f.read_text())[1:] == overrides[1:] for f in saved), saved
    first = [yaml.safe_load(f.read_text())[0] for f in saved]
    assert first == (["seed=1", "seed=2"] if "--multirun" in args else ["seed=${threads}"])


def test_sweep_jobs_may_interpolate_their_own_job_number(cli: Cli) -> None:
    """``${hydra:job.num}`` resolves when each job is validated up front, as when it runs."""
    res = cli.sweep("model.C=0.1,1", "seed=${hydra:job.num}", "tracking=none")
    assert res.code == 0, res.stderr
    sweep = cli.cwd / "outputs" / "sweep"
    assert [yaml.safe_load((sweep / j / ".hydra" / "config.yaml").read_text())["seed"] for j in "01"] == [
        "${hydra:job.num}"
    ] * 2
    assert ["training logreg on iris, holdout split, seed 0" in (sweep / "0" / "train.log").read_text()] == [True]
    assert "seed 1" in (sweep / "1" / "train.log").read_text()


@pytest.mark.parametrize("arg", ['+hydra.sweeper.params.seed="1,2"', '+hydra.sweeper.params={seed:"1,2"}'])
def test_the_sweepers_params_may_be_given_on_the_command_line(cli: Cli, arg: str) -> None:
    """lab's sweeper takes ``hydra.sweeper.params`` as Hydra's basic one does, and its empty
    mapping (not null, which OmegaConf cannot merge into) takes new keys with ``+``."""
    res = cli.sweep(arg, "tracking=none")
    assert res.code == 0, res.stderr
    sweep = cli.cwd / "outputs" / "sweep"
    assert [yaml.safe_load((sweep / j / ".hydra" / "config.yaml").read_text())["seed"] for j in "01"] == [1, 2]
    assert not (sweep / "2").exists()


def test_the_overrides_tag_keeps_an_interpolation_as_typed(cli: Cli) -> None:
    """``lab.overrides`` is what was typed: the params hold the resolved value."""
    assert cli.train("model.C=${oc.env:LAB_TEST_C}", LAB_TEST_C="0.5").code == 0
    [run] = runs(cli)
    assert run.data.tags["lab.overrides"] == "'model.C=${oc.env:LAB_TEST_C}'"
    assert run.data.params["model.C"] == "0.5"
