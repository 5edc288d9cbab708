"""What lab records about a run: the resolved config flattened into MLflow params, redacted URIs, provenance tags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lab import provenance
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


def test_git_dirty_counts_untracked_files_but_not_ignored_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("outputs/\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)

    def dirty() -> str:
        return provenance.environment_tags()["lab.git_dirty"]

    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "metrics.json").write_text("{}")
    assert dirty() == "false"
    (tmp_path / "new_model.yaml").write_text("C: 1\n")
    assert dirty() == "true"
    (tmp_path / "new_model.yaml").unlink()
    (tmp_path / "train.py").write_text("print(2)\n")
    assert dirty() == "true"
