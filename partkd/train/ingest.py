"""How a Ray Train job's datasets reach its workers: Ray Train's ``DataConfig``, extended for cached splits.

Ray Train hands each worker a ``streaming_split`` of every dataset: a ``SplitCoordinator`` actor per dataset runs the
Ray Data pipeline and deals its blocks out, epoch after epoch. A split that ``data.cache`` has already materialized has
no pipeline left to run: :meth:`JobDataConfig.split` cuts it into equal parts on the driver, before the job's workers
hold any CPU (cutting blocks takes Ray tasks), and each worker iterates its own part directly: the same rows in each
rank every epoch, and no coordinator process per dataset (two on every job, each seconds to start on a small machine).
"""

from __future__ import annotations

import ray.train
from ray.data.dataset import MaterializedDataset


class JobDataConfig(ray.train.DataConfig):
    """``DataConfig`` whose materialized datasets come split in advance; the others stream."""

    def __init__(self, parts: dict[str, list[MaterializedDataset]], **kwargs):
        super().__init__(**kwargs)
        self._parts = parts

    @classmethod
    def split(cls, datasets: dict, world_size: int, **kwargs) -> JobDataConfig:
        """The config for ``datasets`` on ``world_size`` workers: each materialized one (every one is split among the
        workers) cut into ``world_size`` parts of equal length, as ``streaming_split(equal=True)`` would deal it."""
        return cls({name: ds.split(world_size, equal=True) for name, ds in datasets.items()
                    if isinstance(ds, MaterializedDataset)}, datasets_to_split="all", **kwargs)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        streamed = {name: ds for name, ds in datasets.items() if name not in self._parts}
        output = super().configure(streamed, world_size, worker_handles, worker_node_ids, **kwargs)
        for name in self._parts.keys() & datasets.keys():  # Ray Train configures one dataset at a time
            parts = self._parts[name]
            if len(parts) != world_size:
                raise RuntimeError(f"dataset {name!r} was split for {len(parts)} workers, the job has {world_size}")
            for rank, part in enumerate(parts):  # each part is this config's own: its options are set in place
                part.context.execution_options = self._resolve_execution_options(name)
                output[rank][name] = part.iterator()
        return output
