"""Where a result came from: code version, locked environment and config fingerprint.

Computed once per launch in the launching process (a few milliseconds of ``git``), then
carried to every job as tags, and compared by :mod:`lab.reproduce`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

from omegaconf import DictConfig

from lab.config import job_container

__all__ = ["PROJECT_ROOT", "config_fingerprint", "environment_tags"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "unknown"


def environment_tags() -> dict[str, str]:
    """Tags that describe the code and environment of this launch."""
    tags = {
        "lab.uv_lock_sha256": _file_sha256(PROJECT_ROOT / "uv.lock"),
        "lab.python_version": platform.python_version(),
        "lab.sklearn_version": version("scikit-learn"),
        "mlflow.source.name": "lab.train",
        "mlflow.source.type": "LOCAL",
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags["lab.git_dirty"] = "true" if status else "false"
    return tags


def config_fingerprint(job_config: DictConfig) -> str:
    """sha256 of the resolved job config (without ``hydra``), as canonical sorted JSON."""
    text = json.dumps(job_container(job_config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
