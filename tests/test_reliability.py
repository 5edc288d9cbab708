"""Faults lose nothing: failed, interrupted, killed and untracked jobs all end accounted for
(FINISHED, FAILED with a reason, or KILLED), in the outputs dir and in MLflow alike.

Every test runs the real CLI as a subprocess against a real store: sqlite in tmp_path, or a
real ``mlflow server`` on a loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.entities import Run, ViewType

from lab.provenance import process_start
from lab.records import split_overrides
from tests.conftest import Cli, publishers_in, store_runs
from tests.servers import mlflow_server

TERMINAL = {"FINISHED", "FAILED", "KILLED"}
SLOW_JOBS = ["seed=1,2,3,4,5,6", "model=random_forest", "model.n_estimators=300", "data=digits"]
JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
LAUNCHERS = {"basic": [], "joblib": JOBLIB, "forked": ["hydra.launcher.n_jobs=2"]}
DOWN = "http://127.0.0.1:9"  # nothing listens there: connection refused


def kinds(runs: list[Run], kind: str) -> list[Run]:
    return [r for r in runs if r.data.tags.get("lab.kind") == kind]


def wait_for_line(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"{text!r} never printed; exit {proc.wait()}: {proc.stderr.read() if proc.stderr else ''}")


def wait_for_job_in_flight(sweep: Path, started_after: float) -> None:
    """Until some job started after ``started_after`` (epoch seconds) is running: its record
    says RUNNING and it has not written metrics. A job started earlier may be about to
    finish: two forked workers start their first jobs together, and those end together."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in sweep.glob("*/tracking.json"):
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            fresh = data["status"] == "RUNNING" and data["start_time"] >= started_after * 1000
            if fresh and not (record.parent / "metrics.json").exists():
                return
        time.sleep(0.02)
    raise AssertionError("no job in flight within 60 s")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
@pytest.mark.parametrize(("signum", "to_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_interrupted_sweep_ends_killed_and_starts_nothing_more(
    cli: Cli, launcher: str, signum: int, to_group: bool
) -> None:
    proc = cli.start("--multirun", *SLOW_JOBS, "hydra.sweep.dir=outputs/sweep", *LAUNCHERS[launcher])
    wait_for_line(proc, "/6] ")  # one job done
    # a job started after that one ended (a random forest here takes over a second)...
    wait_for_job_in_flight(cli.cwd / "outputs" / "sweep", started_after=time.time() - 0.5)
    # ...and is in its fit, as is the other worker's: forked workers start jobs in
    # lock-step (a job killed before its record exists is test_job_interrupted_before_...)
    time.sleep(0.3)
    (os.killpg if to_group else os.kill)(proc.pid, signum)
    _, err = cli.finish(proc)
    assert proc.returncode == 128 + signum, err
    runs = store_runs(cli.uri)
    [parent] = kinds(runs, "sweep")
    children = kinds(runs, "job")
    assert parent.info.status == "KILLED"
    never = f"; {6 - len(children)} of 6 jobs never started"
    assert parent.data.tags["lab.error"] == f"interrupted by {signal.Signals(signum).name}{never}"
    assert {r.info.status for r in runs} <= TERMINAL
    assert any(c.info.status == "KILLED" for c in children)
    for status in ("FAILED", "KILLED"):
        assert parent.data.metrics[f"jobs_{status.lower()}"] == sum(c.info.status == status for c in children)
    assert all(c.data.tags["lab.error"].startswith("interrupted by SIG") for c in children if c.info.status == "KILLED")
    started = [d for d in (cli.cwd / "outputs" / "sweep").iterdir() if d.name.isdigit()]
    assert len(started) == len(children) < 6  # jobs never started created nothing
    assert "killed" in (cli.cwd / "outputs" / "sweep" / "summary.md").read_text().lower()


# A finalizer that the garbage collector happens to run when the interrupt comes: Python
# prints "Exception ignored in" for what lab's handler raised there, and goes on.
SLOW_FINALIZER = """
import time
from pathlib import Path

from hydra.experimental.callback import Callback


class Slow:
    def __del__(self):
        Path("in-finalizer").touch()
        time.sleep(5)


class SlowFinalizerAtSeed2(Callback):
    def on_job_end(self, config, job_return, **kwargs):
        if config.seed == 2:
            Slow()  # dropped at once: its __del__ runs here
"""


def test_an_interrupt_swallowed_by_a_finalizer_still_stops_the_sweep(cli: Cli) -> None:
    """It used to be lost: the sweep ran all its jobs, FINISHED, and then exited 130."""
    (cli.cwd / "finalizer.py").write_text(SLOW_FINALIZER)
    callback = "+hydra.callbacks.slow._target_=finalizer.SlowFinalizerAtSeed2"
    proc = cli.start("--multirun", "seed=1,2,3,4,5", callback, "hydra.sweep.dir=outputs/sweep")
    deadline = time.monotonic() + 60
    while not (cli.cwd / "in-finalizer").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the finalizer never ran"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)
    _, err = cli.finish(proc)
    assert proc.returncode == 130, err
    assert "Exception ignored in" in err  # Python's report of the swallowed Interrupted
    runs = store_runs(cli.uri)
    [parent] = kinds(runs, "sweep")
    started = len(kinds(runs, "job"))
    assert (parent.info.status, parent.data.tags["lab.error"]) == (
        "KILLED",
        f"interrupted by SIGINT; {5 - started} of 5 jobs never started",
    )
    # seed=2 had trained and written its outputs: FINISHED; no later job started
    assert sorted((r.data.params["seed"], r.info.status) for r in kinds(runs, "job")) == [
        ("1", "FINISHED"),
        ("2", "FINISHED"),
    ]
    assert sorted(d.name for d in (cli.cwd / "outputs" / "sweep").iterdir() if d.name.isdigit()) == ["0", "1"]


# An interrupt lands between any two bytecodes. In OmegaConf setting a value, its clean-up
# then raised AttributeError on the half-set node, and the launch exited 1 as a failed job
# (2 of 42 joblib sweeps interrupted during the jobs' validation). Here the same happens,
# every time, in lab's check of each job: run as `python inject.py`, lab.train's main.
INTERRUPTED_CLEAN_UP = """
import os, signal, sys, time
import lab.sweeping

def check_job(cfg):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
    finally:
        raise AttributeError("'NoneType' object has no attribute '_invalidate_flags_cache'")

lab.sweeping.check_job = check_job
from lab.train import main
sys.argv = ["lab.train", *sys.argv[1:]]
main()
"""


def test_an_error_raised_while_unwinding_from_an_interrupt_exits_as_the_interrupt(cli: Cli) -> None:
    (cli.cwd / "inject.py").write_text(INTERRUPTED_CLEAN_UP)
    args = [sys.executable, "inject.py", "--multirun", "seed=1,2", "hydra.sweep.dir=outputs/sweep"]
    done = subprocess.run(args, cwd=cli.cwd, env=cli.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines()[-1] == "lab: interrupted (SIGINT)"
    assert "job failed" not in done.stderr
    # interrupted while lab checked the jobs, before the first ran: nothing was made
    assert store_runs(cli.uri) == []
    assert not (cli.cwd / "outputs").exists()


@pytest.mark.slow
def test_a_signal_delivered_twice_counts_once(cli: Cli) -> None:
    """A Ctrl-C sent to the process group of `uv run lab.train` without a terminal reaches
    lab twice: from the kill, and forwarded by uv. The second must not cut off the first's
    clean end (it used to kill the launcher at once: the parent ended FAILED, no summary)."""
    proc = cli.start("--multirun", "seed=1,2,3,4,5,6", "model=random_forest", "hydra.sweep.dir=outputs/sweep")
    wait_for_line(proc, "[2/6] ")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.2)  # the first one handled: lab is unwinding
    os.kill(proc.pid, signal.SIGINT)  # what uv forwards
    out, err = cli.finish(proc)
    assert proc.returncode == 130, err
    [parent] = kinds(store_runs(cli.uri), "sweep")
    assert parent.info.status == "KILLED"
    assert "lab: sweep killed" in out
    assert (cli.cwd / "outputs" / "sweep" / "summary.md").exists()


# Stops a job in the few ms between Hydra creating its dir and lab's on_job_start writing
# its record, for as long as a test needs: a module in the CLI's working dir, which
# `python -m` puts on sys.path (forked and loky workers inherit it).
STALL_MODULE = """
import logging, os, time
from pathlib import Path
from hydra.experimental.callback import Callback


def stall():
    Path(f"stalled-{os.getpid()}").touch()
    time.sleep(120)


class StallingFileHandler(logging.FileHandler):
    def __init__(self, *args, **kwargs):
        stall()
        super().__init__(*args, **kwargs)


class StallAtJobStart(Callback):
    def on_job_start(self, config, **kwargs):
        stall()
"""
STALL_AT = {
    # Hydra configures the job's logging after creating its dir: the dir is empty
    "bare_dir": "hydra.job_logging.handlers.file.class=stall.StallingFileHandler",
    # the callback before lab's tracking one: .hydra/ is written, the record is not
    "hydra_files": "hydra.callbacks.validate._target_=stall.StallAtJobStart",
}


def interrupt_when_stalled(cli: Cli, *args: str, stalls: int = 1) -> None:
    """Run the CLI with ``args`` until ``stalls`` jobs are stalled, then Ctrl-C it."""
    (cli.cwd / "stall.py").write_text(STALL_MODULE)
    proc = cli.start(*args)
    deadline = time.monotonic() + 60
    while len(list(cli.cwd.glob("stalled-*"))) < stalls:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = cli.finish(proc)
    assert proc.returncode == 130, err


def killed_sweep(cli: Cli, *args: str, stalls: int = 1) -> tuple[Run, list[Run]]:
    """Interrupt a 3-job sweep into outputs/sweep once ``stalls`` jobs are stalled; its
    KILLED parent run and child runs."""
    interrupt_when_stalled(cli, "--multirun", "seed=1,2,3", "hydra.sweep.dir=outputs/sweep", *args, stalls=stalls)
    runs = store_runs(cli.uri)
    [parent] = [r for r in kinds(runs, "sweep") if r.info.status == "KILLED"]
    uid = parent.data.tags["lab.sweep_uid"]
    return parent, [r for r in kinds(runs, "job") if r.data.tags["lab.sweep_uid"] == uid]


@pytest.mark.parametrize("background", ["true", "false"], ids=["background", "inline"])
def test_an_unreachable_database_store_is_tried_once_not_ten_times(cli: Cli, background: str) -> None:
    """MLflow opens a PostgreSQL store by trying ten times, with back-off (~100 s), before
    it gives up; lab tries once, bounded by ``tracking.timeout_s``, and leaves the record
    pending. Counted here by a loopback listener that drops every connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def drop_all() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=drop_all, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        res = cli.train(
            f"tracking.uri=postgresql+psycopg://lab@127.0.0.1:{port}/mlflow",
            f"tracking.background={background}",
            "tracking.timeout_s=2",
        )
    finally:
        listener.close()
    assert res.code == 3, res.stderr
    assert "OperationalError" in res.stderr and "records stay pending" in res.stderr
    assert (cli.cwd / "outputs" / "run" / "tracking.error.txt").exists()
    # libpq tries with SSL, then without: two connections make one attempt
    assert 1 <= len(accepted) <= 2, len(accepted)


@pytest.mark.parametrize("background", ["true", "false"], ids=["background", "inline"])
def test_a_deleted_experiment_leaves_the_record_pending_saying_so_once(cli: Cli, background: str) -> None:
    """MLflow refuses runs in a deleted experiment; the job's start and its end both fail
    alike, and stderr says it once."""
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    client.delete_experiment(client.create_experiment("gone"))
    res = cli.train("tracking.experiment=gone", "tracking.log_model=false", f"tracking.background={background}")
    assert res.code == 3, res.stderr
    failures = [line for line in res.stderr.splitlines() if "must be in the 'active' state" in line]
    assert len(failures) == 1, res.stderr
    assert "Current state is deleted" in (cli.cwd / "outputs" / "run" / "tracking.error.txt").read_text()


@pytest.mark.parametrize("command", ["sync", "reap", "pending"])
def test_lab_runs_refuses_a_root_that_is_not_a_dir(cli: Cli, command: str) -> None:
    """A mistyped root is an error for every command; only reap runs without the default
    `outputs`, since it also ends abandoned runs that MLflow alone holds."""
    res = cli.run(command, "no/such/dir", module="lab.runs")
    assert res.code == 2, (res.stdout, res.stderr)
    assert "error: root 'no/such/dir' is not a directory" in res.stderr
    default = cli.run(command, module="lab.runs")
    assert default.code == (0 if command == "reap" else 2), default.stderr


# Holds a sweep's second job after lab's tracking recorded its start, until a file "go"
# appears in the launch's working dir.
GATE_MODULE = """
import time
from pathlib import Path
from hydra.experimental.callback import Callback


class GateSecondJob(Callback):
    def on_job_start(self, config, **kwargs):
        if config.hydra.job.num == 1:
            Path("gated").touch()
            deadline = time.monotonic() + 120
            while not Path("go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
"""


@pytest.mark.parametrize("background", ["true", "false"], ids=["background", "inline"])
def test_sync_during_a_launch_leaves_its_records_to_it(cli: Cli, background: str) -> None:
    """`lab.runs sync` while a sweep runs would race the sweep's own publishing: both would
    create the run of a job whose record is not yet published, and MLflow would hold two
    (one of them left RUNNING). It leaves a live launch's records to the launch, saying so."""
    (cli.cwd / "gate.py").write_text(GATE_MODULE)
    proc = cli.start(
        "--multirun",
        "seed=1,2,3",
        "hydra.sweep.dir=outputs/sweep",
        "tracking.log_model=false",
        f"tracking.background={background}",
        "+hydra.callbacks.gate._target_=gate.GateSecondJob",
    )
    try:
        deadline = time.monotonic() + 60
        while not (cli.cwd / "gated").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        # job 1's record as it is in the moment before its publisher takes it: not in MLflow
        (cli.cwd / "outputs" / "sweep" / "1" / "tracking.synced.json").unlink(missing_ok=True)
        # the sweep's record and job 1's: RUNNING, and not in MLflow as such
        left = f"lab: left 2 record(s) to the launch still running (process {proc.pid}), which publishes them"
        pending = cli.run("pending", "outputs", module="lab.runs")
        assert (pending.code, pending.stdout) == (0, ""), pending
        assert left in pending.stderr
        synced = cli.run("sync", "outputs", module="lab.runs")
        assert synced.code == 0, synced.stderr
        assert "lab: 0 record(s) synced" in synced.stdout
        assert left in synced.stderr
    finally:
        (cli.cwd / "go").touch()
    _, err = cli.finish(proc)
    assert proc.returncode == 0, err
    runs = store_runs(cli.uri)
    jobs = kinds(runs, "job")
    assert sorted(r.data.tags["lab.job_num"] for r in jobs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert cli.run("pending", "outputs", module="lab.runs").stdout == ""


@pytest.mark.slow
def test_interrupted_launch_says_which_records_are_pending(cli: Cli) -> None:
    """An interrupted launch whose records did not all reach MLflow says so, as a launch
    that ends normally does: here publishing inline to a store that is down."""
    (cli.cwd / "stall.py").write_text(STALL_MODULE)
    args = ["--multirun", "seed=1,2", "hydra.sweep.dir=outputs/sweep", "tracking.background=false"]
    proc = cli.start(*args, STALL_AT["hydra_files"], MLFLOW_TRACKING_URI=DOWN)
    deadline = time.monotonic() + 60
    while not list(cli.cwd.glob("stalled-*")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = cli.finish(proc)
    assert proc.returncode == 130, err
    assert "of this launch's MLflow records are pending" in err
    pending = cli.run("pending", "outputs", module="lab.runs")
    assert pending.stdout.count("KILLED") == 2, pending.stdout  # the job, and the sweep


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
@pytest.mark.parametrize("stall_at", list(STALL_AT))
def test_job_interrupted_before_its_record_is_killed_too(cli: Cli, launcher: str, stall_at: str) -> None:
    workers = 1 if launcher == "basic" else 2  # each stalls in its first job
    parent, children = killed_sweep(cli, STALL_AT[stall_at], *LAUNCHERS[launcher], stalls=workers)
    sweep = cli.cwd / "outputs" / "sweep"
    started = sorted(d for d in sweep.iterdir() if d.name.isdigit())
    assert len(started) == workers
    children.sort(key=lambda r: int(r.data.tags["lab.job_num"]))
    assert [c.data.tags["lab.job_num"] for c in children] == [d.name for d in started]
    for child, job_dir in zip(children, started, strict=True):
        assert child.info.status == "KILLED"
        assert child.data.tags["lab.error"] == "interrupted by SIGINT"
        assert child.data.tags["lab.output_dir"] == str(job_dir)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.start_time >= parent.info.start_time
        assert "lab.pid" not in child.data.tags  # the launcher's pid would be wrong for a worker's job
        if stall_at == "hydra_files":  # the run on_job_start would have made: params, overrides
            [override] = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
            assert child.data.tags["lab.overrides"] == override
            assert child.data.params["seed"] == override.removeprefix("seed=")
            assert child.data.params["model.C"] == "1.0"
            assert len(child.data.tags["lab.config_sha256"]) == 64
        else:
            assert child.info.run_name == f"job-{job_dir.name}"
            assert child.data.params == {}
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert [row.split(",")[:3] for row in summary[1:]] == [  # stopped before .hydra/: overrides not known
        [d.name, "seed=" + str(int(d.name) + 1) if stall_at == "hydra_files" else "(unknown)", "KILLED"]
        for d in started
    ]


@pytest.mark.slow
def test_job_dirs_named_otherwise_get_no_job_number_from_their_name(cli: Cli) -> None:
    # job 0's dir is "1": its number must not be taken from the name (job 1 has that one)
    _, [child] = killed_sweep(cli, STALL_AT["bare_dir"], "hydra.sweep.subdir=${seed}")
    assert child.info.status == "KILLED"
    assert child.info.run_name == "job-1"
    assert child.data.tags["lab.job_uid"].endswith("-dir:1")
    assert "lab.job_num" not in child.data.tags


@pytest.mark.slow
def test_job_interrupted_in_a_reused_sweep_dir_is_killed_too(cli: Cli) -> None:
    done = cli.sweep("seed=1,2,3", "tracking.log_model=false")
    assert done.code == 0, done.stderr
    # job 0 re-writes .hydra/ in dir 0, which holds the earlier sweep's FINISHED record
    _, [child] = killed_sweep(cli, STALL_AT["hydra_files"])
    assert child.info.status == "KILLED"
    assert child.data.tags["lab.job_num"] == "0"
    assert child.data.params["seed"] == "1"
    earlier = [r for r in kinds(store_runs(cli.uri), "job") if r.info.run_id != child.info.run_id]
    assert sorted(r.info.status for r in earlier) == ["FINISHED"] * 3


@pytest.mark.slow
def test_job_with_another_output_subdir_interrupted_before_its_record_is_killed_too(cli: Cli) -> None:
    _, [child] = killed_sweep(cli, STALL_AT["hydra_files"], "hydra.output_subdir=meta", "model.C=0.5")
    assert (cli.cwd / "outputs" / "sweep" / "0" / "meta" / "hydra.yaml").exists()
    assert child.info.status == "KILLED"
    assert child.data.params["model.C"] == "0.5"  # read from meta/
    assert child.data.tags["lab.job_num"] == "0"
    assert not list((cli.cwd / "outputs" / "sweep").rglob("meta/tracking.json"))


@pytest.mark.slow
@pytest.mark.parametrize("stall_at", list(STALL_AT))
def test_single_run_interrupted_before_its_record_is_killed_too(cli: Cli, stall_at: str) -> None:
    interrupt_when_stalled(cli, "hydra.run.dir=outputs/run", STALL_AT[stall_at], "model.C=0.5")
    [run] = store_runs(cli.uri)
    assert run.info.status == "KILLED"
    assert run.info.run_name == "run-run"
    assert run.data.tags["lab.error"] == "interrupted by SIGINT"
    assert run.data.tags["lab.output_dir"] == str(cli.cwd / "outputs" / "run")
    assert "lab.sweep_uid" not in run.data.tags
    assert "lab.pid" not in run.data.tags
    if stall_at == "hydra_files":  # from .hydra/config.yaml
        assert run.data.params["model.C"] == "0.5"
        assert run.data.params["seed"] == "42"
    else:
        assert run.data.params == {}


@pytest.mark.slow
def test_interrupted_single_run_is_killed(cli: Cli) -> None:
    proc = cli.start("model=random_forest", "model.n_estimators=3000", "data=digits", "hydra.run.dir=outputs/run")
    run_dir = cli.cwd / "outputs" / "run"
    deadline = time.monotonic() + 60
    while not (run_dir / "tracking.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    cli.finish(proc)
    assert proc.returncode == 130
    [run] = store_runs(cli.uri)
    assert run.info.status == "KILLED"
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "forked"])
def test_dead_worker_fails_its_job_and_the_sweep(cli: Cli, launcher: str) -> None:
    proc = cli.start("--multirun", *SLOW_JOBS, "hydra.sweep.dir=outputs/sweep", *LAUNCHERS[launcher])
    sweep = cli.cwd / "outputs" / "sweep"
    deadline = time.monotonic() + 60
    pid = None
    while pid is None and time.monotonic() < deadline:
        records = list(sweep.glob("*/tracking.json"))
        for path in records:
            tags = json.loads(path.read_text())["tags"]
            if tags["lab.pid"] != str(proc.pid):
                pid = int(tags["lab.pid"])
        time.sleep(0.1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the out-of-memory killer, say
    out, err = cli.finish(proc)
    assert proc.returncode == 1, err
    runs = store_runs(cli.uri)
    assert {r.info.status for r in runs} <= TERMINAL
    [parent] = kinds(runs, "sweep")
    jobs = kinds(runs, "job")
    not_started = 6 - len(jobs)
    assert not_started > 0  # the launch ends with its launcher, as Hydra's does
    assert f"; {not_started} of 6 jobs never started; summary" in out
    assert parent.info.status == "FAILED"
    if launcher == "forked":  # which worker died, how, and with which job
        cause = re.search(
            rf"lab: launch failed: (BrokenProcessPool: worker {pid} died \(killed by SIGKILL\) "
            rf"before job #\d returned: seed=\d.*)",
            err,
        )
        assert cause, err
        [lost] = [r for r in jobs if r.data.tags["lab.pid"] == str(pid)]
        assert (lost.info.status, lost.data.tags["lab.error"]) == (
            "FAILED",
            f"its worker process {pid} died (killed by SIGKILL) while it ran this job",
        )
    else:  # loky has killed every worker by the time it says one died, and never says which
        cause = re.search(
            r"lab: launch failed: (TerminatedWorkerError: a joblib worker process died \(\{SIGKILL\(-9\)\}\) "
            r"with one of the jobs in flight; joblib does not say which)",
            err,
        )
        assert cause, err
        lost = None
    stopped = [r for r in jobs if r is not lost and r.info.status != "FINISHED"]
    assert stopped or launcher == "forked"
    for run in stopped:  # not their doing: KILLED, naming the launcher's failure
        assert (run.info.status, run.data.tags["lab.error"]) == (
            "KILLED",
            f"stopped with the launch, which failed: {cause.group(1)}",
        )
    assert (
        parent.data.tags["lab.error"] == f"the launcher failed: {cause.group(1)}; {not_started} of 6 jobs never started"
    )


@pytest.mark.slow
@pytest.mark.fresh_store
def test_interrupt_while_the_store_is_created_leaves_it_whole(cli: Cli) -> None:
    """Inline publishing creates a fresh sqlite store in the launcher (MLflow's migrations,
    seconds of DDL that sqlite cannot roll back there). A Ctrl-C then waits for it: cut off
    half-way, the store would be unusable for good."""
    proc = cli.start("--multirun", "seed=1,2", "tracking.background=false")
    _wait_for_store_creation(cli, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = cli.finish(proc)
    assert proc.returncode == 130, stderr
    assert "letting MLflow finish setting up its store" in stderr
    # the launch, interrupted before any job, is recorded once the store is whole: its
    # parent KILLED, as in a store that existed before
    [parent] = store_runs(cli.uri)
    assert (parent.data.tags["lab.kind"], parent.info.status) == ("sweep", "KILLED")
    res = cli.train("seed=3", "tracking.log_model=false")  # and it takes runs
    assert res.code == 0, res.stderr
    assert [r.info.status for r in store_runs(cli.uri)] == ["KILLED", "FINISHED"]


def _wait_for_store_creation(cli: Cli, proc: subprocess.Popen[str]) -> None:
    """Return once MLflow's migrations of a new store (built aside, as ``mlflow.db.creating``) are under way."""
    deadline = time.monotonic() + 60
    while not (cli.cwd / "mlflow.db.creating").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "no store created"
        time.sleep(0.005)
    time.sleep(0.3)  # into the migrations


@pytest.mark.slow
@pytest.mark.fresh_store
def test_a_store_creation_killed_half_way_leaves_no_half_made_store(cli: Cli) -> None:
    """SIGKILL to the launcher and its publisher (power loss, the OOM killer) while the
    publisher creates the store (MLflow's migrations run in place and are not one
    transaction): a store cut off there used to fail every later open with "table ...
    already exists"."""
    proc = cli.start("seed=1")
    _wait_for_store_creation(cli, proc)
    [publisher] = publishers_in(cli.cwd)  # in a session of its own: a kill of the launcher's group spares it
    os.kill(publisher, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    cli.finish(proc, timeout=60)
    # cut short (the creation takes seconds): no store at all, only the one being built
    cut_short = (cli.cwd / "mlflow.db.creating").exists()
    assert cut_short != (cli.cwd / "mlflow.db").exists()
    res = cli.train("seed=2", "tracking.log_model=false")  # and the next run makes a whole one
    assert res.code == 0, res.stderr
    runs = [(r.data.params["seed"], r.info.status) for r in store_runs(cli.uri)]
    if cut_short:
        assert runs == [("2", "FINISHED")]
    else:  # the creation had ended (a fast machine): the killed run may be there too
        assert ("2", "FINISHED") in runs
    assert not (cli.cwd / "mlflow.db.creating").exists()


def test_another_programs_database_is_not_made_a_store(cli: Cli) -> None:
    """MLflow would add its tables to any sqlite file it is pointed at."""
    (cli.cwd / "mlflow.db").unlink()
    with contextlib.closing(sqlite3.connect(cli.cwd / "mlflow.db")) as db, db:
        db.execute("CREATE TABLE notes (text TEXT)")
    res = cli.train("tracking.log_model=false")
    assert res.code == 2, res.stderr  # refused before the job (lab.validation.sqlite_problem)
    assert "holds another program's tables (notes)" in res.stderr
    # and by the publisher itself, for a file that became one after the launch was checked
    code = "import sys; from lab.publishing import Publisher; Publisher(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, cli.uri], capture_output=True, text=True, timeout=120)
    assert "is a database but not an MLflow store (no experiments, metrics, params, runs, tags table)" in proc.stderr
    with contextlib.closing(sqlite3.connect(cli.cwd / "mlflow.db")) as db:
        assert [row[0] for row in db.execute("SELECT name FROM sqlite_master")] == ["notes"]


@pytest.mark.parametrize("background", ["true", "false"])
def test_once_a_run_returns_mlflow_db_alone_holds_it(cli: Cli, background: str) -> None:
    """The store's WAL is checkpointed into the file and removed when its last connection
    closes: left open, it held the run's last writes, and a copy of mlflow.db alone (a
    backup, a file sent to someone) had no run at all."""
    res = cli.train("tracking.log_model=false", f"tracking.background={background}")
    assert res.code == 0, res.stderr
    assert not (cli.cwd / "mlflow.db-wal").exists()
    copy = cli.cwd / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copyfile(cli.cwd / "mlflow.db", copy)
    [run] = store_runs(f"sqlite:///{copy}")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] > 0.9


@pytest.mark.slow
def test_an_interrupted_inline_launch_leaves_mlflow_db_alone_holding_it(cli: Cli) -> None:
    """`tracking.background=false`, Ctrl-C mid-sweep: the launch's end (its parent KILLED)
    is written at exit, after lab.train's main has returned, and the store is closed after
    that, not before: a copy of mlflow.db alone holds the whole launch."""
    proc = cli.start("--multirun", *SLOW_JOBS, "tracking.background=false", "tracking.log_model=false")
    wait_for_line(proc, "/6] ")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = cli.finish(proc)
    assert proc.returncode == 130, err
    assert not (cli.cwd / "mlflow.db-wal").exists()
    copy = cli.cwd / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copyfile(cli.cwd / "mlflow.db", copy)
    runs = store_runs(f"sqlite:///{copy}")
    [parent] = kinds(runs, "sweep")
    assert parent.info.status == "KILLED"
    assert {r.info.status for r in runs} <= TERMINAL


def test_a_deleted_stores_wal_does_not_come_back_in_the_next_one(cli: Cli) -> None:
    """`rm mlflow.db` after a launch was killed with the store open leaves mlflow.db-wal and
    -shm: the next store is made without them, not with the deleted store's pages."""
    code = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA wal_autocheckpoint=0")  # the writes stay in the WAL, as when cut off
with db:
    db.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage) VALUES ('old', 'x', 'active')")
os._exit(0)  # killed: the WAL is neither checkpointed nor removed
"""
    subprocess.run([sys.executable, "-c", code, str(cli.cwd / "mlflow.db")], check=True, timeout=60)
    assert (cli.cwd / "mlflow.db-wal").stat().st_size > 0
    (cli.cwd / "mlflow.db").unlink()
    res = cli.train("tracking.log_model=false")
    assert res.code == 0, res.stderr
    names = {e.name for e in mlflow.MlflowClient(cli.uri).search_experiments(view_type=ViewType.ALL)}
    assert names == {"Default", "lab"}


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["forked", "joblib"])
def test_workers_and_the_publisher_end_when_the_launcher_is_killed(cli: Cli, launcher: str) -> None:
    """SIGKILL to the launcher alone (the OOM killer): its workers must end too, not wait
    for jobs (forked workers would hold the publisher's stdin open, so that it would never
    end the open job runs) nor idle for joblib's 300 s (loky), a worker without a job too."""
    if launcher == "forked":
        args = [*SLOW_JOBS, *LAUNCHERS["forked"]]
    else:  # three loky workers for two jobs: one never gets a job
        args = ["seed=1,2", *SLOW_JOBS[1:], "hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    proc = cli.start("--multirun", *args, "hydra.sweep.dir=outputs/sweep")
    sweep = cli.cwd / "outputs" / "sweep"
    wait_for_job_in_flight(sweep, started_after=0)
    [publisher] = publishers_in(cli.cwd)
    # with joblib, loky's and multiprocessing's resource trackers too
    workers = [pid for pid in _children(proc.pid) if pid != publisher]
    assert len(workers) == (2 if launcher == "forked" else 5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    try:
        while any(_alive(pid) for pid in [*workers, publisher]):
            assert time.monotonic() < deadline, [pid for pid in [*workers, publisher] if _alive(pid)]
            time.sleep(0.2)
    finally:  # never leave them behind, whatever the outcome
        for pid in [*workers, publisher]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    runs = store_runs(cli.uri)
    jobs = kinds(runs, "job")
    # jobs in flight were stopped with the launcher: KILLED, saying why, however soon
    # Linux reaped their processes; none FAILED, none left RUNNING
    assert jobs and {r.info.status for r in jobs} <= {"FINISHED", "KILLED"}
    killed = [r for r in jobs if r.info.status == "KILLED"]
    assert killed
    assert {r.data.tags["lab.error"] for r in killed} == {f"the launching process {proc.pid} ended before this job did"}
    # the parent run, too, is ended by the publisher, not left RUNNING for `lab.runs reap`
    [parent] = kinds(runs, "sweep")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["lab.error"] == f"the launching process {proc.pid} ended before its sweep did"
    assert json.loads((sweep / "tracking.json").read_text())["status"] == "FAILED"


@pytest.mark.slow
def test_a_single_run_killed_with_its_process_ends_killed(cli: Cli) -> None:
    """SIGKILL to a single run's process (the OOM killer): the publisher, in a session of its
    own, ends the open run KILLED and names the process that ended, on disk and in MLflow."""
    proc = cli.start(*SLOW_JOBS[1:], "model.n_estimators=1000", "hydra.run.dir=outputs/run")
    run_dir = cli.cwd / "outputs" / "run"
    deadline = time.monotonic() + 60
    while not (run_dir / "tracking.json").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started"
        time.sleep(0.02)
    [publisher] = publishers_in(cli.cwd)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while _alive(publisher):
        assert time.monotonic() < deadline, "the publisher did not end"
        time.sleep(0.1)
    assert not (run_dir / "metrics.json").exists()  # killed in its fit, not after it
    why = f"the launching process {proc.pid} ended before this job did"
    [run] = store_runs(cli.uri)
    assert (run.info.status, run.data.tags["lab.error"]) == ("KILLED", why)
    record = json.loads((run_dir / "tracking.json").read_text())
    assert (record["status"], record["error"]) == ("KILLED", why)
    # what it wrote before it was killed goes with it: its config, and its log up to then
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {".hydra", "train.log"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")} == {
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
    }


@pytest.mark.fresh_store
@pytest.mark.slow
def test_killed_launcher_is_reaped_and_synced(cli: Cli) -> None:
    """SIGKILL to everything (launcher, workers, publisher): runs stay RUNNING until
    `lab.runs reap` ends them FAILED; `lab.runs sync` uploads what never reached MLflow."""
    # 20 jobs: the publisher creates the store while the first ones run, and may publish
    # them only once they are finished; the sweep's parent run stays RUNNING throughout.
    jobs = ["seed=range(1,21)", *SLOW_JOBS[1:]]
    proc = cli.start("--multirun", *jobs, "hydra.sweep.dir=outputs/sweep", *JOBLIB)
    sweep = cli.cwd / "outputs" / "sweep"
    deadline = time.monotonic() + 90
    # Not by polling the store: a client opening it while the publisher creates it would
    # migrate it too (lab serialises that with its own lock, which a bare client does not take).
    while not list(sweep.glob("*/tracking.synced.json")):  # a job published: the store is ready
        assert time.monotonic() < deadline, "nothing published within 90 s"
        time.sleep(0.2)
    wait_for_job_in_flight(sweep, started_after=0)
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    # The publisher runs in a session of its own, so a signal to the launcher's process
    # group misses it, and it would end the open runs itself once the launcher is gone:
    # killed first here, as a machine's crash would kill it.
    publishers = publishers_in(cli.cwd)
    assert publishers
    for pid in publishers:
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)  # let orphaned loky workers notice
    assert any(r.info.status == "RUNNING" for r in store_runs(cli.uri))

    res = cli.run("reap", module="lab.runs")
    assert res.code == 0, res.stderr
    assert "abandoned run(s) marked FAILED" in res.stdout
    runs = store_runs(cli.uri)
    running_before = [r for r in runs if r.data.tags.get("lab.error", "").startswith("abandoned: process")]
    assert running_before
    assert all(r.info.status == "FAILED" for r in running_before)
    # a job still RUNNING in MLflow is one that ended on disk before the kill: left to sync
    ended_on_disk = {
        json.loads(path.read_text())["uid"]
        for path in sweep.glob("*/tracking.json")
        if json.loads(path.read_text())["status"] != "RUNNING"
    }
    still_running = [r for r in runs if r.info.status == "RUNNING" and r.data.tags.get("lab.kind") == "job"]
    assert {r.data.tags["lab.job_uid"] for r in still_running} <= ended_on_disk

    first = cli.run("sync", module="lab.runs")
    assert first.code == 0, first.stderr
    assert not [r for r in store_runs(cli.uri) if r.info.status == "RUNNING" and r.data.tags.get("lab.kind") == "job"]
    second = cli.run("sync", module="lab.runs")
    assert "0 record(s) synced" in second.stdout
    runs = store_runs(cli.uri)
    assert len({r.data.tags.get("lab.job_uid") for r in kinds(runs, "job")}) == len(kinds(runs, "job"))
    # a job reaped on disk (its record RUNNING there) reached MLflow with what it had written
    records = {
        r.info.run_id: json.loads(Path(r.data.tags["lab.output_dir"], "tracking.json").read_text()) for r in runs
    }
    reaped = [r for r in kinds(runs, "job") if (records[r.info.run_id]["error"] or "").startswith("abandoned: process")]
    assert reaped
    for run in reaped:
        assert {".hydra", "train.log"} <= {a.path for a in client.list_artifacts(run.info.run_id)}, run.info.run_name
    # the synced jobs found the sweep's parent run again, not a job run with the same lab.sweep_uid
    [parent] = kinds(runs, "sweep")
    assert {r.data.tags["mlflow.parentRunId"] for r in kinds(runs, "job")} == {parent.info.run_id}
    assert client.search_experiments()


@pytest.mark.parametrize("publishing", ["background", "inline"])
def test_unreachable_server_leaves_pending_records_that_sync_uploads_once(
    cli: Cli, tmp_path: Path, publishing: str
) -> None:
    """Inline (``tracking=server``'s way), the sweep's parent run is made before any job runs:
    a store that is down then must not stop the jobs either."""
    extra = ["tracking.background=false"] if publishing == "inline" else []
    started = time.monotonic()
    res = cli.sweep("seed=1,2", *extra, MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    elapsed = time.monotonic() - started
    assert res.code == 3, res.stderr  # trained, but tracking is pending
    assert elapsed < 90  # MLflow's default retries would block for minutes
    assert "lab: job failed" not in res.stderr
    assert "Connection refused" in res.stderr and "python -m lab.runs sync" in res.stderr
    sweep = cli.cwd / "outputs" / "sweep"
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").exists() and (sweep / job / "model.pkl").exists()
        assert "tracking failed" in (sweep / job / "tracking.error.txt").read_text()
    pending = cli.run("pending", "outputs", module="lab.runs")
    assert pending.stdout.count("FINISHED") == 3  # two jobs and the sweep

    # The records are for http://127.0.0.1:9: sent elsewhere only when asked to, since a
    # receipt from the wrong store would keep them from ever reaching their own.
    res = cli.run("sync", module="lab.runs")
    assert res.code == 1, res.stderr
    assert res.stderr.count("its record is for http://127.0.0.1:9, not sqlite:///") == 3
    assert "0 record(s) synced" in res.stdout
    assert not list(sweep.rglob("tracking.synced.json"))
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts", tmp_path / "server.log") as url:
        for attempt in range(2):
            res = cli.run("sync", "--force", module="lab.runs", MLFLOW_TRACKING_URI=url)
            assert res.code == 0, res.stderr
            assert f"{3 if attempt == 0 else 0} record(s) synced" in res.stdout
        runs = store_runs(url)
        assert len(runs) == 3
        [parent] = kinds(runs, "sweep")
        assert {r.data.tags["mlflow.parentRunId"] for r in kinds(runs, "job")} == {parent.info.run_id}
        assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in runs if r != parent)
    assert not (sweep / "0" / "tracking.error.txt").exists()


def test_pending_jobs_of_a_replaced_sweep_record_never_sync_under_the_later_sweep(cli: Cli) -> None:
    """A sweep whose records are pending, then a smaller sweep into the same dir: the later
    sweep's record replaces the earlier one's (said, not silent), and `sync` must not hang
    the earlier sweep's jobs under the later sweep's parent run."""
    fast = "tracking.log_model=false"
    res = cli.sweep("seed=1,2,3", fast, MLFLOW_TRACKING_URI=DOWN)
    assert res.code == 3, res.stderr
    res = cli.sweep("seed=7", fast)
    assert res.code == 0, res.stderr
    assert "held an earlier sweep's record not yet in MLflow (FINISHED)" in res.stderr
    res = cli.run("sync", "--force", module="lab.runs")
    assert res.code == 0, res.stderr
    assert "2 record(s) synced" in res.stdout  # the earlier sweep's jobs 1 and 2
    runs = store_runs(cli.uri)
    [parent] = kinds(runs, "sweep")
    by_seed = {r.data.params["seed"]: r for r in kinds(runs, "job")}
    assert sorted(by_seed) == ["2", "3", "7"]
    assert by_seed["7"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    # the earlier sweep's parent run never reached MLflow: under no parent, not the wrong one
    assert "mlflow.parentRunId" not in by_seed["2"].data.tags
    assert "mlflow.parentRunId" not in by_seed["3"].data.tags
    assert by_seed["2"].info.status == by_seed["3"].info.status == "FINISHED"


def artifact_texts(client: mlflow.MlflowClient, run_id: str, dest: Path, path: str | None = None) -> list[str]:
    """The text of every artifact of the run, in subdirectories too (``.hydra/``, ``model/``)."""
    texts = []
    for art in client.list_artifacts(run_id, path):
        if art.is_dir:
            texts += artifact_texts(client, run_id, dest, art.path)
        else:
            texts.append(Path(client.download_artifacts(run_id, art.path, str(dest))).read_text(errors="replace"))
    return texts


@pytest.mark.parametrize("via", ["env", "override"])
def test_credentials_and_environment_never_reach_the_store_or_outputs(cli: Cli, tmp_path: Path, via: str) -> None:
    """A token in the tracking URI, from MLFLOW_TRACKING_URI or a ``tracking.uri`` override,
    is redacted in everything lab writes and everything the store gets. (Hydra's own files,
    ``.hydra/*.yaml`` and ``multirun.yaml`` in the outputs dir, keep the override as typed.)"""
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts", tmp_path / "server.log") as url:
        secret_uri = url.replace("http://", "http://alice:s3cr3t-token@")
        if via == "env":
            res = cli.sweep("seed=1,2", MLFLOW_TRACKING_URI=secret_uri, LAB_TEST_MARKER="env-marker-42")
        else:
            res = cli.sweep("seed=1,2", f"tracking.uri={secret_uri}", LAB_TEST_MARKER="env-marker-42")
        assert res.code == 0, res.stderr
        runs = store_runs(url)
        assert len(runs) == 3
        client = mlflow.MlflowClient(tracking_uri=url)
        texts = [res.stdout, res.stderr]
        for r in runs:
            texts += [str(r.data.params), str(r.data.tags)]
            logged = artifact_texts(client, r.info.run_id, tmp_path / r.info.run_id)
            assert len(logged) >= (3 if r.data.tags["lab.kind"] == "sweep" else 8)  # .hydra/*, model/*, ...
            texts += logged
    hydra_own = {"config.yaml", "hydra.yaml", "overrides.yaml", "multirun.yaml"} if via == "override" else set()
    outputs = [p for p in (cli.cwd / "outputs").rglob("*") if p.is_file() and p.name not in hydra_own]
    texts += [p.read_text(errors="replace") for p in outputs]
    blob = "\n".join(texts)
    assert "s3cr3t-token" not in blob
    assert "env-marker-42" not in blob
    assert "***@127.0.0.1" in blob  # the redacted form is what gets recorded


@pytest.mark.fresh_store
@pytest.mark.slow
def test_concurrent_writers_on_a_fresh_sqlite_store(cli: Cli) -> None:
    """32 jobs on 4 joblib workers, and a second sweep started at the same moment, all into
    one fresh sqlite store: no lost run, no lock error, no migration race."""
    seeds = "seed=range(1,33)"
    procs = [
        cli.start(
            "--multirun",
            seeds,
            f"hydra.sweep.dir=outputs/sweep{i}",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=4",
            "model.C=0.5",
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert "database is locked" not in err and "alembic" not in err.lower()
    runs = store_runs(cli.uri)
    assert len(kinds(runs, "sweep")) == 2
    jobs = kinds(runs, "job")
    assert len(jobs) == 64
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all({"seed", "model.C", "data.name"} <= set(r.data.params) for r in jobs)
    assert all({"accuracy", "f1_macro"} <= set(r.data.metrics) for r in jobs)
    dirs = {r.data.tags["lab.output_dir"] for r in jobs}
    assert len(dirs) == 64
    import sqlite3

    with sqlite3.connect(cli.cwd / "mlflow.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_run_with_tracking_down_exits_1_for_the_job_and_sync_says_why_in_one_line(cli: Cli) -> None:
    res = cli.train("split=kfold", "split.n_splits=60", MLFLOW_TRACKING_URI=DOWN)
    assert res.code == 1, res.stderr  # the job failed: that, not the pending record, sets the code
    assert "lab: job failed: ValueError" in res.stderr
    assert "records are pending" in res.stderr
    assert "Traceback" not in res.stderr
    for command in ("sync", "reap"):
        res = cli.run(command, module="lab.runs", MLFLOW_TRACKING_URI=DOWN)
        assert res.code == 1, res.stderr
        assert res.stderr.startswith(f"error: cannot use the MLflow store at {DOWN}: ")
        assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sync", "--tracking-uri", "foo"], "tracking URI foo: scheme '(none)' is not supported"),
        (["reap", "--tracking-uri", "file:./mlruns"], "tracking URI file:./mlruns: scheme 'file' is not supported"),
        (["sync", "--timeout", "-1"], "--timeout -1.0: seconds per request, a finite number > 0"),
        (["reap", "--timeout", "inf"], "--timeout inf: seconds per request, a finite number > 0"),
    ],
)
@pytest.mark.fresh_store
def test_runs_refuses_a_bad_store_or_timeout_before_looking(cli: Cli, args: list[str], expected: str) -> None:
    (cli.cwd / "outputs").mkdir()
    res = cli.run(*args, module="lab.runs")
    assert res.code == 2, res.stderr
    assert expected in res.stderr
    assert "Traceback" not in res.stderr
    assert "synced" not in res.stdout
    assert not (cli.cwd / "mlflow.db").exists()


@pytest.mark.slow
def test_reused_run_dir_holds_and_publishes_only_the_latest_runs_files(cli: Cli) -> None:
    """A fixed ``hydra.run.dir``: what an earlier run left there (metrics, traceback, the
    receipt or the failure note of its record) must not pass for the next run's."""
    run_dir = cli.cwd / "outputs" / "run"
    fast = "tracking.log_model=false"
    res = cli.train("seed=1", fast, MLFLOW_TRACKING_URI=DOWN)
    assert res.code == 3, res.stderr
    res = cli.train("seed=2", fast, "split=kfold", "split.n_splits=60")
    assert res.code == 1, res.stderr  # the job failed; not pending because of the first run's note
    # the first run's record never reached MLflow: replacing it is said, not silent
    assert f"lab: warning: {run_dir} held a record not yet in MLflow (FINISHED" in res.stderr
    assert not (run_dir / "metrics.json").exists()
    res = cli.train("seed=3", fast)
    assert res.code == 0, res.stderr
    assert not (run_dir / "traceback.txt").exists()
    assert not (run_dir / "tracking.error.txt").exists()
    res = cli.train("seed=4", fast, MLFLOW_TRACKING_URI=DOWN)
    assert res.code == 3, res.stderr
    pending = cli.run("pending", "outputs", module="lab.runs")
    assert pending.stdout.count("FINISHED") == 1, pending.stdout  # not hidden by the third run's receipt

    res = cli.run("sync", "--force", module="lab.runs")  # seed=4 was meant for DOWN
    assert res.code == 0, res.stderr
    assert "1 record(s) synced" in res.stdout
    by_seed = {r.data.params["seed"]: r for r in store_runs(cli.uri)}
    assert sorted(by_seed) == ["2", "3", "4"]
    client = mlflow.MlflowClient(tracking_uri=cli.uri)
    failed, finished = by_seed["2"], by_seed["3"]
    assert failed.info.status == "FAILED"
    assert "accuracy" not in failed.data.metrics  # not the first run's
    assert "metrics.json" not in {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert finished.info.status == by_seed["4"].info.status == "FINISHED"
    assert "traceback.txt" not in {a.path for a in client.list_artifacts(finished.info.run_id)}
    res = cli.run(str(run_dir), module="lab.reproduce")
    assert res.code == 0, res.stderr
    assert by_seed["4"].info.run_id in res.stdout  # the dir's own run, not the third's


@pytest.mark.slow
def test_dead_publisher_leaves_the_launch_pending_not_silently_done(cli: Cli) -> None:
    """The background publisher dies mid-sweep: the launch exits 3 saying so, its records are
    pending, and `lab.runs sync` completes MLflow. The sweep's record, written by the first
    job on a forked worker, names the launcher's process and overrides."""
    task = [*SLOW_JOBS, "tracking.log_model=false"]
    proc = cli.start("--multirun", *task, "hydra.launcher.n_jobs=2", "hydra.sweep.dir=outputs/sweep")
    wait_for_line(proc, "[1/6]")
    sweep = cli.cwd / "outputs" / "sweep"
    tags = json.loads((sweep / "tracking.json").read_text())["tags"]
    assert tags["lab.pid"] == str(proc.pid)
    assert tags["lab.pid_start"] == process_start(proc.pid)  # what `lab.runs reap` checks
    assert split_overrides(tags["lab.overrides"]) == task
    [publisher] = publishers_in(cli.cwd)
    os.kill(publisher, signal.SIGKILL)
    _, stderr = cli.finish(proc)
    assert proc.returncode == 3, stderr
    assert f"publisher (pid {publisher}) stopped early (killed by SIGKILL)" in stderr
    assert "records are pending" in stderr
    assert not (sweep / ".lab-queue").exists()
    pending = cli.run("pending", "outputs", module="lab.runs")
    assert "outputs/sweep\n" in pending.stdout  # the parent was never ended
    res = cli.run("sync", module="lab.runs")
    assert res.code == 0, res.stderr
    runs = store_runs(cli.uri)
    [parent] = kinds(runs, "sweep")
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["seed"] for r in kinds(runs, "job")) == [str(s) for s in range(1, 7)]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_interrupt_while_the_sweep_ends_leaves_no_run_running(cli: Cli) -> None:
    proc = cli.start("--multirun", "seed=1,2", "tracking.log_model=false", "hydra.sweep.dir=outputs/sweep")
    sweep = cli.cwd / "outputs" / "sweep"
    deadline = time.monotonic() + 120
    while not (sweep / "summary.md").exists():  # written first; the plot and the parent's end follow
        assert time.monotonic() < deadline and proc.poll() is None, "the sweep never reached its end"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = cli.finish(proc)
    assert proc.returncode == 130, stderr
    runs = store_runs(cli.uri)
    # every job had returned: the sweep's end is recorded as it stood, then the exit is 130
    assert [r.info.status for r in runs] == ["FINISHED"] * 3
    assert json.loads((sweep / "tracking.json").read_text())["status"] == "FINISHED"
    assert (sweep / "report.png").exists()


# Lab's first save of a job record fails, as on a full disk: at the job's end
# (FailFirstFinalSave: its on_job_end raises, and the record stays RUNNING) or at its start
# (FailFirstStartSave: on_job_start raises, and there is no record). Hydra only warns.
FAULTY_MODULE = """
from hydra.experimental.callback import Callback
from lab.records import JobRecord

_save = JobRecord.save


def _fail_first_job_save(finished):
    failed = []

    def save(record):
        if record.finished == finished and record.tags.get("lab.kind") == "job" and not failed:
            failed.append(record.job_dir)
            raise OSError(28, "No space left on device")
        _save(record)

    JobRecord.save = save


class FailFirstFinalSave(Callback):
    def __init__(self):
        _fail_first_job_save(finished=True)


class FailFirstStartSave(Callback):
    def __init__(self):
        _fail_first_job_save(finished=False)


class SlowEndWriter(Callback):  # writes into the job dir well after its metrics (a user's plot)

    def on_job_end(self, config, job_return, **kwargs):
        import time
        from pathlib import Path

        time.sleep(1)
        (Path(config.hydra.runtime.output_dir) / "plot.txt").write_text("late")
"""


def test_job_whose_end_was_never_recorded_is_completed_at_the_launchs_end(cli: Cli) -> None:
    (cli.cwd / "faulty.py").write_text(FAULTY_MODULE)
    res = cli.train("tracking.log_model=false", "+hydra.callbacks.faulty._target_=faulty.FailFirstFinalSave")
    assert res.code == 0, res.stderr
    assert "No space left on device" in res.stderr  # Hydra's warning about lab's on_job_end
    [run] = store_runs(cli.uri)
    # it trained and wrote its metrics: completed from them, not KILLED by the publisher
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] > 0.9


@pytest.mark.parametrize("sweep", [False, True])
def test_job_whose_start_was_never_recorded_is_published_at_the_launchs_end(cli: Cli, sweep: bool) -> None:
    """lab's on_job_start cannot write the first job's record (a full disk): Hydra only warns
    and the job runs. Its run is still made, from its ``.hydra/`` files and metrics."""
    (cli.cwd / "faulty.py").write_text(FAULTY_MODULE)
    args = [
        "tracking.log_model=false",
        "+hydra.callbacks.faulty._target_=faulty.FailFirstStartSave",
        "+hydra.callbacks.late._target_=faulty.SlowEndWriter",  # the dir's last write is not the job's start
    ]
    res = cli.sweep("seed=1,2", *args) if sweep else cli.train(*args)
    assert res.code == 0, res.stderr
    assert "No space left on device" in res.stderr  # Hydra's warning about lab's on_job_start
    all_runs = store_runs(cli.uri)
    jobs = [r for r in all_runs if r.data.tags["lab.kind"] == "job"]
    assert len(jobs) == (2 if sweep else 1)
    for run in jobs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["accuracy"] > 0.9
        assert run.data.params["model.C"] == "1.0"
        assert run.info.end_time - run.info.start_time >= 1000  # started before the late write
    if sweep:
        [parent] = [r for r in all_runs if r.data.tags["lab.kind"] == "sweep"]
        assert parent.info.status == "FINISHED"
        assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parent.info.run_id}
        assert sorted(r.data.params["seed"] for r in jobs) == ["1", "2"]


EXITING_MODULE = """
import sys

from hydra.experimental.callback import Callback


class ExitAtSeed2(Callback):  # a user's callback that ends the launch from inside a job
    def __init__(self, code=3, at="start"):
        self.code, self.at = code, at

    def on_job_start(self, config, **kwargs):
        if config.seed == 2 and self.at == "start":
            sys.exit(self.code)

    def on_job_end(self, config, job_return, **kwargs):  # before lab's: Hydra ends callbacks in reverse
        if config.seed == 2 and self.at == "end":
            sys.exit(self.code)
"""


@pytest.mark.parametrize("launcher", ["single", *LAUNCHERS])
def test_sys_exit_in_a_job_ends_the_launch_with_that_job_failed_and_saying_why(cli: Cli, launcher: str) -> None:
    """As in Hydra, a job's SystemExit is not caught as a job failure: it ends the launch
    (exit 1: lab's 3 would mean "records pending"). Its run is FAILED with the SystemExit
    as the reason (it was "the launcher stopped before this job returned"), the sweep's
    names it, and nothing is left RUNNING."""
    (cli.cwd / "exiting.py").write_text(EXITING_MODULE)
    callback = "+hydra.callbacks.exit._target_=exiting.ExitAtSeed2"
    if launcher == "single":
        res, job_dir = cli.train("seed=2", callback), cli.cwd / "outputs" / "run"
    else:
        res, job_dir = cli.sweep("seed=1,2,3", callback, *LAUNCHERS[launcher]), cli.cwd / "outputs" / "sweep" / "1"
    assert res.code == 1, res.stderr
    assert f"lab: a job exited the launch: SystemExit: 3; traceback in {job_dir / 'traceback.txt'}" in res.stderr
    assert "sys.exit(self.code)" in (job_dir / "traceback.txt").read_text()
    runs = store_runs(cli.uri)
    assert {r.info.status for r in runs} <= TERMINAL
    [exited] = [r for r in kinds(runs, "job") if r.data.tags["lab.output_dir"] == str(job_dir)]
    assert (exited.info.status, exited.data.tags["lab.error"]) == ("FAILED", "SystemExit: 3")
    if launcher != "single":
        [parent] = kinds(runs, "sweep")
        started = len(kinds(runs, "job"))  # with two workers, job 2 may have started before job 1 exited
        never = f"; {3 - started} of 3 jobs never started" if started < 3 else ""
        assert (parent.info.status, parent.data.tags["lab.error"]) == (
            "FAILED",
            f"job 1 exited the launch: SystemExit: 3{never}",
        )
        assert "| 1 | `seed=2` | FAILED: SystemExit: 3 |" in (job_dir.parent / "summary.md").read_text()


def test_sys_exit_in_a_callbacks_job_end_leaves_the_trained_job_finished(cli: Cli) -> None:
    """The job had trained and written its metrics when the callback exited: nothing of it
    is lost (FINISHED), and the launch still says which job ended it."""
    (cli.cwd / "exiting.py").write_text(EXITING_MODULE)
    res = cli.sweep("seed=1,2,3", "+hydra.callbacks.exit._target_=exiting.ExitAtSeed2", "+hydra.callbacks.exit.at=end")
    assert res.code == 1, res.stderr
    assert "lab: a job exited the launch: SystemExit: 3; traceback in" in res.stderr
    runs = store_runs(cli.uri)
    [parent] = kinds(runs, "sweep")
    assert (parent.info.status, parent.data.tags["lab.error"]) == (
        "FAILED",
        "job 1 exited the launch: SystemExit: 3; 1 of 3 jobs never started",
    )
    jobs = {r.data.params["seed"]: r for r in kinds(runs, "job")}
    assert sorted(jobs) == ["1", "2"]  # seed=3 never started
    assert jobs["2"].info.status == "FINISHED" and jobs["2"].data.metrics["accuracy"] > 0.8


def test_sys_exit_0_in_a_job_still_exits_nonzero(cli: Cli) -> None:
    """``sys.exit()`` or ``sys.exit(0)`` in a job: the launch did not finish, its run FAILED."""
    (cli.cwd / "exiting.py").write_text(EXITING_MODULE)
    res = cli.train("seed=2", "+hydra.callbacks.exit._target_=exiting.ExitAtSeed2", "+hydra.callbacks.exit.code=0")
    assert res.code == 1, res.stderr
    assert "lab: a job exited the launch: SystemExit: 0;" in res.stderr
    [run] = store_runs(cli.uri)
    assert (run.info.status, run.data.tags["lab.error"]) == ("FAILED", "SystemExit: 0")
