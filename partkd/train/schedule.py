"""A training schedule chosen from the data, on a validation slice (``partkd bench kd --schedule auto|epochs``).

A preset's schedule fits the dataset it was made for: the synthetic benchmark's 10 epochs at lr 0.05 with a 16-channel
ST-GCN leave a teacher on a small real dataset undertrained, and a student comparison on an undertrained teacher is
noise. Everything here trains teachers on the training split less a seeded validation slice and looks only at that
slice, never at the test split:

- :func:`choose_settings` (``auto``) picks the lr, then the model's width, by short probes: teachers at constant lr for
  ``probe_epochs``, scored by their last 3 epochs' mean validation top-1. A candidate replaces the job's value only
  if it beats it by at least a point, so near-ties keep the preset (a point is a few clips of a small slice, so the
  choice can still follow noise: the probes are in the benchmark's ``schedule_probes.csv`` to judge it by).
- :func:`choose_schedule` (``auto`` and ``epochs``) runs a pilot with those settings at constant lr for up to
  ``max_epochs``; the schedule's length is where the slice's top-1 stops improving (:func:`plateau_epoch`), with the
  lr divided by 10 at 70 % and 90 % of it, as the presets do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from partkd import tracking
from partkd.train.config import JobConfig, load_config
from partkd.train.jobs import train_teacher

LR_FACTORS = (1 / 3, 1.0, 3.0)  # the lr probes: half a decade either side of the job's
WIDTH_FACTORS = (0.5, 1.0, 2.0)  # the width probes (model.base_channels), at the chosen lr; depth is the job's
MIN_GAIN = 0.01  # a probe must beat the job's value by this much validation top-1 to replace it (and the plateau rule)
TAIL = 3  # epochs averaged: the plateau rule's trailing mean and a probe's score


@dataclass(frozen=True)
class Probe:
    lr: float
    base_channels: int
    curve: tuple[float, ...]  # validation top-1 per epoch

    @property
    def score(self) -> float:
        return sum(self.curve[-TAIL:]) / len(self.curve[-TAIL:])


@dataclass(frozen=True)
class Settings:
    """The lr and width the probes chose, and every probe behind the choice."""
    lr: float
    base_channels: int
    probes: tuple[Probe, ...]
    rule: str

    def sets(self) -> list[str]:
        return [f"train.lr={self.lr!r}", f"model.base_channels={self.base_channels}"]

    def table(self) -> str:
        """The probes as CSV: lr, width, score and each epoch's validation top-1."""
        lines = ["lr,base_channels,score," + ",".join(f"epoch{i + 1}" for i in range(len(self.probes[0].curve)))]
        lines += [f"{p.lr:.6g},{p.base_channels},{p.score:.6f}," + ",".join(f"{v:.6f}" for v in p.curve)
                  for p in self.probes]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Schedule:
    epochs: int
    milestones: tuple[int, ...]
    curve: tuple[float, ...]  # the pilot's validation top-1 per epoch
    rule: str
    settings: Settings | None = field(default=None)  # the probes' lr and width, when they were chosen too

    def sets(self) -> list[str]:
        chosen = self.settings.sets() if self.settings else []
        return [*chosen, f"train.epochs={self.epochs}", f"train.milestones={','.join(map(str, self.milestones))}"]


def plateau_epoch(curve: list[float] | tuple[float, ...], window: int = TAIL, min_gain: float = MIN_GAIN,
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


def pick(incumbent: Probe, others: list[Probe], min_gain: float = MIN_GAIN) -> Probe:
    """The best-scoring of ``others`` if it beats ``incumbent`` (the job's own value) by ``min_gain``, else
    ``incumbent``."""
    best = max(others, key=lambda p: p.score, default=incumbent)
    return best if best.score >= incumbent.score + min_gain else incumbent


def pilot_curve(job: JobConfig, name: str, epochs: int, val_fraction: float, say: Callable[[str], None],
                backend: str) -> tuple[float, ...]:
    """A teacher of ``job`` at its constant lr for ``epochs``, validated on a ``val_fraction`` slice of the training
    split: its validation top-1 per epoch, read back from MLflow."""
    pilot = replace(job, data=replace(job.data, val_fraction=val_fraction),
                    train=replace(job.train, epochs=epochs, milestones=(epochs,), name=name))
    result = train_teacher(pilot, say, backend=backend)
    uri = job.tracking_uri or tracking.tracking_uri()
    curve = tuple(tracking.metric_histories(uri, result.run_id, "val/top1").get("val/top1", ()))
    if len(curve) != epochs:
        raise RuntimeError(f"schedule pilot {name}: MLflow ({uri}) holds {len(curve)} of its {epochs} epochs of "
                           f"val/top1; remove {pilot.train.storage_path}/{name} to run it again")
    return curve


def choose_settings(job: JobConfig, say: Callable[[str], None] = print, backend: str = "ray",
                    probe_epochs: int = 15, val_fraction: float = 0.15) -> Settings:
    """The lr (of ``job.train.lr`` x :data:`LR_FACTORS`), then the width (``job.model.base_channels`` x
    :data:`WIDTH_FACTORS`, at that lr), each the best probe if it beats the job's own value by :data:`MIN_GAIN`."""
    probes: dict[tuple[float, int], Probe] = {}

    def probe(lr: float, width: int) -> Probe:
        if (lr, width) not in probes:
            name = f"{job.train.name}-schedule-probe-lr{lr:.3g}-w{width}"
            trial = replace(job, train=replace(job.train, lr=lr), model=replace(job.model, base_channels=width))
            curve = pilot_curve(trial, name, probe_epochs, val_fraction, say, backend)
            probes[lr, width] = Probe(lr, width, curve)
            say(f"[schedule] probe lr {lr:.3g}, width {width}: validation top-1 {probes[lr, width].score:.1%} "
                f"(mean of its last {TAIL} of {probe_epochs} epochs)")
        return probes[lr, width]

    say(f"[schedule] probes: teachers at constant lr for {probe_epochs} epochs, validated on a {val_fraction:.0%} "
        f"slice of the training split; lr first, then width")
    width = job.model.base_channels
    lrs = [job.train.lr if f == 1 else float(f"{job.train.lr * f:.3g}") for f in LR_FACTORS]
    lr = pick(probe(job.train.lr, width), [probe(v, width) for v in lrs if v != job.train.lr]).lr
    widths = sorted({max(4, round(width * f)) for f in WIDTH_FACTORS} - {width})
    chosen = pick(probe(lr, width), [probe(lr, w) for w in widths])
    rule = (f"probes of {probe_epochs} epochs at constant lr on a {val_fraction:.0%} validation slice of the training "
            f"split: lr from {', '.join(f'{v:.3g}' for v in lrs)} at width {width}, then width from "
            f"{', '.join(map(str, sorted({width, *widths})))}; a probe replaced the job's value only if its mean "
            f"validation top-1 over the last {TAIL} epochs was >= {MIN_GAIN:.0%} higher")
    settings = Settings(chosen.lr, chosen.base_channels, tuple(probes.values()), rule)
    say(f"[schedule] lr {settings.lr:.3g}, width {settings.base_channels} ({len(probes)} probes)")
    return settings


def choose_schedule(job: JobConfig, say: Callable[[str], None] = print, backend: str = "ray",
                    max_epochs: int = 60, val_fraction: float = 0.15, settings: Settings | None = None) -> Schedule:
    """The pilot teacher of ``job`` (with ``settings``' lr and width if given; constant lr, ``max_epochs``, validated
    on a ``val_fraction`` slice of the training split) and the schedule its validation curve gives."""
    if settings:
        job = load_config(job, sets=settings.sets())
    say(f"[schedule] pilot teacher: up to {max_epochs} epochs at lr {job.train.lr:g}, width "
        f"{job.model.base_channels}, validated on a {val_fraction:.0%} slice of the training split")
    name = f"{job.train.name}-schedule-pilot"
    if settings:  # its own name: a pilot of other settings (an earlier --schedule epochs) is not reused
        name += f"-lr{settings.lr:.3g}-w{settings.base_channels}"
    curve = pilot_curve(job, name, max_epochs, val_fraction, say, backend)
    epochs = plateau_epoch(curve)
    rule = (f"pilot teacher at constant lr {job.train.lr:g}, {len(curve)} epochs; validation top-1 (a "
            f"{val_fraction:.0%} slice of the training split, {TAIL}-epoch trailing mean) last rose by >= 1 point at "
            f"epoch {epochs}; lr x 0.1 at 70 % and 90 %")
    if settings:
        rule = f"{settings.rule}; {rule}"
    schedule = Schedule(epochs, milestones_for(epochs), curve, rule, settings)
    say(f"[schedule] {epochs} epochs, milestones {','.join(map(str, schedule.milestones))}")
    return schedule
