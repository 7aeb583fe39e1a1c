"""The deprecated call forms of ``evaluate_checkpoint`` and ``part_matrix_for_teacher`` (a data path, a protocol and
loose data settings; removed in 0.3.0, docs/deprecations.md): their keywords still work, with a DeprecationWarning,
and any other keyword is refused as Python refuses it, never dropped."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from conftest import VAL_FRACTION, tiny_job

from partkd.train.checkpoint import load_meta
from partkd.train.evaluate import evaluate_checkpoint, part_matrix_for_teacher
from partkd.train.jobs import train_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, train_data):
    root = tmp_path_factory.mktemp("shims")
    job = tiny_job(root, train_data, "teacher", "train.num_workers=1", "train.cpus_per_worker=1", "train.epochs=1",
                   f"data.val_fraction={VAL_FRACTION}")
    return train_teacher(job, lambda line: None, backend="local").checkpoint


@pytest.mark.parametrize("form", ["current", "old"])
def test_a_misspelled_keyword_is_refused_by_name(tmp_path, form):
    """Refused before anything is read (the checkpoint need not exist), in either form."""
    data = (str(tmp_path), "xsub") if form == "old" else ()
    with pytest.raises(TypeError, match=r"^evaluate_checkpoint\(\) got an unexpected keyword argument 'temprature'$"):
        evaluate_checkpoint(tmp_path / "none", *data, temprature=0.5)
    with pytest.raises(TypeError, match=r"^part_matrix_for_teacher\(\) got an unexpected keyword argument "
                                        r"'temprature'$"):
        part_matrix_for_teacher(tmp_path / "none", *data, temprature=0.5)
    with pytest.raises(TypeError, match=r"got unexpected keyword arguments 'frame', 'person'$"):
        evaluate_checkpoint(tmp_path / "none", *data, frame=16, person=1)


def test_a_data_setting_beside_a_data_config_or_an_extra_positional_is_refused(tmp_path, train_data):
    data = tiny_job(tmp_path, train_data, "any").data
    with pytest.raises(TypeError, match=r"frames= belongs to the deprecated form .*set it there"):
        evaluate_checkpoint(tmp_path / "none", data, frames=16)  # it would be ignored
    with pytest.raises(TypeError, match=r"frames=, val_fraction= belong to the deprecated form"):
        part_matrix_for_teacher(tmp_path / "none", frames=16, val_fraction=0.25)
    with pytest.raises(TypeError, match=r"takes from 1 to 3 positional arguments but 4 were given$"):
        evaluate_checkpoint(tmp_path / "none", data, (0.0,), "cpu")
    with pytest.raises(TypeError, match=r"takes from 1 to 4 positional arguments but 5 were given; pass the old"):
        part_matrix_for_teacher(tmp_path / "none", str(train_data), "xsub", "paper5", 16)


@pytest.mark.slow  # a teacher trained for one epoch
def test_the_old_keywords_still_work_with_a_deprecation_warning(teacher, train_data):
    data = load_meta(teacher).data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        current = evaluate_checkpoint(teacher, replace(data, seed=5), (0.6,))
        matrix = part_matrix_for_teacher(teacher, data)
    assert not [w for w in caught if "deprecated" in str(w.message) and "partkd" in w.filename]  # the current form
    with pytest.warns(DeprecationWarning, match=r"evaluate_checkpoint\(checkpoint, data_path, protocol, \.\.\.\) .* "
                                                r"is removed in 0\.3\.0: pass a DataConfig"):
        old = evaluate_checkpoint(teacher, str(train_data), "xsub", (0.6,), frames=16, persons=1, seed=5)
    assert np.array_equal(old[0].confusion, current[0].confusion)
    with pytest.warns(DeprecationWarning, match=r"part_matrix_for_teacher\(.*is removed in 0\.3\.0"):
        old_matrix = part_matrix_for_teacher(teacher, str(train_data), "xsub", "paper5", frames=16, persons=1,
                                             val_fraction=VAL_FRACTION, val_seed=0)
    assert old_matrix == matrix
