"""Scale-out for real, all on 127.0.0.1: a Ray cluster (`ray start --head`, in its own
process group, temp dir and working dir) runs the jobs of `hydra/launcher=ray`, and each
job publishes its MLflow run to a shared `mlflow server --serve-artifacts` whose backend
store is a PostgreSQL server from Debian's packages (scripts/start-postgres.sh). Then
submitit's local executor, the stand-in for `hydra/launcher=submitit_slurm`.

The Ray tests skip only when the `ray` extra is not installed, the submitit test only
without the `submitit` extra. Missing PostgreSQL binaries or driver fail, naming the fix.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import sqlalchemy
import yaml
from mlflow.entities import Run

from tests.conftest import COUNTING_CALLBACK, Cli, Result, jobs_started, store_runs
from tests.servers import free_port, mlflow_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
START_POSTGRES = ROOT / "scripts" / "start-postgres.sh"
NEEDS_RAY = "the `ray` extra is not installed: uv sync --locked --extra ray (or --all-extras)"
NEEDS_SUBMITIT = "the `submitit` extra is not installed: uv sync --locked --extra submitit (or --all-extras)"


def _log(message: str) -> None:
    """Start-up timings, shown by `pytest -s`."""
    print(f"[scaleout] {message}", file=sys.stderr)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


# --- the servers ------------------------------------------------------------------------


@contextmanager
def postgres() -> Iterator[str]:
    """A private PostgreSQL on a free loopback port, started (and stopped) by
    scripts/start-postgres.sh in a fresh data dir; yields its URI."""
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/start-postgres.sh "
            "as root, which installs Debian's postgresql package (.ci/run installs it)"
        )
    if importlib.util.find_spec("psycopg") is None:
        pytest.fail("MLflow's PostgreSQL driver is missing: psycopg[binary] belongs in the dev dependency group")
    # Under /tmp, not pytest's 0700 tmp dir: as root the server runs as `postgres`, which
    # must reach its data dir.
    base = Path(tempfile.mkdtemp(prefix="lab-pg-"))
    base.chmod(0o755)
    env = {**os.environ, "LAB_PG_DATA": str(base / "data"), "LAB_PG_PORT": str(free_port())}
    started = time.monotonic()
    try:
        proc = subprocess.run([str(START_POSTGRES)], env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"scripts/start-postgres.sh failed:\n{proc.stderr}"
        uri = proc.stdout.strip()
        assert uri.startswith("postgresql://lab:lab@127.0.0.1:"), uri
        _log(f"PostgreSQL up in {time.monotonic() - started:.1f} s: {uri}")
        again = subprocess.run([str(START_POSTGRES)], env=env, capture_output=True, text=True, timeout=60)
        assert (again.returncode, again.stdout.strip()) == (0, uri), again.stderr  # idempotent
        yield uri
    finally:
        subprocess.run([str(START_POSTGRES), "--stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class RayHead:
    address: str  # host:port of its GCS, for RAY_ADDRESS
    cwd: Path  # where its workers run: not the launching dir
    temp_dir: Path  # its session dir, with the workers' stdout in logs/worker-*.out
    pythonpath: Path  # on its workers' sys.path (PYTHONPATH): counting.py (tests.conftest)


# `ray start` turns token authentication on when ~/.ray/auth_token exists, as any earlier
# local `ray.init()` of this user leaves it, and the driver then fails with InvalidAuthToken.
# The test cluster listens on loopback only: off on both sides, whatever ~/.ray holds.
RAY_AUTH_MODE = "disabled"


@contextmanager
def ray_head(cwd: Path, log: Path, pythonpath: Path) -> Iterator[RayHead]:
    """`ray start --head --block` on loopback ports, with 2 CPUs and ``pythonpath`` as the
    PYTHONPATH of its workers; stopped by signalling its process group (never `ray stop`,
    which stops every Ray of this user)."""
    ray_cli = Path(sys.executable).with_name("ray")
    temp_dir = Path(tempfile.mkdtemp(prefix="lab-ray-"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(
        # 127.0.0.1 as the node address (Ray otherwise advertises and binds the host's
        # external address): single-node clusters only, which this is
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE=RAY_AUTH_MODE,
        PYTHONPATH=str(pythonpath),
        AUTOSCALER_METRIC_PORT=str(free_port()),
        DASHBOARD_METRIC_PORT=str(free_port()),
    )
    args = [str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
    args += ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    for option in (
        "dashboard-port",
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "node-manager-port",
        "object-manager-port",
    ):
        args.append(f"--{option}={free_port()}")
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"ray start did not come up within 180 s:\n{_tail(log)}"
            time.sleep(0.5)
        _log(f"Ray head up in {time.monotonic() - started:.1f} s on 127.0.0.1:{port}")
        yield RayHead(f"127.0.0.1:{port}", cwd, temp_dir, pythonpath)
    finally:
        stopping = time.monotonic()
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        # gcs_server and the monitor can outlive a SIGTERM by half a minute: end the group
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _log(f"Ray head stopped in {time.monotonic() - stopping:.1f} s")
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class Cluster:
    ray: RayHead
    tracking_uri: str  # the MLflow server's URL
    backend_uri: str  # its PostgreSQL store
    artifacts: Path  # where the server keeps artifacts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """PostgreSQL, an MLflow server on it, and a Ray head: started once for the Ray tests."""
    pytest.importorskip("ray", reason=NEEDS_RAY)
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason=NEEDS_RAY)
    base = tmp_path_factory.mktemp("cluster")
    (base / "ray-cwd").mkdir()
    (base / "pythonpath").mkdir()
    (base / "pythonpath" / "counting.py").write_text(COUNTING_CALLBACK)
    with postgres() as backend_uri:
        started = time.monotonic()
        with mlflow_server(backend_uri, base / "artifacts", base / "mlflow.log") as url:
            _log(f"MLflow server on PostgreSQL up in {time.monotonic() - started:.1f} s: {url}")
            with ray_head(base / "ray-cwd", base / "ray.log", base / "pythonpath") as head:
                yield Cluster(head, url, backend_uri, base / "artifacts")


def driver_env(cluster: Cluster) -> dict[str, str]:
    """The launching process's environment for the test cluster."""
    return {
        "RAY_ADDRESS": cluster.ray.address,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the driver's node address: 127.0.0.1 too
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": RAY_AUTH_MODE,
    }


def run_on_ray(cli: Cli, cluster: Cluster, experiment: str, *overrides: str, via_env: bool = True) -> Result:
    """A sweep on the Ray cluster with tracking=server: the cluster's address from RAY_ADDRESS,
    or (via_env=False) from hydra.launcher.ray.init.address."""
    env = {"MLFLOW_TRACKING_URI": cluster.tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment, **driver_env(cluster)}
    address = [] if via_env else [f"hydra.launcher.ray.init.address={cluster.ray.address}"]
    if not via_env:
        del env["RAY_ADDRESS"]
    started = time.monotonic()
    res = cli.sweep(*overrides, "tracking=server", "hydra/launcher=ray", *address, **env)
    _log(f"sweep {' '.join(overrides)} on Ray: {time.monotonic() - started:.1f} s, exit {res.code}")
    return res


def kind(all_runs: list[Run], name: str) -> list[Run]:
    return sorted((r for r in all_runs if r.data.tags.get("lab.kind") == name), key=lambda r: r.info.run_name)


# --- submitit ---------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("background", ["true", "false"])
def test_submitit_local_sweep_is_tracked_like_joblib(cli: Cli, background: str) -> None:
    """Each job is a pickled submitit job in a subprocess of its own. Both publishing modes
    work: the jobs share the launcher's filesystem (its queue dir) and environment."""
    pytest.importorskip("submitit", reason=NEEDS_SUBMITIT)
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason=NEEDS_SUBMITIT)
    started = time.monotonic()
    res = cli.sweep("seed=1,2,3", "hydra/launcher=submitit_local", f"tracking.background={background}")
    _log(f"submitit_local sweep (background={background}): {time.monotonic() - started:.1f} s")
    assert res.code == 0, res.stderr
    assert "3 jobs (3 finished)" in res.stdout
    sweep_dir = cli.cwd / "outputs" / "sweep"
    assert (sweep_dir / ".submitit").is_dir()

    all_runs = store_runs(cli.uri)
    [parent] = kind(all_runs, "sweep")
    children = kind(all_runs, "job")
    assert len(all_runs) == 4
    assert parent.info.status == "FINISHED"
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2", "3"]
    assert len({c.data.tags["lab.pid"] for c in children} | {parent.data.tags["lab.pid"]}) == 4
    for child in children:
        job_dir = Path(child.data.tags["lab.output_dir"])
        assert job_dir.parent == sweep_dir
        logged = json.loads((job_dir / "metrics.json").read_text())["metrics"]
        assert child.data.metrics["accuracy"] == logged["accuracy"]


# --- Ray ----------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_ray_sweep_is_tracked_on_a_shared_server_backed_by_postgresql(cli: Cli, cluster: Cluster) -> None:
    res = run_on_ray(cli, cluster, "ray-sweep", "seed=1,2", "model.C=0.1,1")
    assert res.code == 0, res.stderr
    assert "Connected to Ray cluster" in res.stderr
    # The jobs ran in Ray's workers: their progress lines are in the workers' own stdout
    # files (Ray also streams them to the launcher's console, as "(_run_ray_job pid=...) ...").
    logs = cluster.ray.temp_dir / "session_latest" / "logs"
    worker_out = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.out"))
    assert sorted(re.findall(r"^\[(\d)/4\] seed=", worker_out, re.MULTILINE)) == ["1", "2", "3", "4"]

    # Job dirs are under the launching dir, though Ray's workers run in the head's dir.
    sweep_dir = cli.cwd / "outputs" / "sweep"
    job_dirs = [sweep_dir / str(n) for n in range(4)]
    for job_dir in job_dirs:
        assert (job_dir / "metrics.json").exists(), job_dir
    assert not (cluster.ray.cwd / "outputs").exists()
    assert "4 jobs (4 finished)" in res.stdout

    all_runs = store_runs(cluster.tracking_uri, "ray-sweep")
    [parent] = kind(all_runs, "sweep")
    children = kind(all_runs, "job")
    assert len(all_runs) == 5
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs"] == 4
    assert [c.info.run_name for c in children] == ["job-0", "job-1", "job-2", "job-3"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert {(c.data.params["seed"], c.data.params["model.C"]) for c in children} == {
        ("1", "0.1"),
        ("1", "1.0"),
        ("2", "0.1"),
        ("2", "1.0"),
    }
    # each job published from its own Ray worker process, not from the launcher
    assert parent.data.tags["lab.pid"] not in {c.data.tags["lab.pid"] for c in children}

    client = mlflow.MlflowClient(tracking_uri=cluster.tracking_uri)
    for child in children:
        job_dir = Path(child.data.tags["lab.output_dir"])
        assert job_dir in job_dirs
        logged = json.loads((job_dir / "metrics.json").read_text())["metrics"]
        assert child.data.metrics["accuracy"] == logged["accuracy"]
        assert child.data.metrics["f1_macro"] == logged["f1_macro"]
        assert child.data.params["tracking.uri"] == cluster.tracking_uri
        # artifacts are proxied by the server (mlflow-artifacts:), nothing is read from a shared path
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
        download = cli.cwd / "downloads" / child.info.run_id
        download.mkdir(parents=True)
        for rel in ("metrics.json", ".hydra/config.yaml"):
            got = Path(client.download_artifacts(child.info.run_id, rel, str(download)))
            assert got.read_bytes() == (job_dir / rel).read_bytes(), rel
    assert any(cluster.artifacts.rglob("metrics.json"))  # kept by the server, in its own store

    # The runs live in PostgreSQL, as MLflow reports them.
    engine = sqlalchemy.create_engine(cluster.backend_uri)
    try:
        with engine.connect() as db:
            rows = db.execute(
                sqlalchemy.text(
                    "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e USING (experiment_id)"
                    " WHERE e.name = 'ray-sweep'"
                )
            ).all()
    finally:
        engine.dispose()
    assert {(r[0], r[1]) for r in rows} == {(r.info.run_id, r.info.status) for r in all_runs}


HYDRAS_RAY = "hydra.launcher._target_=hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("launcher", ["lab", "hydra"])
def test_ray_workers_keep_the_launch_from_job_to_job(cli: Cli, cluster: Cluster, launcher: str) -> None:
    """``hydra/launcher=ray`` is lab's subclass: a Ray worker applies the launch (callbacks,
    config, Hydra's state) at its first job and runs the next ones on it, as a joblib worker
    does. Hydra's own class, one override away, sends it with every job. Both compose each
    job in the launching process: its ``hydra.runtime.cwd`` is the launcher's, not the
    worker's (here every job is composed in full, without lab's composition cache)."""
    env = {**driver_env(cluster), "PYTHONPATH": str(cluster.ray.pythonpath)}  # counting.py, for the launcher too
    count = "+hydra.callbacks.count._target_=counting.CountJobs"
    extra = [HYDRAS_RAY] if launcher == "hydra" else ["hydra.sweeper.compose_cache=false"]
    res = cli.sweep("seed=range(1,7)", "tracking=none", "hydra/launcher=ray", count, *extra, **env)
    assert res.code == 0, res.stderr
    assert "6 jobs (6 finished)" in res.stdout
    sweep = cli.cwd / "outputs" / "sweep"
    started = jobs_started(sweep, 6, "job_id_for_{}")  # the plugin's job ids
    for job in range(6):
        saved = yaml.safe_load((sweep / str(job) / ".hydra" / "hydra.yaml").read_text())
        assert saved["hydra"]["runtime"]["cwd"] == str(cli.cwd)
    if launcher == "hydra":
        assert [c for counts in started.values() for c in counts] == [1] * 6
    else:
        assert all(sorted(counts) == list(range(1, len(counts) + 1)) for counts in started.values()), started
        assert max(len(counts) for counts in started.values()) > 1


@pytest.mark.timeout(600)
def test_ray_job_failure_is_a_failed_child_and_fails_the_sweep(cli: Cli, cluster: Cluster) -> None:
    # kfold with more folds than iris's smallest class raises at run time, inside the worker;
    # the cluster's address comes from the config this time
    res = run_on_ray(cli, cluster, "ray-failure", "split=kfold", "split.n_splits=5,60", via_env=False)
    assert res.code == 1, res.stderr
    assert "1 of 2 jobs failed" in res.stderr
    assert "#1 split=kfold split.n_splits=60" in res.stderr
    all_runs = store_runs(cluster.tracking_uri, "ray-failure")
    [parent] = kind(all_runs, "sweep")
    ok, bad = kind(all_runs, "job")
    assert len(all_runs) == 3
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["jobs_failed"] == 1
    assert ok.info.status == "FINISHED"
    assert bad.info.status == "FAILED"
    assert bad.data.tags["lab.error"].startswith("ValueError: split.n_splits=60")
    assert {ok.data.tags["mlflow.parentRunId"], bad.data.tags["mlflow.parentRunId"]} == {parent.info.run_id}
    client = mlflow.MlflowClient(tracking_uri=cluster.tracking_uri)
    path = client.download_artifacts(bad.info.run_id, "traceback.txt", str(cli.cwd))
    assert "Traceback" in Path(path).read_text()
    assert "FAILED" in (cli.cwd / "outputs" / "sweep" / "summary.csv").read_text()


@pytest.mark.timeout(600)
def test_a_terminated_ray_launch_ends_killed(cli: Cli, cluster: Cluster) -> None:
    """ray.init replaces the launcher's SIGTERM handler and Ray's core worker installs a
    native one that aborts: a `kill` used to end the launcher with SIGABRT and the sweep's
    parent FAILED ("the launching process ended"). Now it is lab's: exit 143, parent KILLED,
    the jobs not yet run cancelled."""
    env = {"MLFLOW_TRACKING_URI": cluster.tracking_uri, "MLFLOW_EXPERIMENT_NAME": "ray-sigterm", **driver_env(cluster)}
    jobs = ["seed=range(1,13)", "model=random_forest", "model.n_estimators=300", "data=digits"]
    ray_sweep = [*jobs, "tracking=server", "hydra/launcher=ray", "hydra.sweep.dir=outputs/sweep"]
    proc = cli.start("--multirun", *ray_sweep, stdout=subprocess.DEVNULL, **env)  # Ray's worker logs: unread
    deadline = time.monotonic() + 300
    while not list((cli.cwd / "outputs" / "sweep").glob("*/metrics.json")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = cli.finish(proc, timeout=300)
    assert proc.returncode == 143, err
    assert "lab: interrupted (SIGTERM)" in err
    all_runs = store_runs(cluster.tracking_uri, "ray-sigterm")
    [parent] = kind(all_runs, "sweep")
    assert parent.info.status == "KILLED"
    assert {r.info.status for r in all_runs} <= {"FINISHED", "KILLED"}
    assert len(kind(all_runs, "job")) < 12  # the jobs not started never ran


# --- forked workers on PostgreSQL -------------------------------------------------------


@pytest.mark.timeout(600)
def test_forked_workers_publishing_themselves_into_postgresql_open_their_own_connections(cli: Cli) -> None:
    """`hydra.launcher.n_jobs=2 tracking.background=false`: the launcher opens the store to
    create the sweep's parent run, then forks its workers. Had they kept its pooled psycopg
    connection, jobs would fail to publish ("connection in transaction status INTRANS",
    "server closed the connection unexpectedly") and stay pending."""
    with postgres() as uri:
        overrides = [f"tracking.uri={uri}", "tracking.background=false", "hydra.launcher.n_jobs=2"]
        res = cli.sweep("seed=range(1,9)", *overrides)
        assert res.code == 0, res.stderr
        assert "pending" not in res.stderr
        all_runs = store_runs(uri)
    [parent] = kind(all_runs, "sweep")
    children = kind(all_runs, "job")
    assert len(children) == 8
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all({"accuracy", "f1_macro"} <= set(c.data.metrics) for c in children)
    workers = {c.data.tags["lab.pid"] for c in children}
    assert parent.data.tags["lab.pid"] not in workers and 1 <= len(workers) <= 2
