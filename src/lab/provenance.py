"""Where a result came from: code version, locked environment, config fingerprint, and
the process that ran it.

Computed once per launch in the launching process (a few milliseconds of ``git``), then
carried to every job as tags, and compared by :mod:`lab.reproduce`; the process's identity
is what ``python -m lab.runs reap`` checks before it ends a run as abandoned.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import signal
import subprocess
from importlib.metadata import version
from pathlib import Path

from omegaconf import DictConfig

from lab.config import job_container

__all__ = [
    "PROJECT_ROOT",
    "config_fingerprint",
    "environment_tags",
    "exit_status",
    "process_context",
    "process_start",
    "process_state",
]

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
        # untracked files count (a new conf/model/*.yaml the run used is not in the commit);
        # ignored ones (outputs/, mlflow.db) do not
        status = _git("status", "--porcelain")
        tags["lab.git_dirty"] = "true" if status else "false"
    return tags


def config_fingerprint(job_config: DictConfig) -> str:
    """sha256 of the resolved job config (without ``hydra``), as canonical sorted JSON."""
    text = json.dumps(job_container(job_config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def process_context() -> str | None:
    """Where a pid names a process, for this process: ``<boot id>:<pid namespace inode>``
    (Linux), or None elsewhere. The same pid means another process after a reboot, and in
    another pid namespace (another container) means another process altogether."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}:{namespace}"


def process_state(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state letter (``Z``: a zombie) and when it started (clock ticks
    since boot), as this process sees it in Linux's ``/proc``; None where that cannot be
    read: no such process, one hidden from this user (``hidepid``), or not Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return fields[0], fields[19]  # fields 3 (state) and 22 (starttime) of proc(5)


def exit_status(code: int | None) -> str:
    """How a child process ended, from its return code: ``killed by SIGKILL``, ``exit 1``."""
    if code is None:
        return "not exited"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def process_start(pid: int) -> str | None:
    """The ``lab.pid_start`` tag of process ``pid``: ``<start>@<boot id>:<pid namespace>``
    (see :func:`process_state`, :func:`process_context`), or None where Linux does not say.

    With ``lab.host`` and ``lab.pid`` it names one process: a pid alone does not for long,
    as Linux gives it to a new process once its own is gone.
    """
    context, state = process_context(), process_state(pid)
    return None if context is None or state is None else f"{state[1]}@{context}"
