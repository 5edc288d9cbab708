"""The pure training step: a typed config in, metrics and a fitted estimator out.

Nothing here writes a file, touches the network or keeps state between calls; the only
reads are scikit-learn's bundled, read-only dataset files. Every source of randomness gets
``config.seed`` explicitly, and the BLAS/OpenMP thread pools are held at
``config.threads`` during the call (and restored after), so the same config gives
bit-identical metrics and predictions in any process and under any launcher: loky's
workers, for one, would otherwise run with fewer threads than the launching process.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import datasets
from sklearn.base import ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import ThreadpoolController

from lab.config import (
    HoldoutSplit,
    KFoldSplit,
    LogRegConfig,
    ModelConfig,
    RandomForestConfig,
    SvmConfig,
    TrainConfig,
)

__all__ = ["TrainResult", "build_model", "load_dataset", "train"]

Array = np.ndarray[Any, Any]

_LOADERS: dict[str, Callable[..., Any]] = {
    "iris": datasets.load_iris,
    "wine": datasets.load_wine,
    "breast_cancer": datasets.load_breast_cancer,
    "digits": datasets.load_digits,
}


@dataclass(frozen=True)
class TrainResult:
    """What one job produced.

    Attributes
    ----------
    metrics
        Quality metrics, bit-identical for the same config: ``accuracy``, ``f1_macro``,
        and for k-fold also ``accuracy_std`` and ``f1_macro_std``.
    model
        The fitted estimator (for k-fold: refitted on all the data).
    timing
        Wall-clock seconds (``fit_s``, ``total_s``); these vary between runs.
    """

    metrics: dict[str, float]
    model: Any
    timing: dict[str, float]


def load_dataset(name: str) -> tuple[Array, Array]:
    """Features and labels of one of scikit-learn's bundled datasets."""
    X, y = _LOADERS[name](return_X_y=True)
    return X, y


def build_model(model: ModelConfig, seed: int) -> Pipeline | ClassifierMixin:
    """The unfitted estimator for a model config; the project's only model factory."""
    match model:
        case LogRegConfig():
            return make_pipeline(
                StandardScaler(),
                LogisticRegression(C=model.C, max_iter=model.max_iter, solver=model.solver, random_state=seed),
            )
        case RandomForestConfig():
            return RandomForestClassifier(
                n_estimators=model.n_estimators,
                max_depth=model.max_depth,
                criterion=model.criterion,
                random_state=seed,
                n_jobs=1,  # the launcher owns parallelism; nested pools oversubscribe the cores
            )
        case SvmConfig():
            return make_pipeline(StandardScaler(), SVC(C=model.C, kernel=model.kernel, random_state=seed))
    raise TypeError(f"unknown model config {type(model).__name__}")


def _score(y_true: Array, y_pred: Array) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro")),
    }


def train(config: TrainConfig) -> TrainResult:
    """Fit and evaluate the model that ``config`` describes.

    Parameters
    ----------
    config
        A validated config, as made by :func:`lab.config.to_typed`.

    Returns
    -------
    TrainResult
        Metrics, the fitted estimator and timings.

    Raises
    ------
    ValueError
        When the data cannot support the split, e.g. more folds than members of a class.

    Example
    -------
    >>> from lab.config import *
    >>> cfg = TrainConfig(seed=0, data=DataConfig("iris"), model=LogRegConfig(),
    ...                   split=HoldoutSplit(), tracking=TrackingConfig(enabled=False))
    >>> train(cfg).metrics["accuracy"] > 0.9
    True
    """
    with _threadpools().limit(limits=config.threads):
        return _train(config)


@functools.cache
def _threadpools() -> ThreadpoolController:
    """The BLAS and OpenMP libraries loaded by NumPy, SciPy and scikit-learn (all imported
    above); finding them costs ~2.5 ms, so it is done once."""
    return ThreadpoolController()


def _train(config: TrainConfig) -> TrainResult:
    started = time.perf_counter()
    X, y = load_dataset(config.data.name)
    estimator = build_model(config.model, config.seed)
    split = config.split
    if isinstance(split, HoldoutSplit):
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=split.test_size, stratify=y, random_state=config.seed
        )
        fit_started = time.perf_counter()
        model = clone(estimator).fit(X_train, y_train)
        fit_s = time.perf_counter() - fit_started
        metrics = _score(y_test, model.predict(X_test))
    elif isinstance(split, KFoldSplit):
        smallest_class = int(np.bincount(y).min())
        if split.n_splits > smallest_class:
            raise ValueError(
                f"split.n_splits={split.n_splits} is more than the {smallest_class} members "
                f"of the smallest class of {config.data.name}"
            )
        folds = StratifiedKFold(n_splits=split.n_splits, shuffle=True, random_state=config.seed)
        scores: dict[str, list[float]] = {"accuracy": [], "f1_macro": []}
        fit_started = time.perf_counter()
        for train_idx, test_idx in folds.split(X, y):
            fold_model = clone(estimator).fit(X[train_idx], y[train_idx])
            for name, value in _score(y[test_idx], fold_model.predict(X[test_idx])).items():
                scores[name].append(value)
        model = clone(estimator).fit(X, y)
        fit_s = time.perf_counter() - fit_started
        metrics = {}
        for name, values in scores.items():
            metrics[name] = float(np.mean(values))
            metrics[f"{name}_std"] = float(np.std(values))
    else:
        raise TypeError(f"unknown split config {type(split).__name__}")
    return TrainResult(
        metrics=metrics,
        model=model,
        timing={"fit_s": fit_s, "total_s": time.perf_counter() - started},
    )
