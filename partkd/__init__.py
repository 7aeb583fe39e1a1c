"""partkd: part-level knowledge distillation from high-quality to low-quality skeletons."""

import os

# MLflow's usage telemetry off unless asked for: its background thread sets and unsets an environment variable that
# every tracking request reads, and in MLflow 3.17 a request that reads it as it goes fails with KeyError
# '_MLFLOW_TELEMETRY_SESSION_ID' (a resumed study's driver, seen in the suite); a cluster without internet gains
# nothing from it either. Set MLFLOW_DISABLE_TELEMETRY=false to keep it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.2.0"
