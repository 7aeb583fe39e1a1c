"""A distributed hyperparameter study of the student (DESIGN §10): Ray Tune + Optuna over the distillation settings.

    python -m tuning.study --config tuning/configs/synthetic.toml [--smoke-test] [--resume] [--set k=v ...]

Stages, all under one MLflow parent run ``study-<name>``:

1. the teacher, trained once (or given) and E computed once per part grouping the search can pick;
2. the search: ``Tuner(run_trial)``, each trial a Ray Train student job (its driver function builds the
   ``TorchTrainer`` with a deterministic run name and a ``TuneReportCallback``), TPE (``OptunaSearch``, seeded) behind a
   ``ConcurrencyLimiter``, ASHA on epochs; the objective is top-1 on a validation slice of the training split;
3. the finish: the best config and the paper's defaults trained again with several seeds on the whole training
   split and evaluated on the test split at each OP (mean ± std, paired gains); by default (``finish_view =
   "paper"``) one student per OP, trained at the OP it is tested at, as the paper does.

Every stage is resumable: ``--resume`` restores the Tune experiments (errored trials restarted) and reuses the teacher,
E, the parent run and every trial's Ray Train run and MLflow run.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import ray
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

import partkd
from partkd import storage, tracking
from partkd.data.shards import load_info
from partkd.data.synth import SynthConfig, write_synthetic
from partkd.train.checkpoint import load_meta
from partkd.train.config import JobConfig, LossConfig, load_config
from partkd.train.evaluate import evaluate_checkpoint, part_matrix_for_job
from partkd.train.jobs import absolute_paths, ensure_ray, train_student, train_teacher
from partkd.train.pipeline import VIEWS, occlusion_plan
from partkd.train.results import summarise
from partkd.train.session import job_device
from tuning.plots import log_search_plots
from tuning.space import (
    METRIC,
    PRECOMPUTED,
    TRIAL_DRIVER_CPUS,
    Study,
    StudyConfig,
    load_study,
    max_concurrent_trials,
    to_settings,
)

# The paper's distillation settings (Sec. 4.1): the baseline the best config is compared with. alpha and the rest of
# the job stay as the study's [job] sets them.
PAPER_SETTINGS = {f"loss.{key}": getattr(LossConfig(), key) for key in ("w", "tau", "grouping", "part_temperature")}

# --smoke-test: the same stages (teacher, E, a search with ASHA, a finish on the test split) on a tiny synthetic
# dataset, each Ray Train job as small as it gets: 2 trials, one finish seed at one OP (the best config and the paper's
# settings: 2 students). A Ray Train job spends ~40 s starting and stopping, mostly waiting, so their count sets the
# time: the teacher trains in the driver's process, and a quarter CPU per worker lets two trials (and the two finish
# students) wait side by side on a 2-core machine.
SMOKE_STUDY = dict(trials=2, grace_epochs=1, finish_seeds=(1,), synth_samples=192, synth_classes=6,
                   teacher_checkpoint="", teacher_backend="local")
SMOKE_JOB = ["data.path=", "data.frames=24", "data.batch_size=16", "data.val_fraction=0.2",
             "data.eval_occlusion_probs=0.6", "model.base_channels=8", "model.stage_blocks=1,1,1",
             "model.dropout=0.1", "train.epochs=2", "train.milestones=10", "train.num_workers=1",
             "train.cpus_per_worker=0.25"]


class StudyExistsError(RuntimeError):
    """The study's folder already holds a search; resume it or name another study."""


def train_run_name(base: dict, config: dict, trial_id: str) -> str:
    """The Ray Train run of a trial: named after the trial (never a timestamp), so a restored trial resumes it."""
    run = config["finish"]["run"] if "finish" in config else f"trial-{trial_id}"
    return f"{base['train']['name']}-{run}"


def matrix_key(loss: LossConfig) -> str:
    """The E a trial reads: one per (grouping, E temperature) the search can pick, computed before it starts."""
    return f"{loss.grouping} t{loss.part_temperature:.12g}"


def run_trial(config: dict, base: dict, part_matrices: dict[str, str]) -> None:
    """A trial's driver function: one student job with the trial's settings, each epoch reported to Tune.

    A search trial's ``config`` is its sampled settings; a finish trial's is ``{"finish": {"run", "settings"}}``.
    """
    trial_id = ray.tune.get_context().get_trial_id()
    finish = config.get("finish")
    settings, stage = (finish["settings"], "finish") if finish else (config, "trial")
    job = load_config(JobConfig.from_dict(base), sets=to_settings(settings))
    job = replace(job, part_matrix=part_matrices[matrix_key(job.loss)],
                  train=replace(job.train, name=train_run_name(base, config, trial_id)))
    train_student(job, say=lambda line: None, tags={"study.stage": stage, "trial_id": trial_id},
                  callbacks=[TuneReportCallback()])


class TrialRuns(ray.tune.Callback):
    """Ends each trial's MLflow run with its state (completed, early-stopped by ASHA, errored). Runs on the study's
    driver: a trial stopped early is killed mid-job, so its own driver cannot. (Its workers' placement group is
    removed by Ray Train's cleaner, which needs the State API: ``ray[default]``.)
    """

    def __init__(self, uri: str, parent_run_id: str, base: dict):
        self.uri, self.parent_run_id, self.base = uri, parent_run_id, base

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = (trial.last_result or {}).get("epochs_done", 0)
        self._end(trial, "completed" if done >= self.base["train"]["epochs"] else "early-stopped", "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "errored", "FAILED")

    def _end(self, trial, state: str, status: str) -> None:
        for run in tracking.child_runs(self.uri, self.parent_run_id, f"tags.trial_id = '{trial.trial_id}'"):
            tracking.set_tags(self.uri, run.info.run_id, {"state": state})
            tracking.end_run(self.uri, run.info.run_id, status)


@dataclass
class StudyResult:
    run_id: str  # the MLflow parent
    best: dict  # the best trial's settings
    best_metric: float  # its validation top-1
    trials: list[dict]  # trial id, state, epochs, metric, settings
    markdown: str  # the finish table ("" without finish seeds)
    folder: str  # the study's folder: a local path or a URI
    tracking_uri: str = ""
    experiment_id: str = ""


def run_study(study: Study, resume: bool = False, say: Callable[[str], None] = print) -> StudyResult:
    """Teacher and E, the search, the finish; see the module docstring."""
    cfg = study.config
    if os.environ.get("RAY_JOB_ID") and not (storage.is_remote(cfg.storage) or Path(cfg.storage).is_absolute()):
        raise ValueError(f"study.storage={cfg.storage!r} is relative: under `ray job submit` it would land in the "
                         "job's temporary working directory on the head node; give a path every node shares")
    storage.check_reachable(cfg.storage, "study.storage")
    folder = storage.join(storage.absolute(cfg.storage), cfg.name)
    if storage.exists(storage.join(folder, "search")) and not resume:
        raise StudyExistsError(f"{folder} already holds study {cfg.name!r}: resume it with --resume, or rename it")
    job = _study_job(study, folder)
    info = load_info(job.data.path)
    ensure_ray()
    params = {**job.flat(), **{f"space.{k}": repr(v) for k, v in study.space.items()},
              **{f"study.{k}": v for k, v in cfg.__dict__.items()}}
    code = Path(partkd.data.__file__).resolve().parents[1]  # under `ray job submit`: in the uploaded working dir
    with tracking.run(job.tracking_uri, f"partkd/{info['name']}", f"study-{cfg.name}", params,
                      {"kind": "study", "dataset_fingerprint": info["fingerprint"], "partkd.path": code,
                       "ray.node_id": ray.get_runtime_context().get_node_id()},  # where the driver ran
                      resume_unfinished=resume, dataset=(info, job.data.path), defaults=JobConfig().flat()) as parent:
        result = _stages(study, replace(job, parent_run_id=parent), info, folder, say)
    result.run_id, result.tracking_uri = parent, job.tracking_uri
    result.experiment_id = tracking.experiment_id(job.tracking_uri, f"partkd/{info['name']}")
    return result


def _study_job(study: Study, folder: str) -> JobConfig:
    """The students' job: Train runs under the study folder, MLflow URI fixed, a synthetic dataset made if asked."""
    cfg, job = study.config, study.job
    if cfg.synth_samples and not job.data.path:
        job = replace(job, data=replace(job.data, path=storage.join(folder, "data")))
    if cfg.synth_samples and not storage.exists(storage.join(job.data.path, "dataset.json")):
        with storage.staged(job.data.path) as local:
            write_synthetic(local, SynthConfig(samples=cfg.synth_samples, classes=cfg.synth_classes,
                                               frames=job.data.frames, seed=cfg.synth_seed), overwrite=True)
    if job.data.val_fraction == 0.0:
        raise ValueError("a study validates on a slice of the training split, never the test split: "
                         "set data.val_fraction in its [job]")
    job = replace(job, tracking_uri=job.tracking_uri or tracking.tracking_uri(),
                  train=replace(job.train, storage_path=storage.join(folder, "ray"), name=cfg.name))
    if os.environ.get("RAY_JOB_ID") and job.tracking_uri.startswith("sqlite:///") and not job.tracking_uri.startswith(
            "sqlite:////"):
        raise ValueError(f"tracking_uri {job.tracking_uri} is relative: under `ray job submit` it would be deleted "
                         "with the job's working directory; set MLFLOW_TRACKING_URI or [job] tracking_uri")
    return absolute_paths(job)


def _stages(study: Study, job: JobConfig, info: dict, folder: str, say) -> StudyResult:
    cfg = study.config
    teacher = _teacher(cfg, job, say)
    picks = [(job.flat()[key], PAPER_SETTINGS[key], *getattr(study.space.get(key), "choices", ()))
             for key in PRECOMPUTED]
    jobs = {matrix_key(j.loss): j for j in (load_config(job, sets=[f"{k}={v}" for k, v in zip(PRECOMPUTED, values)])
                                            for values in itertools.product(*picks))}
    jobs = dict(sorted(jobs.items()))  # keys are unique: the jobs themselves are never compared
    say(f"part matrices E ({', '.join(jobs)}) from the teacher's occlusion tests")
    matrices = {key: str(part_matrix_for_job(teacher, j)) for key, j in jobs.items()}
    for matrix in matrices.values():
        tracking.log_artifacts(job.tracking_uri, job.parent_run_id, matrix, "part_matrix")
    job = replace(job, teacher_checkpoint=str(teacher))
    def fitting() -> int:  # asked only where a setting leaves it to the cluster (it refuses a trial that cannot fit)
        return max_concurrent_trials(ray.cluster_resources(), job.train)

    concurrent = cfg.max_concurrent or fitting()
    finish_concurrent = cfg.finish_concurrent or fitting()  # before the search: a finish that cannot fit fails now
    trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, base=job.to_dict(),
                                                                 part_matrices=matrices),
                                        {"CPU": TRIAL_DRIVER_CPUS})
    trial_runs = TrialRuns(job.tracking_uri, job.parent_run_id, job.to_dict())

    say(f"search: {cfg.trials} trials, {concurrent} at a time, objective {METRIC} on "
        f"{job.data.val_fraction:g} of the training split, {'ASHA' if cfg.asha else 'no early stopping'}")
    # stop_last_trials=False: a trial that reaches the last epoch ends by itself (its job finishes its MLflow run and
    # releases its workers) instead of being stopped mid-way through its last report
    scheduler = (ASHAScheduler(time_attr="epochs_done", max_t=job.train.epochs, grace_period=cfg.grace_epochs,
                               reduction_factor=cfg.reduction_factor, stop_last_trials=False)
                 if cfg.asha else FIFOScheduler())
    searcher = ConcurrencyLimiter(OptunaSearch(space=study.space, metric=METRIC, mode="max", seed=cfg.seed,
                                               points_to_evaluate=[dict(t) for t in study.first_trials] or None),
                                  max_concurrent=concurrent)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # state saved at every step: a resume re-runs no trial
    started = time.time()
    search = _fit(storage.join(folder, "search"), trainable, lambda: ray.tune.Tuner(
        trainable, tune_config=ray.tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher,
                                                   scheduler=scheduler, num_samples=cfg.trials),
        run_config=ray.tune.RunConfig(name="search", storage_path=folder, callbacks=[trial_runs],
                                      failure_config=ray.tune.FailureConfig(max_failures=0))))
    trials = _trial_table(search, study, job.train.epochs)
    best = search.get_best_result(metric=METRIC, mode="max", scope="last")
    best_settings = {k: best.config[k] for k in study.space}
    cost = _log_search(job, study, trials, best_settings, best.metrics[METRIC], folder, started)
    say(f"best of {len(trials)} trials: {METRIC} {best.metrics[METRIC]:.4f} with {best_settings}")
    say(f"search: {cost['search/trials_per_hour']:.1f} trials/hour, {cost['search/early_stopped']} stopped early, "
        f"{cost['search/epochs_saved']:.0%} of the epochs saved")

    markdown = ""
    if cfg.finish_seeds:
        markdown = _finish(cfg, job, info, trainable, trial_runs, finish_concurrent, best_settings,
                           study, folder, say)
    return StudyResult("", best_settings, best.metrics[METRIC], trials, markdown, folder)


def _teacher(cfg: StudyConfig, job: JobConfig, say) -> str:
    """The given teacher, the study's own if trained already, or a new one (validated on the same slice)."""
    if cfg.teacher_checkpoint:
        teacher = storage.absolute(cfg.teacher_checkpoint)
        storage.check_reachable(teacher, "study.teacher_checkpoint")
        seen = load_meta(teacher).data
        if (seen.val_fraction, seen.val_seed) != (job.data.val_fraction, job.data.val_seed):
            raise ValueError(f"teacher {teacher} was trained with data.val_fraction={seen.val_fraction} "
                             f"(val_seed {seen.val_seed}), the study validates on val_fraction="
                             f"{job.data.val_fraction} (val_seed {job.data.val_seed}): it has seen the validation "
                             "slice. Leave study.teacher_checkpoint empty to train one, or match the slice")
        return teacher
    name = f"{cfg.name}-teacher"
    final = storage.join(job.train.storage_path, name, "final")
    if storage.exists(storage.join(final, "meta.json")):
        say(f"teacher: reusing {final}")
        return final
    say(f"teacher: ST-GCN on HQ skeletons, {job.train.epochs} epochs"
        + (", in this process" if cfg.teacher_backend == "local" else ""))
    return train_teacher(replace(job, train=replace(job.train, name=name)), say, tags={"study.stage": "teacher"},
                         backend=cfg.teacher_backend).checkpoint


def _fit(path: str, trainable, make_tuner: Callable[[], ray.tune.Tuner]) -> ray.tune.ResultGrid:
    """Fit a new Tune experiment, or restore the one at ``path``: finished trials kept, errored ones restarted. An
    experiment stopped before it first saved its state (``tuner.pkl`` written, no ``experiment_state-*.json``: a study
    killed as its finish began) has nothing to restore and starts anew; Tune's restore would fail on it."""
    if ray.tune.Tuner.can_restore(path) and storage.listdir(path, "experiment_state-*.json"):
        return ray.tune.Tuner.restore(path, trainable, restart_errored=True).fit()
    return make_tuner().fit()


def _trial_table(results: ray.tune.ResultGrid, study: Study, epochs: int) -> list[dict]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        done = metrics.get("epochs_done", 0)
        state = "errored" if result.error else "completed" if done >= epochs else "early-stopped"
        rows.append({"trial_id": metrics.get("trial_id", ""), "ended": metrics.get("timestamp", 0),
                     "state": state, "epochs": done, METRIC: metrics.get(METRIC, float("nan")),
                     **{k: result.config.get(k) for k in study.space}})
    return rows


def _log_search(job: JobConfig, study: Study, trials: list[dict], best: dict, best_metric: float,
                folder: str, started: float) -> dict:
    """The parent's record of the search: best config (file and tags), trial table, Optuna plots, and its cost:
    trials per hour of this invocation (``started``: its Unix time; a resumed search counts the trials that reported
    last during this leg) and the share of epochs that early stopping saved against running every trial that did
    not error to the end."""
    uri, parent = job.tracking_uri, job.parent_run_id
    seconds = time.time() - started
    ran = [t for t in trials if t["state"] != "errored"]
    epochs = sum(t["epochs"] for t in ran)
    tracking.set_tags(uri, parent, {f"best.{k}": v for k, v in best.items()})
    metrics = {f"best/{METRIC}": best_metric,
               "search/trials": len(trials),
               "search/early_stopped": sum(t["state"] == "early-stopped" for t in trials),
               "search/epochs": epochs,
               "search/epochs_saved": 1.0 - epochs / max(1, len(ran) * job.train.epochs),
               "search/wall_s": seconds,
               "search/trials_per_hour": 3600.0 * sum(t["ended"] >= started for t in trials) / seconds}
    tracking.log_metrics(uri, parent, metrics)
    with storage.staged(storage.join(folder, "report")) as out:
        with open(out / "trials.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(trials[0]) if trials else [])
            writer.writeheader()
            writer.writerows(trials)
        log_search_plots(trials, study.space, METRIC, out)
        (out / "best_config.json").write_text(json.dumps({"settings": best, METRIC: best_metric}, indent=2))
        tracking.log_artifacts(uri, parent, out, "search")
    return metrics


def _finish(cfg: StudyConfig, job: JobConfig, info: dict, trainable, trial_runs: TrialRuns, concurrent: int, best: dict,
            study: Study, folder: str, say) -> str:
    """The best config and the paper's, each trained with every finish seed on the whole training split and
    evaluated on the test split at each OP; the table (mean ± std, gains over the paper's) goes to the parent."""
    paper = {**{k: job.flat()[k] for k in study.space}, **PAPER_SETTINGS}
    plan = occlusion_plan(job.data, cfg.finish_view)
    runs = [{"run": f"finish-{label}-seed{seed}" + (f"-op{train_op:g}" if cfg.finish_view == "paper" else ""),
             "label": label, "test_ops": list(test_ops),
             "settings": {**settings, "train.seed": seed, "data.seed": seed, "data.val_fraction": 0.0,
                          "data.occlusion_prob": train_op}}
            for label, settings in (("best", best), ("paper", paper)) for seed in cfg.finish_seeds
            for train_op, test_ops in plan]
    say(f"finish: best config and paper defaults, seeds {', '.join(map(str, cfg.finish_seeds))}, "
        f"evaluated on the test split; students: {VIEWS[cfg.finish_view]}")
    # its own Tune experiment per view: a finish restored from another view's grid would be the wrong one
    experiment = "finish" if cfg.finish_view == "robustness" else f"finish-{cfg.finish_view}"
    results = _fit(storage.join(folder, experiment), trainable, lambda: ray.tune.Tuner(
        trainable, param_space={"finish": ray.tune.grid_search(runs)},
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=concurrent),
        # a list of its own: Tune adds its progress reporter to the list it is given
        run_config=ray.tune.RunConfig(name=experiment, storage_path=folder, callbacks=[trial_runs])))
    labels = {"best": "Student (best config)", "paper": "Student (paper defaults)"}
    rows = []
    for result in results:
        if result.error:
            raise RuntimeError(f"finish run {result.config['finish']['run']} failed: {result.error}")
        spec = result.config["finish"]
        seed = spec["settings"]["train.seed"]
        final = storage.join(job.train.storage_path, train_run_name(job.to_dict(), result.config, ""), "final")
        # as it was trained: masks of its seed
        for ev in evaluate_checkpoint(final, occlusion_probs=spec["test_ops"], device=job_device(job.train)):
            rows.append({"key": f"student_{spec['label']}", "model": labels[spec["label"]],
                         "skeleton": f"LQ {info['lq_layout']}", "train_op": spec["settings"]["data.occlusion_prob"],
                         "op": ev.occlusion_prob, "seed": seed,
                         "top1": ev.top1, "top5": ev.top5})
    rows.sort(key=lambda r: (r["key"] != "student_paper", r["train_op"], r["op"], r["seed"]))
    markdown, table_csv = summarise(rows, baseline=("student_paper", "paper defaults"))
    with storage.staged(storage.join(folder, "report", "results")) as out:
        (out / "results.md").write_text(markdown)
        (out / "results.csv").write_text(table_csv)
        tracking.log_artifacts(job.tracking_uri, job.parent_run_id, out, "results")
    say("\n" + markdown)
    return markdown


def smoke_study(study: Study) -> Study:
    """The same stages, tiny (:data:`SMOKE_STUDY`, :data:`SMOKE_JOB`), in a folder of its own."""
    config = replace(study.config, name=f"{study.config.name}-smoke", **SMOKE_STUDY)
    return replace(study, config=config, job=load_config(study.job, sets=SMOKE_JOB))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tuning/configs/synthetic.toml", help="study file ([study] [space] [job])")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a [study] setting (study.trials=12) or a [job] one (train.epochs=5)")
    parser.add_argument("--smoke-test", action="store_true",
                        help="the same stages, tiny: 2 trials and 2 finish students on a small synthetic dataset")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study of the same name")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.config, list(args.set or []))
        if args.smoke_test:
            study = smoke_study(study)
        result = run_study(study, resume=args.resume, say=lambda line: print(line, flush=True))
    except (StudyExistsError, storage.StorageError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"study {study.config.name}: MLflow run {result.run_id}; reports in {storage.join(result.folder, 'report')}")
    url = tracking.experiment_url(result.tracking_uri, result.experiment_id)
    if url:
        trials = tracking.child_runs(result.tracking_uri, result.run_id, "tags.`study.stage` = 'trial'")
        print(f"MLflow UI: its runs {url}\n           its trials compared "
              f"{tracking.compare_url(result.tracking_uri, result.experiment_id, [r.info.run_id for r in trials])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
