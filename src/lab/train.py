"""``python -m lab.train [overrides]``: the Hydra entry point.

It only wires the steps together: Hydra composes the typed config, the config is
validated, :func:`lab.training.train` fits, and the result goes to the job's outputs dir.
Tracking happens in Hydra callbacks (:mod:`lab.tracking`), around this function.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

if __name__ == "__main__":
    # `python -m lab.train`: start the tracking publisher before anything heavy is imported,
    # so that its own import of MLflow runs on another core meanwhile (lab.publishing).
    from lab import publishing

    publishing.start_early(sys.argv[1:], conf_dir=Path(__file__).resolve().parents[2] / "conf")

import atexit
import logging
import os
import signal

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lab import outputs
from lab.config import register_configs
from lab.launching import freeze_imports, quiet_replaced_launcher_options
from lab.records import redact_text
from lab.validation import UsageError, check_job, describe, note_group_sweep, one_line, shown_options

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

log = logging.getLogger("lab.train")
register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def run_job(cfg: DictConfig) -> float:
    """One job: validate, train, write outputs. Returns accuracy, the default search objective."""
    # Imported here, not at the top: a launch whose jobs run in other processes (joblib,
    # Ray, submitit) never trains in this one, and reaches its launcher ~1.5 s sooner.
    from lab.training import train

    freeze_imports()  # once scikit-learn is imported: at a process's first job
    config = check_job(cfg)
    log.info(
        "training %s on %s, %s split, seed %d", config.model.name, config.data.name, config.split.name, config.seed
    )
    result = train(config)
    log.info("metrics %s; fit %.3f s", result.metrics, result.timing["fit_s"])
    outputs.write_result(result, Path(HydraConfig.get().runtime.output_dir))
    return result.metrics["accuracy"]


def main() -> None:
    """Run Hydra, reporting usage errors in one line (exit 2) and job failures briefly (exit 1)."""
    # Hydra would print its own long error text; with this it raises, and we report.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    # Under `uv run`, Ray (hydra/launcher=ray) would start each worker with `uv run` in an
    # uploaded copy of the cwd, building a new venv without the `ray` extra: they never
    # start. Workers use the cluster's Python instead; set this to 1 to opt back in.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    quiet_replaced_launcher_options()
    freeze_imports()
    from lab import publishing

    # Last at exit (atexit runs its handlers in reverse): after lab.tracking's own handler,
    # which records an interrupted launch, publishing inline (tracking.background=false).
    atexit.register(publishing.close_stores)
    try:
        try:
            run_job()
        except Exception as exc:
            interrupt = _interrupt_behind(exc)
            if interrupt is None:
                raise
            raise interrupt from None
    except UsageError as exc:
        _refused()
        sys.exit(exc.code)
    except SystemExit as exc:
        from lab.tracking import note_job_exit

        job_dir = note_job_exit(exc)
        if job_dir is None:
            raise  # Hydra's own (--help, a bad option) or lab's end of the launch (exit 1 or 3)
        # A job called sys.exit: the launch ended there, as in Hydra. lab exits 1, as for a
        # failed job, whatever the code: 2, 3 and 128+n already say other things here.
        where = job_dir / outputs.TRACEBACK_FILE
        told = f"; traceback in {where}" if where.exists() else ""
        print(redact_text(f"lab: a job exited the launch: {outputs.summarize(exc)}{told}"), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", None) or _received_signal() or signal.SIGINT
        print(f"lab: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        sys.exit(128 + signum)
    except Exception as exc:  # noqa: BLE001 - reported briefly; the traceback is in the job dir
        message = describe(exc)
        frame = _raised_by_hydra(exc) if message is None else None
        if frame is not None:  # e.g. `data=null`, a sweep type it lacks
            message = _hydras_error(exc, frame)
        if message is not None:
            print(redact_text(note_group_sweep(message, sys.argv[1:])), file=sys.stderr)
            _refused()
            sys.exit(2)
        cause = redact_text(outputs.summarize(exc))
        tracking = sys.modules.get("lab.tracking")
        # in a sweep, Hydra keeps a job's exception in its return: this is the launcher's
        # (a worker died), which the launch's end records as the reason
        what = "launch" if tracking is not None and tracking.note_launch_failure(cause) else "job"
        print(f"lab: {what} failed: {cause}", file=sys.stderr)
        sys.exit(1)
    finally:
        publishing.release()  # unclaimed (tracking off, bad input): terminated, it had only imported


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``exc`` was raised while unwinding from, if any. The
    interrupt lands between any two bytecodes: in the middle of OmegaConf setting a value,
    say, whose clean-up then raised AttributeError on the half-set node (2 of 42 joblib
    sweeps interrupted during the jobs' validation): that error is the interrupt's doing,
    not a failure of its own."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        if isinstance(found, KeyboardInterrupt):
            return found
        seen.add(id(found))
        found = found.__cause__ or found.__context__
    return None


def _received_signal() -> int | None:
    tracking = sys.modules.get("lab.tracking")
    return tracking.received_signal() if tracking is not None else None


def _refused() -> None:
    """Bad input, exit 2: a sweep's launch that had started records no end (lab.tracking)."""
    tracking = sys.modules.get("lab.tracking")
    if tracking is not None:
        tracking.refused()


def _raised_by_hydra(exc: BaseException) -> FrameType | None:
    """Hydra's frame, if Hydra's own code raised ``exc``, itself or in a library it called
    (OmegaConf merging an override): the innermost frame that is Hydra's or lab's is
    Hydra's. A job's failure is raised in lab's code or a library lab calls, so this is
    Hydra refusing the command line or the config."""
    hydra_dir = Path(hydra.__file__).parent
    lab_dirs = (Path(__file__).parent, Path(__file__).parents[1] / "hydra_plugins")
    owner = None
    tb = exc.__traceback__
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename)
        if path.is_relative_to(hydra_dir):
            owner = tb.tb_frame
        elif any(path.is_relative_to(d) for d in lab_dirs):
            owner = None
        tb = tb.tb_next
    return owner


def _hydras_error(exc: BaseException, frame: FrameType) -> str:
    """One line for an error Hydra did not word itself, naming the override it was
    applying when it has one at hand."""
    from hydra.core.override_parser.types import Override

    override = frame.f_locals.get("override")
    repo: Any = frame.f_locals.get("repo")  # Hydra's config repository, where it sorts out group overrides
    if isinstance(override, Override) and override.value() is None and hasattr(repo, "get_group_options"):
        options = shown_options(repo.get_group_options(override.key_or_group))
        if options:  # `data=null`: Hydra says only that it got a NoneType
            return f"error: {override.key_or_group}=null: a config group takes an option; choose one of: {options}"
    where = f"override {override.input_line!r}: " if isinstance(override, Override) and override.input_line else ""
    return f"error: {where}{type(exc).__name__}: {one_line(str(exc))}"


if __name__ == "__main__":
    main()
