"""The schedule chosen from the data: the plateau and probe rules by hand, and pilot and probe teachers that look
only at their validation slice."""

from __future__ import annotations

import pytest
from conftest import tiny_job
from mlflow.tracking import MlflowClient

from partkd.train.schedule import (
    Probe,
    Schedule,
    Settings,
    choose_schedule,
    choose_settings,
    milestones_for,
    pick,
    plateau_epoch,
)


def test_plateau_is_the_last_epoch_that_raised_the_smoothed_curve_by_a_point_then_five_flat():
    # trailing means over 3: .2 .35 .5 .7 .8 .8 .8 .8 .8 .8 -> last rise >= .01 at epoch 5, then 5 epochs without
    assert plateau_epoch([0.2, 0.5, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]) == 5
    assert plateau_epoch([0.2, 0.5, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]) == 9  # not yet 5 flat epochs: all of it
    assert plateau_epoch([0.1, 0.2, 0.3, 0.4]) == 4  # still rising: the whole pilot
    assert plateau_epoch([0.5] * 10) == 1  # flat from the start
    assert milestones_for(10) == (7, 9) and milestones_for(20) == (14, 18) and milestones_for(2) == (1,)
    assert milestones_for(1) == (1,)


def test_a_probe_replaces_the_jobs_value_only_when_a_point_better():
    job = Probe(0.05, 16, (0.5, 0.6, 0.70, 0.70))  # score: mean of the last 3 epochs, 0.6667
    assert job.score == (0.6 + 0.7 + 0.7) / 3
    close = Probe(0.15, 16, (0.5, 0.6, 0.705, 0.72))  # 0.675: 0.83 points better, not enough
    better = Probe(0.0167, 16, (0.1, 0.7, 0.7, 0.7))  # 0.7: 3.3 points better, though its first epoch was poor
    assert pick(job, [close]) is job and pick(job, [close, better]) is better and pick(job, []) is job
    assert pick(job, [Probe(0.15, 16, (0.5, 0.6, 0.72, 0.72))]).lr == 0.15  # 0.68: > 1 point
    # what a benchmark's jobs take from a schedule: epochs only (--schedule epochs), or lr and width too (auto)
    assert Schedule(12, (8, 11), (0.5,) * 12, "r").sets() == ["train.epochs=12", "train.milestones=8,11"]
    settings = Settings(0.0167, 32, (job,), "r")
    assert Schedule(12, (8, 11), (0.5,) * 12, "r", settings).sets() == [
        "train.lr=0.0167", "model.base_channels=32", "train.epochs=12", "train.milestones=8,11"]


@pytest.mark.slow  # probe and pilot trainings
def test_probes_choose_lr_then_width_on_the_slice_and_the_pilot_trains_with_them(tmp_path, train_data):
    job = tiny_job(tmp_path, train_data, "probe", "train.num_workers=1", "train.cpus_per_worker=1")
    settings = choose_settings(job, say=lambda line: None, backend="local", probe_epochs=2, val_fraction=0.25)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.mlflow.runName LIKE 'probe-schedule-probe-%'")
    probes = {(float(r.data.params["train.lr"]), int(r.data.params["model.base_channels"])): r for r in runs}
    lrs, width = [0.0167, 0.05, 0.15], job.model.base_channels  # 0.05 x 1/3, 1, 3 (3 significant digits)
    assert set(probes) == {(lr, width) for lr in lrs} | {(settings.lr, w) for w in (4, 16)}  # 8 halved, doubled
    assert {(p.lr, p.base_channels) for p in settings.probes} == set(probes)
    for probe in settings.probes:  # each probe: its slice, one constant lr, the curve MLflow holds
        run = probes[probe.lr, probe.base_channels]
        assert run.data.params["data.val_fraction"] == "0.25"
        assert {m.value for m in client.get_metric_history(run.info.run_id, "lr")} == {probe.lr}
        history = sorted(client.get_metric_history(run.info.run_id, "val/top1"), key=lambda m: m.step)
        assert tuple(m.value for m in history) == probe.curve and len(probe.curve) == 2
    by = {(p.lr, p.base_channels): p for p in settings.probes}
    lr = pick(by[0.05, width], [by[0.0167, width], by[0.15, width]]).lr  # the rule, by hand
    chosen = pick(by[lr, width], [by[lr, 4], by[lr, 16]])
    assert (settings.lr, settings.base_channels) == (chosen.lr, chosen.base_channels) == (lr, chosen.base_channels)
    assert settings.table().splitlines()[0] == "lr,base_channels,score,epoch1,epoch2"

    schedule = choose_schedule(job, say=lambda line: None, backend="local", max_epochs=3, val_fraction=0.25,
                               settings=settings)
    assert schedule.sets() == [f"train.lr={settings.lr!r}", f"model.base_channels={settings.base_channels}",
                               f"train.epochs={schedule.epochs}",
                               f"train.milestones={','.join(map(str, schedule.milestones))}"]
    assert len(schedule.curve) == 3 and schedule.epochs == plateau_epoch(schedule.curve)
    assert schedule.milestones == milestones_for(schedule.epochs)
    (pilot,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.mlflow.runName LIKE 'probe-schedule-pilot-%'")
    # the pilot: the chosen width, validated on the slice (never the test split), at the chosen lr held constant
    assert pilot.data.params["model.base_channels"] == str(settings.base_channels)
    assert pilot.data.params["data.val_fraction"] == "0.25"
    assert {m.value for m in client.get_metric_history(pilot.info.run_id, "lr")} == {settings.lr}
    history = sorted(client.get_metric_history(pilot.info.run_id, "val/top1"), key=lambda m: m.step)
    assert tuple(m.value for m in history) == schedule.curve
