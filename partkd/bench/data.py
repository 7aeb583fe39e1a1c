"""Data-path benchmark: synthetic generation, and shard read + transform, in samples/s on one core."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from partkd.data.schema import SIDES, Sample
from partkd.data.shards import DatasetWriter, check_rows, check_values, decode_side, iter_batches
from partkd.data.synth import HQ_LAYOUT, LQ_LAYOUT, SynthConfig, class_names, generate
from partkd.data.transforms import TransformConfig, transform_batch
from partkd.layouts import get_layout


def _median_rate(count: int, seconds: list[float]) -> float:
    return count / float(np.median(seconds))


def _fill_side(tensor: np.ndarray, score: np.ndarray, frames: int, persons: int, rng) -> tuple:
    """Stretch a side to exactly (persons, frames): loop the sequence in time, add a shifted, jittered partner."""
    t_index = np.arange(frames) % tensor.shape[1]
    tensor, score = tensor[:, t_index], score[:, t_index]
    while tensor.shape[0] < persons:
        partner = tensor[:1] + rng.normal(scale=0.02, size=tensor[:1].shape).astype(np.float32)
        partner[..., 0] += 1.0
        tensor, score = np.concatenate([tensor, partner]), np.concatenate([score, score[:1]])
    return tensor[:persons], score[:persons]


def _ntu_shaped(samples: list[Sample], frames: int, persons: int) -> list[Sample]:
    """Every side of every sample at exactly the benchmark shape, so the figure is per sample of that shape."""
    rng = np.random.default_rng(0)
    out = []
    for s in samples:
        sides = {}
        for side in SIDES:
            tensor, score = _fill_side(getattr(s, side), getattr(s, f"{side}_score"), frames, persons, rng)
            sides[side], sides[f"{side}_score"] = tensor, score
        out.append(replace(s, frames=frames, **sides))
    return out


def write_shaped_dataset(out: Path, samples: int, frames: int, persons: int = 2, seed: int = 0) -> Path:
    """A synthetic dataset with both sides of every sample at exactly (``persons``, ``frames``): what the training
    path's benchmark reads."""
    cfg = SynthConfig(samples=samples, classes=18, frames=frames, seed=seed, paired_fraction=1.0, two_person=True)
    with DatasetWriter(out, name="bench", class_names=class_names(cfg), hq_layout=HQ_LAYOUT,
                       lq_layout=LQ_LAYOUT) as writer:
        writer.write_all(_ntu_shaped(list(generate(cfg)), frames, persons))
    return out


def run_data_bench(samples: int = 512, frames: int = 300, persons: int = 2, repeats: int = 3,
                   batch_size: int = 64) -> list[dict]:
    """Median samples/s over ``repeats`` runs, single process (so per core).

    Generation is timed as the generator makes samples (60-100% of ``frames`` long, one or two persons). The
    read + transform figures are per sample of exactly (M, T) = (persons, frames) on disk and in the batch.
    """
    cfg = SynthConfig(samples=samples, classes=18, frames=frames, seed=0, paired_fraction=1.0, two_person=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:  # generation and writing timed apart: not write_shaped_dataset
        gen_times, write_times = [], []
        for r in range(repeats):
            out = Path(tmp) / f"run{r}"
            t0 = time.perf_counter()
            rows = list(generate(cfg))
            t1 = time.perf_counter()
            rows = _ntu_shaped(rows, frames, persons)
            t1b = time.perf_counter()
            with DatasetWriter(out, name="bench", class_names=class_names(cfg), hq_layout=HQ_LAYOUT,
                               lq_layout=LQ_LAYOUT) as writer:
                writer.write_all(rows)
            t2 = time.perf_counter()
            gen_times.append(t1 - t0)
            write_times.append(t2 - t1b)
        results.append({"stage": "generate", "samples_per_s": _median_rate(samples, gen_times)})
        results.append({"stage": "write shards (zstd)", "samples_per_s": _median_rate(samples, write_times)})

        transform = TransformConfig(frames=frames, persons=persons, crop="random", occlusion_prob=0.3,
                                    rotate_deg=15.0, scale_range=(0.9, 1.1))
        for side in SIDES:
            layout = get_layout(HQ_LAYOUT if side == "hq" else LQ_LAYOUT)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                seen = 0
                for b, (batch, _, file) in enumerate(iter_batches(Path(tmp) / "run0", batch_size=batch_size)):
                    ids = batch.column("sample_id").to_pylist()
                    decoded = decode_side(batch, side, layout, file)
                    rows = [(sid, r) for sid, r in zip(ids, decoded) if r is not None]
                    # per-sample random streams, as the training path (SideTransform) uses them
                    x, score = transform_batch([r[0] for _, r in rows], [r[1] for _, r in rows], layout, transform,
                                               seed=b, sample_ids=[sid for sid, _ in rows])
                    seen += len(rows)
                times.append(time.perf_counter() - t0)
            results.append({"stage": f"read + transform {side} ({layout.name}, V={layout.num_joints})",
                            "samples_per_s": _median_rate(seen, times)})
        # what the readers' row checks cost: those of both sides, on batches already read (the stages above
        # include them)
        batches = [(batch, file) for batch, _, file in iter_batches(Path(tmp) / "run0", batch_size=batch_size)]
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for batch, file in batches:
                check_rows(batch, file, cfg.classes)
                for side in SIDES:
                    check_values(batch, side, file)
            times.append(time.perf_counter() - t0)
        results.append({"stage": "row checks, both sides (in the reads above)",
                        "samples_per_s": _median_rate(sum(b.num_rows for b, _ in batches), times)})
    for r in results:
        r.update(samples=samples, frames=frames, persons=persons, repeats=repeats)
    return results
