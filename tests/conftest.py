"""Shared fixtures: the real config composed with Hydra's compose API, and the real CLI
run as a subprocess against a temporary MLflow sqlite store."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import Run
from omegaconf import DictConfig

from lab.config import TrainConfig, register_configs, to_typed
from lab.train import CONFIG_DIR

register_configs()


ROOT = Path(__file__).resolve().parents[1]


def just_exe() -> str:
    """The locked environment's ``just`` (a dev dependency), else one on PATH."""
    exe = Path(sys.executable).parent / "just"
    found = str(exe) if exe.exists() else shutil.which("just")
    if found is None:
        pytest.skip("just not installed: run `uv sync --locked`")
    return found


MakeConfig = Callable[..., TrainConfig]


@pytest.fixture
def make_config() -> Iterator[MakeConfig]:
    """compose(overrides) -> TrainConfig, from the real conf/ dir."""

    def _make(*overrides: str) -> TrainConfig:
        return to_typed(compose_raw(*overrides))

    yield _make
    GlobalHydra.instance().clear()


def compose_raw(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@dataclass
class Cli:
    """Runs ``python -m <module>`` in ``cwd`` with the store at ``cwd/mlflow.db``."""

    cwd: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.cwd / 'mlflow.db'}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HYDRA_"))}
        # faulthandler: a hung launch is sent SIGABRT, on which it prints its stacks (finish)
        env.update(MLFLOW_TRACKING_URI=self.uri, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
        env.update(extra)
        return env

    def run(self, *args: str, module: str = "lab.train", **env: str) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=self.cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str, stdout: int = subprocess.PIPE, **env: str) -> subprocess.Popen[str]:
        """``lab.train`` with ``args``, started and not waited for; in its own process group,
        like a shell job: ``os.killpg`` on it is a Ctrl-C in a terminal."""
        return subprocess.Popen(
            [sys.executable, "-m", "lab.train", *args],
            cwd=self.cwd,
            env=self.env(**env),
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finish(self, proc: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
        """The stdout and stderr of ``proc`` (from :meth:`start`) once it has exited. Still
        running after ``timeout`` s, it is hung: each of its processes (its group, and the
        publisher, in a session of its own) gets SIGABRT, on which faulthandler prints every
        thread's stack, and the test fails showing where each one waited."""
        try:
            return proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in publishers_in(self.cwd):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGABRT)
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            stacks = "\n".join(line for line in err.splitlines() if not line.startswith("Extension modules:"))
            raise AssertionError(f"running after {timeout} s; its stacks at SIGABRT:\n{stacks[-20000:]}") from None

    def train(self, *overrides: str, **env: str) -> Result:
        return self.run(*overrides, "hydra.run.dir=outputs/run", **env)

    def sweep(self, *overrides: str, **env: str) -> Result:
        return self.run("--multirun", *overrides, "hydra.sweep.dir=outputs/sweep", **env)


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sqlite store as lab creates it (MLflow's migrations, then WAL), made once in a
    process of its own so that the file is complete when that process has closed it."""
    path = tmp_path_factory.mktemp("migrated") / "mlflow.db"
    code = "import sys; from lab.publishing import Publisher; Publisher(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], check=True, timeout=300)
    return path


@pytest.fixture
def cli(tmp_path: Path, request: pytest.FixtureRequest) -> Cli:
    """The CLI in ``tmp_path``, whose store already exists (a copy of :func:`migrated_store`),
    as it does for every run but a user's first: creating one costs a run ~3 s of MLflow's
    migrations. Tests marked ``fresh_store`` start with no store at all."""
    if request.node.get_closest_marker("fresh_store") is None:
        shutil.copyfile(request.getfixturevalue("migrated_store"), tmp_path / "mlflow.db")
    return Cli(tmp_path)


def store_runs(uri: str, experiment: str = "lab") -> list[Run]:
    """Every run of ``experiment`` in the store at ``uri``, oldest first."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=10000))


def publishers_in(cwd: Path) -> list[int]:
    """Background publisher processes (``python -m lab.publishing``) working in ``cwd``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"lab.publishing" in (proc / "cmdline").read_bytes() and (proc / "cwd").resolve() == cwd.resolve():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


# A callback for checking that a launcher's workers keep the launch from job to job: as
# counting.py in a dir on the launching (and worker) processes' sys.path,
# `+hydra.callbacks.count._target_=counting.CountJobs`.
COUNTING_CALLBACK = """
import os
from pathlib import Path

from hydra.experimental.callback import Callback


class CountJobs(Callback):
    \"\"\"Writes into each job's dir its process and how many jobs this object has started.\"\"\"

    def __init__(self):
        self.started = 0

    def on_job_start(self, config, **kwargs):
        self.started += 1
        Path(config.hydra.runtime.output_dir, "started.txt").write_text(f"{os.getpid()} {self.started}")
"""


def jobs_started(sweep_dir: Path, n_jobs: int, job_id: str) -> dict[int, list[int]]:
    """For each process that ran a job of ``sweep_dir`` (under ``CountJobs``), the counts its
    callback object had reached at each of its jobs; each job's ``hydra.job.id`` is checked
    against ``job_id`` formatted with the job's number."""
    started: dict[int, list[int]] = {}
    for job in range(n_jobs):
        saved = yaml.safe_load((sweep_dir / str(job) / ".hydra" / "hydra.yaml").read_text())
        assert saved["hydra"]["job"]["id"] == job_id.format(job)
        pid, count = (sweep_dir / str(job) / "started.txt").read_text().split()
        started.setdefault(int(pid), []).append(int(count))
    return started
