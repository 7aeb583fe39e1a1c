"""Converters from real skeleton datasets to partkd Parquet shards (DESIGN §1, §4), one module per format.

=============  =======================================================  ==========================================
format         input                                                    output side (default) and layout
=============  =======================================================  ==========================================
``ntu``        folders of NTU RGB+D ``.skeleton`` files                 HQ ``ntu25`` 3D
``pyskl``      a PYSKL/MMAction2 pickle (+ a second one to pair)        HQ or LQ, layout from the keypoint shape
``pose-json``  OpenPifPaf / OpenPose JSON per video + labels CSV        LQ ``coco17`` 2D with confidences
``penn``       Penn Action ``labels/`` folder                           HQ ``penn13`` 2D, visibility as score
``kinect-v1``  MSR Action3D or UTKinect-Action3D skeleton text files    HQ ``kinect20`` 3D
=============  =======================================================  ==========================================

Every converter returns a :class:`~partkd.data.convert.common.ConvertReport` (samples written, skipped with
reasons, per-class counts) and writes through :class:`~partkd.data.shards.DatasetWriter`, so its output passes
``partkd data validate``. ``write=WriteOptions(...)`` holds what every converter shares (overwrite, shard size,
progress, skipping unreadable files, and ``pair_with=DIR`` to pair the converted side with the other side of an
existing dataset by ``sample_id``).
"""

from __future__ import annotations

from collections.abc import Callable

from partkd.data.convert.common import ConvertError, ConvertReport, Skipped, WriteOptions
from partkd.data.convert.kinect_v1 import convert_kinect_v1
from partkd.data.convert.ntu import convert_ntu
from partkd.data.convert.penn import convert_penn
from partkd.data.convert.pose_json import convert_pose_json
from partkd.data.convert.pyskl import RestrictedUnpickler, UnsafePickleError, convert_pyskl, load_pickle

CONVERTERS: dict[str, Callable[..., ConvertReport]] = {
    "ntu": convert_ntu,
    "pyskl": convert_pyskl,
    "pose-json": convert_pose_json,
    "penn": convert_penn,
    "kinect-v1": convert_kinect_v1,
}

__all__ = [
    "CONVERTERS",
    "ConvertError",
    "ConvertReport",
    "RestrictedUnpickler",
    "Skipped",
    "UnsafePickleError",
    "WriteOptions",
    "convert_kinect_v1",
    "convert_ntu",
    "convert_penn",
    "convert_pose_json",
    "convert_pyskl",
    "load_pickle",
]
