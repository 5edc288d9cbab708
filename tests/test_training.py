"""The pure training function: every option trains, same seed gives bit-identical output."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lab.training import load_dataset, train
from tests.conftest import MakeConfig

DATA = ["iris", "wine", "breast_cancer", "digits"]
MODELS = ["logreg", "random_forest", "svm"]


@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("model", MODELS)
def test_every_data_and_model_option_trains(make_config: MakeConfig, data: str, model: str) -> None:
    extra = ["model.n_estimators=10"] if model == "random_forest" else []
    result = train(make_config(f"data={data}", f"model={model}", *extra))
    assert set(result.metrics) == {"accuracy", "f1_macro"}
    assert 0.5 < result.metrics["accuracy"] <= 1.0
    assert 0.0 < result.metrics["f1_macro"] <= 1.0
    assert result.timing["fit_s"] > 0
    assert result.timing["total_s"] >= result.timing["fit_s"]
    X, _ = load_dataset(data)
    assert result.model.predict(X[:5]).shape == (5,)


def test_kfold_reports_fold_means_and_stds(make_config: MakeConfig) -> None:
    result = train(make_config("split=kfold", "split.n_splits=3"))
    assert set(result.metrics) == {"accuracy", "accuracy_std", "f1_macro", "f1_macro_std"}
    assert result.metrics["accuracy_std"] >= 0


def test_kfold_with_more_folds_than_class_members_raises_clearly(make_config: MakeConfig) -> None:
    with pytest.raises(ValueError, match=r"split.n_splits=60 is more than the 50 members"):
        train(make_config("split=kfold", "split.n_splits=60"))


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_gives_identical_metrics_and_predictions(make_config: MakeConfig, model: str) -> None:
    cfg = make_config(f"model={model}", "data=wine", "seed=7")
    a, b = train(cfg), train(cfg)
    assert a.metrics == b.metrics
    X, _ = load_dataset("wine")
    np.testing.assert_array_equal(a.model.predict(X), b.model.predict(X))


def test_different_seeds_give_different_splits(make_config: MakeConfig) -> None:
    accs = {train(make_config(f"seed={s}", "data=wine")).metrics["accuracy"] for s in range(6)}
    assert len(accs) > 1


def test_identical_across_processes(make_config: MakeConfig) -> None:
    cfg = make_config("model=random_forest", "model.n_estimators=20", "data=breast_cancer", "seed=3")
    here = train(cfg).metrics
    code = (
        "from lab.config import *; from lab.training import train; "
        "cfg = TrainConfig(seed=3, data=DataConfig('breast_cancer'), model=RandomForestConfig(n_estimators=20), "
        "split=HoldoutSplit(), tracking=TrackingConfig(enabled=False)); print(repr(train(cfg).metrics))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == repr(here)


def test_train_keeps_no_state_between_calls(make_config: MakeConfig) -> None:
    first = train(make_config("seed=1")).metrics
    train(make_config("seed=2", "model=svm"))
    assert train(make_config("seed=1")).metrics == first


def test_thread_pools_are_held_at_config_threads_only_during_the_call(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``threads`` caps NumPy/SciPy/scikit-learn's BLAS and OpenMP pools for the call, and
    the process's own settings come back afterwards."""
    from sklearn.base import BaseEstimator, ClassifierMixin
    from threadpoolctl import threadpool_info

    import lab.training

    def pools() -> list[tuple[str, int]]:
        return sorted((p["filepath"], p["num_threads"]) for p in threadpool_info())

    seen: list[set[int]] = []

    class Probe(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        """Records the pools' sizes while it is being fitted."""

        def fit(self, X: np.ndarray, y: np.ndarray) -> Probe:
            seen.append({n for _, n in pools()})
            self.classes_ = np.unique(y)
            return self

        def predict(self, X: np.ndarray) -> np.ndarray:
            return np.full(len(X), self.classes_[0])

    before = pools()
    threads = 3 if {n for _, n in before} != {3} else 5  # a value the process does not already use
    monkeypatch.setattr(lab.training, "build_model", lambda model, seed: Probe())
    train(make_config(f"threads={threads}"))
    assert seen == [{threads}]
    assert pools() == before
