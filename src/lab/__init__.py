"""lab: a Hydra-composed, MLflow-tracked experiment launcher for scikit-learn.

The data flows one way, one module per step::

    overrides → lab.config (typed, validated) → lab.training (pure) → lab.outputs (job dir)
                                                                   → lab.tracking / lab.publishing (MLflow)

``python -m lab.train`` is the entry point; ``lab.runs``, ``lab.report`` and
``lab.reproduce`` are the commands that work on finished runs.
"""

from lab.config import TrainConfig, to_typed
from lab.training import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "to_typed", "train"]
