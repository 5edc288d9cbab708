"""``python -m lab.reproduce RUN_ID_OR_DIR``: run a finished job again and prove that its
result is the same.

This module owns reproduction: finding a job's logged resolved config (``.hydra/config.yaml``
in its outputs dir, or the same file among its MLflow run's artifacts), typing and
validating it again, training it into a fresh outputs dir
(``outputs/reproductions/<date>/<time>/``), publishing that as a new MLflow run tagged
``lab.reproduces=<original run id>``, and comparing the quality metrics bit for bit. When
they differ it reports what changed since the original: the code version, the locked
environment and the Python and scikit-learn versions (tags written by
:mod:`lab.provenance`).

Exit status: 0 when every quality metric is bit-identical (``timing.*`` metrics are
excluded: they differ by nature); 1 when a metric differs or the job fails now; 2 for a
bad argument, an original that cannot be read (its store down or missing) or a logged
config that no longer validates; 3 when the job was reproduced but its new run could not
be published (its record stays pending in ``tracking.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from lab import outputs
from lab.config import SCHEMAS, ConfigError, TrackingConfig, TrainConfig
from lab.provenance import config_fingerprint, environment_tags
from lab.publishing import (
    Publisher,
    configure_client_env,
    error_line,
    note_pending,
    redact,
    resolve_experiment,
    resolve_uri,
)
from lab.records import RECORD_FILE, SYNCED_FILE, JobRecord, read_json
from lab.tracking import job_params
from lab.training import TrainResult, train
from lab.validation import check_job, describe, fail, hydra_config

__all__ = [
    "PROVENANCE_TAGS",
    "Original",
    "Reproduction",
    "changes_report",
    "environment_changes",
    "find_original",
    "load_config",
    "main",
    "metric_differences",
    "quality_metrics",
    "rerun",
]

CONFIG_FILE = ".hydra/config.yaml"
HYDRA_FILE = ".hydra/hydra.yaml"  # as logged (lab.publishing maps any output_subdir to .hydra)
# ${hydra:…} and ${now:…}, as OmegaConf reads them: blanks are allowed around the resolver's name
HYDRA_INTERPOLATION = re.compile(r"\$\{\s*hydra\s*:")
NOW_INTERPOLATION = re.compile(r"\$\{\s*now\s*:")
REPRODUCTIONS_DIR = Path("outputs") / "reproductions"
# The original run's tags that say where its result came from, compared with now.
PROVENANCE_TAGS = (
    "mlflow.source.git.commit",
    "lab.git_dirty",
    "lab.uv_lock_sha256",
    "lab.python_version",
    "lab.sklearn_version",
)
TIMING_PREFIX = "timing."
REPRODUCED_EXIT, DIFFERENT_EXIT, PENDING_EXIT = 0, 1, 3


@dataclass
class Original:
    """The job to reproduce: its logged config and what it produced.

    Attributes
    ----------
    description
        How messages name it: ``run <id>`` or its outputs dir.
    config_text
        The logged ``.hydra/config.yaml``, byte for byte.
    job_config
        That config typed by the schemas, as Hydra composed it for the original job.
    config
        The validated config that :func:`lab.training.train` receives.
    metrics
        The original's quality metrics (no ``timing.*``).
    run_id, run_name, experiment, tags
        The original MLflow run; ``run_id`` is None when there is no such run.
    identity
        What the new run's ``lab.reproduces`` tag names: the run id, else the outputs dir.
    hydra_text
        The job's saved ``hydra.yaml``, when its config needs it (``${hydra:…}``): the
        reproduction keeps it next to the config, so that it can be reproduced in turn.
    uri
        Where the new run goes: the original's store, or None when nothing is published.
    store
        That store, when it is open already (the original run was read from it).
    """

    description: str
    config_text: str
    job_config: DictConfig
    config: TrainConfig
    metrics: dict[str, float]
    identity: str
    hydra_text: str | None = None
    run_id: str | None = None
    run_name: str | None = None
    experiment: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    uri: str | None = None
    store: Publisher | None = None


@dataclass
class Reproduction:
    """The job run again.

    Attributes
    ----------
    job_dir
        Its fresh outputs dir.
    metrics
        Its quality metrics (empty when it failed).
    error
        The one-line summary of the exception it raised now, else None.
    run_id
        Its new MLflow run, or None when it was not published.
    publish_error
        Why publishing failed, else None.
    """

    job_dir: Path
    metrics: dict[str, float]
    error: str | None = None
    run_id: str | None = None
    publish_error: str | None = None


# --- finding the original ------------------------------------------------------------------


def find_original(target: str) -> Original:
    """The job that ``target`` names: an existing outputs dir, else an MLflow run id.

    Raises
    ------
    lab.validation.UsageError
        After printing one line, for a target that names no job or a config that no
        longer validates.
    """
    path = Path(target)
    if path.is_dir():
        return _from_outputs_dir(path)
    if path.exists() or os.sep in target or target.startswith("."):
        raise fail(f"error: {target} is not a job's outputs dir (nor an MLflow run id)")
    return _from_run_id(target)


def _from_run_id(run_id: str) -> Original:
    uri = resolve_uri(None)
    publisher = _open_store(uri)
    run = _get_run(publisher, run_id, f"no run {run_id!r} in {redact(uri)}")
    with tempfile.TemporaryDirectory() as download_dir:
        from mlflow.exceptions import MlflowException

        try:
            local = publisher.client.download_artifacts(run_id, CONFIG_FILE, download_dir)
            text = Path(local).read_text()
        except (MlflowException, OSError):
            why = (
                "a job run with hydra.output_subdir=null saves none"
                if run.data.tags.get("lab.kind") == "job"
                else "is it a job's run?"
            )
            raise fail(f"error: run {run_id} has no {CONFIG_FILE} artifact; {why}") from None
        hydra_text = None
        if HYDRA_INTERPOLATION.search(text):
            with contextlib.suppress(MlflowException, OSError):
                hydra_text = Path(publisher.client.download_artifacts(run_id, HYDRA_FILE, download_dir)).read_text()
    job_config, config = load_config(text, f"run {run_id}", hydra_text)
    original = _from_run(publisher, run, f"run {run_id}", text, job_config, config)
    original.hydra_text = hydra_text
    return original


def _saved_config_file(job_dir: Path) -> Path | None:
    """``.hydra/config.yaml``, or the ``config.yaml`` of another ``hydra.output_subdir``:
    the one the job's record names, else the one next to a ``hydra.yaml`` that names its
    own dir as the job's output subdir (``.``, ``meta``, ``meta/sub``…)."""
    files = (job_dir / d / "config.yaml" for d in _hydra_subdirs(job_dir))
    return next((f for f in files if f.is_file()), None)


def _hydra_subdirs(job_dir: Path) -> Iterator[str]:
    """Where the job's Hydra files may be, most likely first; the walk is the last resort
    (an untracked job with another subdir)."""
    yield ".hydra"
    try:
        recorded = read_json(job_dir / RECORD_FILE)["output_subdir"]  # tracked jobs say where
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if recorded is not None:
        yield str(recorded)
    for hydra_file in sorted(job_dir.rglob("hydra.yaml")):
        try:
            subdir = outputs.read_output_subdir(hydra_file)
        except (OSError, YAMLError, KeyError, TypeError):
            continue
        if subdir is not None and Path(subdir) == hydra_file.parent.relative_to(job_dir):
            yield subdir


def _from_outputs_dir(job_dir: Path) -> Original:
    config_file = _saved_config_file(job_dir)
    if config_file is None:
        try:
            unsaved = read_json(job_dir / RECORD_FILE).get("output_subdir", ".hydra") is None
        except (OSError, ValueError, AttributeError):
            unsaved = False
        if unsaved:  # its MLflow run has no config.yaml either
            raise fail(
                f"error: {job_dir} ran with hydra.output_subdir=null: Hydra saved no config.yaml for it, "
                "and lab.reproduce runs a job again from that file"
            )
        raise fail(f"error: {job_dir} has no {CONFIG_FILE}; pass a job's outputs dir or an MLflow run id")
    text = config_file.read_text()
    hydra_file = config_file.with_name("hydra.yaml")
    hydra_text = hydra_file.read_text() if HYDRA_INTERPOLATION.search(text) and hydra_file.is_file() else None
    job_config, config = load_config(text, str(job_dir), hydra_text)
    synced = job_dir / SYNCED_FILE
    # the receipt of the record in the dir, not one an earlier run left there
    receipt = JobRecord.load(job_dir).receipt() if (job_dir / RECORD_FILE).exists() else None
    if receipt is not None:
        run_id = str(receipt["run_id"])
        uri = resolve_uri(config.tracking.uri)
        publisher = _open_store(uri)
        run = _get_run(publisher, run_id, f"run {run_id} (from {synced}) is not in {redact(uri)}")
        original = _from_run(publisher, run, f"run {run_id} ({job_dir})", text, job_config, config)
        original.hydra_text = hydra_text
        return original
    if (job_dir / RECORD_FILE).exists():  # pending: its params are the original's too
        _check_resolves_as_before(str(job_dir), job_config, JobRecord.load(job_dir).params)
    data = outputs.read_metrics(job_dir)
    if data is None:
        raise fail(f"error: {job_dir} has no {outputs.METRICS_FILE} to compare with; the job did not finish")
    why = "its MLflow record is pending" if (job_dir / RECORD_FILE).exists() else "it was not tracked"
    # The store is opened only to publish the new run: one that is down leaves it pending.
    destination = resolve_uri(config.tracking.uri) if config.tracking.enabled else None
    return Original(
        description=f"{job_dir} (no original run: {why}; comparing with its {outputs.METRICS_FILE})",
        config_text=text,
        job_config=job_config,
        config=config,
        metrics=quality_metrics(data.get("metrics", {})),
        identity=str(job_dir.resolve()),
        hydra_text=hydra_text,
        experiment=resolve_experiment(config.tracking.experiment),
        uri=destination,
    )


def _check_resolves_as_before(description: str, job_config: DictConfig, params: Mapping[str, str]) -> None:
    """Refuse a logged config whose training inputs resolve to other values now than the
    original's params say they did (``model.max_iter=${oc.env:MAX_ITER}`` in another
    environment): the run would reproduce another job. Tracking settings may differ."""
    now = job_params(job_config)
    changed = [k for k in sorted(params.keys() & now.keys()) if not k.startswith("tracking.") and params[k] != now[k]]
    if not changed:
        return
    edited = [k for k in changed if not _interpolated(job_config, k)]
    first = (edited or changed)[0]
    others = [k for k in changed if k != first]
    more = f" (and {len(others)} more: {', '.join(others)})" if others else ""
    if edited:  # a plain value that is not the original's: the file was changed after the run
        raise fail(
            f"error: the logged config of {description} says {first}={now[first]}, but the original ran "
            f"with {params[first]}{more}: the config was edited after the run; restore it to reproduce the original"
        )
    raise fail(
        f"error: the logged config of {description} resolves differently here: {first}={now[first]}, "
        f"but {params[first]} in the original{more}; an interpolation (${{oc.env:…}}?) reads this "
        "environment: set it as the original's to reproduce it"
    )


def _interpolated(job_config: DictConfig, key: str) -> bool:
    """Whether the value at the dotted param ``key`` (``model.C``, ``data.features.0``) is an
    interpolation in ``job_config``; True where that cannot be told."""
    parent_key, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(job_config, parent_key) if parent_key else job_config
        if isinstance(parent, ListConfig):
            return OmegaConf.is_interpolation(parent, int(leaf))
        return not isinstance(parent, DictConfig) or OmegaConf.is_interpolation(parent, leaf)
    except (OmegaConfBaseException, ValueError):  # not a config path: keep the general reason
        return True


def _from_run(
    publisher: Publisher, run: Any, description: str, text: str, job_config: DictConfig, config: TrainConfig
) -> Original:
    _check_resolves_as_before(description, job_config, run.data.params)
    metrics = quality_metrics(run.data.metrics)
    if not metrics:
        raise fail(f"error: {description} has no metrics to compare with (status {run.info.status})")
    return Original(
        description=description,
        config_text=text,
        job_config=job_config,
        config=config,
        metrics=metrics,
        identity=run.info.run_id,
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        experiment=publisher.client.get_experiment(run.info.experiment_id).name,
        tags=dict(run.data.tags),
        uri=publisher.uri,
        store=publisher,
    )


def _open_store(uri: str) -> Publisher:
    """A publisher on an existing store: a missing sqlite file is an error, not a new store."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise fail(f"error: no MLflow store at {redact(uri)}; set MLFLOW_TRACKING_URI to the original's store")
    try:
        return Publisher(uri)
    except Exception as exc:  # noqa: BLE001 - down, refused, bad credentials: one line, exit 2
        raise fail(f"error: cannot open the MLflow store at {redact(uri)}: {error_line(exc)[:300]}") from None


def _get_run(publisher: Publisher, run_id: str, not_found: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return publisher.client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise fail(f"error: {not_found}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(f"error: cannot read run {run_id} from {redact(publisher.uri)}: {first}") from None


def load_config(text: str, source: str, hydra_text: str | None = None) -> tuple[DictConfig, TrainConfig]:
    """Type and validate a logged ``.hydra/config.yaml`` with today's schemas.

    Hydra types each group by the schema its option names in its defaults list; a logged
    file has no defaults list, so the schema is picked by the group's ``name`` field.

    Parameters
    ----------
    text
        The YAML text of the job config, as Hydra saved it: interpolations unresolved.
    source
        What to call it in an error message.
    hydra_text
        The job's saved ``hydra.yaml``: ``${hydra:…}`` in ``text`` resolves as it did in
        the job (its choices, its dirs). Without it such a value is an error.
        ``${now:…}`` is refused: its value was the job's start time, which no file keeps.

    Returns
    -------
    tuple of DictConfig and TrainConfig
        The typed config node (for params and fingerprint) and the validated dataclasses.

    Raises
    ------
    lab.validation.UsageError
        After printing one line, when the config no longer validates or cannot be
        resolved as it was in the job.
    """
    from hydra.core.utils import setup_globals

    if NOW_INTERPOLATION.search(text):
        raise fail(
            f"error: the logged config of {source} uses ${{now:…}}, which cannot be reproduced: "
            "its value was the job's start time, and no file keeps it"
        )
    if HYDRA_INTERPOLATION.search(text) and hydra_text is None:
        raise fail(
            f"error: the logged config of {source} uses ${{hydra:…}}, but the job's saved "
            f"{HYDRA_FILE} is missing: its values cannot be resolved as the job resolved them"
        )
    setup_globals()  # Hydra's resolvers (hydra:, python_version:), as in the job
    try:
        raw = OmegaConf.create(text)
        if not isinstance(raw, DictConfig):
            raise ConfigError("(top level)", type(raw).__name__, "a mapping of config keys")
        skeleton = OmegaConf.structured(TrainConfig)
        for group, schemas in SCHEMAS.items():
            if group not in raw:
                continue  # left MISSING: reported as such by check_job
            if len(schemas) == 1:
                [schema] = schemas.values()
            else:
                name = OmegaConf.select(raw, f"{group}.name", default=None)
                if name not in schemas:
                    raise ConfigError(f"{group}.name", name, "one of " + ", ".join(schemas))
                schema = schemas[name]
            skeleton[group] = OmegaConf.structured(schema)
        job_config = OmegaConf.merge(skeleton, raw)
        assert isinstance(job_config, DictConfig)
        if hydra_text is not None:
            saved = OmegaConf.create(hydra_text)
            if not isinstance(saved, DictConfig):
                raise ConfigError("hydra.yaml", type(saved).__name__, "a mapping with a hydra key")
            with hydra_config(saved):
                OmegaConf.resolve(job_config)  # fixed now, as the job saw them
        config = check_job(job_config)
    except (ConfigError, OmegaConfBaseException, YAMLError) as exc:
        detail = (describe(exc) or str(exc)).removeprefix("error: ")
        raise fail(f"error: the logged config of {source} no longer validates: {detail}") from None
    return job_config, config


# --- running it again ------------------------------------------------------------------------


def rerun(original: Original) -> Reproduction:
    """Train the original's config into a fresh outputs dir and publish it as a new run."""
    job_dir = _new_job_dir()
    (job_dir / CONFIG_FILE).parent.mkdir()
    (job_dir / CONFIG_FILE).write_text(original.config_text)
    if original.hydra_text is not None:  # what its ${hydra:…} values resolve from
        (job_dir / HYDRA_FILE).write_text(original.hydra_text)
    start_time = _now_ms()
    result: TrainResult | None = None
    error: str | None = None
    try:
        result = train(original.config)
    except Exception as exc:  # noqa: BLE001 - a job that fails now is a result: recorded and reported
        error = outputs.write_failure(exc, job_dir)
    else:
        outputs.write_result(result, job_dir)
    reproduction = Reproduction(job_dir, dict(result.metrics) if result else {}, error)
    if original.uri is not None:
        _publish(original, reproduction, result, start_time)
    return reproduction


def _new_job_dir() -> Path:
    """``outputs/reproductions/<date>/<H-M-S-microseconds>``, never one that exists."""
    while True:
        now = datetime.now()
        job_dir = REPRODUCTIONS_DIR / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")
        try:
            job_dir.mkdir(parents=True)
        except FileExistsError:
            continue
        return job_dir.resolve()


def _publish(original: Original, reproduction: Reproduction, result: TrainResult | None, start_time: int) -> None:
    assert original.uri is not None
    uid = f"reproduction-{uuid.uuid4().hex[:16]}"
    tags = {
        **environment_tags(),
        "mlflow.source.name": "lab.reproduce",
        "lab.reproduces": original.identity,
        "lab.config_sha256": config_fingerprint(original.job_config),
        "lab.kind": "reproduction",
        "lab.job_uid": uid,
        "lab.output_dir": str(reproduction.job_dir),
    }
    metrics = dict(reproduction.metrics)
    if result is not None:
        metrics.update({f"{TIMING_PREFIX}{k}": v for k, v in result.timing.items()})
    record = JobRecord(
        uid=uid,
        job_dir=str(reproduction.job_dir),
        run_name=f"reproduce-{original.run_name or Path(original.identity).name}",
        experiment=original.experiment or resolve_experiment(None),
        tracking_uri=redact(original.uri),
        status="FINISHED" if reproduction.error is None else "FAILED",
        start_time=start_time,
        end_time=_now_ms(),
        params=job_params(original.job_config),
        metrics=metrics,
        tags=tags,
        artifacts=[
            name
            for name in (CONFIG_FILE, HYDRA_FILE, outputs.METRICS_FILE, outputs.TRACEBACK_FILE)
            if (reproduction.job_dir / name).exists()
        ],
        error=reproduction.error,
    )
    if reproduction.error is not None:
        record.tags["lab.error"] = reproduction.error[:5000]
    if original.config.tracking.log_model and (reproduction.job_dir / outputs.MODEL_FILE).exists():
        record.model = outputs.MODEL_FILE
    record.save()
    try:
        reproduction.run_id = (original.store or Publisher(original.uri)).publish(record)
    except Exception as exc:  # noqa: BLE001 - the result is on disk; the record stays pending
        reproduction.publish_error = error_line(exc)
        note_pending(record, reproduction.publish_error)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- comparing -----------------------------------------------------------------------------


def quality_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The metrics that must be bit-identical: all but the ``timing.*`` ones."""
    return {k: float(v) for k, v in metrics.items() if not k.startswith(TIMING_PREFIX)}


def _same_bits(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


def metric_differences(original: Mapping[str, float], now: Mapping[str, float]) -> list[str]:
    """One line per metric that is not bit-identical (or is missing on one side)."""
    lines = []
    for name in sorted(original.keys() | now.keys()):
        before, after = original.get(name), now.get(name)
        if before is not None and after is not None and _same_bits(before, after):
            continue
        line = f"  {name}: original {_show(before)}, now {_show(after)}"
        if before is not None and after is not None:
            line += f" (now - original = {after - before!r})"
        lines.append(line)
    return lines


def environment_changes(original_tags: Mapping[str, str], now_tags: Mapping[str, str]) -> list[str]:
    """One line per :data:`PROVENANCE_TAGS` tag whose value differs between then and now."""
    return [
        f"  {name}: {_show(original_tags.get(name))} -> {_show(now_tags.get(name))}"
        for name in PROVENANCE_TAGS
        if original_tags.get(name) != now_tags.get(name)
    ]


def _show(value: float | str | None) -> str:
    return "(none)" if value is None else repr(value) if isinstance(value, float) else value


def report(original: Original, reproduction: Reproduction) -> int:
    """Print the verdict and return the exit status."""
    if reproduction.run_id is not None:
        print(f"new run {reproduction.run_id} tagged lab.reproduces={original.identity} ({reproduction.job_dir})")
    elif reproduction.publish_error is not None:
        print(
            f"lab: publishing the new run to {redact(original.uri or '')} "
            f"failed ({reproduction.publish_error[:300]}); its record stays pending in "
            f"{reproduction.job_dir / RECORD_FILE}; upload it with `python -m lab.runs sync`",
            file=sys.stderr,
        )
    else:
        print(f"new outputs {reproduction.job_dir} (no MLflow run: tracking is disabled in the config)")
    count = len(original.metrics)
    if reproduction.error is None:
        differences = metric_differences(original.metrics, reproduction.metrics)
        if not differences:
            print(f"reproduced: {count} metrics identical (timings excluded)")
            return PENDING_EXIT if reproduction.publish_error else REPRODUCED_EXIT
        print(f"NOT reproduced: {len(differences)} of {count} metrics differ (timings excluded):")
        print("\n".join(differences))
    else:
        print(f"NOT reproduced: the job fails now: {reproduction.error} (traceback in {reproduction.job_dir})")
    if original.run_id is None:
        print("changed since the original: unknown (no original run, so no record of its environment)")
        return DIFFERENT_EXIT
    now_tags = environment_tags()
    changes = environment_changes(original.tags, now_tags)
    then, now = original.tags.get("lab.config_sha256"), config_fingerprint(original.job_config)
    if then is not None and then != now:
        changes.append(f"  lab.config_sha256 (the resolved config): {then} -> {now}")
    dirty = original.tags.get("lab.git_dirty") == "true" and now_tags.get("lab.git_dirty") == "true"
    print(changes_report(changes, dirty=dirty))
    return DIFFERENT_EXIT


def changes_report(changes: list[str], *, dirty: bool) -> str:
    """What changed since the original, from :func:`environment_changes`; ``dirty``: the
    original and now both ran from a tree with uncommitted changes, which lab does not
    record (only the commit and ``lab.git_dirty``), so "nothing" cannot be said."""
    if changes:
        return "changed since the original:\n" + "\n".join(changes)
    if dirty:
        return (
            "changed since the original: nothing that lab records, but both ran from a working tree with "
            "uncommitted changes (lab.git_dirty=true), which lab does not record: those may differ"
        )
    return "changed since the original: nothing"


# --- the command -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, reproduce, and exit with the verdict's status."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.reproduce",
        description="Run a finished job again from its logged config and compare the metrics bit for bit.",
    )
    parser.add_argument(
        "target",
        metavar="RUN_ID_OR_DIR",
        help="an MLflow run id (looked up in MLFLOW_TRACKING_URI, default sqlite:///mlflow.db) or a job's outputs dir",
    )
    args = parser.parse_args(argv)
    configure_client_env(TrackingConfig().timeout_s)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        original = find_original(args.target)
        print(f"reproducing {original.description}")
        code = report(original, rerun(original))
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
