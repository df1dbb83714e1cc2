"""workbench: reproducible transfer-learning sweeps for face-image classification.

`import workbench as wb; ws = wb.Workspace(".")` gives every command as a method (`ws.sweep`,
`ws.compare`, `ws.report`, `ws.evaluate`, `ws.matrix`, `ws.promote`); the `workbench` command
line calls exactly those. The package follows the data's journey, one room per stage: `spec`
(the experiment registry) -> `data` (generated faces, ingested photos, duplicate groups, splits,
balancing) -> `model` (the input pipeline, backbones, training) -> `track` (the MLflow store, one
tracked run, an Optuna sweep of runs) -> `analysis` (comparing runs, reports, cross-dataset
scores) -> `ship` (promoting, predicting, exporting). `measure` holds the scores and figures
every stage shares; `vocabulary` the names a run records; `workspace` where everything lives.
"""

import os

# Quiet defaults, set before TensorFlow or MLflow first load (which is when they read them), and
# only where the user has not chosen: TensorFlow's C++ logging drowns the output users care
# about; MLflow's artifact progress bars fill notebooks and logs with one bar per file; and MLflow
# 3 reports usage from background threads, while workbench is built to run offline and sends
# nothing anywhere unless its user decides otherwise. These are the only environment variables
# the package sets; where data and runs live is never read from a variable the package wrote.
for _name, _value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
                      ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(_name, _value)

from workbench.api import Workspace  # noqa: E402  (cheap: the stages load when a method runs)

__version__ = "0.1.0"
__all__ = ["Workspace", "__version__"]
