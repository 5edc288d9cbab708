"""The MLflow model directory the publisher writes around a job's ``model.pkl`` against the one
``mlflow.sklearn.save_model`` writes for the same estimator, and a real round trip."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import pytest
import yaml

from lab.outputs import MODEL_FILE, write_result
from lab.publishing import locked_requirements, write_model_dir
from lab.training import load_dataset, train
from tests.conftest import MakeConfig

VOLATILE = ("model_uuid", "utc_time_created")  # differ between any two saves


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
