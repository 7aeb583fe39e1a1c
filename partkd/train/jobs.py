"""Driver side of a training job: its inputs, the ``TorchTrainer`` (or one local process), the MLflow run, the final
checkpoint.

``train_teacher`` and ``train_student`` each run one job from the shards. On Ray (the default) it is a Ray Train job
with DDP over ``train.num_workers`` workers: ``read_shards`` (split filter pushed down) ->
``map_batches(SideTransform)`` -> ``get_dataset_shard`` -> ``iter_torch_batches`` in the loop. ``backend="local"``
runs the same loop in this process without Ray (debugging, fast tests). The run named ``train.name`` under
``train.storage_path`` keeps its last two epochs' checkpoints; starting the same job again resumes it, and a job of the
same name with other settings is refused. The final checkpoint is copied to ``<storage>/<name>/final``. The dataset,
the storage and the checkpoints read may be local folders or object-store locations (``s3://bucket/prefix``,
:mod:`partkd.storage`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from partkd import storage, tracking
from partkd.data.raydata import SideTransform
from partkd.data.shards import verify_dataset
from partkd.train.checkpoint import CheckpointError, CheckpointMeta, ModelSpec, load_meta, write_meta
from partkd.train.config import JobConfig
from partkd.train.loop import InjectedFailure, fit, ray_worker
from partkd.train.objectives import get_objective
from partkd.train.session import CHECKPOINT_GLOB, CHECKPOINTS_KEPT, JobInputs, LocalSession

BACKENDS = ("ray", "local")


@dataclass
class JobResult:
    checkpoint: str  # the final checkpoint directory (a local path or a URI, as train.storage_path is)
    metrics: dict  # the last epoch's metrics
    run_id: str  # MLflow run


class JobDataError(ValueError):
    """A training job's workers met a bad row or shard; the message is the reader's (file, sample, column)."""


_SHARD_ERROR_LINE = re.compile(r"partkd\.data\.schema\.Shard\w*Error: (.+)")


def worker_data_error(err: BaseException) -> str | None:
    """The reader's message inside a failed job, if a shard error stopped it.

    Ray hands worker errors to the driver as text (a ``WorkerGroupError`` whose ``worker_failures`` hold each rank's
    traceback, Ray Data's own error wrapped around ours), so the shard error is found by its line.
    """
    failures = getattr(err, "worker_failures", None) or {}
    for text in [str(e) for e in failures.values()] + [str(err)]:
        match = _SHARD_ERROR_LINE.search(text)
        if match:
            return match.group(1).strip()
    return None


def job_inputs(job: JobConfig, info: dict, sides: tuple[str, ...], require: str) -> JobInputs:
    """The rows a job reads (its split's rows that have side ``require``), each of ``sides`` transformed as
    ``job.data`` says: HQ as it is, LQ with the job's synthesized occlusion (the same masks for every model).
    ``info`` is the dataset's ``dataset.json``."""
    occlusion = {"hq": 0.0, "lq": job.data.occlusion_prob}
    transform = SideTransform({side: info[f"{side}_layout"] for side in sides},
                              {side: job.data.transform(occlusion[side]) for side in sides}, seed=job.data.seed,
                              num_classes=info["num_classes"])
    return JobInputs(job.data.path, job.data.splits(), job.data.validation_split_name, require, transform,
                     job.data.batch_size, job.data.cache, info["counts"]["samples"])


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def ensure_ray() -> None:
    """A local Ray unless one is running (``ray job submit`` and tests start their own); quiet Data progress bars.

    The dashboard starts with it (``ray[default]``): Ray Train's State-API clean-up of a stopped trial's workers needs
    it. Worker and actor output stays in Ray's log files (``/tmp/ray/session_latest/logs``) unless
    ``PARTKD_RAY_LOG_TO_DRIVER=1``: it is Ray's own chatter; progress comes from the MLflow run and errors reach the
    driver anyway.
    """
    import ray

    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):  # a local Ray of our own: its processes inherit this environment
            # Ray Train's controller polls its workers every 2 s by default, so each job waited for a poll at its
            # start and end; a local Ray has no network between them
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        ray.init(include_dashboard=True, configure_logging=False,
                 log_to_driver=os.environ.get("PARTKD_RAY_LOG_TO_DRIVER", "0") == "1")
    ray.data.DataContext.get_current().enable_progress_bars = False


def _fit_ray(job: JobConfig, meta: CheckpointMeta, datasets: dict, shuffle_rows: int, callbacks: list,
             final: str) -> dict:
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from partkd.train.ingest import JobDataConfig

    run_config = ray.train.RunConfig(
        name=job.train.name, storage_path=job.train.storage_path,
        failure_config=ray.train.FailureConfig(max_failures=job.train.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT), callbacks=callbacks,
    )
    data_config = JobDataConfig.split(datasets, job.train.num_workers,
                                      execution_options=ray.data.ExecutionOptions(preserve_order=True))
    gpu_share = {"GPU": job.train.gpus_per_worker} if job.train.use_gpu else {}
    trainer = TorchTrainer(
        ray_worker, train_loop_config={"job": job.to_dict(), "meta": meta.to_json(), "shuffle_rows": shuffle_rows},
        scaling_config=ray.train.ScalingConfig(num_workers=job.train.num_workers, use_gpu=job.train.use_gpu,
                                               resources_per_worker={"CPU": job.train.cpus_per_worker,
                                                                     **gpu_share}),
        run_config=run_config, datasets=datasets, dataset_config=data_config,
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        storage.copy_tree(directory, final)
    return result.metrics


# What an attempt of the local backend may fail with and pass on a new attempt. Ray Train's FailureConfig restarts the
# worker group after any worker error or death, since it cannot tell a bug from a lost node; in one process nothing
# dies without taking the driver with it, and a bug (a TypeError, a shape error) or a CUDA error (the process's CUDA
# context is gone, or the same step runs out of memory again) fails the same way on every attempt: retrying it only
# buries its traceback under max_failures more. What is left to retry: the injected fault (train.fail_at_epoch, to
# test resuming) and storage I/O that did not go through (OSError: an object store or a network filesystem that did
# not answer while dataset.json is read, a checkpoint is restored or replaced, the fault's marker is written).
RETRIED = (InjectedFailure, OSError)
# ... except the OSErrors that stay as they are: a full disk or a quota at checkpoint time (a CheckpointError naming the
# checkpoint kept), a path that is not there or not allowed, and a tracking server still unreachable after the last
# epoch (a new attempt would only lose the metrics kept for it). Bad data (ShardError) is a ValueError: not retried.
NOT_RETRIED = (CheckpointError, tracking.TrackingUnavailable, FileNotFoundError, PermissionError, IsADirectoryError,
               NotADirectoryError)


def _fit_local(job: JobConfig, meta: CheckpointMeta, inputs: JobInputs, final: str) -> dict:
    """The loop in this process; an attempt that fails with a :data:`RETRIED` error is started again from its last
    checkpoint, ``train.max_failures`` times, as Ray Train's ``FailureConfig`` does; any other error is raised at
    once."""
    for attempt in range(job.train.max_failures + 1):
        session = LocalSession(job, inputs, storage.join(job.train.storage_path, job.train.name))
        try:
            fit(job, meta, session)
            break
        except NOT_RETRIED:
            raise
        except RETRIED:
            if attempt == job.train.max_failures:
                raise
    with session.restored() as directory:
        storage.copy_tree(directory, final)
    return session.last_metrics or load_meta(final).metrics


# Settings a resumed job may change: how long it runs, how it is run and tracked; anything else changes the model.
RESUMABLE_CHANGES = ("data.cache", "train.epochs", "train.num_workers", "train.use_gpu", "train.cpus_per_worker",
                     "train.gpus_per_worker", "train.compile", "train.max_failures", "train.fail_at_epoch",
                     "train.hold_at_epoch",
                     "train.storage_path",
                     "tracking_uri", "mlflow_run_id", "parent_run_id")


# what a checkpoint or MLflow run made before a setting existed was made with: that setting's default
DEFAULT_SETTINGS = JobConfig().flat()


def _check_resumable(job: JobConfig) -> None:
    """Refuse to resume run ``train.name`` from checkpoints made with other settings (a job resumes by name)."""
    folder = storage.join(job.train.storage_path, job.train.name)
    saved = [meta for checkpoint in storage.listdir(folder, CHECKPOINT_GLOB)
             if storage.exists(meta := storage.join(checkpoint, "meta.json"))]
    if not saved:
        return
    before = json.loads(storage.read_text(saved[-1])).get("job", {})
    now = json.loads(json.dumps(job.flat()))  # as saved: tuples become lists
    # a setting added since those checkpoints were made, left at its default, is what they were made with (so a new
    # setting's default must reproduce the code before it)
    before = {**json.loads(json.dumps(DEFAULT_SETTINGS)), **before}
    changed = [k for k in sorted(set(before) | set(now)) if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)]
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ValueError(f"{folder} holds checkpoints of run {job.train.name!r} made with other settings ({details}); "
                         "give this job another train.name (a benchmark: another --out), or delete that folder to "
                         "start over")


def absolute_paths(job: JobConfig) -> JobConfig:
    """Workers run in their own directories: every local path they read is made absolute on the driver. An
    object-store location is checked here, before any work: credentials and bucket."""
    job = replace(job, teacher_checkpoint=storage.absolute(job.teacher_checkpoint),
                  part_matrix=storage.absolute(job.part_matrix),
                  data=replace(job.data, path=storage.absolute(job.data.path)),
                  train=replace(job.train, storage_path=storage.absolute(job.train.storage_path)))
    for what, location in (("data.path", job.data.path), ("train.storage_path", job.train.storage_path),
                           ("teacher_checkpoint", job.teacher_checkpoint), ("part_matrix", job.part_matrix)):
        storage.check_reachable(location, what)
    return job


def _run(job: JobConfig, model: ModelSpec, side: str, inputs: JobInputs, info: dict, tags: dict,
         say: Callable[[str], None], callbacks: list, backend: str) -> JobResult:
    """Fit inside an MLflow run: params and tags up front, per-epoch metrics from rank 0, checkpoint at the end.

    A job started again under its name with the same settings continues its unfinished MLflow run (as its Train run
    resumes)."""
    check_backend(backend)
    if backend == "local" and storage.is_remote(job.train.storage_path):
        raise ValueError(f"train.storage_path = {job.train.storage_path}: the local backend keeps its checkpoints in "
                         "a local folder; use the ray backend for an object store")
    kind = "teacher" if side == "hq" else "student"
    uri = job.tracking_uri or tracking.tracking_uri()
    role = kind if side == "hq" else f"student-{job.loss.objective}"
    name = job.train.name or f"{role}-{info['name']}-seed{job.train.seed}"
    job = replace(job, tracking_uri=uri, train=replace(job.train, name=name))
    _check_resumable(job)
    final = storage.join(job.train.storage_path, name, "final")
    with tracking.run(uri, f"partkd/{info['name']}", name, job.flat(),
                      {"kind": kind, "dataset_fingerprint": info["fingerprint"], **tags},
                      parent_run_id=job.parent_run_id or None, resume_unfinished=True,
                      may_differ=RESUMABLE_CHANGES, dataset=(info, job.data.path),
                      defaults=DEFAULT_SETTINGS) as run_id:
        job = replace(job, mlflow_run_id=run_id)
        meta = CheckpointMeta(model, side, job.data, job.flat())
        try:
            with tracking.EpochProgress(uri, run_id, name, job.train.epochs, say=say):
                if backend == "ray":
                    ensure_ray()
                    datasets = inputs.ray_datasets()  # footers checked, and with data.cache the rows too
                    metrics = _fit_ray(job, meta, datasets, inputs.shuffle_rows(), callbacks, final)
                else:
                    metrics = _fit_local(job, meta, inputs, final)
        except BaseException as err:
            bad_data = worker_data_error(err)
            if bad_data:
                raise JobDataError(f"job {name} stopped on bad data: {bad_data}") from err
            raise
        write_meta(final, replace(load_meta(final), mlflow_run_id=run_id))
        tracking.log_artifacts(uri, run_id, final, "checkpoint")
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return JobResult(final, metrics, run_id)


def train_teacher(job: JobConfig, say: Callable[[str], None] = print, tags: dict | None = None,
                  backend: str = "ray") -> JobResult:
    """The teacher on the HQ skeletons of the protocol's training split (Eq. 2)."""
    job = absolute_paths(job)
    info = verify_dataset(job.data.path)  # complete, its checksums, unique ids: once, here on the driver
    if not info.get("hq_layout"):
        raise ValueError(f"{job.data.path}: the dataset has no HQ side to train a teacher on")
    model = ModelSpec.for_job(job.model, info["hq_layout"], info["class_names"])
    inputs = job_inputs(job, info, ("hq",), require="hq")
    return _run(job, model, "hq", inputs, info, tags or {}, say, [], backend)


def train_student(job: JobConfig, say: Callable[[str], None] = print, tags: dict | None = None,
                  callbacks: list = (), backend: str = "ray") -> JobResult:
    """The student on the LQ skeletons (paired and solitary), L_c + alpha L_kd (Eq. 4).

    ``tags`` go on its MLflow run; ``callbacks`` are Ray Train ``UserCallback``s (a study's ``TuneReportCallback``).
    """
    job = absolute_paths(job)
    info = verify_dataset(job.data.path)  # complete, its checksums, unique ids: once, here on the driver
    if not info.get("lq_layout"):
        raise ValueError(f"{job.data.path}: the dataset has no LQ side to train a student on")
    objective = get_objective(job.loss.objective)
    tags, sides, teacher_channels = dict(tags or {}), ("lq",), 0
    if objective.distills:
        if not job.teacher_checkpoint:
            raise ValueError(f"loss.objective={objective.name} needs teacher_checkpoint")
        teacher = load_meta(job.teacher_checkpoint)
        if teacher.model.layout != info["hq_layout"]:
            raise ValueError(f"teacher layout {teacher.model.layout} is not the dataset's HQ layout "
                             f"{info['hq_layout']}")
        if objective.projects:  # compared in the teacher's width, through a projection head
            teacher_channels = teacher.model.build().out_channels
        tags["teacher_run_id"] = teacher.mlflow_run_id
        sides = ("lq", "hq")
        if objective.needs_part_matrix and not job.part_matrix:
            raise ValueError(f"loss.objective={objective.name} needs part_matrix (see `partkd part-matrix`)")
    model = ModelSpec.for_job(job.model, info["lq_layout"], info["class_names"], teacher_channels)
    inputs = job_inputs(job, info, sides, require="lq")
    result = _run(job, model, "lq", inputs, info, tags, say, list(callbacks), backend)
    if objective.needs_part_matrix:  # E beside the student it shaped
        uri = job.tracking_uri or tracking.tracking_uri()
        for file in (job.part_matrix, job.part_matrix.removesuffix(".npy") + ".png"):
            if storage.exists(file):
                tracking.log_artifacts(uri, result.run_id, file, "part_matrix")
    return result
