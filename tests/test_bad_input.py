"""Bad input is rejected before any work: exit 2, one short line naming the key and what
is allowed, no traceback, no outputs dir, no MLflow run."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from lab import records
from lab.outputs import launch_kind
from tests.conftest import Cli, store_runs

BROKEN_YAML = "defaults:\n  - /schema/model/logreg@_here_\nC: [1, 2\n"

CASES = [
    # (arguments, text the message must contain)
    (["model=foo"], "model=foo: unknown option; choose one of: logreg, random_forest, svm"),
    (["data=mnist"], "data=mnist: unknown option; choose one of: breast_cancer, digits, iris, wine"),
    (["split=loo"], "split=loo: unknown option; choose one of: holdout, kfold"),
    (["tracking=wandb"], "tracking=wandb: unknown option"),
    (["hydra/launcher=nope"], "hydra/launcher=nope: unknown option"),
    # an option holding "/" is one option of its group (Hydra names the group; a URL is redacted)
    (["data=nope/x"], "data=nope/x: unknown option; choose one of: breast_cancer, digits, iris, wine"),
    (["data=http://user:s3cret@h"], "data=http://***@h: unknown option; choose one of: breast_cancer, digits"),
    (["model.Cc=1"], "model.Cc: unknown key; allowed: C, max_iter, name, solver"),
    (["+model.Cc=1"], "model.Cc=1: unknown key; allowed: C, max_iter, name, solver"),
    (["+foo=1"], "foo=1: unknown key; allowed: data, model, seed, split, threads, tracking"),
    (["++foo=1"], "foo=1: unknown key"),
    (["split.n_splits=3"], "split.n_splits: unknown key; allowed: name, test_size"),
    (["model.C=abc"], "model.C: Value 'abc' of type 'str' could not be converted to Float"),
    (["seed=1.5"], "seed: Value '1.5' of type 'float' could not be converted to Integer"),
    (["seed="], "seed: Value '' of type 'str' could not be converted to Integer"),
    (["model.max_iter=1e3"], "model.max_iter: Value '1000.0' of type 'float' could not be converted to Integer"),
    (["tracking.log_model=maybe"], "tracking.log_model: Value 'maybe' is not a valid bool"),
    (["model.C=[1,2]"], "model.C: Value '[1, 2]' of type 'list' could not be converted to Float"),
    (["model.C=0"], "model.C=0.0: a number >= 1e-300 and <= 1e+300"),
    (["model.C=-1"], "model.C=-1.0: a number >= 1e-300 and <= 1e+300"),
    (["model.C=5e-324"], "model.C=5e-324: a number >= 1e-300"),  # 1/C would overflow
    (["model=svm", "model.C=1e400"], "model.C=inf: a number >= 1e-300 and <= 1e+300"),  # YAML reads it as inf
    (["model=random_forest", "model.n_estimators=99999999999999999999"], "an integer >= 1 and <= 100000"),
    (["model=random_forest", "model.max_depth=99999999999999999999"], "an integer >= 1 and <= 100000"),
    (["model.max_iter=10000000000"], "model.max_iter=10000000000: an integer >= 1 and <= 1000000000"),
    (["model.max_iter=0"], "model.max_iter=0: an integer >= 1"),
    (["split.test_size=0"], "split.test_size=0.0: a number > 0 and < 1"),
    (["split.test_size=1.5"], "split.test_size=1.5: a number > 0 and < 1"),
    (["seed=-1"], "seed=-1: an integer >= 0"),
    (["threads=0"], "threads=0: an integer >= 1 and <= 1024"),
    (["model.solver=adam"], "model.solver='adam': one of lbfgs, liblinear"),
    (["model=random_forest", "model.max_depth=0"], "model.max_depth=0: an integer >= 1"),
    (["split=kfold", "split.n_splits=1"], "split.n_splits=1: an integer >= 2"),
    (["tracking.timeout_s=0"], "tracking.timeout_s=0.0: a number > 0"),
    (["tracking.timeout_s=inf"], "tracking.timeout_s=inf: a number > 0 and <= 86400"),
    (["~seed"], "seed: required; it cannot be deleted (~seed)"),
    (["~model.C"], "model.C: required; it cannot be deleted (~model.C); set it instead (model.C=…)"),
    (["model.C=${nosuch}"], "model.C: Interpolation key 'nosuch' not found"),
    # raised inside OmegaConf while Hydra applies the override: Hydra's refusal, not a job's failure
    (
        ["--multirun", "hydra/sweeper=basic", 'hydra.sweeper.params={seed:"1,2"}'],
        "override 'hydra.sweeper.params={seed:\"1,2\"}'",
    ),
    # a new key of a mapping without a schema needs Hydra's +: the message says so
    (
        ["--multirun", 'hydra.sweeper.params.seed="1,2"'],
        "hydra.sweeper.params.seed: unknown key; a new key of this mapping is added with '+': "
        "+hydra.sweeper.params.seed=…",
    ),
    (["hydra.job.env_set.X=1"], "hydra.job.env_set.X: unknown key; a new key of this mapping is added with '+'"),
    (  # a dotted key is one key of the mapping only inside braces
        ["--multirun", 'hydra.sweeper.params.model.C="0.1,1"'],
        "hydra.sweeper.params.model.C: unknown key; a new key of this mapping is added with '+': "
        "+hydra.sweeper.params={model.C: …}",
    ),
    # Hydra's own multi-line messages, on one line: not cut after their first
    (
        ["--multirun", "seed=1,2", "+hydra.launcher.njobs=2"],
        "LabLauncher': TypeError(\"LabLauncher.__init__() got an unexpected keyword argument 'njobs'\")",
    ),
    (["+hydra.callbacks.x._target_=os.system"], "blocklisted because it allows config data to control executable"),
    (  # a key of a swept group is checked in the launch's own config (model=logreg) first
        ["--multirun", "model=random_forest,svm", "model.n_estimators=10"],
        "model.n_estimators: unknown key; allowed: C, max_iter, name, solver (Hydra checks it first in the "
        "launch's own config, which has model's default option, not one of model=random_forest,svm;",
    ),
    (["tracking.uri="], "tracking.uri='': a tracking URI, or null for MLFLOW_TRACKING_URI"),
    (["tracking.experiment=é"], "override: LexerNoViableAltException: tracking.experiment=é ^ (Hydra takes other"),
    (["data=null"], "data=null: a config group takes an option; choose one of: breast_cancer, digits, iris, wine"),
    (["tracking.experiment="], "tracking.experiment='': an experiment name, or null for MLFLOW_EXPERIMENT_NAME"),
    (["tracking.uri=sqlite:///"], "tracking.uri='sqlite:///': a database file, e.g. sqlite:///mlflow.db"),
    (["tracking.uri=sqlite:///:memory:"], "tracking.uri='sqlite:///:memory:': a database file"),
    (["tracking.uri=http://"], "tracking.uri='http://': a server's address, with a port of 0-65535, e.g. http"),
    (["tracking.uri=http://127.0.0.1:99999"], "tracking.uri='http://127.0.0.1:99999': a server's address, with"),
    (["tracking.experiment=" + "x" * 501], "tracking.experiment='xxx"),
    (["+hydra.job.env_set.MLFLOW_TRACKING_URI=ftp://x"], "hydra.job.env_set.MLFLOW_TRACKING_URI='ftp://x': not set"),
    (["--multirun", "seed=1,2", "+hydra.job.env_set.MLFLOW_EXPERIMENT_NAME=x"], "set tracking.experiment instead"),
    # where a job writes: its own dir, inside which its .hydra files stay, and a named log
    (["hydra.output_subdir=/tmp/abs"], "hydra.output_subdir='/tmp/abs': null, or a relative dir inside the job's"),
    (["--multirun", "seed=1,2", "hydra.output_subdir=../x"], "hydra.output_subdir='../x': null, or a relative dir"),
    (["hydra.job.name="], "hydra.job.name='': a non-empty file name, without '/': the job's log is <name>.log"),
    (["hydra.job.name=a/b"], "hydra.job.name='a/b': a non-empty file name, without '/'"),
    (["--multirun", "seed=1,2", "hydra.job.name=../../escape"], "hydra.job.name='../../escape': a non-empty file"),
    # a dir named as a file lab writes beside it would stop that file being written
    (["hydra.output_subdir=metrics.json"], "hydra.output_subdir='metrics.json': a dir named other than the files"),
    (["--multirun", "seed=1,2", "hydra.output_subdir=tracking.json"], "hydra.output_subdir='tracking.json': a dir"),
    (["hydra.job.name=fit", "hydra.output_subdir=fit.log/x"], "hydra.output_subdir='fit.log/x': a dir named other"),
    (
        ["--multirun", "seed=1,2", "hydra.sweep.subdir=x"],
        "hydra.sweep.subdir='x': a dir of each job's own, but job #0 writes into ",
    ),
    (["--multirun", "seed=1", "hydra.sweep.subdir=."], "hydra.sweep.subdir='.': a relative dir below the sweep dir"),
    (["--multirun", "seed=1,2", "hydra.sweep.subdir=/tmp/x"], "hydra.sweep.subdir='/tmp/x': a relative dir below"),
    # a sweep that gives no job, or cannot be enumerated
    (["--multirun", "seed=range(1,1)"], "seed='range(1,1)': a sweep of at least one value"),
    (["--multirun", "model.C=1,2", "seed=range(3,1)"], "seed='range(3,1)': a sweep of at least one value"),
    (
        ["--multirun", "model=glob(nomatch*)"],
        "model='glob(nomatch*)': a glob() matching at least one option of model: logreg, random_forest, svm",
    ),
    (
        ["--multirun", "seed=glob(a*)"],
        "seed='glob(a*)': a sweep of values; glob() picks options of a config group (model=glob(*)), not of seed",
    ),
    (["--multirun", "seed=range(1,3,0)"], "seed='range(1,3,0)': a sweep Hydra can enumerate (range() arg 3 must"),
    # every value a search can draw is checked before the first trial, as every job of a grid
    (
        ["--multirun", "search=optuna", "data=choice(iris,foo)"],
        "data='foo': unknown option; choose one of: breast_cancer, digits, iris, wine "
        "(in the search space: data=choice(iris,foo))",
    ),
    (["--multirun", "search=optuna", "model.solver=choice(lbfgs,bogus)"], "model.solver='bogus': one of lbfgs"),
    (
        ["--multirun", "search=optuna", "split.test_size=interval(0.1,1.5)"],
        "split.test_size=1.5: a number > 0 and < 1 (in the search space: split.test_size=interval(0.1,1.5))",
    ),
    (
        ["--multirun", "search=optuna", "model.C=interval(1,0)"],
        "model.C='interval(1,0)': a search space Optuna accepts: The `low` value must be smaller",
    ),
    (["--multirun", "search=optuna", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0: an integer >= 1"),
    (  # it failed once the study started, with a bare AssertionError (optuna#4375)
        ["--multirun", "search=optuna", "hydra.sweeper.storage=sqlite:///optuna.db"],
        "hydra.sweeper.storage='sqlite:///optuna.db': null (the study lives in the launch; its trials are runs",
    ),
    (
        ["--multirun", "search=optuna", "hydra.sweeper.direction=sideways"],
        "hydra.sweeper.direction='sideways': minimize or maximize, or a list of them",
    ),
    (["tracking.uri=file:./mlruns"], "tracking.uri='file:./mlruns': scheme 'file' is not supported"),
    (["tracking.uri=ftp://host/x"], "scheme 'ftp' is not supported"),
    (["model.C=("], "malformed override: Error parsing override 'model.C=('"),
    (["model.C=1,2,"], "malformed override"),
    (
        ["--multirun", "seed=1,x"],
        "seed: Value 'x' of type 'str' could not be converted to Integer (in sweep job: seed=x)",
    ),
    (["--multirun", "model.C=1,2,-1"], "model.C=-1.0: a number >= 1e-300 and <= 1e+300 (in sweep job: model.C=-1)"),
    (
        ["--multirun", "model=logreg,foo"],
        "model=foo: unknown option; choose one of: logreg, random_forest, svm (in sweep job: model=foo)",
    ),
    (  # credentials in an override are not echoed
        ["--multirun", "tracking.uri=http://user:s3cret@127.0.0.1:9/", "model=logreg,foo"],
        "(in sweep job: tracking.uri=http\\://***@127.0.0.1\\:9/ model=foo)",  # as Hydra's sweeper escapes it
    ),
    (  # nor in the message, where it names the value
        ["--multirun", "seed=1,2", "tracking.experiment=http://user:s3cret@h/x,y"],
        "tracking.experiment='http://***@h/x': one value for the whole sweep",
    ),
    (["--multirun", "seed=1,2", "split.test_size=0.5,2"], "split.test_size=2.0: a number > 0 and < 1"),
    (["--multirun", "seed=1,2", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: an integer >= 1, or -1 for one"),
    (["--multirun", "seed=1,2", "hydra.launcher.n_jobs=two"], "hydra.launcher.n_jobs: Value 'two' of type 'str'"),
    (["--multirun", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0: an"),
    # joblib's own rules, checked before the launch instead of failing it (exit 1, "0 jobs")
    (
        ["--multirun", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.prefer=bogus"],
        "hydra.launcher.prefer='bogus': a value joblib takes (prefer=bogus is not a valid backend hint",
    ),
    (
        ["--multirun", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.batch_size=0"],
        "hydra.launcher.batch_size=0: a value joblib takes (batch_size must be 'auto' or a positive integer",
    ),
    (
        ["--multirun", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.pre_dispatch=abc"],
        "hydra.launcher.pre_dispatch='abc': a value joblib takes",
    ),
    (["--multirun", "seed=1,2", "hydra.sweeper.max_batch_size=0"], "hydra.sweeper.max_batch_size=0: an integer >= 1"),
    (["--multirun", "model.C=interval(0,1)"], "does not support sweep type : INTERVAL_SWEEP"),
    # set once per launch: varied per job, params would name a store or experiment the run is not in
    (["--multirun", "tracking.experiment=a,b"], "tracking.experiment='a': one value for the whole sweep"),
    (["--multirun", "tracking.uri=sqlite:///a.db,sqlite:///b.db"], "tracking.uri='sqlite:///a.db': one value"),
    (["--multirun", "tracking.background=true,false"], "tracking.background=False: one value for the whole sweep"),
    (["--multirun", "tracking.timeout_s=5,10"], "tracking.timeout_s=5.0: one value for the whole sweep"),
    (["--multirun", "tracking=none", "tracking.enabled=false,true"], "tracking.enabled=True: false in every job"),
    (["--multirun", "search=optuna", "split.test_size=2"], "split.test_size=2.0: a number > 0 and < 1"),
    (["--multirun", "search=optuna", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: an integer >= 1"),
    (
        ["--multirun", "search=optuna", "model=random_forest"],
        "hydra.sweeper.params='model.C': not a key of the config; model=random_forest has: criterion, max_depth,",
    ),
    # fixed on the command line, a searched key leaves the search: the value fails every trial
    (["--multirun", "search=optuna", "model.C=???"], "model.C: Structured config of type `LogRegConfig` has missing"),
    (
        ["--multirun", "search=optuna", "model.C=${oc.env:LAB_TEST_UNSET}"],
        "model.C: KeyError raised while resolving interpolation: \"Environment variable 'LAB_TEST_UNSET' not found\"",
    ),
    (["--multirun", "search=optuna", "++model.C=???"], "model.C: Structured config of type `LogRegConfig` has"),
    (  # a fixed value of the wrong type, too (the grid sweeper refuses it for its first job)
        ["--multirun", "search=optuna", "split.test_size=${oc.env:HOME}"],
        "split.test_size: While dereferencing interpolation '${oc.env:HOME}': Value",
    ),
    (
        ["--multirun", "search=optuna", "seed=${hydra:runtime.choices.model}"],
        "seed: While dereferencing interpolation '${hydra:runtime.choices.model}': Value 'logreg' of type 'str'",
    ),
    (
        ["--multirun", "seed=1,2", "model.C=${oc.env:LAB_TEST_UNSET}"],
        "model.C: KeyError raised while resolving interpolation",
    ),
]


@pytest.mark.fresh_store
@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_rejected_up_front(cli: Cli, args: list[str], expected: str) -> None:
    res = cli.run(*args, "hydra.run.dir=outputs/run", "hydra.sweep.dir=outputs/sweep")
    assert res.code == 2, (res.stdout, res.stderr)
    assert expected in res.stderr
    assert "Traceback" not in res.stderr
    assert "HYDRA_FULL_ERROR" not in res.stderr
    assert "s3cret" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    assert not (cli.cwd / "outputs").exists()
    assert not (cli.cwd / "mlflow.db").exists()
    assert not (cli.cwd / "mlruns").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["hydra.run.dir="], "error: hydra.run.dir='': a dir for the run (lab's default: outputs/runs/"),
        (["--multirun", "seed=1,2", "hydra.sweep.dir="], "error: hydra.sweep.dir='': a dir for the sweep"),
        (
            ["--multirun", "seed=1,2", "hydra.sweep.dir=/proc/lab-test"],
            "error: hydra.sweep.dir='/proc/lab-test': a dir that can be created here (No such file or directory)",
        ),
        (["hydra.run.dir=/proc/lab-test"], "error: hydra.run.dir='/proc/lab-test': a dir that can be created here"),
        (["hydra.run.dir=mlflow.db"], "error: hydra.run.dir='mlflow.db': a dir that can be created here "),
        (["hydra.run.dir=mlflow.db/run"], "error: hydra.run.dir='mlflow.db/run': a dir that can be created"),
    ],
    ids=[
        "empty run dir",
        "empty sweep dir",
        "sweep dir that cannot be made",
        "run dir that cannot be made",
        "run dir that is a file",
        "run dir below a file",
    ],
)
def test_an_output_dir_that_is_empty_or_cannot_be_made_is_refused(cli: Cli, args: list[str], expected: str) -> None:
    """Hydra takes an empty dir for the working dir: the outputs would land in it."""
    before = sorted(cli.cwd.iterdir())
    res = cli.run(*args)
    assert res.code == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith(expected), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sorted(cli.cwd.iterdir()) == before  # nothing written, here or in a store


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///notes.txt/mlflow.db", "a database file in a dir that can be created; {cwd}/notes.txt is a file"),
        ("sqlite:///outputs", "a database file; {cwd}/outputs is a directory"),
        ("sqlite:///notes.txt", "an SQLite database file; {cwd}/notes.txt is not one"),
        ("sqlite:///other.db", "an MLflow database; {cwd}/other.db holds another program's tables (inventory)"),
    ],
    ids=["below a file", "a dir", "not sqlite", "another program's"],
)
def test_a_sqlite_store_that_cannot_be_mlflows_is_refused_before_any_job(cli: Cli, uri: str, expected: str) -> None:
    """MLflow would find these only when the first job's record is published, after the
    training: the job would end with its record pending, and every sync fail."""
    (cli.cwd / "outputs").mkdir()
    (cli.cwd / "notes.txt").write_text("not a database\n")
    with contextlib.closing(sqlite3.connect(cli.cwd / "other.db")) as db:
        db.execute("CREATE TABLE inventory (item TEXT)")
        db.commit()
    before = {p: p.read_bytes() for p in cli.cwd.rglob("*") if p.is_file()}
    for args in (["hydra.run.dir=outputs/run"], ["--multirun", "seed=1,2", "hydra.sweep.dir=outputs/sweep"]):
        res = cli.run(*args, f"tracking.uri={uri}")
        assert res.code == 2, (res.stdout, res.stderr)
        [line] = res.stderr.splitlines()  # a sweep's names its first job too
        assert line.startswith(f"error: tracking.uri={uri!r}: {expected.format(cwd=cli.cwd)}"), res.stderr
        assert {p: p.read_bytes() for p in cli.cwd.rglob("*") if p.is_file()} == before
        assert list((cli.cwd / "outputs").iterdir()) == []


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (
            "sweep",
            ["hydra.run.dir=outputs/sweep"],
            "hydra.run.dir='outputs/sweep': a dir for a run; this one holds a sweep's",
        ),
        (
            "sweep",
            ["hydra.run.dir=outputs/sweep/1"],
            "hydra.run.dir='outputs/sweep/1': a dir for a run; this one holds a sweep job's",
        ),
        (
            "run",
            ["--multirun", "seed=1,2", "hydra.sweep.dir=outputs/run"],
            "hydra.sweep.dir='outputs/run': a dir for a sweep; this one holds a run's",
        ),
        (
            "sweep",
            ["--multirun", "seed=3", "hydra.sweep.dir=outputs/sweep/0"],
            "a dir for a sweep; this one holds a sweep job's",
        ),
        ("sweep", ["--multirun", "search=optuna", "hydra.sweep.dir=outputs/sweep/0"], "this one holds a sweep job's"),
    ],
    ids=[
        "run into a sweep's dir",
        "run into a sweep job's dir",
        "sweep into a run's dir",
        "sweep into a job's dir",
        "optuna",
    ],
)
@pytest.mark.parametrize("tracked", [True, False], ids=["tracked", "untracked"])
def test_a_launch_into_a_dir_of_another_kind_is_refused(
    cli: Cli, first: str, second: list[str], expected: str, tracked: bool
) -> None:
    """A single run re-uses its dir, a sweep its dir; but a run into a sweep's dir (or a
    job's) would replace that sweep's record, and a sweep into a run's the run's: MLflow and
    ``lab.reproduce`` would then read one launch's record as the other's."""
    extra = ["tracking.log_model=false"] if tracked else ["tracking=none"]
    made = cli.sweep("seed=1,2", *extra) if first == "sweep" else cli.train(*extra)
    assert made.code == 0, made.stderr
    outputs = cli.cwd / "outputs"
    before = {p: p.read_bytes() for p in outputs.rglob("*") if p.is_file()}
    runs = len(store_runs(cli.uri))
    res = cli.run(*second, *extra)
    assert res.code == 2, (res.stdout, res.stderr)
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error: ") and expected in line, res.stderr
    assert {p: p.read_bytes() for p in outputs.rglob("*") if p.is_file()} == before
    assert len(store_runs(cli.uri)) == runs


def test_a_sweep_into_a_failed_untracked_runs_dir_is_refused(cli: Cli) -> None:
    """An untracked run that failed leaves neither a record nor metrics, only Hydra's saved
    files: their ``mode: RUN`` still tells that the dir is a run's."""
    failed = cli.train("tracking=none", "split=kfold", "split.n_splits=60")
    assert failed.code == 1, failed.stderr
    run_dir = cli.cwd / "outputs" / "run"
    assert not (run_dir / "metrics.json").exists() and (run_dir / ".hydra" / "hydra.yaml").is_file()
    res = cli.run("--multirun", "seed=1,2", "tracking=none", "hydra.sweep.dir=outputs/run")
    assert res.code == 2, (res.stdout, res.stderr)
    assert "hydra.sweep.dir='outputs/run': a dir for a sweep; this one holds a run's" in res.stderr
    assert not (run_dir / "multirun.yaml").exists()


def test_a_sweep_dir_is_not_taken_for_its_jobs_dir_by_their_saved_files(cli: Cli) -> None:
    """With ``hydra.output_subdir=.`` a job's ``hydra.yaml`` lies one level below the sweep
    dir (``0/hydra.yaml``), where a job's own subdir would be: a sweep dir without its
    marks (an Optuna sweep stopped before it wrote them) is not a job's, so a new sweep may
    go there, and a run is refused as going into a sweep's jobs' dir only where it is one."""
    assert cli.sweep("seed=1,2", "tracking=none", "hydra.output_subdir=.").code == 0
    sweep_dir = cli.cwd / "outputs" / "sweep"
    assert (sweep_dir / "0" / "hydra.yaml").is_file()
    (sweep_dir / "multirun.yaml").unlink()
    assert launch_kind(sweep_dir) is None
    assert launch_kind(sweep_dir / "0") == "sweep job"
    again = cli.sweep("seed=3,4", "tracking=none", "hydra.output_subdir=.")
    assert again.code == 0, again.stderr
    res = cli.run("tracking=none", "hydra.output_subdir=.", "hydra.run.dir=outputs/sweep/1")
    assert res.code == 2, (res.stdout, res.stderr)
    assert "a dir for a run; this one holds a sweep job's" in res.stderr


WITHOUT_RAY = """
import importlib.util
import runpy

find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "hydra_plugins.hydra_ray_launcher" else find_spec(name, *a)
runpy.run_module("lab.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.fresh_store
def test_the_ray_launcher_without_the_ray_extra_names_the_fix(cli: Cli) -> None:
    """`hydra/launcher=ray` where hydra-ray-launcher is not installed (as lab's plugin module
    sees it): one line naming the extra, before anything is created."""
    (cli.cwd / "without_ray.py").write_text(WITHOUT_RAY)
    res = cli.run("--multirun", "seed=1,2", "hydra/launcher=ray", "hydra.sweep.dir=outputs/sweep", module="without_ray")
    assert res.code == 2, (res.stdout, res.stderr)
    assert res.stderr.strip() == ("error: hydra/launcher=ray: needs the `ray` extra (uv sync --locked --extra ray)")
    assert not (cli.cwd / "outputs").exists()
    assert not (cli.cwd / "mlflow.db").exists()


REFUSED_IN_A_USED_DIR = {
    "lab's sweeper": ["seed=1,2", "model.C=1,-1"],
    "a fixed value": ["seed=1,2", "split.test_size=2"],
    "Optuna's key check": ["search=optuna", "model=random_forest"],
    "the sweeper's params": ['+hydra.sweeper.params.seed="range(1"'],  # Hydra's parser, not lab's check
}


@pytest.mark.parametrize("args", list(REFUSED_IN_A_USED_DIR.values()), ids=list(REFUSED_IN_A_USED_DIR))
def test_a_sweep_refused_in_a_used_sweep_dir_changes_nothing(cli: Cli, args: list[str]) -> None:
    """Refused into the dir of an earlier sweep, a launch leaves that sweep's summary and
    record as they were, and makes no MLflow run, as it does in a new dir."""
    assert cli.sweep("seed=1,2", "tracking.log_model=false").code == 0
    sweep = cli.cwd / "outputs" / "sweep"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sweep.rglob("*") if p.is_file()}
    runs = len(store_runs(cli.uri))
    res = cli.sweep(*args)
    assert res.code == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "sweep failed" not in res.stdout + res.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sweep.rglob("*") if p.is_file()} == before
    assert len(store_runs(cli.uri)) == runs


def test_a_sweep_refused_in_a_dir_with_unpublished_events_leaves_them(cli: Cli) -> None:
    """A sweep killed with its publisher leaves events in the dir's queue, for `lab.runs sync`
    or the next launch there to publish. A launch refused as bad input publishes none of them."""
    assert cli.sweep("seed=1,2", "tracking.log_model=false").code == 0
    sweep = cli.cwd / "outputs" / "sweep"
    # as a launch killed together with its publisher leaves it: the sweep and a job RUNNING,
    # the job's event not yet drained
    for path in (sweep / "tracking.json", sweep / "0" / "tracking.json"):
        record = json.loads(path.read_text())
        record.update(status="RUNNING", end_time=None)
        path.write_text(json.dumps(record))
    records.enqueue(sweep / ".lab-queue", "job", {"job_dir": str(sweep / "0")})
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sweep.rglob("*") if p.is_file()}
    runs = {r.info.run_id: r.info.status for r in store_runs(cli.uri)}
    res = cli.sweep(*REFUSED_IN_A_USED_DIR["lab's sweeper"])
    assert res.code == 2, res.stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sweep.rglob("*") if p.is_file()} == before
    assert {r.info.run_id: r.info.status for r in store_runs(cli.uri)} == runs


def test_invalid_yaml_in_conf_is_a_short_error(cli: Cli, tmp_path: Path) -> None:
    conf = tmp_path / "extra" / "model"
    conf.mkdir(parents=True)
    (conf / "broken.yaml").write_text(BROKEN_YAML)
    res = cli.run(f"--config-dir={tmp_path / 'extra'}", "model=broken", "hydra.run.dir=outputs/run")
    assert res.code == 2, res.stderr
    assert "error: invalid YAML" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 3
    assert not (cli.cwd / "outputs").exists()


@pytest.mark.parametrize(
    ("group", "text"),
    [
        ("model", "C: 0.3\n"),  # no schema, no name
        ("model", "name: logreg\nC: -1\n"),  # a name, but no schema: C would go unchecked
        ("split", "name: holdout\ntest_size: 5\n"),
    ],
)
def test_a_group_option_without_its_schema_is_refused_up_front(cli: Cli, tmp_path: Path, group: str, text: str) -> None:
    """A user's own option (``--config-dir``) that does not extend a schema is neither typed
    nor range-checked by Hydra: refused before anything runs, saying how to fix it."""
    conf = tmp_path / "extra" / group
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(text)
    res = cli.run(f"--config-dir={tmp_path / 'extra'}", f"{group}=mine", "hydra.run.dir=outputs/run")
    assert res.code == 2, res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"error: {group}=")
    assert f"defaults: [/schema/{group}/<schema>@_here_, _self_]" in line
    assert not (cli.cwd / "outputs").exists()


def test_errors_count_as_hydras_by_hydras_own_package_not_by_a_path_naming_hydra() -> None:
    """A job's failure is exit 1 even when lab lives under a directory named ``hydra``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lab.train import _raised_by_hydra

    with pytest.raises(Exception) as from_hydra:  # noqa: PT011 - whatever Hydra raises
        OverridesParser.create().parse_overrides(["data=("])
    assert _raised_by_hydra(from_hydra.value)
    with pytest.raises(ValueError, match="a job failed") as from_a_job:
        exec(compile("raise ValueError('a job failed')", "/home/me/hydra/lab/src/lab/training.py", "exec"))
    assert not _raised_by_hydra(from_a_job.value)
