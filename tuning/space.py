"""A study's settings: what to search (ranges from the config file), how many trials, how many at once (DESIGN §10).

A study file has three tables: ``[study]`` (:class:`StudyConfig`), ``[space]`` (one entry per searched setting of the
job, named ``section.key`` as in ``--set``) and ``[job]`` (the student job's overrides, as in ``partkd train``), and
may list ``[[first_trials]]``: whole configs of the space that the search runs first, in order, before TPE samples
(a known good config, the paper's settings)::

    [space]
    "loss.alpha" = { log_uniform = [0.1, 10.0] }
    "loss.w" = { uniform = [0.0, 1.0] }
    "loss.grouping" = { choice = "groupings" }   # every registered part grouping; or a list of names

    [[first_trials]]
    "loss.alpha" = 1.0
    "loss.w" = 0.5
    "loss.grouping" = "paper5"
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna

from partkd.layouts import GROUPINGS, get_grouping
from partkd.train.config import (
    AT_LEAST_1,
    JobConfig,
    TrainConfig,
    build_settings,
    check_ranges,
    load_config,
    one_of,
    read_settings_file,
)
from partkd.train.pipeline import VIEWS

TRIAL_DRIVER_CPUS = 0.01  # a trial only drives its Ray Train run: it must not hold a core the workers need
DATA_CPUS = 1.0  # left to Ray Data's read and transform tasks when the concurrency is derived from the cluster
METRIC = "val/top1"  # student top-1 on the validation slice of the training split


@dataclass(frozen=True)
class StudyConfig:
    name: str = "study"
    storage: str = "runs/studies"  # the study's folder is <storage>/<name>: Tune experiments, Train runs, data
    trials: int = 24
    max_concurrent: int = 0  # search trials at once; 0: as many as the cluster's CPUs (and GPUs) hold, see
    # max_concurrent_trials
    finish_concurrent: int = 0  # finish students at once (independent runs: no order to keep); 0: as many as fit
    seed: int = 0  # TPE's sampler
    asha: bool = True  # stop poor trials early (ASHA on epochs); false: every trial runs all its epochs
    grace_epochs: int = 2  # ASHA: no trial is stopped before this many epochs
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    finish_seeds: tuple[int, ...] = (0, 1, 2)  # the best config and the paper's are trained again with these seeds
    finish_view: str = "paper"  # paper: one finish student per OP, trained at it; robustness: trained at data's OP
    teacher_checkpoint: str = ""  # reuse this teacher; empty: train one for the study
    teacher_backend: str = "ray"  # the study's own teacher: a Ray Train job, or local (in the driver's process)
    synth_samples: int = 0  # > 0: synthesize the dataset at job data.path if it is not there (synthetic benchmark)
    synth_classes: int = 12
    synth_seed: int = 0

    def __post_init__(self):
        check_ranges(self, "study", {
            "trials": AT_LEAST_1, "max_concurrent": (lambda v: v >= 0, "at least 0 (0: as many as fit)"),
            "finish_concurrent": (lambda v: v >= 0, "at least 0 (0: as many as fit)"),
            "grace_epochs": AT_LEAST_1, "reduction_factor": (lambda v: v >= 2, "at least 2"),
            "synth_samples": (lambda v: v >= 0, "at least 0"), "synth_classes": AT_LEAST_1,
            "finish_view": one_of(VIEWS), "teacher_backend": one_of(("ray", "local")),
        })


@dataclass(frozen=True)
class Study:
    config: StudyConfig
    space: dict[str, optuna.distributions.BaseDistribution]  # "section.key" -> distribution
    job: JobConfig = field(default_factory=JobConfig)  # the students' job; val_fraction > 0 during the search
    first_trials: tuple[dict, ...] = ()  # configs of the space run first, in order (Optuna's enqueued trials)


# settings that pick the part matrix E a trial reads: the study computes one E per value before the search
PRECOMPUTED = ("loss.grouping", "loss.part_temperature")


def _distribution(key: str, spec: dict) -> optuna.distributions.BaseDistribution:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"space.{key}: expected one of {{log_uniform = [lo, hi]}}, {{uniform = [lo, hi]}}, "
                         f"{{choice = [...]}}, got {spec!r}")
    (kind, values), = spec.items()
    if kind in ("uniform", "log_uniform"):
        if not isinstance(values, (list, tuple)) or len(values) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"space.{key}: {kind} takes [lo, hi] (two numbers), got {values!r}")
        low, high = (float(v) for v in values)
        if not low < high or (kind == "log_uniform" and low <= 0):
            raise ValueError(f"space.{key}: {kind} needs 0 {'< ' if kind == 'log_uniform' else ''}lo < hi, "
                             f"got {values}")
        return optuna.distributions.FloatDistribution(low, high, log=kind == "log_uniform")
    if kind == "choice":
        if values != "groupings" and (not isinstance(values, (list, tuple)) or not values):
            raise ValueError(f"space.{key}: choice takes a list of values (or \"groupings\"), got {values!r}")
        choices = sorted(GROUPINGS) if values == "groupings" else list(values)
        if key == "loss.grouping":
            [get_grouping(c) for c in choices]  # an unknown name fails here, naming the known ones
        return optuna.distributions.CategoricalDistribution(choices)
    raise ValueError(f"space.{key}: unknown kind {kind!r}; known: uniform, log_uniform, choice")


def parse_space(table: dict) -> dict[str, optuna.distributions.BaseDistribution]:
    """``[space]`` as Optuna distributions; every key must be a setting of the job."""
    known = JobConfig().flat()
    space = {}
    for key, spec in table.items():
        if key not in known:
            raise ValueError(f"space.{key}: not a job setting; known: {', '.join(sorted(known))}")
        if key.startswith("data."):  # the dataset, its splits and the validation slice are fixed for a study
            raise ValueError(f"space.{key}: data settings cannot be searched (a trial could move its validation "
                             "slice or read the test split); set them in [job]")
        space[key] = _distribution(key, spec)
        if key in PRECOMPUTED and not hasattr(space[key], "choices"):
            raise ValueError(f"space.{key}: give it as a choice (E is computed before the search for each value a "
                             "trial can pick)")
    return space


def load_study(path: str, sets: list[str] = ()) -> Study:
    """A study file; ``sets`` (``section.key=value``) override its ``[study]`` (keys ``study.*``, e.g.
    ``study.trials=12``) or its ``[job]`` (every other key)."""
    table = read_settings_file(path)
    unknown = sorted(set(table) - {"study", "space", "job", "first_trials"})
    if unknown:
        raise ValueError(f"{path}: unknown table [{unknown[0]}]; a study file has [study], [space], [job] and "
                         "[[first_trials]]")
    study = dict(table.get("study", {}))
    for item in sets:
        key, sep, value = item.partition("=")
        if sep and key.strip().startswith("study."):
            study[key.strip().removeprefix("study.")] = value.strip()
    config = build_settings(StudyConfig, study, "study.")
    sets = [item for item in sets if not item.partition("=")[0].strip().startswith("study.")]
    space = parse_space(table.get("space", {}))
    if not space:
        raise ValueError(f"{path}: [space] names no setting to search")
    job = load_config(table=table.get("job", {}), sets=sets)
    for key, distribution in space.items():  # a trial must never draw a value the job refuses
        ends = distribution.choices if hasattr(distribution, "choices") else (distribution.low, distribution.high)
        for value in ends:
            try:
                load_config(job, sets=[f"{key}={value}"])
            except ValueError as err:
                raise ValueError(f"space.{key} can draw {value!r}: {err}") from None
    return Study(config, space, job, parse_first_trials(table.get("first_trials", []), space, job))


def parse_first_trials(entries, space: dict[str, optuna.distributions.BaseDistribution],
                       job: JobConfig) -> tuple[dict, ...]:
    """``[[first_trials]]``: each a whole config of ``space`` (every searched setting, a value the space can draw and
    the job accepts), run first in the order given."""
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(f"first_trials: expected a list of tables ([[first_trials]]), got {entries!r}")
    for number, entry in enumerate(entries, start=1):
        where = f"first_trials[{number}]"
        if set(entry) != set(space):
            missing, extra = sorted(set(space) - set(entry)), sorted(set(entry) - set(space))
            raise ValueError(f"{where}: give every searched setting and only those"
                             + (f"; missing {', '.join(missing)}" if missing else "")
                             + (f"; not in [space]: {', '.join(extra)}" if extra else ""))
        for key, value in entry.items():
            distribution = space[key]
            inside = (value in distribution.choices if hasattr(distribution, "choices") else
                      isinstance(value, (int, float)) and not isinstance(value, bool)
                      and distribution.low <= value <= distribution.high)
            if not inside:
                raise ValueError(f"{where}.{key} = {value!r} is outside its [space] entry {distribution}")
        try:
            load_config(job, sets=to_settings(entry))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return tuple(dict(entry) for entry in entries)


def max_concurrent_trials(resources: dict[str, float], train: TrainConfig) -> int:
    """Trials that fit in the cluster at once: each takes its workers' CPUs (and GPUs: whole ones for DDP trials, a
    ``gpus_per_worker`` share for one-worker trials) plus its driver's share, after :data:`DATA_CPUS` for Ray Data.
    A trial that cannot fit beside Ray Data is an error (it would wait for ever); with fewer GPUs than a trial needs,
    one (Ray waits for them, e.g. on an autoscaling cluster)."""
    per_trial_cpus = TRIAL_DRIVER_CPUS + train.num_workers * train.cpus_per_worker
    cpus = resources.get("CPU", 0.0)
    fits = math.floor((cpus - DATA_CPUS) / per_trial_cpus + 1e-9)
    if fits < 1:  # it would wait for ever: Ray Data's read tasks need a whole CPU beside the trial
        raise ValueError(f"a trial takes {per_trial_cpus:g} CPUs ({train.num_workers} worker(s) x "
                         f"{train.cpus_per_worker:g} + {TRIAL_DRIVER_CPUS:g} for its driver) and Ray Data needs "
                         f"{DATA_CPUS:g} more, but the cluster has {cpus:g}: lower train.cpus_per_worker or "
                         "train.num_workers, or set study.max_concurrent and study.finish_concurrent if the cluster "
                         "will grow")
    if train.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0.0) / (train.num_workers * train.gpus_per_worker) + 1e-9))
    return max(1, fits)


def to_settings(params: dict) -> list[str]:
    """A trial's sampled values as ``section.key=value`` strings for ``load_config``."""
    return [f"{key}={value}" for key, value in params.items()]
