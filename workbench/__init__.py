"""workbench: reproducible transfer-learning sweeps for face-image classification.

The package follows the data's journey, one module per stage: `spec` (the experiment registry)
-> `synth` / `dataset` / `split` / `balance` (data) -> `pipeline` / `augment` (tf.data) ->
`backbones` (models) -> `train` (the one training function) -> `evaluate` -> `run` / `tracking`
(an MLflow run) -> `sweep` (an Optuna study of runs) -> `compare` (reading runs back). The `cli`
module is the front door.
"""

import os

# TensorFlow's C++ logging drowns the output users care about; it must be configured before
# TensorFlow is first imported (see also tracking.quiet_environment). Set the variable yourself
# to see it again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
