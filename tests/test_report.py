"""The sweep report: written at the end of a real sweep and logged to its parent run, then
written again by ``python -m lab.report`` from the sweep dir or from the parent run id,
and checked against the child runs in the store."""

from __future__ import annotations

import csv
import io
import shutil
import statistics
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Run

from lab.outputs import write_failure
from lab.records import JobRecord, join_overrides, redact_text, split_overrides
from lab.report import numeric_parameters, use_log_scale, write_report
from lab.summary import JobRow, Summary, job_dirs, saved_output_subdir, summarize_rows, summarize_sweep
from tests.conftest import Cli
from tests.test_cli import by_kind, runs

REPORT_FILES = ("summary.csv", "summary.md", "report.png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Model logging is not what these tests are about, and it is most of a job's tracking time.
FAST = "tracking.log_model=false"


def assert_png(path: Path) -> None:
    """A real, non-blank PNG that matplotlib reads back."""
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 200
    assert image.shape[1] > 400
    assert image.std() > 0.01  # something is drawn on it


def parent_and_children(cli: Cli) -> tuple[Run, list[Run]]:
    all_runs = runs(cli)
    [parent] = by_kind(all_runs, "sweep")
    return parent, by_kind(all_runs, "job")


def config_of(child: Run) -> str:
    """The child's overrides without the seed: the config key of summary.md's groups."""
    return join_overrides(o for o in split_overrides(child.data.tags["lab.overrides"]) if not o.startswith("seed="))


def assert_table_matches(out_dir: Path, children: list[Run], not_finished: frozenset[str] = frozenset()) -> None:
    """summary.csv holds each child's accuracy exactly (jobs in ``not_finished`` as
    unfinished rows); summary.md's groups hold the mean ± std of the finished children."""
    rows = {row["job"]: row for row in csv.DictReader(io.StringIO((out_dir / "summary.csv").read_text()))}
    assert set(rows) == {c.data.tags["lab.job_num"] for c in children}
    finished: dict[str, list[float]] = {}
    for child in children:
        row = rows[child.data.tags["lab.job_num"]]
        assert row["overrides"] == child.data.tags["lab.overrides"]
        if row["job"] in not_finished:
            assert row["status"] != "FINISHED"
            assert row["accuracy"] == ""
            continue
        assert row["status"] == child.info.status == "FINISHED"
        assert float(row["accuracy"]) == child.data.metrics["accuracy"]
        assert float(row["f1_macro"]) == child.data.metrics["f1_macro"]
        finished.setdefault(config_of(child), []).append(child.data.metrics["accuracy"])
    markdown = (out_dir / "summary.md").read_text()
    for config, accuracies in finished.items():
        line = next(ln for ln in markdown.splitlines() if ln.startswith(f"| `{config}` |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1] == str(len(accuracies))
        assert cells[2] == f"{statistics.fmean(accuracies):.4f} ± {statistics.pstdev(accuracies):.4f}"


def logged(cli: Cli, run_id: str, name: str) -> bytes:
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    return Path(client.download_artifacts(run_id, name, str(cli.cwd / f"download-{name}"))).read_bytes()


def test_sweep_end_writes_the_report_and_logs_it_to_the_parent_run(cli: Cli) -> None:
    res = cli.sweep("seed=1,2", "model.C=0.1,1,10", FAST)
    assert res.code == 0, res.stderr
    sweep_dir = cli.cwd / "outputs" / "sweep"
    for name in REPORT_FILES:
        assert (sweep_dir / name).stat().st_size > 0, name
    assert_png(sweep_dir / "report.png")
    parent, children = parent_and_children(cli)
    assert len(children) == 6
    assert_table_matches(sweep_dir, children)
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    assert set(REPORT_FILES) <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert logged(cli, parent.info.run_id, "report.png") == (sweep_dir / "report.png").read_bytes()


def test_regenerated_from_the_sweep_dir_after_an_interruption(cli: Cli) -> None:
    assert cli.sweep("seed=1,2", "model.C=0.1,10", FAST).code == 0
    sweep_dir = cli.cwd / "outputs" / "sweep"
    parent, children = parent_and_children(cli)
    # What a sweep interrupted during job 0 leaves: no metrics, and a record ended KILLED.
    (sweep_dir / "0" / "metrics.json").unlink()
    record = JobRecord.load(sweep_dir / "0")
    record.status = "KILLED"
    record.save()
    for name in REPORT_FILES:
        (sweep_dir / name).unlink()

    res = cli.run("outputs/sweep", module="lab.report")
    assert res.code == 0, res.stderr
    assert_png(sweep_dir / "report.png")
    assert_table_matches(sweep_dir, children, not_finished=frozenset({"0"}))
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))
    assert rows[0]["status"] == "KILLED"
    # the regenerated files replaced the ones the sweep logged to its parent run
    assert parent.info.run_id in res.stdout
    assert b"KILLED" in logged(cli, parent.info.run_id, "summary.csv")
    assert logged(cli, parent.info.run_id, "report.png") == (sweep_dir / "report.png").read_bytes()

    # by the parent's run id, while the sweep dir exists: the same report, from the dir
    before = (sweep_dir / "summary.csv").read_text()
    res = cli.run(parent.info.run_id, module="lab.report")
    assert res.code == 0, res.stderr
    assert (sweep_dir / "summary.csv").read_text() == before
    assert not list(cli.cwd.glob("report-*"))


@pytest.mark.parametrize("subdir", ["meta", ".", "null"])
def test_sweep_with_another_output_subdir_is_summarised_and_regenerated(cli: Cli, subdir: str) -> None:
    """Untracked, the summary finds the jobs by their files in ``hydra.output_subdir``
    (named in the sweep's multirun.yaml) or by their metrics, and takes their overrides
    from there; with no ``.hydra/`` files at all they are unknown, and in no group."""
    res = cli.sweep("seed=1,2", "model.C=0.1,10", "tracking=none", f"hydra.output_subdir={subdir}")
    assert res.code == 0, res.stderr
    assert "sweep finished: 4 jobs (4 finished)" in res.stdout
    sweep_dir = cli.cwd / "outputs" / "sweep"
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "summary.csv").read_text())))
    assert [(r["job"], r["status"]) for r in rows] == [(str(j), "FINISHED") for j in range(4)]
    assert all(float(r["accuracy"]) > 0.5 for r in rows)
    groups = [ln for ln in (sweep_dir / "summary.md").read_text().splitlines() if ln.startswith("| `")]
    if subdir != "null":
        assert rows[1]["overrides"] == "seed=1 model.C=10 tracking=none"
        assert [g.split("|")[1].strip() for g in groups] == [
            "`model.C=0.1 tracking=none`",
            "`model.C=10 tracking=none`",
        ]
    else:
        assert {r["overrides"] for r in rows} == {"(unknown)"}
        assert groups == []

    before = (sweep_dir / "summary.csv").read_text()
    (sweep_dir / "summary.csv").unlink()
    res = cli.run("outputs/sweep", module="lab.report")
    assert res.code == 0, res.stderr
    assert (sweep_dir / "summary.csv").read_text() == before


def test_failed_job_with_unknown_overrides_still_fails_the_sweep(cli: Cli) -> None:
    res = cli.sweep("split=kfold", "split.n_splits=5,60", "tracking=none", "hydra.output_subdir=null")
    assert res.code == 1, res.stderr
    assert "1 of 2 jobs failed" in res.stderr
    assert "#1 (unknown): ValueError" in res.stderr


@pytest.mark.parametrize("tracking", ["tracking=none", FAST])
def test_sweep_into_a_reused_dir_summarises_only_its_own_jobs(cli: Cli, tracking: str) -> None:
    assert cli.sweep("seed=1,2,3", tracking).code == 0
    res = cli.sweep("seed=4", "model.C=7", tracking)
    assert res.code == 0, res.stderr
    assert "sweep finished: 1 job (1 finished)" in res.stdout
    rows = list(csv.DictReader(io.StringIO((cli.cwd / "outputs" / "sweep" / "summary.csv").read_text())))
    expected = f"seed=4 model.C=7 {tracking}".replace("=false", "=False")  # as Hydra's sweeper writes it
    assert [(r["job"], r["overrides"]) for r in rows] == [("0", expected)]


def test_reused_dir_with_a_broken_earlier_record_still_ends_the_sweep(cli: Cli) -> None:
    assert cli.sweep("seed=1,2", FAST).code == 0
    (cli.cwd / "outputs" / "sweep" / "1" / "tracking.json").write_text("{}")
    res = cli.sweep("seed=3", FAST)
    assert res.code == 0, res.stderr
    assert "sweep finished: 1 job (1 finished)" in res.stdout
    assert "raised" not in res.stdout + res.stderr
    sweeps = [r for r in by_kind(runs(cli), "sweep") if r.info.status == "FINISHED"]
    assert len(sweeps) == 2


def test_tracked_sweep_without_hydra_files_takes_overrides_from_the_records(cli: Cli) -> None:
    # A value with a space stays one override in the tag, the records and the summaries
    # (a job's overrides, as Hydra's sweeper writes them, escape the space).
    res = cli.sweep("seed=1,2", "model.C=0.1,10", FAST, "hydra.output_subdir=null", "tracking.experiment=my lab")
    assert res.code == 0, res.stderr
    spaced = r"tracking.experiment=my\ lab"
    sweep_dir = cli.cwd / "outputs" / "sweep"
    assert not list(sweep_dir.glob("*/.hydra"))
    all_runs = runs(cli, experiment="my lab")
    [parent], children = by_kind(all_runs, "sweep"), by_kind(all_runs, "job")
    assert len(children) == 4
    assert all(spaced in split_overrides(c.data.tags["lab.overrides"]) for c in children)
    assert_table_matches(sweep_dir, children)
    assert f"'{spaced}'" in (sweep_dir / "summary.md").read_text()

    shutil.rmtree(sweep_dir)
    res = cli.run(parent.info.run_id, module="lab.report")
    assert res.code == 0, res.stderr
    assert_table_matches(cli.cwd / f"report-{parent.info.run_id}", children)


def test_regenerated_from_the_parent_run_id_when_the_sweep_dir_is_gone(cli: Cli) -> None:
    assert cli.sweep("seed=1,2,3", "model.C=0.01,1", FAST).code == 0
    parent, children = parent_and_children(cli)
    run_id = parent.info.run_id
    shutil.rmtree(cli.cwd / "outputs" / "sweep")

    res = cli.run(run_id, module="lab.report")
    assert res.code == 0, res.stderr
    assert "rebuilt from 6 child runs" in res.stdout
    out_dir = cli.cwd / f"report-{run_id}"
    assert_png(out_dir / "report.png")
    assert_table_matches(out_dir, children)
    assert not (cli.cwd / "outputs" / "sweep").exists()
    assert logged(cli, run_id, "summary.csv") == (out_dir / "summary.csv").read_bytes()
    assert logged(cli, run_id, "report.png") == (out_dir / "report.png").read_bytes()

    # a child's run id is refused, pointing at its parent
    res = cli.run(children[0].info.run_id, module="lab.report")
    assert res.code == 2
    assert f"its sweep's parent run is {run_id}" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.fresh_store
def test_sweep_without_a_numeric_parameter_still_gets_a_plot(cli: Cli) -> None:
    assert cli.sweep("seed=1,2", "model=logreg,svm", "tracking=none").code == 0
    sweep_dir = cli.cwd / "outputs" / "sweep"
    assert_png(sweep_dir / "report.png")
    (sweep_dir / "report.png").unlink()
    res = cli.run("outputs/sweep", "--out", "again", module="lab.report")
    assert res.code == 0, res.stderr
    assert "not logged to MLflow" in res.stdout
    assert_png(cli.cwd / "again" / "report.png")
    assert not (sweep_dir / "report.png").exists()
    assert not (cli.cwd / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("no/such/dir", "SWEEP 'no/such/dir': neither an existing dir nor an MLflow run id"),
        ("empty", "SWEEP 'empty': no job dirs in it"),
        ("file.txt", "SWEEP 'file.txt': not a directory"),
        ("0123456789abcdef0123456789abcdef", "no sqlite store at"),
        ("outputs --timeout -1", "--timeout -1.0: seconds per request, a finite number > 0"),
        ("outputs --timeout nan", "--timeout nan: seconds per request, a finite number > 0"),
        ("outputs --out file.txt", "--out 'file.txt': a dir to write the report in, that can be created here (File"),
        ("outputs --out file.txt/x", "--out 'file.txt/x': a dir to write the report in, that can be created here (Not"),
        ("outputs --out=", "--out '': a dir to write the report in, that can be created here (empty)"),
    ],
)
@pytest.mark.fresh_store
def test_bad_argument_exits_2_naming_it(cli: Cli, argument: str, expected: str) -> None:
    (cli.cwd / "empty").mkdir()
    (cli.cwd / "file.txt").write_text("")
    (cli.cwd / "outputs").mkdir()
    res = cli.run(*argument.split(), module="lab.report")
    assert res.code == 2
    assert expected in res.stderr
    assert "Traceback" not in res.stderr
    assert not (cli.cwd / "mlflow.db").exists()


def job(overrides: list[str]) -> JobRow:
    return JobRow("0", overrides, "FINISHED", {"accuracy": 1.0})


def test_swept_numeric_parameters_leave_out_seed_fixed_and_non_numeric_values() -> None:
    rows = [
        job(["seed=1", "model.C=0.1", "model.kernel=rbf", "+split.n_splits=5", "data=wine"]),
        job(["seed=2", "model.C=1e1", "model.kernel=linear", "+split.n_splits=10", "data=wine"]),
        job(["seed=3", "model.C=0.1", "model.kernel=rbf", "+split.n_splits=nan", "data=wine"]),
    ]
    assert numeric_parameters(rows) == ["model.C"]
    assert numeric_parameters(rows[:2]) == ["model.C", "split.n_splits"]


def test_jobs_that_differ_only_by_seed_form_one_group_however_seed_is_given() -> None:
    rows = [job([f"{prefix}seed={n}", "model.C=0.1"]) for n, prefix in enumerate(["", "+", "++"])]
    assert [(g.config, g.n) for g in summarize_rows(rows).groups] == [("model.C=0.1", 3)]


def test_jobs_whose_overrides_spell_one_number_differently_form_one_group(tmp_path: Path) -> None:
    """``model.C=1``, ``model.C=1.0``, ``model.C=1e0`` and ``++model.C=1`` set the same config
    (C is a float): one group, labelled as the first job typed it; ``model.C=10`` stays apart."""
    rows = [
        JobRow(str(n), [f"seed={n}", f"model.C={c}"], "FINISHED", {"accuracy": a})
        for n, (c, a) in enumerate([("1", 0.9), ("1.0", 0.8), ("1e0", 0.7), ("10", 0.5)])
    ]
    rows.insert(3, JobRow("3b", ["++seed=5", "++model.C=1"], "FINISHED", {"accuracy": 0.8}))
    summary = write_report(tmp_path, summarize_rows(rows))
    assert [(g.config, g.n, round(g.mean["accuracy"], 6)) for g in summary.groups] == [
        ("model.C=1", 4, 0.8),
        ("model.C=10", 1, 0.5),
    ]
    assert "| `model.C=1` | 4 | 0.8000 ± 0.0707 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "report.png").stat().st_size > 0
    assert numeric_parameters(rows[:4]) == []  # model.C takes one value there, however spelled
    assert numeric_parameters(rows) == ["model.C"]


@pytest.mark.parametrize(
    ("values", "log"),
    [([0.01, 0.1, 1.0], True), ([1.0, 10.0, 50.0], False), ([0.0, 1.0, 1000.0], False), ([5.0, 500.0], True)],
)
def test_log_axis_when_positive_values_span_two_decades(values: list[float], log: bool) -> None:
    assert use_log_scale(values) is log


def test_job_dirs_are_those_with_hydra_files_or_a_record_and_bare_ones_on_request(tmp_path: Path) -> None:
    for made in ["10/.hydra", "2/.hydra", "2/model", "3", "by/seed/.hydra", "by/other", ".lab-queue/x"]:
        (tmp_path / made).mkdir(parents=True)
    (tmp_path / "3" / "tracking.json").write_text("{}")  # record only: a job stopped before .hydra/
    (tmp_path / "tracking.json").write_text("{}")  # the sweep's own record
    (tmp_path / "summary.md").write_text("")
    jobs = [tmp_path / d for d in ("2", "3", "10", "by/seed")]
    assert job_dirs(tmp_path) == jobs
    # a leaf dir (hidden ones aside) holding neither: a job stopped right after Hydra made its dir
    assert job_dirs(tmp_path, bare=True) == [*jobs[:3], tmp_path / "by" / "other", jobs[3]]


def test_saved_output_subdir_is_read_from_multirun_yaml(tmp_path: Path) -> None:
    assert saved_output_subdir(tmp_path) == ".hydra"  # no multirun.yaml (e.g. the Optuna sweeper)
    for saved, expected in [("meta", "meta"), ("null", None), ("'${oc.env:X}'", ".hydra"), ("[", ".hydra")]:
        (tmp_path / "multirun.yaml").write_text(f"hydra:\n  output_subdir: {saved}\nseed: 1\n")
        assert saved_output_subdir(tmp_path) == expected, saved


def test_job_dirs_without_hydra_files_are_found_by_their_metrics_or_traceback(tmp_path: Path) -> None:
    for name, file in [("0", "metrics.json"), ("1", "traceback.txt"), ("2", "train.log")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text("{}")
    assert job_dirs(tmp_path, output_subdir=None) == [tmp_path / "0", tmp_path / "1"]
    assert job_dirs(tmp_path, output_subdir=None, bare=True) == [tmp_path / n for n in ("0", "1", "2")]


def test_a_failed_jobs_reason_is_its_exception_line_not_its_messages_last(tmp_path: Path) -> None:
    job = tmp_path / "0"
    job.mkdir()
    try:
        raise ValueError("Key 'seed' not in 'TrainConfig'\n    full_key: seed\n    object_type=TrainConfig")
    except ValueError as exc:
        write_failure(exc, job)
    assert (job / "traceback.txt").read_text().strip().endswith("object_type=TrainConfig")
    [row] = summarize_sweep(tmp_path, output_subdir=None).rows
    assert row.status == "FAILED"
    assert row.error == "ValueError: Key 'seed' not in 'TrainConfig'"


def test_job_dirs_with_output_subdir_dot_are_found_by_their_hydra_yaml(tmp_path: Path) -> None:
    for name in ("0", "1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "hydra.yaml").write_text("{}")  # stopped before metrics or a record
    assert job_dirs(tmp_path, output_subdir=".") == [tmp_path / "0", tmp_path / "1"]
    assert job_dirs(tmp_path) == []  # by ".hydra/" they are not jobs


def column_counts(markdown: str) -> set[int]:
    return {ln.count("|") for ln in markdown.splitlines() if ln.startswith("|")}


@pytest.mark.parametrize(
    "overrides",
    [
        ["seed=1", "model.C=0.5"],
        [r"tracking.experiment=my\ lab", "seed=2"],
        ["tracking.experiment='a b'", '+x="it\'s"', "~model.C"],
        ["seed=range(1,3)", "model.C=[1,2]", "data.name=ü €", "a=$HOME", "b=*"],
        [],
    ],
)
def test_overrides_tag_splits_back_into_the_same_overrides(overrides: list[str]) -> None:
    tag = join_overrides(overrides)
    assert split_overrides(tag) == overrides
    if all(o.replace("=", "").replace(".", "").isalnum() for o in overrides):
        assert tag == " ".join(overrides)  # plain overrides read as typed


def test_overrides_tag_without_shell_quoting_is_split_at_spaces() -> None:
    assert split_overrides("seed=1 model.name='a") == ["seed=1", "model.name='a"]


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("tracking.uri=https://alice:tok@host/x", "tracking.uri=https://***@host/x"),
        (r"tracking.uri=http\://alice\:tok@127.0.0.1\:5000", r"tracking.uri=http\://***@127.0.0.1\:5000"),
        ("postgresql+psycopg2://u:p@db/lab and ftp://x@y", "postgresql+psycopg2://***@db/lab and ftp://***@y"),
        ("sqlite:///dir@1/mlflow.db", "sqlite:///dir@1/mlflow.db"),  # no user info: a path
        ("https://alice:p@ss@host/x", "https://***@host/x"),  # up to the authority's last @
        ("https://host/?u=a@b", "https://host/?u=a@b"),  # an @ in the query is no user info
        ("https://host?u=a@b", "https://host?u=a@b"),
        ("seed=1 model.C=0.5 a@b", "seed=1 model.C=0.5 a@b"),
    ],
)
def test_credentials_in_urls_are_redacted_from_text(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted


def test_markdown_tables_keep_one_column_count_with_and_without_metrics() -> None:
    killed = JobRow("0", ["seed=1"], "KILLED", {})
    unknown = JobRow("1", None, "FINISHED", {"accuracy": 0.5})
    assert column_counts(summarize_rows([killed]).to_markdown()) == {4, 3}  # jobs: 3 columns; groups: 2
    summary: Summary = summarize_rows([killed, unknown, job(["seed=2"])])
    assert [g.config for g in summary.groups] == [""]  # the unknown row is in no group
    assert column_counts(summary.to_markdown()) == {5, 4}


ABOVE_SWEEPS = {
    "tracked": ("seed=1,2",),
    "untracked": ("seed=1,2", "tracking=none"),
    "untracked optuna": ("search=optuna", "hydra.sweeper.n_trials=2", "tracking=none"),
    # stopped before Optuna saved its results: only the jobs' hydra.yaml name the sweep dir
    "untracked optuna, no results": ("search=optuna", "hydra.sweeper.n_trials=2", "tracking=none"),
    "untracked optuna, no results, meta": (
        *("search=optuna", "hydra.sweeper.n_trials=2", "tracking=none", "hydra.output_subdir=meta"),
    ),
}


@pytest.mark.parametrize("tracking", ["tracking.log_model=false", "tracking=none"])
def test_a_dir_of_single_runs_is_refused_as_a_sweep(cli: Cli, tracking: str) -> None:
    """``outputs/runs/<day>`` holds single runs: not one sweep's jobs, whatever their dirs
    look like (known by Hydra's saved mode, or by their records)."""
    for name in ("a", "b"):
        assert cli.run(f"hydra.run.dir=outputs/runs/{name}", tracking).code == 0
    res = cli.run("outputs/runs", "--no-log", module="lab.report")
    assert res.code == 2, res.stderr
    assert "SWEEP 'outputs/runs' holds single runs (outputs/runs/a, outputs/runs/b), not a sweep's jobs" in res.stderr
    assert not (cli.cwd / "outputs" / "runs" / "summary.csv").exists()


@pytest.mark.parametrize("case", ABOVE_SWEEPS)
def test_a_dir_above_sweep_dirs_is_refused_naming_them(cli: Cli, case: str) -> None:
    """``outputs/`` holds sweep dirs: each would pass for one job of a one-job "sweep"."""
    assert cli.sweep(*ABOVE_SWEEPS[case], "tracking.log_model=false").code == 0
    if "no results" in case:
        (cli.cwd / "outputs" / "sweep" / "optimization_results.yaml").unlink()
    res = cli.run("outputs", "--no-log", module="lab.report")
    assert res.code == 2, res.stderr
    assert "SWEEP 'outputs' holds sweep dirs, not job dirs: pass one of them (outputs/sweep)" in res.stderr
    assert not (cli.cwd / "outputs" / "summary.csv").exists()
    # while the sweep dir itself is a sweep to report on
    assert cli.run("outputs/sweep", "--no-log", module="lab.report").code == 0


def test_a_reproduced_sweep_job_is_not_taken_for_its_sweep(cli: Cli) -> None:
    """A reproduction keeps its original's ``hydra.yaml``, which names the original's sweep
    dir: that is no sweep dir below ``outputs/``, the less so once it is deleted."""
    assert cli.sweep("seed=${hydra:job.num}", "model.C=0.5,1", "tracking=none").code == 0
    assert cli.run("outputs/sweep/1", module="lab.reproduce").code == 0
    shutil.rmtree(cli.cwd / "outputs" / "sweep")
    res = cli.run("outputs", "--no-log", module="lab.report")
    assert res.code == 0, res.stderr
    assert "lab: 1 job, 1 finished" in res.stdout
