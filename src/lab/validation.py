"""Rejecting bad input before any work: one short message that names the key, the value
and what is allowed, exit code 2, no traceback, no outputs dir and no MLflow run.

Single runs are checked by :class:`ValidationCallback` in ``on_run_start`` (after Hydra
composed the config, before it creates the run dir); sweeps are checked job by job by
lab's sweeper before the first job is launched. Hydra's own composition errors (unknown
option, bad type, malformed override, broken YAML) are turned into the same short form by
:func:`describe`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import (
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)
from yaml import YAMLError

from lab.config import ConfigError, TrainConfig, to_typed
from lab.outputs import METRICS_FILE, MODEL_FILE, TRACEBACK_FILE, launch_kind, why_not_creatable
from lab.publishing import STORE_TABLES, check_uri, resolve_experiment, resolve_uri
from lab.records import PENDING_NOTE, RECORD_FILE, SYNCED_FILE, redact_text

__all__ = [
    "UsageError",
    "ValidationCallback",
    "check_job",
    "describe",
    "hydra_config",
    "job_hydra_config",
    "note_group_sweep",
    "one_line",
    "refused_as_usage",
    "shown_options",
    "sweep_subdir",
    "task_overrides",
]

USAGE_EXIT = 2
SWEEP_DIR_ALLOWED = "a dir for the sweep (lab's default: outputs/sweeps/${now:…})"
DEFAULT_SUBDIR = "${hydra.job.num}"  # lab's hydra.sweep.subdir, as Hydra's
MAX_EXPERIMENT_NAME = 500  # MLflow's MAX_EXPERIMENT_NAME_LENGTH: a longer name is refused by the store
JOB_FILES = (METRICS_FILE, MODEL_FILE, TRACEBACK_FILE, RECORD_FILE, SYNCED_FILE, PENDING_NOTE)  # in a job's dir


class UsageError(SystemExit):
    """Exit with status 2 after the message was printed; a SystemExit, so that Hydra's
    callback machinery (which turns exceptions into warnings) lets it through."""

    def __init__(self, message: str) -> None:
        super().__init__(USAGE_EXIT)
        self.message = message


def check_job(cfg: DictConfig) -> TrainConfig:
    """Validate one composed job config (and, when it holds one, its ``hydra`` node's
    output paths); raises :class:`ConfigError`."""
    typed = to_typed(cfg)
    if "hydra" in cfg:
        check_output_paths(cfg)
    if typed.tracking.enabled:
        # an empty value (`tracking.uri=`) would quietly mean the default, as null does
        if typed.tracking.uri is not None and not typed.tracking.uri.strip():
            raise ConfigError("tracking.uri", typed.tracking.uri, "a tracking URI, or null for MLFLOW_TRACKING_URI")
        if typed.tracking.experiment is not None and not typed.tracking.experiment.strip():
            allowed = "an experiment name, or null for MLFLOW_EXPERIMENT_NAME (else lab)"
            raise ConfigError("tracking.experiment", typed.tracking.experiment, allowed)
        uri = resolve_uri(typed.tracking.uri)
        problem = check_uri(uri) or sqlite_problem(uri)
        if problem:
            raise ConfigError("tracking.uri", uri.split("@")[-1], problem)
        experiment = resolve_experiment(typed.tracking.experiment)
        if not experiment.strip() or len(experiment) > MAX_EXPERIMENT_NAME:
            key = "tracking.experiment" if typed.tracking.experiment else "MLFLOW_EXPERIMENT_NAME"
            raise ConfigError(key, experiment, f"an experiment name of 1 to {MAX_EXPERIMENT_NAME} characters")
        env_set = OmegaConf.select(cfg, "hydra.job.env_set", default=None) if "hydra" in cfg else None
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            if isinstance(env_set, DictConfig) and name in env_set:
                setting = "tracking.uri" if name == "MLFLOW_TRACKING_URI" else "tracking.experiment"
                allowed = f"not set: a launch's jobs share its store and experiment; set {setting} instead"
                raise ConfigError(f"hydra.job.env_set.{name}", env_set[name], allowed)
    return typed


@functools.lru_cache(maxsize=8)
def sqlite_problem(uri: str) -> str | None:
    """Why the file of a ``sqlite:///`` store cannot be an MLflow store (a dir, a file that
    is not an SQLite database or is another program's, a path below a file), or None; only
    found by MLflow once a job has trained otherwise. Once per process: every job of a
    sweep has the launch's store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = Path(os.path.abspath(unquote(uri[len(prefix) :].partition("?")[0])))
    if path.is_dir():
        return f"a database file; {path} is a directory"
    if not path.exists():  # MLflow makes it, and its missing dirs
        base = path.parent
        while not base.exists():
            base = base.parent
        return None if base.is_dir() else f"a database file in a dir that can be created; {base} is a file"
    try:
        with path.open("rb") as file:
            head = file.read(16)
    except OSError as exc:
        return f"a database file lab can read ({exc.strerror})"
    if not head:
        return None  # empty: MLflow makes its tables in it
    if head != b"SQLite format 3\x00":
        return f"an SQLite database file; {path} is not one"
    import sqlite3

    try:
        # immutable: no lock, and no -wal or -shm file made beside a store in WAL mode
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return None  # locked or half-written: MLflow says what it is when it opens it
    tables = {name for name in tables if not name.startswith(("alembic_", "sqlite_"))}
    if tables and not STORE_TABLES.issubset(tables):  # as lab.publishing refuses it
        return f"an MLflow database; {path} holds another program's tables ({', '.join(sorted(tables)[:3])})"
    return None


def check_output_paths(cfg: DictConfig) -> None:
    """The Hydra settings that say where a job writes (``hydra.run.dir``, or
    ``hydra.sweep.subdir`` below the sweep's dir; ``hydra.output_subdir``;
    ``hydra.job.name``, which names its log) must give it a dir of its own. Hydra takes an
    empty dir for the working dir (the repository), and an ``output_subdir`` outside the
    job's dir is shared by every job of a sweep, which then reads another job's overrides
    as its own. ``hydra.sweep.dir`` is the launch's, checked once by
    :class:`ValidationCallback`. Raises :class:`ConfigError`."""
    from hydra.types import RunMode

    hydra = cfg.hydra
    if hydra.mode == RunMode.MULTIRUN:
        subdir = sweep_subdir(cfg)
        if subdir is not None:
            allowed = f"a relative dir below the sweep dir, one for each job (lab's default: {DEFAULT_SUBDIR})"
            _need_path("hydra.sweep.subdir", subdir, allowed, inside=True, below=True)
    else:
        _need_path("hydra.run.dir", hydra.run.dir, "a dir for the run (lab's default: outputs/runs/${now:…})")
    name = str(hydra.job.name)
    if name in ("", ".", "..") or "/" in name or "\0" in name:  # `a/b` would log into a/
        raise ConfigError("hydra.job.name", name, "a non-empty file name, without '/': the job's log is <name>.log")
    output_subdir = hydra.output_subdir
    if output_subdir is not None:
        allowed = "null, or a relative dir inside the job's dir (Hydra's default: .hydra)"
        _need_path("hydra.output_subdir", output_subdir, allowed, inside=True)
        # a dir named as one of lab's files would stop lab writing that file
        taken = (*JOB_FILES, f"{name}.log")
        if os.path.normpath(str(output_subdir)).split("/")[0] in taken:
            allowed = f"a dir named other than the files lab writes beside it ({', '.join(taken)})"
            raise ConfigError("hydra.output_subdir", str(output_subdir), allowed)


def sweep_subdir(cfg: DictConfig) -> str | None:
    """A sweep job's ``hydra.sweep.subdir``, resolved; None when it is the default, a dir of
    each job's own. Read unresolved first: resolving an interpolation costs 1-3 ms, a cost
    every job of a sweep would pay before the first runs."""
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert isinstance(sweep, dict)
    if sweep.get("subdir") == DEFAULT_SUBDIR:
        return None
    subdir = cfg.hydra.sweep.subdir
    return "" if subdir is None else str(subdir)


def _need_path(key: str, value: Any, allowed: str, *, inside: bool = False, below: bool = False) -> None:
    """``value`` is a non-empty path; with ``inside``, a relative one that does not leave
    its base dir; with ``below``, also not the base dir itself."""
    text = str(value) if value is not None else ""
    normal = os.path.normpath(text) if text.strip() else ""
    if (
        not normal
        or (inside and (os.path.isabs(normal) or normal == ".." or normal.startswith("../")))
        or (below and normal == ".")
    ):
        raise ConfigError(key, text, allowed)


def check_dir_kind(key: str, path: str, kind: str) -> None:
    """A single run's dir (``kind`` "run") or a sweep's ("sweep") may be one an earlier
    launch of the same kind wrote, but not one that holds another kind's outputs: a run
    into a sweep's dir, or into one job's dir of a sweep, would replace that sweep's or
    job's record (and a sweep into a run's dir the run's), which MLflow and
    ``lab.reproduce`` then read as this launch's. Raises :class:`ConfigError`."""
    held = launch_kind(Path(path))
    if held is not None and held != kind:
        raise ConfigError(key, path, f"a dir for a {kind}; this one holds a {held}'s outputs")


def shown_options(options: Iterable[str]) -> str:
    """A config group's options as error messages list them: sorted, without the ``_``
    ones (lab's schemas and other internals), comma-separated."""
    return ", ".join(o for o in sorted(options) if not o.startswith("_"))


def describe(exc: BaseException) -> str | None:
    """The one-line message for a usage error, or None when ``exc`` is not one."""
    if isinstance(exc, ConfigError):
        return f"error: {exc.key}={exc.value!r}: {exc.allowed}"
    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        # Hydra names the group in its message; an option may itself hold "/" (a URL, a subdir)
        named = re.search(r"Available options in '([^']*)'", str(exc))
        path = exc.missing_cfg_file
        if named and path.startswith(named[1] + "/"):
            group, option = named[1], path[len(named[1]) + 1 :]
        else:
            group, _, option = path.rpartition("/")
        choices = shown_options(exc.options)
        return f"error: {group}={option}: unknown option; choose one of: {choices}"
    if isinstance(exc, OverrideParseException):
        text = " ".join(str(exc).split()).split(" See https://")[0]
        if "LexerNoViableAltException" in text and not text.isascii():  # Hydra's unquoted values are ASCII
            text += " (Hydra takes other characters only in a quoted value: \"key='é'\" in the shell)"
        return f"error: malformed override: {text}"
    cause = exc.__cause__ if exc.__cause__ is not None else exc.__context__
    if isinstance(exc, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        return _omegaconf(cause, str(exc))
    if isinstance(exc, OmegaConfBaseException):
        return _omegaconf(exc, "")
    if isinstance(exc, (ConfigCompositionException, MissingConfigException)):
        return "error: " + one_line(str(exc))
    if isinstance(exc, YAMLError):
        return "error: invalid YAML in the config: " + _first_lines(str(exc), 3)
    if isinstance(cause, YAMLError):
        return "error: invalid YAML in the config: " + _first_lines(str(cause), 3)
    return None


def note_group_sweep(message: str, argv: list[str]) -> str:
    """``message`` with a word on where it comes from when it refuses a key of a group the
    command line sweeps (``--multirun model=random_forest,svm model.n_estimators=10``):
    Hydra composes the launch's own config, with the group's default option, before any
    job, and the keys listed are that option's."""
    named = re.match(r"error: \+*(\w+)\.\S*?(=\S*)?: unknown key", message)
    if named is None or not {"--multirun", "-m"} & set(argv):
        return message
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a malformed override is reported on its own
        return message
    group = named[1]
    swept = next((o for o in overrides if o.key_or_group == group and o.is_sweep_override()), None)
    if swept is None:
        return message
    return (
        f"{message} (Hydra checks it first in the launch's own config, which has {group}'s default option, "
        f"not one of {group}={swept.get_value_string()}; a key given once must exist there and in every "
        "option swept: sweep the options that have it on their own)"
    )


def _omegaconf(exc: OmegaConfBaseException, context: str) -> str:
    key = getattr(exc, "full_key", None) or ""
    msg = getattr(exc, "msg", None) or str(exc)
    first = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
    if "not in" in first and "Key" in first:
        allowed = _fields_of(getattr(exc, "object_type", None))
        if key.rpartition(".")[2] in allowed.split(", "):  # a schema field, deleted with ~key
            return f"error: {key}: required; it cannot be deleted (~{key})"
        if allowed or not key or getattr(exc, "object_type", None) not in (None, dict):
            return f"error: {key}: unknown key" + (f"; allowed: {allowed}" if allowed else "")
        # a mapping without a schema (hydra.job.env_set, hydra.sweeper.params): Hydra adds keys
        # with +; a dotted key (model.C) is one key of the mapping only inside braces
        mapping = key.rpartition(".")[0]
        typed = re.search(r"Could not override '([^']*)'", context)
        new_key = typed[1] if typed and typed[1].startswith(key) else key
        rest = new_key[len(mapping) + 1 :]
        form = f"+{mapping}={{{rest}: …}}" if "." in rest else f"+{new_key}=…"
        return f"error: {new_key}: unknown key; a new key of this mapping is added with '+': {form}"
    if key and first.endswith("does not support deletion"):  # `~model.C`: a schema's field
        return f"error: {key}: required; it cannot be deleted (~{key}); set it instead ({key}=…)"
    where = f"{key}: " if key else (_first_lines(context) + ": " if context else "")
    return f"error: {where}{first}"


def _fields_of(obj_type: Any) -> str:
    import dataclasses

    if obj_type is not None and dataclasses.is_dataclass(obj_type):
        return ", ".join(sorted(f.name for f in dataclasses.fields(obj_type)))
    return ""


def _first_lines(text: str, n: int = 1) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines()[:n] if line.strip())


def one_line(text: str, limit: int = 400) -> str:
    """All of a message we know nothing about, on one line: its first line alone may stop
    mid-sentence ("Target 'os.system' is blocklisted because it allows")."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def task_overrides(config: DictConfig) -> list[str]:
    """The overrides as typed (``hydra.overrides.task``), read unresolved as Hydra reads
    them: ``model.C=${oc.env:C}`` is a string holding an interpolation, which iterating
    the list would resolve (or fail on)."""
    overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    assert isinstance(overrides, list)
    return [str(o) for o in overrides]


def fail(message: str) -> UsageError:
    """Print ``message`` (credentials in a URL redacted) and return the exit-2 error to raise."""
    message = redact_text(message)
    sys.stderr.write(message + "\n")
    return UsageError(message)


@contextlib.contextmanager
def job_hydra_config(cfg: DictConfig) -> Iterator[None]:
    """``HydraConfig`` set from a job's own config for the while, as the launcher sets it."""
    from hydra.core.hydra_config import HydraConfig

    from lab.launching import set_hydra_config

    holder = HydraConfig.instance()
    before = holder.cfg
    try:
        set_hydra_config(cfg)
        yield
    finally:
        holder.cfg = before


@contextlib.contextmanager
def hydra_config(config: DictConfig) -> Iterator[None]:
    """``HydraConfig`` set from ``config`` for the while, unless Hydra has set it already.

    Hydra sets it only when a job runs; before that (a single run's ``on_run_start``, a
    sweep's validation, the launch's tracking set-up), ``${hydra:runtime.cwd}`` in a
    setting would not resolve there although it does in the job.
    """
    from hydra.core.hydra_config import HydraConfig

    holder = HydraConfig.instance()
    borrowed = holder.cfg is None
    if borrowed:
        holder.cfg = OmegaConf.masked_copy(config, "hydra")  # type: ignore[assignment]  # as Hydra stores it
    try:
        yield
    finally:
        if borrowed:
            holder.cfg = None


@contextlib.contextmanager
def refused_as_usage(config: DictConfig, what: str = "") -> Iterator[None]:
    """Around a check made in the launching process before any job runs (with
    :func:`hydra_config`): any error becomes one line and exit 2 (:func:`fail`). Hydra
    would turn it into a warning and go on, running the job unchecked or untracked."""
    try:
        with hydra_config(config):
            yield
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise fail(describe(exc) or f"error: {what}{type(exc).__name__}: {one_line(str(exc))}") from None


class ValidationCallback(Callback):
    """Checks a single run's config before Hydra creates its run dir, and the launch's own
    config of a sweep whose sweeper proposes its jobs as it goes (Optuna's)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with refused_as_usage(config):
            check_job(config)
            run_dir = str(config.hydra.run.dir)
            check_dir_kind("hydra.run.dir", run_dir, "run")
            problem = why_not_creatable(run_dir)
            if problem:
                raise ConfigError("hydra.run.dir", run_dir, f"a dir that can be created here ({problem})")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with refused_as_usage(config):  # here, before lab's tracking pins it (an empty dir: the cwd)
            _need_path("hydra.sweep.dir", config.hydra.sweep.dir, SWEEP_DIR_ALLOWED)
            check_dir_kind("hydra.sweep.dir", str(config.hydra.sweep.dir), "sweep")
        # lab's sweeper checks every job before the first; Optuna's knows a trial's values
        # only when it proposes it (and Hydra's basic one composes each job when it runs
        # it), but a bad fixed override (`split.test_size=2`) would fail every job: the
        # launch's config, which holds those, is checked up front, numbered as the first
        # job so that ${hydra:job.num} resolves as it will there.
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
        if "lab_sweeper" not in sweeper:
            params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
            keys = [str(key) for key in params] if isinstance(params, DictConfig) else []
            first = copy.deepcopy(config)
            with open_dict(first):
                first.hydra.job.id = first.hydra.job.num = 0
            try:
                with job_hydra_config(first):
                    check_job(first)
            except ConfigError as exc:
                raise fail(describe(exc) or str(exc)) from None
            except (MissingMandatoryValue, InterpolationResolutionError) as exc:
                # `???`, `${oc.env:UNSET}` or a value of the wrong type: it fails every job,
                # unless each job replaces it
                if not _replaced_per_job(config, exc.full_key or "", keys):
                    raise fail(describe(exc) or str(exc)) from None
            except Exception:  # noqa: BLE001 - checked in each trial
                pass
            _check_search_keys(config, keys)
            if "optuna" in sweeper:
                _check_search_space(config, first)
        if "optuna" in sweeper:
            _check_optuna_settings(config)


def _check_optuna_settings(config: DictConfig) -> None:
    """Settings the Optuna sweeper would refuse only after the launch's parent run exists."""
    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    if isinstance(n_trials, int) and n_trials < 1:
        raise fail(describe(ConfigError("hydra.sweeper.n_trials", n_trials, "an integer >= 1")) or "")
    n_jobs = OmegaConf.select(config, "hydra.sweeper.n_jobs", default=None)
    if isinstance(n_jobs, int) and n_jobs < 1:  # the plugin's loop would never end
        raise fail(describe(ConfigError("hydra.sweeper.n_jobs", n_jobs, "an integer >= 1 (trials per batch)")) or "")
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if storage is not None:
        # optuna 2.10 (hydra-optuna-sweeper 1.2 pins optuna < 3) stamps its schema version on
        # a connection it never commits, which SQLAlchemy 2 (MLflow's) rolls back: every
        # database storage fails with a bare AssertionError once the study starts (optuna#4375)
        allowed = (
            "null (the study lives in the launch; its trials are runs in MLflow): optuna 2.10, which "
            "hydra-optuna-sweeper 1.2 requires, cannot keep a study in a database under SQLAlchemy 2"
        )
        raise fail(describe(ConfigError("hydra.sweeper.storage", storage, allowed)) or "")
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    directions = list(direction) if isinstance(direction, ListConfig) else [direction]
    names = [getattr(d, "name", d) for d in directions]  # hydra_plugins' Direction enum, or its name
    if not names or any(str(n).lower() not in ("minimize", "maximize") for n in names):
        shown = OmegaConf.to_container(direction) if isinstance(direction, ListConfig) else str(direction)
        allowed = "minimize or maximize, or a list of them (one for each objective)"
        raise fail(describe(ConfigError("hydra.sweeper.direction", shown, allowed)) or "")


def _replaced_per_job(config: DictConfig, key: str, searched: list[str]) -> bool:
    """Whether each job of the launch gets its own value for ``key``: the sweeper's
    ``params`` or a sweep on the command line set it (``model.C=0.1,1``, Optuna's
    ``interval(…)``), and no fixed override does (Optuna takes a key given one value on the
    command line out of its search space). True, too, when a group is swept or searched
    (``model=logreg,svm``): which keys a job has then depends on the job."""
    try:
        overrides = OverridesParser.create().parse_overrides(task_overrides(config))
    except Exception:  # noqa: BLE001 - e.g. glob(), which needs the config loader: cannot tell
        return True
    fixed = {o.key_or_group for o in overrides if not o.is_sweep_override()}
    varied = {o.key_or_group for o in overrides if o.is_sweep_override()} | {k.lstrip("+~") for k in searched}
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    if any(k in choices for k in varied):
        return True
    return key in varied and key not in fixed


def _check_search_space(config: DictConfig, first: DictConfig) -> None:
    """Every value an Optuna search can give a key must be allowed, as every job of a grid
    sweep is checked before the first runs: each option of a ``choice`` (a group's option
    too) and both ends of a ``range`` or ``interval``. Found only when a trial draws it, a
    bad one failed that trial, or stopped the search half-way (exit 2) once trials had run.

    ``first`` is the launch's config numbered as its first job. The search space is the
    sweeper's ``params`` and the sweeps on the command line. Leaf keys are not checked when
    a group is searched: which keys exist then depends on the trial."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    searched = [str(key) + "=" + str(value) for key, value in params.items()] if isinstance(params, DictConfig) else []
    try:
        parsed = OverridesParser.create().parse_overrides([*searched, *task_overrides(config)])
    except Exception:  # noqa: BLE001 - e.g. glob(), which needs the config loader: each trial checks its own
        return
    space = [o for o in parsed if o.is_sweep_override()]
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    group_searched = any(o.key_or_group in choices for o in space)
    for override in space:
        key, text = override.key_or_group, override.get_value_string()
        where = f" (in the search space: {key}={text})"
        try:
            create_optuna_distribution_from_override(override)
        except (ValueError, AssertionError) as exc:
            raise fail(describe(ConfigError(key, text, f"a search space Optuna accepts: {exc}")) or "") from None
        value = override.value()
        if isinstance(value, IntervalSweep):
            candidates: list[Any] = [value.start, value.end]
        elif isinstance(value, RangeSweep):
            every = list(override.sweep_iterator())
            candidates = every[:1] + every[-1:]
        else:
            candidates = list(override.sweep_iterator())
        if key in choices:
            loader = GlobalHydra.instance().config_loader()
            options = sorted(loader.get_group_options(key))
            for option in candidates:
                if str(option) not in options:
                    allowed = f"unknown option; choose one of: {shown_options(options)}"
                    raise fail((describe(ConfigError(key, option, allowed)) or "") + where)
            continue
        if group_searched or override.key_or_group.startswith(("+", "~")) or override.is_delete():
            continue
        for candidate in candidates:
            trial = copy.deepcopy(first)
            try:
                OmegaConf.update(trial, key, candidate, merge=False)
                with job_hydra_config(trial):
                    check_job(trial)
            except (ConfigError, OmegaConfBaseException) as exc:
                named = exc.key if isinstance(exc, ConfigError) else getattr(exc, "full_key", None)
                if named == key:  # another key's problem is that key's, or its trial's
                    raise fail((describe(exc) or str(exc)) + where) from None


def _check_search_keys(config: DictConfig, keys: list[str]) -> None:
    """A search's ``hydra.sweeper.params`` keys must be keys of the config it composes each
    trial from (``model.C`` with ``model=random_forest`` would fail every trial). A key that
    picks a group's option (``model: choice(logreg, svm)``) changes which keys exist: then
    each trial is left to check its own. Only the key is looked up, not its value, which
    the trial sets (it may be ``???`` or not resolve here)."""
    choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    if any(key.lstrip("+~") in choices for key in keys):
        return
    for key in keys:
        if key.startswith(("+", "~")) or "/" in key or "[" in key:
            continue  # added or deleted by the trial's override; a group path; a list item
        parent, _, leaf = key.rpartition(".")
        try:
            node = OmegaConf.select(config, parent, throw_on_resolution_failure=False) if parent else config
        except OmegaConfBaseException:
            continue  # a parent that does not resolve here: the trial checks it
        if isinstance(node, ListConfig) or (isinstance(node, DictConfig) and leaf in node.keys()):  # noqa: SIM118 - `in node` is False for ???
            continue
        has = ", ".join(sorted(str(k) for k in node)) if isinstance(node, DictConfig) else ""
        option = f"{parent}={choices[parent]}" if parent in choices else parent
        allowed = f"not a key of the config; {option} has: {has}" if has else "not a key of the config"
        raise fail(describe(ConfigError("hydra.sweeper.params", key, allowed)) or "")
