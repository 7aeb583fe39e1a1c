"""Driver side of a training job: Ray Data inputs, the ``TorchTrainer``, the MLflow run, the final checkpoint.

``train_teacher`` and ``train_student`` each run one Ray Train job (DDP over ``train.num_workers`` workers) from the
shards: ``read_shards`` (split filter pushed down) -> ``map_batches(SideTransform)`` -> ``get_dataset_shard`` ->
``iter_torch_batches`` in the loops. The run named ``train.name`` under ``train.storage_path`` keeps every epoch's
checkpoint (the last two are kept); starting the same job again resumes it, and a job of the same name with other
settings is refused. The final checkpoint is copied to ``<storage>/<name>/final``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import ray
import ray.train
from ray.data.expressions import col
from ray.train.torch import TorchTrainer

from partkd import tracking
from partkd.data.raydata import SideTransform, read_shards
from partkd.data.shards import load_info
from partkd.data.splits import VALIDATION, get_protocol, validation_split
from partkd.data.transforms import TransformConfig
from partkd.train.common import build_model, load_meta, model_meta
from partkd.train.config import JobConfig
from partkd.train.loops import FEATURE_OBJECTIVES, student_loop, teacher_loop


@dataclass
class JobResult:
    checkpoint: Path  # the final checkpoint directory
    metrics: dict  # the last epoch's metrics
    run_id: str  # MLflow run


class JobDataError(ValueError):
    """A training job's workers met a bad row or shard; the message is the reader's (file, sample, column)."""


_SHARD_ERROR_LINE = re.compile(r"partkd\.data\.schema\.Shard\w*Error: (.+)")


def worker_data_error(err: BaseException) -> str | None:
    """The reader's message inside a failed Ray Train job, if a shard error stopped it.

    Ray hands worker errors to the driver as text (a ``WorkerGroupError`` whose ``worker_failures`` hold each rank's
    traceback, Ray Data's own error wrapped around ours), so the shard error is found by its line.
    """
    failures = getattr(err, "worker_failures", None) or {}
    for text in [str(e) for e in failures.values()] + [str(err)]:
        match = _SHARD_ERROR_LINE.search(text)
        if match:
            return match.group(1).strip()
    return None


def transform_configs(job: JobConfig) -> dict[str, TransformConfig]:
    """HQ as it is; the LQ side with the job's synthesized occlusion (the same masks for every model)."""
    base = TransformConfig(frames=job.data.frames, persons=job.data.persons, crop="center")
    return {"hq": base, "lq": replace(base, occlusion_prob=job.data.occlusion_prob,
                                      occlusion_unit=job.data.occlusion_unit)}


def split_predicates(job: JobConfig) -> dict:
    """Ray Data predicates of the job's ``train`` and ``val`` rows: the protocol's train and test splits or, with
    ``data.val_fraction``, the training split less a seeded validation slice and that slice (so a study never sees
    the test split)."""
    protocol = get_protocol(job.data.protocol)
    if job.data.val_fraction == 0.0:
        return {"train": protocol.ray_filter("train"), "val": protocol.ray_filter("test")}
    held_out = validation_split(protocol, job.data.path, job.data.val_fraction, job.data.val_seed)
    return {"train": held_out.ray_filter("train"), "val": held_out.ray_filter(VALIDATION)}


def job_datasets(job: JobConfig, layouts: dict[str, str], require: str) -> dict:
    """``train`` and ``val`` datasets (:func:`split_predicates`) of the rows that have side ``require``."""
    cfgs = transform_configs(job)
    transform = SideTransform(layouts, {side: cfgs[side] for side in layouts}, seed=job.data.seed)
    datasets = {}
    for name, split_predicate in split_predicates(job).items():
        predicate = split_predicate & col(require).is_not_null()
        ds = read_shards(job.data.path, filter=predicate)
        datasets[name] = ds.map_batches(transform, batch_format="pyarrow", batch_size=job.data.batch_size)
    return datasets


def ensure_ray() -> None:
    """A local Ray unless one is running (``ray job submit`` and tests start their own); quiet Data progress bars.

    The dashboard starts with it (``ray[default]``): Ray Train's State-API clean-up of a stopped trial's workers needs
    it. Worker and actor output stays in Ray's log files (``/tmp/ray/session_latest/logs``) unless
    ``PARTKD_RAY_LOG_TO_DRIVER=1``: it is Ray's own chatter; progress comes from the MLflow run and errors reach the
    driver anyway.
    """
    if not ray.is_initialized():
        ray.init(include_dashboard=True, configure_logging=False,
                 log_to_driver=os.environ.get("PARTKD_RAY_LOG_TO_DRIVER", "0") == "1")
    ray.data.DataContext.get_current().enable_progress_bars = False


def _fit(loop, job: JobConfig, meta: dict, datasets: dict, callbacks: list) -> ray.train.Result:
    run_config = ray.train.RunConfig(
        name=job.train.name, storage_path=str(Path(job.train.storage_path).resolve()),
        failure_config=ray.train.FailureConfig(max_failures=job.train.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2), callbacks=callbacks,
    )
    data_config = ray.train.DataConfig(datasets_to_split="all",
                                       execution_options=ray.data.ExecutionOptions(preserve_order=True))
    gpu_share = {"GPU": job.train.gpus_per_worker} if job.train.use_gpu else {}
    trainer = TorchTrainer(
        loop, train_loop_config={"job": job.to_dict(), "meta": meta},
        scaling_config=ray.train.ScalingConfig(num_workers=job.train.num_workers, use_gpu=job.train.use_gpu,
                                               resources_per_worker={"CPU": job.train.cpus_per_worker,
                                                                     **gpu_share}),
        run_config=run_config, datasets=datasets, dataset_config=data_config,
    )
    return trainer.fit()


# Settings a resumed job may change: how long it runs, how it is run and tracked; anything else changes the model.
RESUMABLE_CHANGES = ("train.epochs", "train.num_workers", "train.use_gpu", "train.cpus_per_worker",
                     "train.gpus_per_worker", "train.max_failures", "train.fail_at_epoch", "train.storage_path",
                     "tracking_uri", "mlflow_run_id", "parent_run_id")


def _data_meta(job: JobConfig) -> dict:
    """How the model saw its data, so evaluation and E default to the same."""
    return {"path": job.data.path, "protocol": job.data.protocol, "frames": job.data.frames,
            "persons": job.data.persons, "occlusion_unit": job.data.occlusion_unit, "seed": job.data.seed,
            "val_fraction": job.data.val_fraction, "val_seed": job.data.val_seed}


def _check_resumable(job: JobConfig, name: str) -> None:
    """Refuse to resume run ``name`` from checkpoints made with other settings (Ray Train resumes by name)."""
    saved = sorted((Path(job.train.storage_path) / name).glob("checkpoint_*/meta.json"))
    if not saved:
        return
    before = json.loads(saved[-1].read_text()).get("job", {})
    now = json.loads(json.dumps(job.flat()))  # as saved: tuples become lists
    changed = [k for k in sorted(set(before) | set(now)) if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k)]
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ValueError(f"{Path(job.train.storage_path) / name} holds checkpoints of run {name!r} made with other "
                         f"settings ({details}); give this job another train.name (or delete that folder to start "
                         f"over)")


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path else path


def absolute_paths(job: JobConfig) -> JobConfig:
    """Workers run in their own directories: every path they read is made absolute on the driver."""
    return replace(job, teacher_checkpoint=_absolute(job.teacher_checkpoint), part_matrix=_absolute(job.part_matrix),
                   data=replace(job.data, path=_absolute(job.data.path)),
                   train=replace(job.train, storage_path=_absolute(job.train.storage_path)))


def _run(kind: str, loop, job: JobConfig, meta: dict, datasets: dict, info: dict, tags: dict,
         say: Callable[[str], None], callbacks: list) -> JobResult:
    """Fit inside an MLflow run: params and tags up front, per-epoch metrics from rank 0, checkpoint at the end.

    A job started again under its name with the same settings continues its unfinished MLflow run (as the Ray Train
    run resumes)."""
    uri = job.tracking_uri or tracking.tracking_uri()
    role = kind if kind == "teacher" else f"student-{job.loss.objective}"
    name = job.train.name or f"{role}-{info['name']}-seed{job.train.seed}"
    job = replace(job, tracking_uri=uri, train=replace(job.train, name=name))
    _check_resumable(job, name)
    meta = {**meta, "job": job.flat()}
    run_id = tracking.start_run(uri, experiment=f"partkd/{info['name']}", run_name=name, params=job.flat(),
                                tags={"kind": kind, "dataset_fingerprint": info["fingerprint"], **tags},
                                parent_run_id=job.parent_run_id or None, resume_unfinished=True,
                                may_differ=RESUMABLE_CHANGES)
    job = replace(job, mlflow_run_id=run_id)
    try:
        with tracking.EpochProgress(uri, run_id, name, job.train.epochs, say=say):
            result = _fit(loop, job, meta, datasets, callbacks)
    except BaseException as err:
        tracking.end_run(uri, run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", if_running=True)
        bad_data = worker_data_error(err)
        if bad_data:
            raise JobDataError(f"job {name} stopped on bad data: {bad_data}") from err
        raise
    final = Path(job.train.storage_path).resolve() / name / "final"
    with result.checkpoint.as_directory() as directory:
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(directory, final)
    meta_file = final / "meta.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "mlflow_run_id": run_id}, indent=2))
    tracking.log_artifacts(uri, run_id, final, "checkpoint")
    tracking.end_run(uri, run_id)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    return JobResult(final, metrics, run_id)


def train_teacher(job: JobConfig, say: Callable[[str], None] = print, tags: dict | None = None) -> JobResult:
    """Ray Train job: the teacher on the HQ skeletons of the protocol's training split (Eq. 2)."""
    job = absolute_paths(job)
    info = load_info(job.data.path)
    if not info.get("hq_layout"):
        raise ValueError(f"{job.data.path}: the dataset has no HQ side to train a teacher on")
    ensure_ray()
    meta = {**model_meta(job.model, info["hq_layout"], info["num_classes"], info["class_names"]), "side": "hq",
            "data": _data_meta(job)}
    datasets = job_datasets(job, {"hq": info["hq_layout"]}, require="hq")
    return _run("teacher", teacher_loop, job, meta, datasets, info, tags or {}, say, [])


def train_student(job: JobConfig, say: Callable[[str], None] = print, tags: dict | None = None,
                  callbacks: list = ()) -> JobResult:
    """Ray Train job: the student on the LQ skeletons (paired and solitary), L_c + alpha L_kd (Eq. 4).

    ``tags`` go on its MLflow run; ``callbacks`` are Ray Train ``UserCallback``s (a study's ``TuneReportCallback``).
    """
    job = absolute_paths(job)
    info = load_info(job.data.path)
    if not info.get("lq_layout"):
        raise ValueError(f"{job.data.path}: the dataset has no LQ side to train a student on")
    kd = job.loss.objective != "ce"
    tags = dict(tags or {})
    meta = {**model_meta(job.model, info["lq_layout"], info["num_classes"], info["class_names"]), "side": "lq",
            "data": _data_meta(job)}
    layouts = {"lq": info["lq_layout"]}
    if kd:
        if not job.teacher_checkpoint:
            raise ValueError(f"loss.objective={job.loss.objective} needs teacher_checkpoint")
        teacher = load_meta(job.teacher_checkpoint)
        if job.loss.objective in FEATURE_OBJECTIVES:  # compared in the teacher's width, through a projection head
            meta["teacher_channels"] = build_model(teacher).out_channels
        tags["teacher_run_id"] = teacher.get("mlflow_run_id", "")
        if teacher["layout"] != info["hq_layout"]:
            raise ValueError(f"teacher layout {teacher['layout']} is not the dataset's HQ layout {info['hq_layout']}")
        layouts["hq"] = teacher["layout"]
        if job.loss.objective == "pmsc" and not job.part_matrix:
            raise ValueError("loss.objective=pmsc needs part_matrix (see `partkd part-matrix`)")
    ensure_ray()
    datasets = job_datasets(job, layouts, require="lq")
    result = _run("student", student_loop, job, meta, datasets, info, tags, say, list(callbacks))
    if job.loss.objective == "pmsc":  # E beside the student it shaped
        for file in (Path(job.part_matrix), Path(job.part_matrix).with_suffix(".png")):
            if file.exists():
                tracking.log_artifacts(job.tracking_uri or tracking.tracking_uri(), result.run_id, file, "part_matrix")
    return result
