"""MLflow in one module (DESIGN §11): tracking URI, one experiment per dataset, runs, metrics, artifacts.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; without it, a SQLite file ``mlflow.db`` in the working directory
(no server needed) with artifacts in ``mlartifacts/`` beside it. Every call names its URI and run explicitly (an
``MlflowClient``), so Ray workers and the driver log to the same run without global state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from partkd import storage

DEFAULT_DB = "mlflow.db"


def _client(uri: str):
    """An ``MlflowClient``; MLflow is imported on first use (3 s on the 2-core machine), so the Ray processes that
    never log (Train workers other than rank 0, Ray Train's controller) do not pay for it."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _entities():
    import mlflow.entities

    return mlflow.entities


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri else f"sqlite:///{(Path.cwd() / DEFAULT_DB).resolve()}"


def default_artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, token usage); ours are model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(uri: str, name: str) -> str:
    """The experiment ``name``, created if absent; either way marked as model development (:data:`EXPERIMENT_KIND`)."""
    client = _client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=default_artifact_root(uri), tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():  # one made before partkd set it
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def experiment_url(uri: str, experiment_id: str, run_id: str = "") -> str | None:
    """The MLflow UI's page of an experiment (or of one of its runs) on tracking server ``uri``, in its model-training
    view; None for a local store (``mlflow ui`` serves it). MLflow 3.17's UI opens the view its sidebar switch last
    showed in that browser (GenAI by default), whatever the experiment's kind: the link asks for the training view."""
    if not uri.startswith(("http://", "https://")):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}{f'/runs/{run_id}' if run_id else ''}" \
           "?workflowType=machine_learning"


def compare_url(uri: str, experiment_id: str, run_ids: list[str]) -> str | None:
    """The MLflow UI's comparison of runs ``run_ids`` (their params side by side, parallel coordinates); None for a
    local store."""
    if not uri.startswith(("http://", "https://")) or not run_ids:
        return None
    runs = urllib.parse.quote(json.dumps(run_ids, separators=(",", ":")))
    return f"{uri.rstrip('/')}/#/compare-runs?runs={runs}&experiments={urllib.parse.quote(json.dumps([experiment_id]))}"


def log_dataset(uri: str, run_id: str, info: dict, location: str, context: str = "training") -> None:
    """Record dataset ``info`` (its ``dataset.json``) at ``location`` as an input of the run, its fingerprint as the
    digest: the runs table's Dataset column names it, and runs on the same data share a digest."""
    entities = _entities()
    counts = {k: v for k, v in info.get("counts", {}).items() if isinstance(v, int)}
    dataset = entities.Dataset(name=info["name"], digest=info["fingerprint"][:36],
                               source_type="s3" if location.startswith("s3://") else "local", source=json.dumps(
                                   {"uri": location, "fingerprint": info["fingerprint"]}),
                               profile=json.dumps({"counts": counts, "hq_layout": info.get("hq_layout"),
                                                   "lq_layout": info.get("lq_layout")}))
    _client(uri).log_inputs(run_id, [entities.DatasetInput(dataset, [entities.InputTag("mlflow.data.context",
                                                                                       context)])])


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def unfinished_run(uri: str, experiment: str, run_name: str, parent_run_id: str | None = None) -> str | None:
    """The newest run of that name (and parent) that did not finish, e.g. one whose driver was killed."""
    client = _client(uri)
    query = f"attributes.run_name = '{run_name}' and attributes.status != 'FINISHED'"
    if parent_run_id:
        query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    runs = client.search_runs([experiment_id(uri, experiment)], query, order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0].info.run_id if runs else None


def start_run(uri: str, experiment: str, run_name: str, params: dict, tags: dict,
              parent_run_id: str | None = None, resume_unfinished: bool = False, may_differ: tuple = (),
              defaults: dict | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) with its params and tags; returns its id.

    ``resume_unfinished``: continue the :func:`unfinished_run` of that name instead, if there is one and its params
    equal ``params`` except the keys in ``may_differ`` (a resumed job keeps one run, its per-epoch metrics picking up
    where they stopped; a job with other settings gets a run of its own). A param the run lacks (a setting added since
    it was logged) counts as equal at its value in ``defaults``, and is logged to it.
    """
    client = _client(uri)
    if resume_unfinished:
        run_id = unfinished_run(uri, experiment, run_name, parent_run_id)
        saved = client.get_run(run_id).data.params if run_id else {}
        logged = {**{k: str(v)[:6000] for k, v in (defaults or {}).items()}, **saved}
        if run_id and all(logged.get(k) == str(v)[:6000] for k, v in params.items() if k not in may_differ):
            client.update_run(run_id, "RUNNING")
            _log_params(client, run_id, {k: v for k, v in params.items() if k not in saved})
            return run_id
    commit = git_commit()
    # the runs table's Source column: which partkd entry point, at which commit
    all_tags = {"git_commit": commit, "mlflow.source.git.commit": commit, "mlflow.source.type": "JOB",
                "mlflow.source.name": f"partkd {tags['kind']}" if "kind" in tags else "partkd",
                **{k: str(v) for k, v in tags.items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(uri, experiment), run_name=run_name, tags=all_tags)
    _log_params(client, run.info.run_id, params)
    return run.info.run_id


def _log_params(client, run_id: str, params: dict) -> None:
    items = [_entities().Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=items[start:start + 100])


@contextlib.contextmanager
def run(uri: str, experiment: str, run_name: str, params: dict, tags: dict, parent_run_id: str | None = None,
        resume_unfinished: bool = False, may_differ: tuple = (), dataset: tuple[dict, str] | None = None,
        defaults: dict | None = None) -> Iterator[str]:
    """A run (a job's, or a parent's: a demo, a benchmark, a study) for the length of a ``with`` block: started (or
    continued, see :func:`start_run`), yields its id, ended FINISHED; an error ends it FAILED and Ctrl-C KILLED,
    unless someone has ended it already (a study ends a trial it stops early with the trial's state). ``dataset``:
    ``(dataset.json content, location)`` of the data it trains on, recorded as its input (:func:`log_dataset`)."""
    run_id = start_run(uri, experiment, run_name, params, tags, parent_run_id, resume_unfinished, may_differ, defaults)
    try:
        if dataset is not None:
            log_dataset(uri, run_id, *dataset)
        yield run_id
    except BaseException as err:
        end_run(uri, run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", if_running=True)
        raise
    end_run(uri, run_id)


# An epoch's metrics that the tracking server could not take (down, restarting): per (uri, run id), in this process.
_PENDING: dict[tuple[str, str], list] = {}
# MLflow's HTTP retries and timeout cut short (MLflow reads them per request) while training waits on a log call.
_QUICK = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
          "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_ENV_LOCK = threading.Lock()


class TrackingUnavailable(ConnectionError):
    """The tracking server still did not answer at the end of a job: metrics kept for it could not be logged."""


@contextlib.contextmanager
def _quick_retries() -> Iterator[None]:
    """:data:`_QUICK` in this process's environment while the block runs: training does not wait minutes on a server
    that is down. (Process-wide: another thread's MLflow call meanwhile, e.g. progress polling, is cut short too.)"""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in _QUICK}
        os.environ.update(_QUICK)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _log_batch(uri: str, run_id: str, items: list) -> None:
    client = _client(uri)
    for start in range(0, len(items), 1000):  # MLflow's limit of metrics per batch
        client.log_batch(run_id, metrics=items[start:start + 1000])


def _refused(err: BaseException) -> bool:
    """The server answered and refused (a 4xx: a deleted run, a bad request): not an outage to wait out."""
    status = getattr(err, "get_http_status_code", lambda: None)()
    return status is not None and 400 <= int(status) < 500


def log_epoch_metrics(uri: str, run_id: str, metrics: dict, step: int) -> None:
    """An epoch's metrics. Where a tracking server does not answer (after one quick retry), they are kept, training
    goes on, and they are sent with the next epoch's or by :func:`flush_metrics` at the end of the job: none lost."""
    now = int(time.time() * 1000)
    kept = _PENDING.pop((uri, run_id), [])
    items = kept + [_entities().Metric(k, float(v), now, step) for k, v in metrics.items()]
    if not uri.startswith(("http://", "https://")):
        _log_batch(uri, run_id, items)  # a local store that fails is a broken disk, not an outage
        return
    try:
        with _quick_retries():
            _log_batch(uri, run_id, items)
    except Exception as err:  # noqa: BLE001 - MLflow's and requests' errors alike: the server is unreachable
        if _refused(err):
            raise
        if not kept:
            print(f"partkd: MLflow at {uri} does not answer ({storage.first_line(err)}); training goes on, the metrics "
                  f"from epoch {step} on are kept and sent when it answers", file=sys.stderr, flush=True)
        _PENDING[(uri, run_id)] = items
        return
    if kept:
        print(f"partkd: MLflow at {uri} answers again; {len(kept)} kept metric values logged", file=sys.stderr,
              flush=True)


def flush_metrics(uri: str, run_id: str) -> None:
    """The metrics :func:`log_epoch_metrics` kept, sent with MLflow's full retries (minutes): at a job's end. Raises
    :class:`TrackingUnavailable` if the server still does not answer."""
    items = _PENDING.pop((uri, run_id), [])
    if not items:
        return
    try:
        _log_batch(uri, run_id, items)
    except Exception as err:
        raise TrackingUnavailable(f"MLflow at {uri} still does not answer ({storage.first_line(err)}): "
                                  f"{len(items)} metric values of run {run_id} are not logged; the checkpoint holds "
                                  "the last epoch's metrics") from None
    print(f"partkd: MLflow at {uri} answers again; {len(items)} kept metric values logged", file=sys.stderr,
          flush=True)



def metric_name(name: str) -> str:
    """``name`` with every character MLflow refuses in a metric name (it keeps letters, digits, ``_-. /``) as ``_``."""
    return re.sub(r"[^\w\-. /]", "_", name)


def metric_histories(uri: str, run_id: str, *prefixes: str) -> dict[str, list[float]]:
    """Every per-epoch metric of a job whose name starts with one of ``prefixes``, by step, over all the MLflow runs
    of the job's name in its experiment: a job started again after it finished (a benchmark rerun) has a new run
    with no epochs in it, and its epochs are in an earlier one. The latest value of a step wins."""
    client = _client(uri)
    run = client.get_run(run_id)
    same = client.search_runs([run.info.experiment_id], f"tags.mlflow.runName = '{run.info.run_name}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    steps: dict[str, dict[int, float]] = {}
    for other in same:
        for name in (k for k in other.data.metrics if k.startswith(prefixes)):
            for m in sorted(client.get_metric_history(other.info.run_id, name), key=lambda m: m.timestamp):
                steps.setdefault(name, {})[m.step] = m.value
    return {name: [by_step[k] for k in sorted(by_step)] for name, by_step in steps.items()}


def log_metrics(uri: str, run_id: str, metrics: dict) -> None:
    log_epoch_metrics(uri, run_id, metrics, 0)


def log_artifacts(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """A file or a whole directory, local or in an object store (uploaded from a local copy)."""
    client = _client(uri)
    with storage.local_copy(path) as local:
        if local.is_dir():
            client.log_artifacts(run_id, str(local), artifact_path)
        else:
            client.log_artifact(run_id, str(local), artifact_path)


def log_texts(uri: str, run_id: str, files: dict[str, str]) -> None:
    """Text artifacts (tables, configs) by artifact path, e.g. ``{"results/results.md": markdown}``."""
    client = _client(uri)
    for path, text in files.items():
        client.log_text(run_id, text, path)


def set_tags(uri: str, run_id: str, tags: dict) -> None:
    client = _client(uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def child_runs(uri: str, parent_run_id: str, query: str = "") -> list:
    """The runs nested directly under ``parent_run_id`` (``query``: more of MLflow's search filter), oldest first."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    search = f"tags.mlflow.parentRunId = '{parent_run_id}'" + (f" and {query}" if query else "")
    return client.search_runs([parent.info.experiment_id], search, order_by=["attributes.start_time ASC"],
                              max_results=10_000)


def end_run(uri: str, run_id: str, status: str = "FINISHED", if_running: bool = False) -> None:
    """Mark the run ended with ``status``; ``if_running``: only if nobody has ended it already (a study's driver ends
    the run of a trial it stopped early, with its state, while that trial's job is still unwinding)."""
    client = _client(uri)
    if if_running and client.get_run(run_id).info.status != "RUNNING":
        return
    client.set_terminated(run_id, status)


def format_epoch(name: str, epoch: int, epochs: int, metrics: dict) -> str:
    """One progress line for a finished epoch: losses, accuracies, learning rate, throughput."""
    losses = "  ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(metrics.items()) if k.startswith("loss/"))
    return (f"[{name}] epoch {epoch + 1}/{epochs}  {losses}  train {100 * metrics.get('train/top1', 0):.1f}%  "
            f"val {100 * metrics.get('val/top1', 0):.1f}%  lr {metrics.get('lr', 0):.3g}  "
            f"{metrics.get('samples_per_s', 0):.0f} samples/s")


class EpochProgress:
    """Follows a run's per-epoch metrics (logged by rank 0) from the driver and says a line per new epoch.

    Ray's worker output is not forwarded to the driver by default (it is mostly Ray's own logging), so progress comes
    from the MLflow run, which is where the metrics live anyway. A context manager: a polling thread while inside.
    """

    def __init__(self, uri: str, run_id: str, name: str, epochs: int, say: Callable[[str], None] = print,
                 interval_s: float = 1.0):
        self.uri, self.run_id, self.name, self.epochs, self.say = uri, run_id, name, epochs, say
        self.interval_s = interval_s
        self.last_step = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def poll(self) -> None:
        client = _client(self.uri)
        steps = [m.step for m in client.get_metric_history(self.run_id, "val/top1")]
        if steps and max(steps) > self.last_step:
            self.last_step = max(steps)
            self.say(format_epoch(self.name, self.last_step, self.epochs, client.get_run(self.run_id).data.metrics))

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - progress output must never break a job; the next poll tries again
                pass

    def __enter__(self) -> EpochProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.poll()  # the last epoch, if the thread missed it
        except Exception:  # noqa: BLE001
            pass
