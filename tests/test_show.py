"""show: PNG strips and GIFs of one sample's HQ and LQ, last known positions of missing joints, and clear errors."""

import sys

import numpy as np
import pytest
from conftest import make_sample
from matplotlib.figure import Figure
from PIL import Image

from partkd.data import DatasetWriter, Sample
from partkd.data.show import CELL_INCHES, SidePanel, find_sample, last_known, show_sample
from partkd.layouts import get_layout


@pytest.fixture
def dataset(tmp_path):
    paired = make_sample("S001C001P001R001A001", label=1, frames=9, persons=2, seed=3)
    paired.lq_score[0, 4:, 9] = 0  # the left wrist is lost from frame 5 on
    paired.lq[0, 4:, 9] = 0
    solitary = make_sample("solo", label=0, frames=4, hq=False, seed=4)
    with DatasetWriter(tmp_path / "ds", name="t", class_names=["a", "b"], hq_layout="ntu25",
                       lq_layout="coco17") as writer:
        writer.write_all([paired, solitary])
    return tmp_path / "ds"


@pytest.mark.slow  # renders a GIF
def test_strip_png_and_gif(dataset, tmp_path):
    figures_before = _pyplot_figures()
    out = show_sample(dataset, "S001C001P001R001A001", tmp_path / "strip.png", frames=3)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.height == pytest.approx((3 * CELL_INCHES + 0.4) * 80, abs=2)
        assert image.width == pytest.approx(2 * CELL_INCHES * 80, abs=2)
        assert np.asarray(image.convert("RGB")).std() > 10, "something is drawn"
    gif = show_sample(dataset, "S001C001P001R001A001", tmp_path / "anim.gif", gif=True, fps=5)
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 9 and image.info["duration"] == 200
    solo = show_sample(dataset, "solo", tmp_path / "solo.png")  # no HQ side: drawn as an empty panel
    assert solo.exists()
    assert _pyplot_figures() == figures_before, "no pyplot figure is left behind"


def test_default_output_name_and_unknown_ids(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert show_sample(dataset, "solo").resolve() == (tmp_path / "solo.png").resolve()
    with pytest.raises(ValueError, match=r"no sample 'S001C001P001R001A002' among 2 samples; close: "
                                         r"S001C001P001R001A001"):
        show_sample(dataset, "S001C001P001R001A002")


def test_last_known_positions():
    coords = np.arange(12, dtype=float).reshape(1, 3, 2, 2)  # (M=1, T=3, V=2, C=2)
    present = np.array([[[False, True], [True, False], [False, False]]])
    held, has = last_known(coords, present)
    assert has.tolist() == [[[False, True], [True, True], [True, True]]]
    np.testing.assert_array_equal(held[0, 2, 0], coords[0, 1, 0])  # joint 0 last seen in frame 2
    np.testing.assert_array_equal(held[0, 2, 1], coords[0, 0, 1])  # joint 1 last seen in frame 1


def test_missing_joints_are_marked_where_last_seen_and_absent_persons_are_not(dataset):
    sample, _ = find_sample(dataset, "S001C001P001R001A001")
    sample.lq_score[1, 5] = 0  # the second person is absent from frame 6
    panel = SidePanel("lq", sample, get_layout("coco17"))
    ax = Figure().add_subplot()
    panel.draw(ax, 5, "LQ")
    assert ax.get_title() == "LQ  (1 missing, 1 person(s) absent)"
    (crosses,) = [c for c in ax.collections if len(c.get_offsets()) and c.get_facecolor()[0][0] == 1.0
                  and c.get_facecolor()[0][1] == 0.0]  # red
    # one cross: the first person's left wrist, at frame 4 (the last frame it was seen), y flipped for the image
    np.testing.assert_allclose(crosses.get_offsets(), [sample.lq[0, 3, 9] * [1, -1]], rtol=1e-6)


def test_all_missing_side_still_renders(tmp_path):
    s = Sample("empty", 0, 2, lq=np.zeros((1, 2, 17, 2), np.float32), lq_score=np.zeros((1, 2, 17), np.float32))
    with DatasetWriter(tmp_path / "ds", name="t", class_names=["a"], hq_layout=None, lq_layout="coco17") as writer:
        writer.write(s)
    assert show_sample(tmp_path / "ds", "empty", tmp_path / "e.png").stat().st_size > 0


def _pyplot_figures():
    pyplot = sys.modules.get("matplotlib.pyplot")
    return None if pyplot is None else pyplot.get_fignums()
