"""PYSKL / MMAction2 skeleton pickles -> either side, and two pickles paired by ``frame_dir``.

A PYSKL file is ``{"split": {name: [frame_dir, ...]}, "annotations": [annotation, ...]}``; a bare list of
annotations or one annotation dict is accepted too. An annotation holds ``frame_dir`` (the sample id), ``label``
(0-based), ``keypoint`` [M, T, V, C], ``keypoint_score`` [M, T, V] (absent in 3D annotations) and ``total_frames``.
The layout follows from (V, C) — (17, 2) ``coco17``, (25, 3) ``ntu25``, (18, 2) ``openpose18``, (20, 3)
``kinect20``, (13, 2) ``penn13`` — or is given. Without ``keypoint_score`` a joint scores 1 unless its coordinates
are all 0; a COCO (17, 3) keypoint without scores is read as x, y, score. Non-finite keypoints are missing joints.
Scores are confidences, clipped to [0, 1] (an estimator's heatmap maximum can pass 1 a little).

Two files pair by ``frame_dir``: e.g. PYSKL's NTU 3D annotation (``ntu60_3danno.pkl``) as HQ and its HRNet 2D one
(``ntu60_hrnet.pkl``) as LQ — the paper's heterogeneous setting. NTU-named ``frame_dir``\\ s fill setup, camera,
subject and replication, and name the classes. ``train_split``/``test_split`` pick two lists of ``split`` for the
``split`` column (automatic when the file has just ``train`` and ``test``/``val``).

Pickles can run code when loaded, so they are read with :class:`RestrictedUnpickler`, which admits numpy arrays and
plain containers only and refuses anything else with the global it asked for. The globals it admits are admitted
only with the arguments numpy's and Python's own pickles pass them, so that a tiny pickle cannot make it allocate
memory for data the file does not hold.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import os
import pickle
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np

from partkd.data.convert.common import (
    DEFAULT_WRITE,
    ConvertError,
    ConvertReport,
    Skipped,
    WriteOptions,
    check_inputs,
    merge_sides,
    parse_ntu_name,
    side_sample,
    write_dataset,
)
from partkd.data.convert.ntu import NTU_ACTIONS
from partkd.data.schema import Sample
from partkd.layouts import get_layout

# ----------------------------------------------------------------------------------------- restricted unpickling


class UnsafePickleError(ConvertError):
    """A pickle that asks for something other than numpy arrays and plain containers."""


def _numpy_internal(submodule: str, name: str):
    for package in ("numpy._core", "numpy.core"):  # numpy >= 2 writes numpy._core, numpy 1.x numpy.core
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"this numpy has no {submodule}.{name}")


class _Refused(pickle.UnpicklingError):
    """An admitted global called in a way numpy's and Python's own pickles never call it."""


def _latin1_encode(text, encoding: str = "latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``str`` in latin-1), and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is admitted only to decode bytes of a protocol-2 pickle")
    return text.encode("latin1")


class _NdarrayName:
    """``numpy.ndarray`` as a pickle names it: numpy passes it to ``_reconstruct`` and never calls it (a call such as
    ``ndarray((10**9,), "b")`` would allocate whatever shape a tiny pickle asks for)."""

    def __call__(self, *args, **kwargs):
        raise _Refused("it calls numpy.ndarray; numpy's own pickles only pass it to _reconstruct")


_NDARRAY_NAME = _NdarrayName()


def _reconstruct(subtype, shape, dtype):
    """``_reconstruct`` with exactly the arguments numpy writes, ``(ndarray, (0,), b"b")``: an empty array that
    ``__setstate__`` then fills from data that is in the file (any other shape would allocate without data)."""
    if subtype is not _NDARRAY_NAME or type(shape) is not tuple or shape != (0,) \
            or type(dtype) not in (bytes, str) or dtype not in (b"b", "b"):
        raise _Refused(f"numpy _reconstruct is admitted only as numpy calls it, (ndarray, (0,), b'b'); this pickle "
                       f"asks for ({'ndarray' if subtype is _NDARRAY_NAME else type(subtype).__name__}, "
                       f"{_short(shape)}, {_short(dtype)})")
    return _numpy_internal("multiarray", "_reconstruct")(np.ndarray, (0,), b"b")


def _bytearray(data=b"", encoding=None):
    """``bytearray`` as Python pickles it: from bytes, or from a str in latin-1 (protocols 0-2); never from a size."""
    if type(data) is bytes and encoding is None:
        return bytearray(data)
    if type(data) is str and encoding in ("latin-1", "latin1"):
        return bytearray(data, "latin-1")
    raise _Refused(f"builtins.bytearray is admitted only with bytes or (str, 'latin-1'); this pickle asks for "
                   f"bytearray({_short(data)}{'' if encoding is None else ', ' + _short(encoding)})")


def _dtype(spec, align=False, copy=False):
    """``numpy.dtype`` for plain numbers, booleans and strings; refuses object dtypes (they would hand pickled objects
    to numpy) and void ones, which is how structured and subarray (shaped) dtypes start in a pickle."""
    if type(spec) not in (str, bytes):
        raise _Refused(f"numpy.dtype is admitted only with a type code; this pickle asks for dtype({_short(spec)})")
    dtype = np.dtype(spec, align, copy)
    if dtype.kind in "OV" or dtype.hasobject or dtype.shape:
        raise _Refused(f"it asks for the numpy dtype {_short(spec)}; object, structured and subarray dtypes are "
                       "refused (keypoints are plain numbers)")
    return dtype


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_ADMITTED = {
    ("numpy", "ndarray"): lambda: _NDARRAY_NAME,
    ("numpy", "dtype"): lambda: _dtype,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("builtins", "bytearray"): lambda: _bytearray,
    ("builtins", "complex"): lambda: complex,
    ("collections", "OrderedDict"): lambda: OrderedDict,
    ("_codecs", "encode"): lambda: _latin1_encode,
}
for _package in ("numpy.core", "numpy._core"):
    _ADMITTED[(f"{_package}.multiarray", "_reconstruct")] = lambda: _reconstruct
    for _submodule, _name in (("multiarray", "scalar"), ("numeric", "_frombuffer")):
        _ADMITTED[(f"{_package}.{_submodule}", _name)] = (
            lambda submodule=_submodule, name=_name: _numpy_internal(submodule, name))


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain containers; any other global is refused, never imported.

    ``source`` names the file in errors.
    """

    def __init__(self, file, source: str | os.PathLike):
        super().__init__(file)
        self.source = str(source)

    def find_class(self, module: str, name: str):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names in protocol 0-2 pickles
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        resolve = _ADMITTED.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                self.source, f"refused to unpickle: it asks for the global {module}.{name}; only numpy arrays and "
                             "plain containers (dict, list, tuple, set, str, numbers) are admitted. Re-save the "
                             "annotations with plain types if this file is yours")
        return resolve()

    def persistent_load(self, pid):
        raise UnsafePickleError(self.source, "refused to unpickle: it uses persistent ids (an external object store)")


def load_pickle(path: str | os.PathLike):
    """The object in a pickle file, through :class:`RestrictedUnpickler`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConvertError(path, f"cannot be read ({err})") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), path).load()
    except ConvertError:
        raise
    except _Refused as err:
        raise UnsafePickleError(path, f"refused to unpickle: {err}") from None
    except Exception as err:  # truncated or garbled: EOFError, UnpicklingError, ValueError, IndexError...
        raise ConvertError(path, f"cannot be unpickled ({type(err).__name__}: {err}); the file may be truncated "
                                 "or not a pickle") from None


# --------------------------------------------------------------------------------------------------- annotations


_LAYOUT_BY_SHAPE = {(17, 2): "coco17", (25, 3): "ntu25", (18, 2): "openpose18", (20, 3): "kinect20", (13, 2): "penn13"}


def annotations_of(obj, path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(split, annotations)`` from a PYSKL file's content (full file, list of annotations or one annotation)."""
    if isinstance(obj, dict) and "annotations" in obj:
        split, annotations = obj.get("split") or {}, obj["annotations"]
    elif isinstance(obj, dict) and "keypoint" in obj:
        split, annotations = {}, [obj]
    elif isinstance(obj, list):
        split, annotations = {}, obj
    else:
        raise ConvertError(path, "is not a PYSKL annotation file: expected {'split': ..., 'annotations': [...]}, "
                                 "a list of annotations or one annotation dict with 'keypoint'")
    if not isinstance(split, dict) or not isinstance(annotations, list):
        raise ConvertError(path, "'split' must be a dict of lists and 'annotations' a list")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise ConvertError(path, f"is a {type(ann).__name__}, expected a dict", f"annotations[{i}]")
        for key in ("frame_dir", "label", "keypoint"):
            if key not in ann:
                raise ConvertError(path, f"has no {key!r} (keys: {', '.join(map(str, ann))})",
                                   f"annotations[{i}] ({ann.get('frame_dir', '?')})")
    return split, annotations


VALUES_PER_BYTE = 64  # a keypoint array may hold at most this many values per byte of its pickle


def keypoint_array(ann: dict, key: str, path, where: str, max_values: int) -> np.ndarray:
    """``ann[key]`` as float32, refused unless it is a numpy array of numbers of at most ``max_values`` values.

    Nested lists are refused: a few hundred bytes of pickle can nest lists that share their items into 10**9 values.
    """
    value = ann[key]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        what = f"a numpy array of {value.dtype}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
        raise ConvertError(path, f"{key} is {what}; expected a numpy array of numbers, as PYSKL writes it", where)
    if value.size > max_values:
        raise ConvertError(path, f"{key} has {value.size} values, more than {max_values} ({VALUES_PER_BYTE} per byte "
                                 "of the file): the pickle is damaged or hostile", where)
    return value.astype(np.float32)


def infer_layout(keypoint: np.ndarray, has_scores: bool, path, where: str) -> str:
    joints, dims = keypoint.shape[2:]
    if not has_scores and (joints, dims) == (17, 3):
        dims = 2  # x, y, score stacked
    layout = _LAYOUT_BY_SHAPE.get((joints, dims))
    if layout is None:
        raise ConvertError(path, f"keypoint has {joints} joints x {dims} values, which matches no shipped layout; "
                                 "give the layout", where)
    return layout


def read_annotation(ann: dict, path, index: int, layout: str, side: str, max_persons: int | None, *,
                    max_values: int) -> Sample | Skipped:
    """One annotation as a sample of ``side`` in ``layout``; ``max_values`` caps each keypoint array."""
    frame_dir = str(ann["frame_dir"])
    where = f"annotations[{index}] ({frame_dir})"
    keypoint = keypoint_array(ann, "keypoint", path, where, max_values)
    if keypoint.ndim != 4:
        raise ConvertError(path, f"keypoint has shape {list(keypoint.shape)}, expected [M, T, V, C]", where)
    persons, frames, joints, dims = keypoint.shape
    spec = get_layout(layout)
    if "keypoint_score" in ann and ann["keypoint_score"] is not None:
        score = keypoint_array(ann, "keypoint_score", path, where, max_values)
        if score.shape != keypoint.shape[:3]:
            raise ConvertError(path, f"keypoint_score has shape {list(score.shape)}, keypoint "
                                     f"{list(keypoint.shape)}", where)
    elif dims == spec.dims + 1:
        keypoint, score = keypoint[..., :spec.dims], keypoint[..., spec.dims]
    else:
        score = (keypoint != 0).any(axis=-1).astype(np.float32)
    if (joints, keypoint.shape[-1]) != (spec.num_joints, spec.dims):
        raise ConvertError(path, f"keypoint has {joints} joints x {keypoint.shape[-1]} values, layout {layout} has "
                                 f"{spec.num_joints} x {spec.dims}", where)
    total = _integer(ann.get("total_frames"))
    if isinstance(total, bool) or not isinstance(total, int | np.integer | None):
        raise ConvertError(path, f"total_frames {_short(ann['total_frames'])} is not an integer", where)
    if total is not None and total != frames:
        raise ConvertError(path, f"total_frames is {int(total)} but keypoint has {frames} frames", where)
    if persons == 0 or frames == 0:
        return Skipped(f"{path}: {frame_dir}", "no skeleton: keypoint has no person or no frame")
    finite = np.isfinite(keypoint).all(axis=-1) & np.isfinite(score)
    score = np.where(finite, np.clip(score, 0.0, 1.0), 0.0)  # a confidence; heatmap maxima can pass 1 a little
    if not score.any():
        return Skipped(f"{path}: {frame_dir}", "no skeleton: every score is 0")
    keypoint = np.where(finite[..., None], keypoint, 0.0)
    if max_persons is not None and persons > max_persons:
        keep = np.sort(np.argsort(-score.sum(axis=(1, 2)), kind="stable")[:max_persons])  # most confident persons
        keypoint, score = keypoint[keep], score[keep]
    label = _integer(ann["label"])
    if isinstance(label, bool) or not isinstance(label, int | np.integer):
        raise ConvertError(path, f"label {label!r} is not an integer", where)
    ids = parse_ntu_name(frame_dir) or {}
    return side_sample(side, keypoint, score, sample_id=frame_dir, label=int(label), subject=ids.get("subject"),
                       camera=ids.get("camera"), setup=ids.get("setup"), replication=ids.get("replication"))


def _integer(value):
    """A one-value numpy array as its value (PYSKL labels are sometimes 0-d arrays); anything else as it is."""
    return value.item() if isinstance(value, np.ndarray) and value.size == 1 else value


def split_assignment(split: dict, train: str | None, test: str | None, path) -> tuple[dict[str, str], str | None]:
    """frame_dir -> "train"/"test" from two named lists of ``split``, and a note when none is chosen."""
    if train is None and test is None:
        if set(split) in ({"train", "test"}, {"train", "val"}):
            train, test = "train", next(k for k in split if k != "train")
        elif not split:
            return {}, None
        else:
            names = ", ".join(sorted(map(str, split)))
            return {}, f"the 'split' column is left empty; the file's splits are: {names} (choose two with " \
                       "train_split/test_split, --train-split/--test-split on the command line)"
    if train is None or test is None:
        raise ConvertError(path, "give both the train and the test split name")
    for key in (train, test):
        if key not in split:
            raise ConvertError(path, f"has no split {key!r}; its splits are: {', '.join(sorted(map(str, split)))}")
    assignment = {str(d): "train" for d in split[train]}
    both = [str(d) for d in split[test] if str(d) in assignment]
    if both:
        raise ConvertError(path, f"{len(both)} samples are in both {train!r} and {test!r}, e.g. {both[0]}")
    assignment.update({str(d): "test" for d in split[test]})
    return assignment, f"'split' column: {train!r} -> train, {test!r} -> test"


def _class_names(samples_labels: list[tuple[str, int]], given: list[str] | None) -> list[str]:
    top = max((label for _, label in samples_labels), default=-1)
    if given is not None:
        if top >= len(given):
            raise ValueError(f"label {top} needs at least {top + 1} class names, {len(given)} given")
        return list(given)
    ntu = [parse_ntu_name(sid) for sid, _ in samples_labels]
    if samples_labels and all(ids is not None and ids["action"] - 1 == label
                              for ids, (_, label) in zip(ntu, samples_labels)):
        return list(NTU_ACTIONS[:60 if top < 60 else 120])
    return [f"class {k}" for k in range(top + 1)]


def convert_pyskl(
    input: str | os.PathLike,
    out: str | os.PathLike,
    *,
    side: str = "hq",
    pair: str | os.PathLike | None = None,
    layout: str | None = None,
    pair_layout: str | None = None,
    class_names: list[str] | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    max_persons: int | None = None,
    name: str | None = None,
    write: WriteOptions = DEFAULT_WRITE,
) -> ConvertReport:
    """A PYSKL pickle as ``side`` (and ``pair``, a second pickle, as the other side) -> dataset ``out``.

    Samples of one file only keep that side (HQ-only or solitary). The split lists come from ``input``. A pickle is
    read whole, so ``write.skip_bad`` does not apply: a bad annotation stops the conversion.
    """
    (path,) = check_inputs([input], "PYSKL pickle")
    sources = [(path, side, layout)]
    if pair is not None:
        other_side = "lq" if side == "hq" else "hq"
        sources.append((check_inputs([pair], "PYSKL pickle")[0], other_side, pair_layout))
    read: dict[str, list[Sample | Skipped]] = {}
    layouts: dict[str, str] = {}
    split, notes = {}, []
    for file, file_side, file_layout in sources:
        file_split, annotations = annotations_of(load_pickle(file), file)
        split = split or file_split
        if not annotations:
            raise ConvertError(file, "holds no annotations")
        max_values = VALUES_PER_BYTE * max(file.stat().st_size, 1)
        where = f"annotations[0] ({annotations[0]['frame_dir']})"
        first = keypoint_array(annotations[0], "keypoint", file, where, max_values)
        if first.ndim != 4:
            raise ConvertError(file, f"keypoint has shape {list(first.shape)}, expected [M, T, V, C]", where)
        layouts[file_side] = file_layout or infer_layout(first, "keypoint_score" in annotations[0], file, where)
        read[file_side] = [read_annotation(a, file, i, layouts[file_side], file_side, max_persons,
                                           max_values=max_values)
                           for i, a in enumerate(annotations)]
    assignment, split_note = split_assignment(split, train_split, test_split, path)
    if split_note:
        notes.append(split_note)
    samples = _pair_by_id(read, side, notes)
    samples = [s if isinstance(s, Skipped) else _with_split(s, assignment) for s in samples]
    if assignment:
        unassigned = sum(isinstance(s, Sample) and s.split is None for s in samples)
        if unassigned:
            notes.append(f"{unassigned} samples are in neither split list ('split' left empty for them)")
    labelled = [(s.sample_id, s.label) for s in samples if isinstance(s, Sample)]
    names = _class_names(labelled, class_names)
    info = {"converter": "pyskl", "source": str(path), "pair": None if pair is None else str(pair),
            "max_persons": max_persons}
    return write_dataset(out, samples, fmt="convert pyskl", name=name or path.stem, class_names=names,
                         layouts=layouts, info=info, total=len(samples), write=write, notes=notes)


def _with_split(sample: Sample, assignment: dict[str, str]) -> Sample:
    return replace(sample, split=assignment.get(sample.sample_id))


def _pair_by_id(read: dict[str, list[Sample | Skipped]], first_side: str, notes: list[str]
                ) -> list[Sample | Skipped]:
    """The first file's samples, each merged with the second file's sample of the same frame_dir, then the rest."""
    if len(read) == 1:
        return read[first_side]
    (second_side,) = set(read) - {first_side}
    others: dict[str, Sample] = {}
    out: list[Sample | Skipped] = [s for s in read[second_side] if isinstance(s, Skipped)]
    for s in read[second_side]:
        if isinstance(s, Sample):
            if s.sample_id in others:
                raise ConvertError(s.sample_id, f"frame_dir appears twice in the {second_side} file")
            others[s.sample_id] = s
    matched = cut = 0
    for s in read[first_side]:
        if isinstance(s, Sample) and s.sample_id in others:
            merged, was_cut = merge_sides(s, others.pop(s.sample_id))
            matched, cut = matched + 1, cut + was_cut
            out.append(merged)
        else:
            out.append(s)
    notes.append(f"paired by frame_dir: {matched} samples in both files, {len(others)} only in the {second_side} file")
    if cut:
        notes.append(f"{cut} paired samples had different frame counts; both sides were cut to the shorter one")
    return out + list(others.values())
