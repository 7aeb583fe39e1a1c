"""Shared fixtures: small synthetic datasets written through the real writer into real Parquet files."""

from pathlib import Path

import numpy as np
import pytest

from partkd.data.schema import Sample

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_sample(sample_id: str, label: int = 0, frames: int = 5, persons: int = 1, hq: bool = True, lq: bool = True,
                seed: int = 0, lq_joints: int = 17) -> Sample:
    """A hand-made sample with random values: ntu25 3D on the HQ side, coco17 2D on the LQ side."""
    rng = np.random.default_rng(seed)
    return Sample(
        sample_id=sample_id, label=label, frames=frames,
        hq=rng.normal(size=(persons, frames, 25, 3)).astype(np.float32) if hq else None,
        hq_score=rng.uniform(0, 1, size=(persons, frames, 25)).astype(np.float32) if hq else None,
        lq=rng.normal(size=(persons, frames, lq_joints, 2)).astype(np.float32) if lq else None,
        lq_score=rng.uniform(0, 1, size=(persons, frames, lq_joints)).astype(np.float32) if lq else None,
        subject=1 + seed % 40, camera=1 + seed % 3, setup=None if seed % 2 else 1 + seed % 32, replication=1,
        split=("train", "test", None)[seed % 3],
    )


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole test session (each ray.init costs seconds), with its dashboard as in
    ``partkd.train.jobs.ensure_ray``."""
    import ray

    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
