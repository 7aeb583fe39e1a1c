"""MLflow in one module (DESIGN §11): tracking URI, one experiment per dataset, runs, metrics, artifacts.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; without it, a SQLite file ``mlflow.db`` in the working directory
(no server needed) with artifacts in ``mlartifacts/`` beside it. Every call names its URI and run explicitly (an
``MlflowClient``), so Ray workers and the driver log to the same run without global state.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

DEFAULT_DB = "mlflow.db"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{(Path.cwd() / DEFAULT_DB).resolve()}"


def _default_artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(uri: str, name: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=_default_artifact_root(uri))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_run(uri: str, experiment: str, run_name: str, params: dict, tags: dict,
              parent_run_id: str | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) with its params and tags; returns its id."""
    client = MlflowClient(tracking_uri=uri)
    all_tags = {"git_commit": git_commit(), **{k: str(v) for k, v in tags.items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(uri, experiment), run_name=run_name, tags=all_tags)
    items = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[start:start + 100])
    return run.info.run_id


def log_epoch_metrics(uri: str, run_id: str, metrics: dict, step: int) -> None:
    client = MlflowClient(tracking_uri=uri)
    items = [mlflow.entities.Metric(k, float(v), 0, step) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=items)


def log_metrics(uri: str, run_id: str, metrics: dict) -> None:
    log_epoch_metrics(uri, run_id, metrics, 0)


def log_artifacts(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """A file or a whole directory."""
    client = MlflowClient(tracking_uri=uri)
    path = Path(path)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


def set_tags(uri: str, run_id: str, tags: dict) -> None:
    client = MlflowClient(tracking_uri=uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    MlflowClient(tracking_uri=uri).set_terminated(run_id, status)
