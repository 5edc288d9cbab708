"""lab's launcher (lab.launching) must be invisible: its ``run_job`` gives the task, the
callbacks and the job dir exactly what Hydra's own ``run_job`` gives."""

from __future__ import annotations

import ast
import copy
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, setup_globals
from hydra.core.utils import run_job as hydra_run_job
from hydra.experimental.callback import Callback
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ReadonlyConfigError

from lab.config import register_configs
from lab.launching import LabLauncher, copy_without_hydra, set_hydra_config
from lab.launching import run_job as lab_run_job
from lab.train import CONFIG_DIR
from tests.conftest import COUNTING_CALLBACK, Cli, jobs_started

register_configs()

JOBS = [
    ["seed=3", "model.C=0.5"],
    ["model=svm", "split=kfold"],
    ["hydra.job.chdir=true", "+hydra.job.env_set.LAB_PROBE=on", "seed=7"],
    ["hydra.output_subdir=null", "seed=1"],
]


class Recorder(Callback):
    """What the callbacks see: the job's config and its return."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.seen.append(("start", OmegaConf.to_yaml(config), os.getcwd()))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self.seen.append(("end", OmegaConf.to_yaml(config), job_return.return_value, job_return.overrides))


def _run(runner: Any, overrides: list[str], sweep_dir: Path) -> dict[str, Any]:
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = loader.load_configuration("config", overrides=[f"hydra.sweep.dir={sweep_dir}"], run_mode=RunMode.MULTIRUN)
    HydraConfig.instance().set_config(master)
    before = HydraConfig.instance().cfg
    job = loader.load_sweep_config(master, [*overrides, f"hydra.sweep.dir={sweep_dir}"])
    with open_dict(job):
        job.hydra.job.id = job.hydra.job.num = 0
    recorder = Recorder()
    callbacks = Callbacks()
    callbacks.callbacks = [recorder]
    in_task: list[Any] = []

    def task(cfg: DictConfig) -> int:
        hydra = HydraConfig.get()
        in_task.append(
            (
                OmegaConf.to_yaml(cfg),
                OmegaConf.get_type(cfg),
                OmegaConf.is_readonly(cfg),
                OmegaConf.to_yaml(hydra),
                os.getcwd(),
                os.environ.get("LAB_PROBE"),
            )
        )
        return int(cfg.seed)

    ret = runner(
        task_function=task,
        config=job,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
        hydra_context=HydraContext(config_loader=loader, callbacks=callbacks),
        configure_logging=False,
    )
    assert HydraConfig.instance().cfg is before  # restored after the job
    files = {p.relative_to(sweep_dir).as_posix(): p.read_text() for p in sorted(sweep_dir.rglob("*.yaml"))}
    return {
        "cfg": OmegaConf.to_yaml(ret.cfg),
        "cfg_type": OmegaConf.get_type(ret.cfg),
        "hydra_cfg": OmegaConf.to_yaml(ret.hydra_cfg),
        "return": (ret.status, ret.return_value, ret.overrides, ret.task_name, ret.working_dir),
        "in_task": in_task,
        "callbacks": recorder.seen,
        "files": files,
        "cwd_after": os.getcwd(),
        "job_after": OmegaConf.to_yaml(job),
    }


@pytest.mark.parametrize("overrides", JOBS, ids=[" ".join(j) for j in JOBS])
def test_lab_run_job_gives_what_hydra_run_job_gives(overrides: list[str], tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    hydra = _run(hydra_run_job, overrides, sweep_dir)
    for path in sweep_dir.rglob("*.yaml"):
        path.unlink()
    lab = _run(lab_run_job, overrides, sweep_dir)
    assert lab == hydra
    seeds = [int(o.split("=")[1]) for o in overrides if o.startswith("seed=")]
    assert hydra["return"][1] == (seeds[0] if seeds else 42)  # the task really ran
    assert bool(hydra["files"]) == ("hydra.output_subdir=null" not in overrides)


def test_copy_without_hydra_equals_a_deep_copy_with_hydra_deleted() -> None:
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    cfg = loader.load_configuration("config", overrides=["model=random_forest"], run_mode=RunMode.RUN)
    original = OmegaConf.to_yaml(cfg)
    fast = copy_without_hydra(cfg)
    assert "hydra" not in fast
    assert "hydra" in cfg and OmegaConf.to_yaml(cfg) == original  # the source is untouched
    assert cfg.hydra._get_parent() is cfg
    assert OmegaConf.get_type(fast) is OmegaConf.get_type(cfg)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    fast.model.n_estimators = 7  # a real copy: nothing is shared
    assert cfg.model.n_estimators != 7


def _same_tree(a: Any, b: Any, parent_a: Any, parent_b: Any) -> None:
    """Two OmegaConf trees alike node by node: type, metadata, value, and parent links."""
    assert type(a) is type(b)
    assert a._get_parent() is parent_a and b._get_parent() is parent_b
    meta_a, meta_b = vars(a._metadata).copy(), vars(b._metadata).copy()
    assert meta_a == meta_b
    if isinstance(a, (DictConfig, ListConfig)):
        assert a._is_none() == b._is_none() and a._is_missing() == b._is_missing()
        if not (a._is_none() or a._is_missing()):
            keys: list[Any] = list(a.keys()) if isinstance(a, DictConfig) else list(range(len(a)))
            assert keys == (list(b.keys()) if isinstance(b, DictConfig) else list(range(len(b))))
            pairs: list[Any] = [(a._get_node(k), b._get_node(k)) for k in keys]
            for node_a, node_b in pairs:
                _same_tree(node_a, node_b, a, b)
    else:
        assert a._value() == b._value()


@pytest.mark.parametrize("overrides", [*JOBS, ["hydra.verbose=[lab,hydra]", "+hydra.job.env_set.X=1"]])
def test_set_hydra_config_gives_what_hydras_set_config_gives(overrides: list[str]) -> None:
    setup_globals()  # the ${now:...} resolver
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
    cfg = loader.load_sweep_config(master, overrides)
    with open_dict(cfg):
        cfg.hydra.job.id = cfg.hydra.job.num = 0
        cfg.hydra.runtime.output_dir = "/tmp/job"
    _ = cfg.hydra.run.dir, cfg.hydra.sweep.dir  # resolve ${now:...} once, for both configs
    reference_cfg = copy.deepcopy(cfg)
    OmegaConf.copy_cache(from_config=cfg, to_config=reference_cfg)
    before = HydraConfig.instance().cfg
    try:
        HydraConfig.instance().set_config(reference_cfg)
        reference = HydraConfig.instance().cfg
        set_hydra_config(cfg)
        fast = HydraConfig.instance().cfg
    finally:
        HydraConfig.instance().cfg = before
    assert isinstance(fast, DictConfig) and isinstance(reference, DictConfig)
    assert list(fast.keys()) == list(reference.keys()) == ["hydra"]
    assert vars(fast._metadata) == vars(reference._metadata)
    # node by node alike, each hydra node a child of its job config (interpolations reach it)
    _same_tree(fast._get_node("hydra"), reference._get_node("hydra"), cfg, reference_cfg)
    assert fast.hydra is cfg.hydra  # shared, not copied
    assert OmegaConf.to_container(fast, resolve=True) == OmegaConf.to_container(reference, resolve=True)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(reference)
    with pytest.raises(ReadonlyConfigError):
        fast.hydra.job.name = "changed"


TRICKY = {
    "bool_like": ["true", "False", "yes", "off", "~", "null"],
    "number_like": ["1", "-2.5", "1e3", "0x1f", ".inf", "1_000"],
    "text": ["", " leading", "trailing ", "a: b", "# not a comment", "quote's", 'dq"', "tab\there"],
    "unicode": ["ünïcödé", "日本語", "emoji 🙂"],
    "multi": "line one\nline two\n  indented\n",
    "long": "word " * 40,
    "nested": {"list": [1, 2.5, None, True, {"k": "v"}], "empty": {}, "empty_list": []},
    "interp": "${seed}",
    "seed": 3,
}


def test_to_yaml_gives_omegaconfs_exact_text() -> None:
    """lab writes .hydra/*.yaml with libyaml's emitter: the bytes must be OmegaConf's."""
    from lab.launching import libyaml_text, to_yaml

    cfg = OmegaConf.create(TRICKY)
    assert to_yaml(cfg) == OmegaConf.to_yaml(cfg)
    # random strings over the characters where YAML emitters make choices
    alphabet = [*"abcXYZ019 .:-#'\"\\\n\t,[]{}!&*?|>%@`~=", "é", "日", "\u00a0", "\u2028", "\x85", "🙂", "\x07", "\r"]
    rng = random.Random(0)
    for _ in range(1000):
        text = rng.choice(["", "true", "1.5", "null", "0o7"]) + "".join(rng.choices(alphabet, k=rng.randint(0, 30)))
        cfg = OmegaConf.create({"k": text, "l": [text, {"x": text}]})
        assert to_yaml(cfg) == OmegaConf.to_yaml(cfg), repr(text)
    # keys too, some long or empty: PyYAML writes a key of 123+ characters, or an empty one, as a
    # complex key ("? key"), libyaml one of more than 128 UTF-8 bytes
    for _ in range(1000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 12))) * rng.choice([1, 1, 5, 20, 60])
        cfg = OmegaConf.create({text: 1, "x": {text: [text]}})
        assert to_yaml(cfg) == OmegaConf.to_yaml(cfg), repr(text)
    for char, length in [("a", 125), ("é", 100), ("日", 60), ("a", 200), ("", 1)]:
        cfg = OmegaConf.create({char * length: 1})
        assert to_yaml(cfg) == OmegaConf.to_yaml(cfg), (char, length)
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    full = loader.load_configuration("config", overrides=["model=svm"], run_mode=RunMode.MULTIRUN)
    assert to_yaml(full) == OmegaConf.to_yaml(full)
    # a job's own files take libyaml's emitter when its overrides hold characters that Hydra escapes
    # (sqlite\:///..., x\=1): those stay plain scalars, where both emitters agree
    uri = ["tracking.uri=sqlite\\:////tmp/a\\ b/mlflow.db", "tracking.experiment=x\\=1\\,y"]  # as sweepers write them
    escaped = loader.load_configuration("config", overrides=uri, run_mode=RunMode.MULTIRUN)
    assert "sqlite\\:////tmp/a\\ b/mlflow.db" in escaped.hydra.job.override_dirname
    assert "\\" in OmegaConf.to_yaml(escaped.hydra)
    for node in (escaped, escaped.hydra, escaped.hydra.overrides.task):
        assert libyaml_text(node) == OmegaConf.to_yaml(node)
    assert to_yaml(full.hydra.overrides.task) == OmegaConf.to_yaml(full.hydra.overrides.task)


def test_forked_workers_return_every_job_in_order(tmp_path: Path) -> None:
    """``n_jobs=2``: the jobs run in forked processes and come back in job order, a failed
    job with its exception, even one that cannot be pickled back."""
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
    master = loader.load_configuration("config", overrides=[f"hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN)
    HydraConfig.instance().set_config(master)

    class LocalError(Exception):  # a local class: pickle cannot send it back
        pass

    def task(cfg: DictConfig) -> tuple[int, int]:
        if cfg.seed == 2:
            raise LocalError("no seed 2")
        return int(cfg.seed), os.getpid()

    launcher = LabLauncher(n_jobs=2)
    launcher.setup(
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks()), task_function=task, config=master
    )
    runs = launcher.launch([[f"seed={s}"] for s in (1, 2, 3, 4, 5)], initial_job_idx=10)

    assert [r.hydra_cfg.hydra.job.num if r.hydra_cfg else None for r in runs] == [10, 11, 12, 13, 14]
    assert [r.overrides for r in runs] == [[f"seed={s}"] for s in (1, 2, 3, 4, 5)]
    assert [r.status for r in runs] == [JobStatus.COMPLETED, JobStatus.FAILED, *[JobStatus.COMPLETED] * 3]
    assert isinstance(runs[1]._return_value, RuntimeError)
    assert str(runs[1]._return_value).startswith("LocalError: no seed 2")
    done = [r.return_value for r in runs if r.status == JobStatus.COMPLETED]
    assert [seed for seed, _ in done] == [1, 3, 4, 5]
    pids = {pid for _, pid in done}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert all((tmp_path / str(n) / ".hydra" / "config.yaml").exists() for n in range(10, 15))


def test_forked_workers_start_with_scikit_learn_imported(tmp_path: Path) -> None:
    """The launching process imports scikit-learn before it forks its workers, so that no
    worker imports it again at its first job."""
    code = f"""
import os, sys
from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.types import HydraContext, RunMode
from lab.config import register_configs
from lab.launching import LabLauncher
from lab.train import CONFIG_DIR

register_configs()
loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
master = loader.load_configuration("config", overrides=["hydra.sweep.dir={tmp_path}"], run_mode=RunMode.MULTIRUN)
HydraConfig.instance().set_config(master)
launcher = LabLauncher(n_jobs=2)
task = lambda cfg: (os.getpid(), "sklearn" in sys.modules)
context = HydraContext(config_loader=loader, callbacks=Callbacks())
launcher.setup(hydra_context=context, task_function=task, config=master)
assert "sklearn" not in sys.modules
runs = launcher.launch([[f"seed={{s}}"] for s in range(4)], initial_job_idx=0)
print(sorted({{r.return_value for r in runs}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # [(pid, sklearn imported), ...]
    assert seen and all(imported for _, imported in seen), seen


# A forked job whose worker is SIGKILLed while it sends its return back: half a message in
# the pipe. The job returns 100 MB, and a thread of its worker kills it once the kernel
# shows the worker's main thread blocked writing into a pipe (its wchan). Under
# ProcessPoolExecutor the manager thread, reading a result pipe that the executor itself
# holds open, waited for the rest forever, and so did launch().
KILLED_MID_SEND = """
import os, signal, sys, threading, time
from hydra._internal.callbacks import Callbacks
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.hydra_config import HydraConfig
from hydra.types import HydraContext, RunMode
from lab.config import register_configs
from lab.launching import LabLauncher
from lab.train import CONFIG_DIR


def die_mid_send(main):
    wchan = f"/proc/self/task/{main}/wchan"
    while "pipe_write" not in open(wchan).read():
        time.sleep(0.0002)
    print("killed mid-send", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def task(cfg):
    if cfg.seed == 2:
        threading.Thread(target=die_mid_send, args=(threading.get_native_id(),), daemon=True).start()
        return b"x" * 100_000_000
    return cfg.seed


register_configs()
loader = ConfigLoaderImpl(config_search_path=create_config_search_path(CONFIG_DIR))
master = loader.load_configuration("config", overrides=["hydra.sweep.dir=SWEEP_DIR"], run_mode=RunMode.MULTIRUN)
HydraConfig.instance().set_config(master)
launcher = LabLauncher(n_jobs=2)
context = HydraContext(config_loader=loader, callbacks=Callbacks())
launcher.setup(hydra_context=context, task_function=task, config=master)
try:
    launcher.launch([[f"seed={s}"] for s in (1, 2, 3)], initial_job_idx=0)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def test_a_forked_worker_killed_while_sending_its_return_breaks_the_launch(tmp_path: Path) -> None:
    code = KILLED_MID_SEND.replace("SWEEP_DIR", str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "killed mid-send" in done.stderr  # the fault happened where it was meant to
    line = done.stdout.splitlines()[-1]  # after Hydra's log of the launch
    expected = r"BrokenProcessPool: worker \d+ died \(killed by SIGKILL\) before job #1 returned: seed=2"
    assert re.fullmatch(expected, line), line


def test_n_jobs_minus_one_is_one_worker_per_usable_cpu() -> None:
    assert LabLauncher(n_jobs=-1).n_jobs == len(os.sched_getaffinity(0))
    assert LabLauncher().n_jobs == 1


def test_the_launching_process_imports_scikit_learn_only_to_train() -> None:
    """A launch whose jobs run elsewhere (joblib, Ray) reaches its launcher without
    importing scikit-learn, and what a process imports for its first job is frozen too."""
    code = """
import gc, sys
import lab.train
from lab.launching import freeze_imports
assert not any(m == "sklearn" or m.startswith("sklearn.") for m in sys.modules), "sklearn imported"
freeze_imports()
frozen = gc.get_freeze_count()
freeze_imports()
assert gc.get_freeze_count() == frozen, "froze again with nothing new imported"
import lab.training
freeze_imports()
assert gc.get_freeze_count() > frozen, "a job's new imports were left unfrozen"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "ok", done.stderr


HYDRAS_JOBLIB = "hydra.launcher._target_=hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@pytest.mark.parametrize("launcher", ["lab", "hydra"])
def test_joblib_workers_are_sent_the_launch_once(cli: Cli, launcher: str) -> None:
    """``hydra/launcher=joblib`` is lab's subclass: a loky worker unpickles the launch
    (callbacks, config, Hydra's state) at its first job and runs the next ones on it, as a
    forked worker does. Hydra's own class, one override away, sends it with every job."""
    (cli.cwd / "counting.py").write_text(COUNTING_CALLBACK)
    # without the composition cache every job is composed in its worker, where Hydra would
    # warn about conf/hydra/launcher/joblib.yaml each time
    extra = [HYDRAS_JOBLIB] if launcher == "hydra" else ["hydra.sweeper.compose_cache=false"]
    jobs = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+hydra.callbacks.count._target_=counting.CountJobs"]
    res = cli.sweep("seed=range(1,7)", "tracking=none", *jobs, *extra)
    assert res.code == 0, res.stderr
    started = jobs_started(cli.cwd / "outputs" / "sweep", 6, "train_{}")  # the plugin's job ids
    assert 1 <= len(started) <= 2  # loky worker processes
    if launcher == "hydra":
        assert [c for counts in started.values() for c in counts] == [1] * 6
    else:
        assert "validated against ConfigStore schema" not in res.stderr
        assert all(sorted(counts) == list(range(1, len(counts) + 1)) for counts in started.values()), started
        assert max(len(counts) for counts in started.values()) > 1
