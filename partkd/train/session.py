"""What a worker loop needs from the world around it, behind one small interface (:class:`WorkerSession`).

The loop (:mod:`partkd.train.loop`) reads batches, prepares its model, restores the latest checkpoint and reports each
epoch through a session; it never calls Ray or MLflow itself. :class:`RaySession` is a Ray Train worker (Ray Data
shards, DDP, ``ray.train.report``); :class:`LocalSession` runs the same loop in one process without Ray, on the same
shards through the same transform, with checkpoints in the run's folder: for debugging and for fast tests.
Either logs each epoch's metrics to the job's MLflow run from rank 0.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch
from torch import Tensor, nn

from partkd import tracking
from partkd.data.raydata import SideTransform, read_shards
from partkd.data.shards import iter_batches
from partkd.data.splits import Protocol, WithValidation
from partkd.train.checkpoint import CheckpointError
from partkd.train.config import JobConfig, TrainConfig

# ``<storage>/<name>/checkpoint_*``: Ray Train's checkpoint folders, and the local session's (epoch-numbered)
CHECKPOINT_GLOB = "checkpoint_*"
CHECKPOINTS_KEPT = 2
# data.cache=auto keeps a job's transformed splits in the object store when they take at most this share of it (a
# study runs several jobs at once). The transforms are seeded per sample, so every epoch would compute the same rows;
# caching them drops Ray Data's per-epoch restart and its coordinators (a tiny 3-epoch 2-worker job on the 2-core
# machine: 32 s instead of 41 s, medians of 3 interleaved runs). Each worker's rows differ between the two (equal parts
# cut in advance against rows dealt as they stream): a cached and a streamed job are equally valid, not identical.
CACHE_SHARE = 0.1
# Ray Data shuffles a worker's rows in a local buffer, so a buffer of a few batches mixes only neighbouring rows, and
# datasets are often stored in class order (Penn Action's files are numbered by action): with a 4-batch buffer a Penn
# teacher had 33.9 % validation top-1 after 10 epochs and 9.7 % on its own training batches, where the local backend's
# whole-split permutation gives 79 % after 4. The buffer holds a worker's whole share when its transformed rows take at
# most this many bytes (Penn Action: 14 MB; Ray's batcher holds some copies on top), else as many rows as fit. A
# whole-share buffer yields its first batch once the share is read: a streamed split no longer overlaps reading with
# training within an epoch (a cached one is read from memory). A cached training split is also shuffled once before
# it is cut among the workers, or each would get a run of classes.
SHUFFLE_BUFFER_BYTES = 512 * 2**20


# PARTKD_BF16=on|off overrides what native_bf16 finds: the suite runs with both on any machine (bf16 "on" where the
# CPU only emulates it is slow but computes what a bf16 CPU does), so no verdict depends on the CPU's precision path.
BF16_SWITCH = "PARTKD_BF16"


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 natively: a CUDA GPU that supports it, or an x86 CPU with AVX512-BF16 or
    AMX. Elsewhere bf16 is emulated and slower than fp32, so training stays in fp32. ``PARTKD_BF16`` (``on``, ``off``,
    ``auto``: the default) overrides the answer, for every device."""
    forced = os.environ.get(BF16_SWITCH, "auto").strip().lower()
    if forced not in ("on", "off", "auto"):
        raise ValueError(f"{BF16_SWITCH}={forced!r}: expected on, off or auto")
    if forced != "auto":
        return forced == "on"
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)  # Ampere on
    if device_type == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    return False


def step_precision(device: torch.device, bf16: bool = True) -> str:
    """What a step computes in on ``device``: ``bf16`` (when ``bf16``) where the device computes it natively
    (:func:`native_bf16`), else ``fp32``. The one place it is chosen: training, evaluation, E, the run's
    ``precision`` tag and the benchmark all take it."""
    return "bf16" if bf16 and native_bf16(device.type) else "fp32"


def autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast where :func:`step_precision` says bf16; a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=step_precision(device, bf16) == "bf16")


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def job_device(train: TrainConfig) -> torch.device:
    """Where a job's in-process work runs (the local session, evaluation, E): :func:`default_device` with
    ``train.use_gpu``, else the CPU."""
    return default_device() if train.use_gpu else torch.device("cpu")


def compiled(model: nn.Module, train: TrainConfig) -> nn.Module:
    """``train.compile``: the model through ``torch.compile``; where it cannot compile (no C++ compiler for the CPU
    backend, an unsupported Python or platform) the same model runs eagerly, with one warning saying why."""
    if not train.compile:
        return model
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        warnings.warn("train.compile: torch.compile is not supported here; training runs eagerly", stacklevel=2)
        return model
    # process-wide: a graph that fails to compile runs eagerly instead (logged once), in this worker and after
    torch._dynamo.config.suppress_errors = True
    return torch.compile(model)


@dataclass(frozen=True)
class JobInputs:
    """What a job's workers read: the rows of a split that have side ``require``, transformed by ``transform``.

    ``train`` is the training split; ``val`` is the split a job validates on (the protocol's test split, or with
    ``data.val_fraction`` the validation slice held out of training).
    """

    path: str
    splits: Protocol | WithValidation
    val_split: str  # "test" or "val"
    require: str  # "hq" (teacher) or "lq" (student)
    transform: SideTransform
    batch_size: int
    cache: str  # data.cache: auto | memory | stream (Ray only; the local session reads each split once)
    rows: int  # the dataset's rows, an upper bound of any split's (sizes the shuffle buffer)

    def split_name(self, name: str) -> str:
        return {"train": "train", "val": self.val_split}[name]

    def ray_datasets(self) -> dict:
        """``train`` and ``val`` as Ray Data datasets: filters pushed down into the Parquet read, then the
        transform per batch."""
        from ray.data.expressions import col

        datasets = {}
        for name in ("train", "val"):
            predicate = self.splits.ray_filter(self.split_name(name)) & col(self.require).is_not_null()
            datasets[name] = read_shards(self.path, filter=predicate).map_batches(
                self.transform, batch_format="pyarrow", batch_size=self.batch_size)
            if self.cached():
                if name == "train":  # cut into consecutive parts for the workers: mix the classes first (seeded)
                    datasets[name] = datasets[name].random_shuffle(seed=0)
                datasets[name] = datasets[name].materialize()  # read and transformed once, not every epoch
        return datasets

    def shuffle_rows(self) -> int:
        """Rows of Ray Data's local shuffle buffer: the whole split if it fits :data:`SHUFFLE_BUFFER_BYTES`, so an
        epoch is a permutation of all its rows as on the local backend; else as many rows as fit (at least 4
        batches)."""
        return max(4 * self.batch_size, min(self.rows, SHUFFLE_BUFFER_BYTES // self.transform.row_bytes()))

    def cached(self) -> bool:
        """Whether the transformed splits are kept in Ray's object store (``data.cache``): with ``auto``, when every
        row of the dataset would take at most :data:`CACHE_SHARE` of the cluster's object store."""
        if self.cache != "auto":
            return self.cache == "memory"
        import ray

        store = ray.cluster_resources().get("object_store_memory", 0.0)
        return self.rows * self.transform.row_bytes() <= CACHE_SHARE * store

    def local_batches(self, split: str) -> Iterator[dict[str, np.ndarray]]:
        """Transformed batches of ``split`` (a split of ``splits``: train, test or val), in storage order, read in
        this process (no Ray)."""
        predicate = self.splits.filter(split) & pc.field(self.require).is_valid()
        for batch, _, file in iter_batches(self.path, filter=predicate, batch_size=self.batch_size):
            yield self.transform.transform(batch, file)

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """The whole of ``train`` or ``val`` transformed, in storage order, in this process."""
        parts = list(self.local_batches(self.split_name(name)))
        if not parts:
            raise ValueError(f"{self.path}: split {self.split_name(name)!r} has no sample with a {self.require} side")
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def torch_batch_options(device: torch.device) -> dict:
    """How Ray Data's ``iter_torch_batches`` delivers a worker's batches: on a GPU pinned, copied without blocking
    and two prepared ahead of the step."""
    gpu = device.type == "cuda"
    return {"device": device, "pin_memory": gpu, "prefetch_batches": 2 if gpu else 1}


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """To a GPU through pinned memory without blocking the host; elsewhere as it is."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


class WorkerSession:
    """One worker's view of its job: rank, device, data, checkpoints and reports."""

    def __init__(self, job: JobConfig, rank: int, world_size: int, device: torch.device):
        self.job, self.rank, self.world_size, self.device = job, rank, world_size, device

    def autocast(self):
        return autocast(self.device, self.job.train.bf16)

    @property
    def precision(self) -> str:
        """What the steps compute in here: ``bf16`` (autocast) or ``fp32``; tagged on the job's run."""
        return step_precision(self.device, self.job.train.bf16)

    def batches(self, split: str, epoch: int, shuffle: bool) -> Iterable[dict[str, Tensor]]:
        """This worker's batches of ``train`` or ``val`` on its device; shuffled (seeded by epoch) if asked."""
        raise NotImplementedError

    def prepare_model(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def restored(self) -> contextlib.AbstractContextManager[Path | None]:
        """The latest checkpoint's folder while inside, or None when the job starts afresh."""
        raise NotImplementedError

    def report(self, epoch: int, metrics: dict, write_checkpoint: Callable[[Path], None]) -> None:
        """End of an epoch: metrics to MLflow (rank 0) and to the trainer, with a checkpoint written into a folder."""
        raise NotImplementedError

    def log_metrics(self, metrics: dict, epoch: int) -> None:
        if self.rank == 0 and self.job.mlflow_run_id:
            tracking.log_epoch_metrics(self.job.tracking_uri, self.job.mlflow_run_id, metrics, epoch)

    def flush_metrics(self) -> None:
        """At the end of training: metrics a tracking server that was down could not take, sent now (waiting for it
        with MLflow's full retries)."""
        if self.rank == 0 and self.job.mlflow_run_id:
            tracking.flush_metrics(self.job.tracking_uri, self.job.mlflow_run_id)

    def shuffle_seed(self, epoch: int) -> int:
        return self.job.train.seed * 1_000_003 + epoch


def shuffled_batches(size: int, shuffle_rows: int, seed: int | None) -> dict:
    """``iter_torch_batches``' batching: batches of ``size``, shuffled (with ``seed``) in a buffer of
    ``shuffle_rows`` rows, or in order when ``seed`` is None."""
    if seed is None:
        return {"batch_size": size}
    return {"batch_size": size, "local_shuffle_buffer_size": max(shuffle_rows, size), "local_shuffle_seed": seed}


class RaySession(WorkerSession):
    """A Ray Train worker: its Ray Data shard (shuffled in a buffer of ``shuffle_rows``,
    :meth:`JobInputs.shuffle_rows`), DDP through ``prepare_model``, ``ray.train.report`` per epoch."""

    def __init__(self, job: JobConfig, shuffle_rows: int):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        super().__init__(job, context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device())
        self.shuffle_rows = shuffle_rows
        self._tagging = None
        if self.rank == 0 and job.mlflow_run_id:  # where the job ran (the last attempt's rank 0), for a cluster's logs
            import ray

            # in the background: MLflow's import and store set-up take seconds (7 s with a SQLite store on the 2-core
            # machine), while DDP and the dataset shards start; the first report waits for it
            self._tagging = threading.Thread(target=tracking.set_tags, daemon=True, args=(
                job.tracking_uri, job.mlflow_run_id, {"ray.node_id": ray.get_runtime_context().get_node_id(),
                                                      "precision": self.precision}))
            self._tagging.start()

    def batches(self, split: str, epoch: int, shuffle: bool) -> Iterable[dict[str, Tensor]]:
        import ray.train

        batching = shuffled_batches(self.job.data.batch_size, self.shuffle_rows,
                                    self.shuffle_seed(epoch) if shuffle else None)
        return ray.train.get_dataset_shard(split).iter_torch_batches(**batching, **torch_batch_options(self.device))

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return compiled(ray.train.torch.prepare_model(model), self.job.train)

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, epoch: int, metrics: dict, write_checkpoint: Callable[[Path], None]) -> None:
        import ray.train

        if self._tagging is not None:
            self._tagging.join()
            self._tagging = None
        self.log_metrics(metrics, epoch)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if self.rank == 0:
                write_checkpoint(Path(tmp))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            # epochs_done: the time axis of a study's early stopping, right across a resumed run
            ray.train.report({**metrics, "epoch": epoch, "epochs_done": epoch + 1}, checkpoint=checkpoint)


class LocalSession(WorkerSession):
    """The job in this process, without Ray: one worker on CPU (or the first GPU with ``train.use_gpu``).

    Each split is read and transformed once (the transforms are seeded per sample, so every epoch sees the same
    tensors, as on Ray); a shuffled epoch is a permutation seeded by (seed, epoch). Checkpoints go to
    ``<folder>/checkpoint_<epoch>`` (the last two kept), where a job started again finds them.
    """

    def __init__(self, job: JobConfig, inputs: JobInputs, folder: Path):
        super().__init__(job, 0, 1, job_device(job.train))
        self.inputs, self.folder = inputs, Path(folder)
        self.last_metrics: dict = {}
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        if job.mlflow_run_id:
            tracking.set_tags(job.tracking_uri, job.mlflow_run_id, {"precision": self.precision})

    def batches(self, split: str, epoch: int, shuffle: bool) -> Iterator[dict[str, Tensor]]:
        if split not in self._arrays:
            self._arrays[split] = self.inputs.arrays(split)
        arrays = self._arrays[split]
        count, size = len(arrays["label"]), self.job.data.batch_size
        order = np.random.default_rng(self.shuffle_seed(epoch)).permutation(count) if shuffle else np.arange(count)
        for start in range(0, count, size):
            rows = order[start:start + size]
            yield {key: _to_device(torch.from_numpy(values[rows]), self.device) for key, values in arrays.items()}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return compiled(model.to(self.device), self.job.train)

    @contextlib.contextmanager
    def restored(self) -> Iterator[Path | None]:
        saved = sorted(self.folder.glob(CHECKPOINT_GLOB))
        yield saved[-1] if saved else None

    def report(self, epoch: int, metrics: dict, write_checkpoint: Callable[[Path], None]) -> None:
        self.log_metrics(metrics, epoch)
        target = self.folder / f"checkpoint_{epoch:06d}"
        partial = self.folder / f".{target.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        try:
            write_checkpoint(partial)
        except OSError as err:  # a full disk, a quota: the last whole checkpoint stays, and the error says where
            shutil.rmtree(partial, ignore_errors=True)
            saved = sorted(self.folder.glob(CHECKPOINT_GLOB))
            kept = f"the last one, {saved[-1]}, is intact" if saved else "no earlier checkpoint exists"
            raise CheckpointError(f"job {self.job.train.name}: the checkpoint of epoch {epoch} could not be written "
                                  f"to {target} ({err.strerror or err}); {kept}") from err
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)  # a checkpoint is there whole or not at all
        for old in sorted(self.folder.glob(CHECKPOINT_GLOB))[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)
        self.last_metrics = {**metrics, "epoch": epoch, "epochs_done": epoch + 1}
