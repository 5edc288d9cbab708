"""lab: a Hydra-composed, MLflow-tracked experiment launcher for scikit-learn.

The data flows one way, one module per step::

    overrides → lab.config (typed, validated) → lab.training (pure) → lab.outputs (job dir)
                                                                   → lab.tracking / lab.publishing (MLflow)

``python -m lab.train`` is the entry point; ``lab.runs``, ``lab.report`` and
``lab.reproduce`` are the commands that work on finished runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab.config import TrainConfig, to_typed
    from lab.training import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "to_typed", "train"]

# Imported on first use (PEP 562): a process that needs one submodule, such as the
# background publisher (lab.publishing), must not pay for scikit-learn and Hydra.
_HOMES = {"TrainConfig": "lab.config", "to_typed": "lab.config", "TrainResult": "lab.training", "train": "lab.training"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
