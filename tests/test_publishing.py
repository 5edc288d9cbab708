"""The MLflow model directory the publisher writes around a job's ``model.pkl`` against the one
``mlflow.sklearn.save_model`` writes for the same estimator, and a real round trip."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pytest
import yaml

from lab.outputs import MODEL_FILE, write_result
from lab.provenance import process_context, process_start, process_state
from lab.publishing import (
    Publisher,
    assign,
    check_uri,
    error_line,
    locked_requirements,
    may_publish_in_background,
    note_pending,
    spawn,
    write_model_dir,
)
from lab.records import PENDING_NOTE, PUBLISHER_FILE, QUEUE_DIR, JobRecord, enqueue
from lab.runs import live_launch, pending_records, reap
from lab.train import CONFIG_DIR
from lab.training import load_dataset, train
from tests.conftest import MakeConfig

VOLATILE = ("model_uuid", "utc_time_created")  # differ between any two saves


@pytest.fixture
def store_uri(tmp_path: Path, migrated_store: Path) -> str:
    """A migrated sqlite store of this test's own, in ``tmp_path``."""
    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def job_record(uri: str, job_dir: Path, name: str, status: str = "RUNNING", **fields: Any) -> JobRecord:
    """The record of job ``name`` (uid ``launch-<name>``) in ``job_dir`` (made here), tagged
    as a job; ``fields`` add to it, ``tags`` to its tags."""
    job_dir.mkdir(parents=True, exist_ok=True)
    tags = {"lab.job_uid": f"launch-{name}", "lab.kind": "job", **fields.pop("tags", {})}
    return JobRecord(
        uid=f"launch-{name}",
        job_dir=str(job_dir),
        run_name=name,
        experiment="lab",
        tracking_uri=uri,
        status=status,
        start_time=1_700_000_000_000,
        tags=tags,
        **fields,
    )


@pytest.mark.parametrize("overrides", [(), ("model=random_forest", "data=wine"), ("model=svm", "split=kfold")])
def test_model_dir_is_what_save_model_writes(
    make_config: MakeConfig, tmp_path: Path, overrides: tuple[str, ...]
) -> None:
    config = make_config(*overrides)
    result = train(config)
    model = result.model
    write_result(result, tmp_path)  # the job's model.pkl
    pickled = tmp_path / MODEL_FILE
    assert {p.name for p in tmp_path.iterdir()} == {MODEL_FILE, "metrics.json"}  # nothing partial left

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    write_model_dir(pickled, ours)
    mlflow.sklearn.save_model(model, str(theirs), serialization_format="pickle", pip_requirements=locked_requirements())

    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for name in ("requirements.txt", "conda.yaml", "python_env.yaml"):
        assert (ours / name).read_text() == (theirs / name).read_text(), name
    mine, reference = (yaml.safe_load((d / "MLmodel").read_text()) for d in (ours, theirs))
    for key in VOLATILE:
        assert mine.pop(key) and reference.pop(key)
    # the sizes differ only by the two pickles' lengths (save_model uses the default protocol)
    assert mine.pop("model_size_bytes") == pickled.stat().st_size
    reference.pop("model_size_bytes")
    assert mine == reference

    X, _ = load_dataset(config.data.name)
    for loaded in (mlflow.sklearn.load_model(str(ours)), mlflow.pyfunc.load_model(str(ours))):
        assert np.array_equal(loaded.predict(X), model.predict(X))


def test_the_background_publisher_logs_a_model_without_loading_pandas_or_pyarrow(
    make_config: MakeConfig, tmp_path: Path, store_uri: str
) -> None:
    """The real publisher process publishes a job, model included, and never loads pandas
    or pyarrow (~42 MB that MLflow's imports would pull in, unused there)."""
    uri = store_uri
    job_dir, queue = tmp_path / "job", tmp_path / "queue"
    result = train(make_config())
    record = job_record(
        uri,
        job_dir,
        "run",
        "FINISHED",
        end_time=1_700_000_001_000,
        metrics=result.metrics,
        artifacts=["metrics.json"],
        model=MODEL_FILE,
    )
    write_result(result, job_dir)
    record.save()
    enqueue(queue, "job", {"job_dir": str(job_dir)})
    proc = assign(spawn(), queue, uri, open_store=True, env={})
    try:
        for _ in range(1200):  # importing MLflow and publishing take a few seconds
            if record.synced or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert record.synced
        mapped = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "_sqlite3" in mapped  # the publisher's libraries are visible here ...
        assert "libarrow" not in mapped  # ... and pyarrow's are not among them
        assert "/pandas/" not in mapped  # nor pandas'
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    run_id = record.receipt()["run_id"]  # type: ignore[index]
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
    mlflow.set_tracking_uri(uri)
    X, _ = load_dataset("iris")
    assert np.array_equal(mlflow.sklearn.load_model(f"runs:/{run_id}/model").predict(X), result.model.predict(X))


def test_a_launchs_records_are_left_to_its_publisher_while_it_drains(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """After its launcher died (SIGKILL), a launch's publisher goes on publishing what the
    launcher queued; `lab.runs sync` and `pending` leave the launch's records to it until it
    has ended, and take them from a dead one."""
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    run_dir = tmp_path / "outputs" / "run"
    job_record(store_uri, run_dir, "run", tags={"lab.host": host, "lab.pid": str(dead.pid)}).save()
    [record] = pending_records(tmp_path / "outputs")
    assert live_launch(record, host) is None  # no launcher, no publisher
    proc = assign(spawn(), run_dir / QUEUE_DIR, store_uri, open_store=False, env={})
    try:
        for _ in range(1200):
            if (run_dir / QUEUE_DIR / PUBLISHER_FILE).exists():
                break
            time.sleep(0.05)
        assert live_launch(record, host) == f"publisher {proc.pid}"
        assert pending_records(tmp_path / "outputs") == []
        assert "lab: left 1 record(s) to the launch still running (publisher " in capsys.readouterr().err
        assert live_launch(record, "another-host") is None
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    assert not (run_dir / QUEUE_DIR).exists()  # the publisher took its file with it
    assert live_launch(record, host) is None
    (run_dir / QUEUE_DIR).mkdir()
    (run_dir / QUEUE_DIR / PUBLISHER_FILE).write_text(f"{proc.pid} {host}\n")  # as a killed one leaves it
    assert live_launch(record, host) is None
    assert [r.uid for r in pending_records(tmp_path / "outputs")] == ["launch-run"]


HDFS_CHECK = """
import sys
from lab.publishing import Publisher, warm_up
warm_up()  # as the background publisher starts: pyarrow kept out
assert sys.modules["pyarrow"] is None
import mlflow.store.artifact.hdfs_artifact_repo as hdfs
assert "HadoopFileSystem" not in vars(hdfs)
publisher = Publisher(sys.argv[1])
publisher._remember_repo("run", "hdfs://namenode:8020/mlflow/1/run/artifacts")  # connects to nothing yet
from pyarrow.fs import HadoopFileSystem
assert vars(hdfs)["HadoopFileSystem"] is HadoopFileSystem
print(type(publisher._repos["run"]).__name__)
"""


def test_the_publisher_lets_pyarrow_in_for_artifacts_on_hdfs(store_uri: str) -> None:
    """MLflow's HDFS artifact repository needs pyarrow, which the publisher keeps out: a
    run whose artifacts go to HDFS gets a repository that has pyarrow's file system."""
    res = subprocess.run(
        [sys.executable, "-c", HDFS_CHECK, store_uri],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "HdfsArtifactRepository"


def test_a_published_record_gets_its_own_receipt_and_loses_an_earlier_failure_note(
    tmp_path: Path, store_uri: str
) -> None:
    """A record that failed to publish once (its start, say) and then succeeded is not
    pending; a receipt names its record, so a later run in the same dir is not covered."""
    uri = store_uri
    job_dir = tmp_path / "job"
    record = job_record(
        uri, job_dir, "0", "FINISHED", end_time=1_700_000_001_000, params={"seed": "1"}, metrics={"accuracy": 0.5}
    )
    record.save()
    note_pending(record, "ConnectionError: an earlier attempt")
    assert not record.synced

    run_id = Publisher(uri).publish(record)
    assert record.synced
    assert record.receipt() == {
        "uid": "launch-0",
        "run_id": run_id,
        "experiment_id": mlflow.MlflowClient(uri).get_experiment_by_name("lab").experiment_id,
        "tracking_uri": uri,
        "status": "FINISHED",
    }
    assert not (job_dir / PENDING_NOTE).exists()
    assert mlflow.MlflowClient(uri).get_run(run_id).info.status == "FINISHED"

    later = dataclasses.replace(record, uid="launch2-0")
    assert later.receipt() is None
    assert not later.synced


def test_a_run_ended_for_want_of_news_loses_its_error_once_its_record_says_finished(
    tmp_path: Path, store_uri: str
) -> None:
    """`lab.runs reap` (or the publisher, after losing the launcher) ends a silent run FAILED
    with a ``lab.error`` tag; when `sync` later publishes the job's FINISHED record, the run
    must not stay tagged with an error that never happened."""
    uri = store_uri
    record = job_record(uri, tmp_path / "job", "0", params={"seed": "1"})
    run_id = Publisher(uri).publish(record)  # the job's start reached MLflow, its end did not
    client = mlflow.MlflowClient(uri)
    client.set_tag(run_id, "lab.error", "abandoned: process 1 on host is gone")  # what reap does
    client.set_terminated(run_id, status="FAILED")
    finished = dataclasses.replace(record, status="FINISHED", end_time=1_700_000_001_000, metrics={"accuracy": 0.5})
    assert Publisher(uri).publish(finished, search=True) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"accuracy": 0.5}
    assert "lab.error" not in run.data.tags


def test_reap_leaves_a_run_whose_record_says_it_finished_to_sync(
    tmp_path: Path, store_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed after a job finished but before its end was published: `reap` must not end its
    run FAILED ("abandoned"); `sync` publishes the record's FINISHED and metrics."""
    from lab.runs import sync

    uri = store_uri
    dead = subprocess.Popen(["true"])
    dead.wait()
    records = []
    for name in ("finished", "cut_off"):
        record = job_record(
            uri,
            tmp_path / "outputs" / name,
            name,
            params={"seed": "1"},
            tags={"lab.host": socket.gethostname(), "lab.pid": str(dead.pid)},
        )
        record.save()
        records.append((record, Publisher(uri).publish(record)))  # its start reached MLflow
    (finished, finished_id), (_, cut_off_id) = records
    finished.status, finished.end_time, finished.metrics = "FINISHED", 1_700_000_001_000, {"accuracy": 0.5}
    finished.save()  # its end did not

    assert reap(tmp_path / "outputs", uri) == 1
    assert "1 abandoned run(s) not reaped: their records say how they ended" in capsys.readouterr().out
    client = mlflow.MlflowClient(uri)
    assert client.get_run(finished_id).info.status == "RUNNING"
    assert client.get_run(cut_off_id).info.status == "FAILED"

    assert sync(tmp_path / "outputs", uri) == (2, 0)  # the reaped record too: its FAILED is on disk
    run = client.get_run(finished_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"accuracy": 0.5}
    assert "lab.error" not in run.data.tags
    assert client.get_run(cut_off_id).info.status == "FAILED"


def test_reap_checks_that_the_pid_is_still_the_runs_process(tmp_path: Path, store_uri: str) -> None:
    """A RUNNING run's ``lab.pid`` may name another process by the time `reap` looks (a
    pid is given to a new process once its own is gone), or a zombie, or a process of an
    earlier boot: those runs are abandoned. A live process that started when
    ``lab.pid_start`` says is not, nor is a live pid of a run tagged before lab wrote
    ``lab.pid_start`` or recorded in another pid namespace (which this one cannot check)."""
    uri = store_uri
    alive = subprocess.Popen(["sleep", "600"])
    zombie = subprocess.Popen(["sleep", "0.2"])  # exits, and is not waited for until the end
    try:
        alive_start, zombie_start, here = process_start(alive.pid), process_start(zombie.pid), process_context()
        assert alive_start is not None and zombie_start is not None and here is not None
        deadline = time.monotonic() + 10
        while (process_state(zombie.pid) or ("?",))[0] != "Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.02)
        started = alive_start.partition("@")[0]
        boot, _, namespace = here.partition(":")
        cases = {  # name: (lab.pid, lab.pid_start or None, reaped)
            "reused": (alive.pid, f"{int(started) - 1}@{here}", True),
            "zombie": (zombie.pid, zombie_start, True),
            "earlier boot": (alive.pid, f"{started}@{boot[::-1]}:{namespace}", True),
            "alive": (alive.pid, alive_start, False),
            "untagged": (alive.pid, None, False),
            "other namespace": (alive.pid, f"{int(started) - 1}@{boot}:{int(namespace) + 1}", False),
        }
        run_ids = {}
        for name, (pid, start, _) in cases.items():
            pid_tags = {"lab.pid": str(pid)} | ({} if start is None else {"lab.pid_start": start})
            tags = {"lab.host": socket.gethostname()} | pid_tags
            record = job_record(uri, tmp_path / "outputs" / name.replace(" ", "_"), name, tags=tags)
            record.save()
            run_ids[name] = Publisher(uri).publish(record)

        assert reap(tmp_path / "outputs", uri) == 3
    finally:
        alive.kill()
        alive.wait()
        zombie.wait()
    client = mlflow.MlflowClient(uri)
    for name, (pid, _, reaped) in cases.items():
        run = client.get_run(run_ids[name])
        on_disk = JobRecord.load(tmp_path / "outputs" / name.replace(" ", "_"))
        expected = "FAILED" if reaped else "RUNNING"
        assert (run.info.status, on_disk.status) == (expected, expected), name
        if reaped:
            assert run.data.tags["lab.error"] == f"abandoned: process {pid} on {socket.gethostname()} is gone"


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        ([], True),
        (["model.C=0.5", "--multirun", "seed=1,2"], True),
        (["tracking=mlflow"], True),
        (["tracking=none"], False),
        (["tracking=server"], False),  # publishes from each job's own process
        (["tracking.enabled=false"], False),
        (["++tracking.enabled=False"], False),
        (["tracking.background=false"], False),
        (["tracking=none", "tracking.enabled=true"], True),  # the key beats the group's file
        (["tracking.enabled=false", "tracking.enabled=true"], True),  # the last one wins, as in Hydra
        (["tracking=none", "tracking=mlflow"], True),
        (["--multirun", "tracking.enabled=true,false"], True),  # some jobs may publish
        (["--multirun", "tracking=none,mlflow"], True),
        (["tracking=nosuch"], True),  # Hydra will say what is wrong; no guess here
        (["--cfg", "job"], False),
        (["--cfg=hydra"], False),
        (["-c", "job"], False),
        (["--help"], False),
        (["--info"], False),
    ],
)
def test_the_early_publisher_is_started_only_when_a_job_may_need_it(argv: list[str], wanted: bool) -> None:
    assert may_publish_in_background(argv, Path(CONFIG_DIR)) is wanted


def test_a_locked_store_is_reported_by_its_driver_error_alone(tmp_path: Path) -> None:
    """SQLAlchemy wraps "database is locked" in an autoflush note, the whole statement with
    its parameters and a link; the line lab prints and writes to tracking.error.txt keeps
    the driver's error."""
    import sqlite3

    import sqlalchemy
    from sqlalchemy import orm

    class Base(orm.DeclarativeBase):
        pass

    class Row(Base):
        __tablename__ = "rows"
        id = sqlalchemy.Column(sqlalchemy.Integer, primary_key=True)

    path = tmp_path / "locked.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    Base.metadata.create_all(engine)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with orm.Session(engine) as session:
            session.add(Row(id=1))
            with pytest.raises(sqlalchemy.exc.OperationalError) as raised:
                session.query(Row).all()  # flushes the insert first
    finally:
        holder.close()
        engine.dispose()
    assert "autoflush" in str(raised.value) and "[SQL: INSERT" in str(raised.value)
    assert error_line(raised.value) == "OperationalError: (sqlite3.OperationalError) database is locked"


SCHEMES = "use one of sqlite, http, https, postgresql, mysql, databricks"


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("databricks", None),  # MLflow's bare form: the default profile
        ("databricks://profile", None),
        ("postgresql+psycopg://lab@127.0.0.1:5432/mlflow", None),
        ("http://127.0.0.1:5000", None),
        ("http://127.0.0.1:99999", "a server's address, with a port of 0-65535, e.g. http://127.0.0.1:5000"),
        (
            "ftp://host/x",
            "scheme 'ftp' is not supported; use one of sqlite, http, https, postgresql, mysql, databricks",
        ),
        (
            "mlflow.db",
            "scheme '(none)' is not supported; use one of sqlite, http, https, postgresql, mysql, databricks",
        ),
    ],
)
def test_check_uri_says_what_is_wrong_with_a_uri(uri: str, problem: str | None) -> None:
    assert check_uri(uri) == problem
