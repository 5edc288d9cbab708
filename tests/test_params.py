"""Flattening the resolved config into MLflow params."""

from __future__ import annotations

from lab.publishing import redact
from lab.tracking import flatten_params


def test_nested_dicts_become_dotted_keys() -> None:
    assert flatten_params({"seed": 1, "model": {"C": 0.5, "name": "logreg"}, "x": None}) == {
        "seed": "1",
        "model.C": "0.5",
        "model.name": "logreg",
        "x": "None",
    }


def test_lists_are_indexed_without_brackets_and_empty_containers_kept() -> None:
    flat = flatten_params({"a": [1, {"b": 2}], "e": {}, "l": []})
    assert flat == {"a.0": "1", "a.1.b": "2", "e": "{}", "l": "[]"}
    assert not any("[" in k for k in flat)


def test_credentials_are_redacted() -> None:
    assert redact("https://user:token@mlflow.example:8443/path") == "https://***@mlflow.example:8443/path"
    assert redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
