"""The local backend's retries (``train.max_failures``): an attempt is started again only after a failure a new
attempt can pass (the injected fault: test_loop; storage I/O that did not go through); a bug surfaces at once, with
its own traceback."""

from __future__ import annotations

import errno

import pytest
from conftest import tiny_job

from partkd.train import jobs, loop
from partkd.train.jobs import train_teacher


def quiet(line: str) -> None:
    pass


def drifted_make_optimizer(model):  # a helper whose signature no longer matches its call: fit() raises TypeError
    raise AssertionError("never reached: the call itself fails")


def storage_hiccup(model, cfg):
    raise OSError(errno.EIO, "Input/output error", "/mnt/nfs/run")


def missing_file(model, cfg):
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere")


@pytest.mark.slow
@pytest.mark.parametrize(("make_optimizer", "error", "attempts"), [
    (drifted_make_optimizer, TypeError, 1),  # a bug: not retried
    (missing_file, FileNotFoundError, 1),  # a path that is not there stays so
    (storage_hiccup, OSError, 3),  # I/O that may pass on a new attempt: 1 + max_failures
])
def test_local_backend_retries_only_what_a_new_attempt_can_pass(tmp_path, train_data, monkeypatch, make_optimizer,
                                                                error, attempts):
    entered = []
    real_fit = jobs.fit

    def counted_fit(*args, **kwargs):
        entered.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(jobs, "fit", counted_fit)
    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)
    job = tiny_job(tmp_path, train_data, "teacher-retries", "train.num_workers=1", "train.cpus_per_worker=1",
                   "train.max_failures=2")
    with pytest.raises(error) as raised:
        train_teacher(job, quiet, backend="local")
    assert len(entered) == attempts
    assert type(raised.value) is error
    assert raised.traceback[-1].name == ("fit" if error is TypeError else make_optimizer.__name__)  # where it failed
