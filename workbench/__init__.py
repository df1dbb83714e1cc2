"""workbench: reproducible transfer-learning sweeps for face-image classification.

The package follows the data's journey, one room per stage: `spec` (the experiment registry) ->
`synth` / `ingest` / `leakage` / `dataset` (data) -> `pipeline` / `backbones` (the model and its
input) -> `train` / `evaluate` / `figures` / `run` (one tracked run) -> `sweep` (an Optuna study
of runs) -> `compare` / `stats` / `report` (reading runs back) -> `promote` / `predict` / `export`
(shipping). `record` states what a run records, for all of them; `cli/` is the front door.
"""

import os

# TensorFlow's C++ logging drowns the output users care about; it must be configured before
# TensorFlow is first imported (see also cli.common.quiet_environment). Set the variable yourself
# to see it again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
