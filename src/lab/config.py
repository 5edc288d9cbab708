"""The typed config: one dataclass schema per config-group option, their registration in
Hydra's ConfigStore, and the checks that Hydra's type system cannot express (ranges,
choices, keys added with ``+``).

Every YAML file under ``conf/<group>/`` names its schema first in its defaults list
(``/schema/<group>/<option>@_here_``), so Hydra type-checks each file and each override
against these classes. :func:`to_typed` turns the composed ``DictConfig`` into real
dataclass instances and is the single gate every job passes before any work.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

__all__ = [
    "ConfigError",
    "DataConfig",
    "HoldoutSplit",
    "KFoldSplit",
    "LogRegConfig",
    "ModelConfig",
    "RandomForestConfig",
    "SplitConfig",
    "SvmConfig",
    "TrackingConfig",
    "TrainConfig",
    "job_container",
    "job_section",
    "register_configs",
    "to_typed",
    "validate",
]

DATASETS = ("iris", "wine", "breast_cancer", "digits")
LOGREG_SOLVERS = ("lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga")
SVM_KERNELS = ("linear", "poly", "rbf", "sigmoid")
RF_CRITERIA = ("gini", "entropy", "log_loss")
# Regularisation: C > 0, and 1/C a finite float (below ~5.6e-309 it is not, and lbfgs
# divides by it); inf, and 1e400 which YAML reads as inf, are refused as not numbers to fit.
C_MIN, C_MAX = 1e-300, 1e300


def _rule(**constraints: Any) -> dict[str, Any]:
    """Field metadata read by :func:`validate`: gt, ge, lt, le, choices, optional."""
    return constraints


class ConfigError(ValueError):
    """A config value that Hydra accepted but ``lab`` does not (out of range, unknown key)."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


# --- data ------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """A scikit-learn bundled dataset; nothing is downloaded."""

    name: str = field(default=MISSING, metadata=_rule(choices=DATASETS))


# --- models: each has a fixed ``name`` that tells the training code which one it is ----


@dataclass
class LogRegConfig:
    """Logistic regression on standardised features."""

    name: str = field(default="logreg", metadata=_rule(choices=("logreg",)))
    C: float = field(default=1.0, metadata=_rule(ge=C_MIN, le=C_MAX))
    max_iter: int = field(default=200, metadata=_rule(ge=1, le=10**9))
    solver: str = field(default="lbfgs", metadata=_rule(choices=LOGREG_SOLVERS))


@dataclass
class RandomForestConfig:
    """A random forest; ``max_depth: null`` grows trees until leaves are pure."""

    name: str = field(default="random_forest", metadata=_rule(choices=("random_forest",)))
    n_estimators: int = field(default=100, metadata=_rule(ge=1, le=100_000))
    max_depth: int | None = field(default=None, metadata=_rule(ge=1, le=100_000))
    criterion: str = field(default="gini", metadata=_rule(choices=RF_CRITERIA))


@dataclass
class SvmConfig:
    """A support-vector classifier on standardised features."""

    name: str = field(default="svm", metadata=_rule(choices=("svm",)))
    C: float = field(default=1.0, metadata=_rule(ge=C_MIN, le=C_MAX))
    kernel: str = field(default="rbf", metadata=_rule(choices=SVM_KERNELS))


ModelConfig = LogRegConfig | RandomForestConfig | SvmConfig


# --- splits ----------------------------------------------------------------------------


@dataclass
class HoldoutSplit:
    """One stratified train/test split."""

    name: str = field(default="holdout", metadata=_rule(choices=("holdout",)))
    test_size: float = field(default=0.2, metadata=_rule(gt=0, lt=1))


@dataclass
class KFoldSplit:
    """Stratified k-fold cross-validation; metrics are fold means plus ``*_std``."""

    name: str = field(default="kfold", metadata=_rule(choices=("kfold",)))
    n_splits: int = field(default=5, metadata=_rule(ge=2))


SplitConfig = HoldoutSplit | KFoldSplit


# --- tracking --------------------------------------------------------------------------


@dataclass
class TrackingConfig:
    """Where and how each job is mirrored into MLflow.

    ``uri`` and ``experiment`` left null take ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_EXPERIMENT_NAME``, then MLflow's default ``sqlite:///mlflow.db`` and ``lab``.
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None
    log_model: bool = True
    # Publish from one helper process on the launching host (fast, one sqlite writer),
    # or from each job's own process (needed when jobs run on other hosts, e.g. Ray).
    background: bool = True
    # Seconds an HTTP tracking server gets before a job's record is left pending on disk.
    timeout_s: float = field(default=10.0, metadata=_rule(gt=0, le=86400))


# --- the whole job ---------------------------------------------------------------------


@dataclass
class TrainConfig:
    """The composed config of one job: what :func:`lab.training.train` receives."""

    seed: int = field(default=42, metadata=_rule(ge=0, le=2**32 - 1))
    # Threads the job's BLAS and OpenMP pools may use (threadpoolctl). 1, the default, is
    # faster for small fits, leaves other cores to the tracking publisher and parallel
    # workers, and gives the same floating-point results on every launcher and machine.
    threads: int = field(default=1, metadata=_rule(ge=1, le=1024))
    data: DataConfig = MISSING
    model: Any = MISSING  # one of ModelConfig; the `model` group option sets its type
    split: Any = MISSING  # one of SplitConfig
    tracking: TrackingConfig = MISSING


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"dataset": DataConfig},
    "model": {"logreg": LogRegConfig, "random_forest": RandomForestConfig, "svm": SvmConfig},
    "split": {"holdout": HoldoutSplit, "kfold": KFoldSplit},
    "tracking": {"tracking": TrackingConfig},
}


# Job logging: INFO and up go to the job's log file; the console gets warnings only, so a
# sweep prints one progress line per job (lab.tracking) instead of every log record.
JOB_LOGGING = {
    "version": 1,
    "formatters": {"simple": {"format": "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "simple",
            "stream": "ext://sys.stderr",
            "level": "WARNING",
        },
        "file": {
            "class": "logging.FileHandler",
            "formatter": "simple",
            "filename": "${hydra.runtime.output_dir}/${hydra.job.name}.log",
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "file"]},
    "disable_existing_loggers": False,
}


def register_configs() -> None:
    """Store the schemas under ``schema/<group>/<name>``, apart from the user-facing
    options, so that ``model=<option>`` errors list only real options."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    cs.store(group="hydra/job_logging", name="lab", node=JOB_LOGGING, provider="lab")


def validate(config: Any, prefix: str = "") -> None:
    """Check every field of a dataclass tree against its metadata rules."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, f"{key}.")
            continue
        if value is None:
            continue
        rules = f.metadata
        if "choices" in rules and value not in rules["choices"]:
            raise ConfigError(key, value, "one of " + ", ".join(rules["choices"]))
        if not all(ok(value, rules[op]) for op, ok in _BOUNDS.items() if op in rules):
            raise ConfigError(key, value, _range_text(f.type, rules))


_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}
_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _range_text(ftype: Any, rules: Mapping[str, Any]) -> str:
    kind = "an integer" if "int" in str(ftype) else "a number"
    return f"{kind} " + " and ".join(f"{_SYMBOLS[k]} {rules[k]}" for k in _SYMBOLS if k in rules)


def _check_keys(node: DictConfig, prefix: str = "") -> None:
    """Reject keys that are not fields of the node's schema.

    ``+model.Cc=1`` opens the struct flag and adds the key; ``OmegaConf.to_object`` would
    then drop it silently, so a typo would run with the default value.
    """
    schema = OmegaConf.get_type(node)
    if schema is not None and dataclasses.is_dataclass(schema):
        allowed = {f.name for f in dataclasses.fields(schema)}
        for key in map(str, node):
            if key not in allowed and not (not prefix and key == "hydra"):
                raise ConfigError(f"{prefix}{key}", node[key], "unknown key; allowed: " + ", ".join(sorted(allowed)))
    for key in map(str, node):
        if not prefix and key == "hydra":
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _check_keys(child, f"{prefix}{key}.")


def job_container(cfg: DictConfig) -> dict[str, Any]:
    """The job's resolved config as plain containers, without ``hydra``; section by
    section, so the ``hydra`` node is neither copied nor resolved."""
    out: dict[str, Any] = {}
    for key in map(str, cfg):
        if key != "hydra":
            value = cfg[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return out


def job_section(cfg: DictConfig) -> DictConfig:
    """The job's own config: everything but the ``hydra`` node."""
    return OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg


def to_typed(cfg: DictConfig) -> TrainConfig:
    """Turn a composed job config into a validated :class:`TrainConfig` (``hydra`` is ignored).

    Raises
    ------
    ConfigError
        For an unknown key, an out-of-range value or a value outside its choices.
    """
    allowed = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in map(str, cfg):
        if key != "hydra" and key not in allowed:
            raise ConfigError(key, cfg[key], "unknown key; allowed: " + ", ".join(sorted(allowed)))
    if OmegaConf.get_type(cfg) is TrainConfig:
        # Composed by Hydra: every node is already typed. Convert section by section, so the
        # whole config (with its large `hydra` node) is never copied: this runs for every job.
        _check_keys(cfg)
        sections: dict[str, Any] = {}
        for f in dataclasses.fields(TrainConfig):
            value = cfg[f.name]
            sections[f.name] = OmegaConf.to_object(value) if isinstance(value, DictConfig) else value
        typed = TrainConfig(**sections)
    else:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), job_section(cfg))
        assert isinstance(merged, DictConfig)
        _check_keys(merged)
        obj = OmegaConf.to_object(merged)
        assert isinstance(obj, TrainConfig)
        typed = obj
    for group in ("model", "split"):  # typed Any: a group option sets the schema
        section = getattr(typed, group)
        if not dataclasses.is_dataclass(section):
            name = section.get("name", "(no name)") if isinstance(section, dict) else section
            raise ConfigError(
                group,
                name,
                f"a config that extends one of lab's {group} schemas ({', '.join(SCHEMAS[group])}): "
                f"start its YAML with `defaults: [/schema/{group}/<schema>@_here_, _self_]`",
            )
    validate(typed)
    return typed
