"""Job records: what MLflow must hold for one job, kept on disk in the job's outputs dir.

A record is written by the job itself (at start, then at its end) as ``tracking.json``;
whoever publishes it to MLflow writes ``tracking.synced.json`` beside it. A record without
its synced twin is *pending*: ``python -m lab.runs sync`` publishes it later. Both files
are replaced atomically, so a reader never sees half a record.

The launching process and its jobs tell the publisher about new records through a queue
directory of small files (one per event), which survives any process dying.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "HYDRA_FILES",
    "PENDING_NOTE",
    "PUBLISHER_FILE",
    "QUEUE_DIR",
    "RECORD_FILE",
    "SYNCED_FILE",
    "JobRecord",
    "enqueue",
    "find_records",
    "join_overrides",
    "read_json",
    "redact_text",
    "split_overrides",
    "write_json",
]

RECORD_FILE = "tracking.json"
SYNCED_FILE = "tracking.synced.json"
PENDING_NOTE = "tracking.error.txt"  # written when publishing failed; removed by a later sync
TERMINAL = ("FINISHED", "FAILED", "KILLED")
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes in hydra.output_subdir
QUEUE_DIR = ".lab-queue"  # a launch's events for its background publisher, in its sweep or run dir
PUBLISHER_FILE = "publisher"  # in QUEUE_DIR while a publisher drains it: "<pid> <host>"


# the user-info part of any URL: scheme://user:secret@host (in a job's overrides, Hydra's
# sweeper escapes the colons: scheme\://user\:secret@host)
_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*\\?://)[^/?#\s'\"]*@")  # up to the last @ of the authority


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``https://user:token@host``
    becomes ``https://***@host``. For overrides, config files and summaries that leave
    the machine (tags, artifacts); see also :func:`lab.publishing.redact`."""
    return _CREDENTIALS.sub(r"\1***@", text)


def join_overrides(overrides: Iterable[str]) -> str:
    """The ``lab.overrides`` tag: the overrides shell-quoted where needed (``shlex.join``).
    ``seed=1 model.C=0.5`` reads as typed; a value with a space or a shell character is
    quoted (``'data.name=a b'``), so the tag splits back into the same overrides and pastes
    into a shell as the same arguments. Credentials in a URL are redacted."""
    return redact_text(shlex.join(overrides))


def split_overrides(tag: str) -> list[str]:
    """The overrides in a ``lab.overrides`` tag (:func:`join_overrides`). A tag that does not
    parse as shell words (unbalanced quotes, from a lab that joined them with bare spaces)
    is split at spaces."""
    try:
        return shlex.split(tag)
    except ValueError:
        return tag.split()


@dataclass
class JobRecord:
    """Everything one job's MLflow run must contain. Times are epoch milliseconds."""

    uid: str  # unique per job, e.g. "<session uid>-<job num>"; tagged as lab.job_uid
    job_dir: str
    run_name: str
    experiment: str
    tracking_uri: str  # redacted: credentials are never written to disk
    status: str  # RUNNING, FINISHED, FAILED or KILLED
    start_time: int
    end_time: int | None = None
    parent_uid: str | None = None  # the sweep's uid for a job of a --multirun
    parent_dir: str | None = None  # the sweep's dir, which holds the sweep's own record
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)  # paths relative to job_dir
    # The job's hydra.output_subdir: the files logged from it go to `.hydra/` in MLflow
    output_subdir: str | None = ".hydra"
    model: str | None = None  # relative path of the pickled estimator to log as an MLflow model
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def save(self) -> None:
        write_json(Path(self.job_dir) / RECORD_FILE, asdict(self))

    @classmethod
    def load(cls, job_dir: str | Path) -> JobRecord:
        return cls(**read_json(Path(job_dir) / RECORD_FILE))

    def receipt(self) -> dict[str, Any] | None:
        """This record's receipt (``tracking.synced.json``: its run id and the status MLflow
        holds), or None: not published yet, or the receipt is an earlier run's, left in a
        re-used dir (receipts name their record's uid; older ones, without it, count)."""
        path = Path(self.job_dir) / SYNCED_FILE
        if not path.exists():
            return None
        receipt: dict[str, Any] = read_json(path)
        return receipt if receipt.get("uid", self.uid) == self.uid else None

    @property
    def synced(self) -> bool:
        """MLflow holds this record as it is now."""
        receipt = self.receipt()
        return receipt is not None and receipt.get("status") == self.status


def write_json(path: Path, payload: Any) -> None:
    """Replace ``path`` atomically (write a sibling, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def enqueue(queue_dir: Path, kind: str, payload: dict[str, Any]) -> None:
    """Drop one event into the publisher's queue; names sort in arrival order."""
    queue_dir.mkdir(parents=True, exist_ok=True)
    write_json(queue_dir / f"{time.time_ns():020d}-{os.getpid()}-{kind}.json", {"kind": kind, **payload})


def find_records(root: Path) -> Iterator[Path]:
    """Every job dir under ``root`` that holds a record."""
    for path in sorted(root.rglob(RECORD_FILE)):
        yield path.parent
