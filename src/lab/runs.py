"""``python -m lab.runs``: housekeeping for runs that a crash or an outage left behind.

``sync``
    Publish every pending record under an outputs dir (records whose MLflow run is
    missing or incomplete, e.g. after the tracking server was down) to the store it was
    meant for (``--force``: to this one, whichever that was). Idempotent: runs are found
    again by their ``lab.job_uid`` / ``lab.sweep_uid`` tags, so a second sync creates
    nothing new. Records of a launch still running on this host (its launcher, or its
    publisher draining after the launcher died) are left to it, saying so.
``reap``
    End runs abandoned by a killed process: RUNNING runs whose ``lab.host`` is this host
    and whose process is gone become FAILED, with the reason in ``lab.error``; records
    on disk in the same state are ended too, so a later ``sync`` agrees. The process is
    ``lab.pid``, as long as it started when ``lab.pid_start`` says (a pid is given to a new
    process once its own is gone) and is not a zombie. A run whose record under the
    outputs dir says how its job ended is left to ``sync``, which publishes that end
    (FINISHED, with its metrics) instead.
``pending``
    List the job dirs whose records have not reached MLflow.

Exit status: 0; 1 when a record failed to sync or the store cannot be used (one line
saying why); 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from pathlib import Path

from lab.outputs import job_artifacts
from lab.provenance import process_context, process_state
from lab.publishing import (
    Publisher,
    check_uri,
    close_stores,
    configure_client_env,
    error_line,
    pin_uri,
    quiet_mlflow_logging,
    redact,
    resolve_uri,
)
from lab.records import PENDING_NOTE, PUBLISHER_FILE, QUEUE_DIR, JobRecord, find_records

__all__ = ["live_launch", "main", "pending_records", "reap", "sync"]


def pending_records(root: Path) -> list[JobRecord]:
    """Records under ``root`` whose MLflow run is missing or behind the record, but for
    those of a launch still running on this host, which publishes them itself: a sync
    beside it would race its publisher, and both would create the job's run. Those are
    counted on stderr."""
    host = socket.gethostname()
    pending: list[JobRecord] = []
    live: dict[str, int] = {}
    for record in map(JobRecord.load, find_records(root)):
        if record.synced:
            continue
        process = live_launch(record, host)
        if process is None:
            pending.append(record)
        else:
            live[process] = live.get(process, 0) + 1
    for process, count in live.items():
        print(
            f"lab: left {count} record(s) to the launch still running ({process}), which publishes them; "
            "any it leaves pending sync once it has ended",
            file=sys.stderr,
        )
    return pending


def live_launch(record: JobRecord, host: str) -> str | None:
    """The process on this host still launching ``record``'s job (``process <pid>``), or
    still publishing its launch's records after the launcher died (``publisher <pid>``);
    None when neither is alive, or ``record``'s sweep dir now holds a later launch's."""
    root, tags = Path(record.job_dir), record.tags
    if record.parent_dir is not None:
        root = Path(record.parent_dir)
        try:
            sweep = JobRecord.load(root)
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if sweep.uid != record.parent_uid:
            return None
        tags = sweep.tags
    pid = tags.get("lab.pid", "")
    if tags.get("lab.host") == host and pid.isdigit() and _pid_alive(int(pid)) and not _abandoned(tags, host):
        return f"process {pid}"
    try:
        pid, _, where = (root / QUEUE_DIR / PUBLISHER_FILE).read_text().strip().partition(" ")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid.isdigit() else b""
    except OSError:
        return None
    state = process_state(int(pid)) if cmdline else None
    if where == host and b"lab.publishing" in cmdline and state is not None and state[0] not in ("Z", "X"):
        return f"publisher {pid}"
    return None


def sync(root: Path, uri: str, force: bool = False) -> tuple[int, int]:
    """Publish pending records; returns (published, failed or skipped).

    A record names the store it was meant for (its redacted ``tracking_uri``); one meant
    for another store than ``uri`` is skipped, saying so, unless ``force``: sending it to
    the wrong store would mark it synced, and it would never reach its own.
    """
    records = []
    skipped = 0
    for record in pending_records(root):
        if force or pin_uri(record.tracking_uri) == redact(pin_uri(uri)):
            records.append(record)
        else:
            skipped += 1
            print(
                f"skipped {record.job_dir}: its record is for {record.tracking_uri}, not {redact(uri)} "
                "(pass --tracking-uri for its store, or --force to send it here)",
                file=sys.stderr,
            )
    if not records:
        return 0, skipped
    publisher = Publisher(uri)
    published, failed = 0, skipped
    # jobs before their sweeps, so a parent is ended only after its children exist
    for record in sorted(records, key=lambda r: r.tags.get("lab.kind") == "sweep"):
        try:
            if record.tags.get("lab.kind") == "sweep":
                if record.finished:
                    publisher.finish_parent(record)
                else:
                    continue
            else:
                publisher.publish(record, _own_sweep(publisher, record), search=True)
            (Path(record.job_dir) / PENDING_NOTE).unlink(missing_ok=True)
            published += 1
            print(f"synced {record.job_dir} ({record.status})")
        except Exception as exc:  # noqa: BLE001 - report each, carry on with the rest
            failed += 1
            print(f"failed {record.job_dir}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return published, failed


def _own_sweep(publisher: Publisher, record: JobRecord) -> JobRecord | None:
    """The record of the sweep ``record``'s job ran in. A later launch into the same sweep
    dir replaces the sweep's record there (it warns when that one was never published); the
    job then goes under its own sweep's parent run if MLflow has it, else under none, and
    never under the later sweep's."""
    if record.parent_dir is None:
        return None
    sweep = JobRecord.load(record.parent_dir)
    if sweep.uid == record.parent_uid:
        return sweep
    experiment_id = publisher.experiment_id(record.experiment)
    parent = publisher.find_run(experiment_id, "lab.sweep_uid", str(record.parent_uid), kind="sweep")
    record.tags.pop("mlflow.parentRunId", None)
    if parent is not None:
        record.tags["mlflow.parentRunId"] = parent
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandoned(tags: dict[str, str], host: str) -> bool:
    """Whether the process that ``tags`` name (``lab.host``, ``lab.pid``, ``lab.pid_start``)
    is gone: no process has its pid, or this host has rebooted since it started, or the
    process with its pid is a zombie or started at another time (the pid was reused). A
    live pid counts as the run's process, as it did before lab wrote ``lab.pid_start``,
    when the tag is missing, when the run's pid namespace is not this one (another
    container on this host name: the pid is not the same process there), and when this
    host hides the process from us (``hidepid``)."""
    pid = tags.get("lab.pid", "")
    if tags.get("lab.host") != host or not pid.isdigit():
        return False
    if not _pid_alive(int(pid)):
        return True
    start, _, context = tags.get("lab.pid_start", "").partition("@")
    here = process_context()
    if not context or here is None:
        return False
    if context.partition(":")[0] != here.partition(":")[0]:
        return True  # another boot: every process of that one is gone
    state = process_state(int(pid))
    if context != here or state is None:
        return False
    return state[0] in ("Z", "X") or state[1] != start


def reap(root: Path, uri: str) -> int:
    """End abandoned RUNNING runs (in MLflow and on disk) as FAILED; returns how many."""
    from mlflow.entities import RunTag

    host = socket.gethostname()
    ended = 0
    now = int(time.time() * 1000)
    ended_on_disk: dict[str, Path] = {}  # uid -> dir: records that say how their job ended
    for job_dir in find_records(root) if root.exists() else []:
        record = JobRecord.load(job_dir)
        if record.finished:
            if not record.synced:
                ended_on_disk[record.uid] = job_dir
        elif _abandoned(record.tags, host):
            record.status, record.end_time = "FAILED", now
            record.error = f"abandoned: process {record.tags['lab.pid']} on {host} is gone"
            record.tags["lab.error"] = record.error
            if record.tags.get("lab.kind") != "sweep":  # a sweep's are its summaries, listed as it ends
                record.artifacts = job_artifacts(job_dir, record.output_subdir)
            record.save()
    publisher = Publisher(uri)
    client = publisher.client
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return 0
    left: list[Path] = []
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=50000):
        if not _abandoned(run.data.tags, host):
            continue
        kind = run.data.tags.get("lab.kind")
        uid = run.data.tags.get("lab.sweep_uid" if kind == "sweep" else "lab.job_uid")
        if uid in ended_on_disk:  # the job ended, and only its publication was cut off
            left.append(ended_on_disk[uid])
            continue
        reason = f"abandoned: process {run.data.tags['lab.pid']} on {host} is gone"
        client.log_batch(run.info.run_id, tags=[RunTag("lab.error", reason)])
        client.set_terminated(run.info.run_id, status="FAILED", end_time=now)
        ended += 1
        print(f"reaped {run.info.run_id} ({run.info.run_name}): {reason}")
    if left:
        shown = ", ".join(str(d) for d in left[:3]) + (" …" if len(left) > 3 else "")
        print(
            f"lab: {len(left)} abandoned run(s) not reaped: their records say how they ended ({shown}); "
            "`python -m lab.runs sync` publishes them"
        )
    return ended


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["sync", "reap", "pending"])
    parser.add_argument("root", nargs="?", default=None, type=Path, help="outputs dir to scan (default: outputs)")
    parser.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    parser.add_argument(
        "--force", action="store_true", help="sync: also send records meant for another store to this one"
    )
    args = parser.parse_args(argv)
    # reap ends abandoned runs in MLflow even where no outputs dir is at hand; a root named
    # that is not a dir is a mistake for every command
    if (args.root is not None or args.command != "reap") and not (args.root or Path("outputs")).is_dir():
        parser.error(f"root {str(args.root or 'outputs')!r} is not a directory")
    args.root = args.root or Path("outputs")
    if args.command == "pending":
        for record in pending_records(args.root):
            print(f"{record.status:9} {record.job_dir}")
        return
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        parser.error(f"--timeout {args.timeout}: seconds per request, a finite number > 0")
    uri = resolve_uri(args.tracking_uri)
    problem = check_uri(uri)
    if problem is not None:
        parser.error(f"tracking URI {redact(uri)}: {problem} (set --tracking-uri or MLFLOW_TRACKING_URI)")
    configure_client_env(args.timeout)
    quiet_mlflow_logging()
    try:
        if args.command == "sync":
            published, failed = sync(args.root, uri, force=args.force)
            print(f"lab: {published} record(s) synced to {redact(uri)}, {failed} failed or skipped")
            sys.exit(1 if failed else 0)
        ended = reap(args.root, uri)
    except Exception as exc:  # noqa: BLE001 - the store is down or refuses us: one line, not a traceback
        print(f"error: cannot use the MLflow store at {redact(uri)}: {error_line(exc)[:300]}", file=sys.stderr)
        sys.exit(1)
    finally:
        close_stores()  # mlflow.db alone holds what was written (lab.publishing.close_stores)
    print(f"lab: {ended} abandoned run(s) marked FAILED in {redact(uri)}")


if __name__ == "__main__":
    main()
