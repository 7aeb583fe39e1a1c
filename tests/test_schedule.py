"""The schedule chosen from the data: the plateau rule by hand, and a pilot teacher that looks only at its slice."""

from __future__ import annotations

from conftest import tiny_job
from mlflow.tracking import MlflowClient

from partkd.train.schedule import choose_schedule, milestones_for, plateau_epoch


def test_plateau_is_the_last_epoch_that_raised_the_smoothed_curve_by_a_point_then_five_flat():
    # trailing means over 3: .2 .35 .5 .7 .8 .8 .8 .8 .8 .8 -> last rise >= .01 at epoch 5, then 5 epochs without
    assert plateau_epoch([0.2, 0.5, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]) == 5
    assert plateau_epoch([0.2, 0.5, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]) == 9  # not yet 5 flat epochs: all of it
    assert plateau_epoch([0.1, 0.2, 0.3, 0.4]) == 4  # still rising: the whole pilot
    assert plateau_epoch([0.5] * 10) == 1  # flat from the start
    assert milestones_for(10) == (7, 9) and milestones_for(20) == (14, 18) and milestones_for(2) == (1,)
    assert milestones_for(1) == (1,)


def test_pilot_teacher_validates_on_the_slice_and_gives_a_schedule(tmp_path, train_data):
    job = tiny_job(tmp_path, train_data, "sched", "train.num_workers=1", "train.cpus_per_worker=1")
    schedule = choose_schedule(job, say=lambda line: None, backend="local", max_epochs=4, val_fraction=0.25)
    assert len(schedule.curve) == 4 and schedule.epochs == plateau_epoch(schedule.curve)
    assert schedule.milestones == milestones_for(schedule.epochs)
    assert schedule.sets() == [f"train.epochs={schedule.epochs}",
                               f"train.milestones={','.join(map(str, schedule.milestones))}"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (pilot,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.mlflow.runName = 'sched-schedule-pilot'")
    # validated on the slice of the training split (never the test split), at one constant lr
    assert pilot.data.params["data.val_fraction"] == "0.25"
    assert {m.value for m in client.get_metric_history(pilot.info.run_id, "lr")} == {job.train.lr}
    history = sorted(client.get_metric_history(pilot.info.run_id, "val/top1"), key=lambda m: m.step)
    assert tuple(m.value for m in history) == schedule.curve
