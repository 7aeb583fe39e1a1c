"""A training schedule chosen from the data, on a validation slice (``partkd bench kd --schedule auto``).

A preset's schedule fits the dataset it was made for: the synthetic benchmark's 10 epochs leave a teacher on a small
real dataset undertrained, and a student comparison on an undertrained teacher is noise. :func:`choose_schedule`
runs a pilot: the teacher, on the training split less a seeded validation slice, at the job's constant lr for up to
``max_epochs``; the schedule's length is where the slice's top-1 stops improving (:func:`plateau_epoch`), with the lr
divided by 10 at 70 % and 90 % of it, as the presets do. Only the validation slice is looked at, never the test split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from partkd import tracking
from partkd.train.config import JobConfig
from partkd.train.jobs import train_teacher


@dataclass(frozen=True)
class Schedule:
    epochs: int
    milestones: tuple[int, ...]
    curve: tuple[float, ...]  # the pilot's validation top-1 per epoch
    rule: str

    def sets(self) -> list[str]:
        return [f"train.epochs={self.epochs}", f"train.milestones={','.join(map(str, self.milestones))}"]


def plateau_epoch(curve: list[float] | tuple[float, ...], window: int = 3, min_gain: float = 0.01,
                  patience: int = 5) -> int:
    """Epochs (1-based) to train: where the ``window``-epoch trailing mean of validation top-1 last rose by at least
    ``min_gain`` over its best so far, once it has then not done so for ``patience`` epochs (else the whole curve)."""
    smooth = [sum(curve[max(0, i - window + 1):i + 1]) / len(curve[max(0, i - window + 1):i + 1])
              for i in range(len(curve))]
    best, best_at = -math.inf, 0
    for i, value in enumerate(smooth):
        if value >= best + min_gain:
            best, best_at = value, i
        elif i - best_at >= patience:
            return best_at + 1
    return len(curve)


def milestones_for(epochs: int) -> tuple[int, ...]:
    """lr x 0.1 at 70 % and 90 % of the schedule (the presets' 7 and 9 of 10), distinct and inside it."""
    marks = sorted({max(1, round(0.7 * epochs)), max(1, round(0.9 * epochs))})
    return tuple(m for m in marks if m < epochs) or (epochs,)


def choose_schedule(job: JobConfig, say: Callable[[str], None] = print, backend: str = "ray",
                    max_epochs: int = 60, val_fraction: float = 0.15) -> Schedule:
    """The pilot teacher of ``job`` (constant lr, ``max_epochs``, validated on a ``val_fraction`` slice of the
    training split) and the schedule its validation curve gives."""
    pilot = replace(job, data=replace(job.data, val_fraction=val_fraction),
                    train=replace(job.train, epochs=max_epochs, milestones=(max_epochs,),
                                  name=f"{job.train.name}-schedule-pilot"))
    say(f"[schedule] pilot teacher: up to {max_epochs} epochs at lr {job.train.lr:g}, validated on a "
        f"{val_fraction:.0%} slice of the training split")
    result = train_teacher(pilot, say, backend=backend)
    uri = job.tracking_uri or tracking.tracking_uri()
    curve = tuple(tracking.metric_histories(uri, result.run_id, "val/top1").get("val/top1", ()))
    if len(curve) != max_epochs:
        raise RuntimeError(f"schedule pilot {pilot.train.name}: MLflow ({uri}) holds {len(curve)} of its "
                           f"{max_epochs} epochs of val/top1; remove {pilot.train.storage_path}/{pilot.train.name} "
                           f"to run the pilot again")
    epochs = plateau_epoch(curve)
    rule = (f"pilot teacher at constant lr {job.train.lr:g}, {len(curve)} epochs; validation top-1 (a "
            f"{val_fraction:.0%} slice of the training split, 3-epoch trailing mean) last rose by >= 1 point at epoch "
            f"{epochs}; lr x 0.1 at 70 % and 90 %")
    schedule = Schedule(epochs, milestones_for(epochs), curve, rule)
    say(f"[schedule] {epochs} epochs, milestones {','.join(map(str, schedule.milestones))}: {rule}")
    return schedule
