"""``partkd data show``: one sample's HQ and LQ skeletons side by side, so a user can see what a converter or a noise
profile did.

HQ is drawn on the left, LQ on the right: a PNG strip of ``frames`` evenly spaced frames (one row per frame), or a
GIF of the whole sequence. Bones come from the layout's edges and are drawn where both ends are present; a joint's
dot fades with its score; a missing joint (score 0) of a person in the frame is a red x at its last known position
(a person with no joint in a frame is absent there, not occluded, and is counted in the title), and joints never seen
are listed under the panel. 3D sides are drawn as their x-y (front) view, 2D sides in image coordinates (y down).
Uses matplotlib's object API on an Agg canvas, so no pyplot state is touched.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from partkd.data.schema import SIDES, Sample
from partkd.data.shards import iter_samples, load_info, shard_dataset
from partkd.layouts import Layout, get_layout

PERSON_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
CELL_INCHES = 3.2


def find_sample(path: str | os.PathLike, sample_id: str) -> tuple[Sample, dict]:
    """The sample ``sample_id`` of dataset ``path`` and the dataset's info; suggests close ids when absent."""
    info = load_info(path)
    for sample in iter_samples(path, filter=pc.field("sample_id") == sample_id):
        return sample, info
    ids = shard_dataset(path).to_table(
        columns=["sample_id"]).column("sample_id").to_pylist()
    close = difflib.get_close_matches(sample_id, ids, n=5)
    hint = f"; close: {', '.join(close)}" if close else f"; e.g. {', '.join(ids[:5])}"
    raise ValueError(f"{path}: no sample {sample_id!r} among {len(ids)} samples{hint}")


def last_known(coords: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, each joint's position at the latest frame up to it where it was present: (M, T, V, C), (M, T, V)."""
    frames = coords.shape[1]
    stamp = np.where(present, np.arange(frames)[None, :, None], -1)  # (M, T, V)
    latest = np.maximum.accumulate(stamp, axis=1)
    held = np.take_along_axis(coords, np.clip(latest, 0, None)[..., None], axis=1)  # (M, T, V, C)
    return held, latest >= 0


def plane(coords: np.ndarray, layout: Layout) -> np.ndarray:
    """Plot coordinates (..., 2) with y up: 3D front view (x, y); 2D image pixels (x, -y)."""
    return coords[..., :2] if layout.dims == 3 else coords[..., :2] * np.array([1.0, -1.0])


def _limits(points: np.ndarray, present: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    seen = points[present] if present.any() else np.zeros((1, 2))
    lo, hi = seen.min(axis=0), seen.max(axis=0)
    half = max(float((hi - lo).max()) / 2 * 1.1, 1e-3)
    mid = (lo + hi) / 2
    return (mid[0] - half, mid[0] + half), (mid[1] - half, mid[1] + half)


class SidePanel:
    """Everything needed to draw one side at any frame: plot coordinates, scores, last known positions, limits."""

    def __init__(self, side: str, sample: Sample, layout: Layout | None):
        self.side, self.layout = side, layout
        self.coords = getattr(sample, side)
        if self.coords is None:
            return
        self.score = getattr(sample, f"{side}_score")  # (M, T, V)
        self.points = plane(self.coords, layout)  # (M, T, V, 2)
        present = self.score > 0
        self.held, self.has_held = last_known(self.points, present)
        self.never = [layout.joints[v] for v in np.flatnonzero(~present.any(axis=(0, 1)))]
        self.xlim, self.ylim = _limits(self.points, present)

    def draw(self, ax, t: int, title: str) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        if self.coords is None:
            ax.text(0.5, 0.5, f"no {self.side.upper()} side", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=9)
            return
        ax.set_xlim(*self.xlim)
        ax.set_ylim(*self.ylim)
        ax.set_aspect("equal")
        for m in range(self.points.shape[0]):
            colour = PERSON_COLOURS[m % len(PERSON_COLOURS)]
            xy, score = self.points[m, t], self.score[m, t]  # (V, 2), (V,)
            for a, b in self.layout.edges:
                if score[a] > 0 and score[b] > 0:
                    ax.plot(xy[[a, b], 0], xy[[a, b], 1], color=colour, linewidth=1.5)
            seen = score > 0
            if seen.any():
                alpha = np.clip(score[seen], 0.15, 1.0)
                ax.scatter(xy[seen, 0], xy[seen, 1], s=12, color=colour, alpha=alpha, zorder=3)
            lost = ~seen & self.has_held[m, t] & seen.any()  # an absent person's joints are not marked
            if lost.any():
                held = self.held[m, t, lost]
                ax.scatter(held[:, 0], held[:, 1], marker="x", s=28, color="red", zorder=4)
        present = self.score[:, t] > 0  # (M, V)
        in_frame = present.any(axis=1)
        missing, absent = int((~present[in_frame]).sum()), int((~in_frame).sum())
        notes = [f"{missing} missing"] * bool(missing) + [f"{absent} person(s) absent"] * bool(absent)
        ax.set_title(f"{title}  ({', '.join(notes)})" if notes else title, fontsize=9)
        if self.never:
            ax.text(0.02, 0.02, "never seen: " + ", ".join(self.never), fontsize=6, color="red",
                    transform=ax.transAxes, va="bottom", wrap=True)


def _panels(sample: Sample, info: dict) -> list[SidePanel]:
    return [SidePanel(side, sample, get_layout(info[f"{side}_layout"]) if info.get(f"{side}_layout") else None)
            for side in SIDES]


def _heading(sample: Sample, info: dict) -> str:
    name = info["class_names"][sample.label] if sample.label < len(info["class_names"]) else str(sample.label)
    extra = f", split {sample.split}" if sample.split else ""
    return f"{sample.sample_id}: {name} (label {sample.label}), {sample.frames} frames{extra}"


def _side_title(panel: SidePanel, t: int) -> str:
    layout = panel.layout.name if panel.layout is not None else "-"
    return f"{panel.side.upper()} {layout}  frame {t + 1}"


def strip_figure(sample: Sample, info: dict, frames: int = 6) -> Figure:
    """A figure of ``frames`` evenly spaced frames, one per row, HQ left and LQ right."""
    picks = np.unique(np.linspace(0, sample.frames - 1, max(frames, 1)).round().astype(int))
    panels = _panels(sample, info)
    fig = Figure(figsize=(2 * CELL_INCHES, len(picks) * CELL_INCHES + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picks), 2, squeeze=False)
    for row, t in enumerate(picks):
        for col, panel in enumerate(panels):
            panel.draw(axes[row, col], int(t), _side_title(panel, int(t)))
    fig.suptitle(_heading(sample, info), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # leave the heading its own band
    return fig


def gif_frames(sample: Sample, info: dict, max_frames: int = 150) -> list:
    """The animation as PIL images (every k-th frame so that at most ``max_frames`` remain)."""
    from PIL import Image

    panels = _panels(sample, info)
    fig = Figure(figsize=(2 * CELL_INCHES, CELL_INCHES + 0.4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    step = max(1, math.ceil(sample.frames / max_frames))
    images = []
    for t in range(0, sample.frames, step):
        fig.clear()
        axes = fig.subplots(1, 2)
        for ax, panel in zip(axes, panels):
            panel.draw(ax, t, _side_title(panel, t))
        fig.suptitle(_heading(sample, info), fontsize=9)
        canvas.draw()
        images.append(Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy()))
    return images


def show_sample(
    path: str | os.PathLike,
    sample_id: str,
    out: str | os.PathLike | None = None,
    *,
    frames: int = 6,
    gif: bool = False,
    fps: float = 10.0,
) -> Path:
    """Render sample ``sample_id`` of dataset ``path`` to ``out`` (PNG strip, or GIF with ``gif``); returns the path.

    ``out`` defaults to ``<sample_id>.png`` (``.gif``) in the current directory.
    """
    if frames < 1 or fps <= 0:
        raise ValueError("frames must be at least 1 and fps positive")
    sample, info = find_sample(path, sample_id)
    out = Path(out) if out is not None else Path(re.sub(r"[^\w.-]", "_", sample_id) + (".gif" if gif else ".png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    if gif:
        images = gif_frames(sample, info)
        images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    else:
        strip_figure(sample, info, frames).savefig(out, format="png", dpi=80)
    return out
