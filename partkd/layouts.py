"""Joint layouts and part groupings (DESIGN §3).

A :class:`Layout` is one skeleton format: ordered joint names, bones, a centre joint and the coordinate
dimension. Joint names come from one shared vocabulary (``JOINT_NAMES``), so a :class:`Grouping` defined once by
semantic joint names gives the same body parts on every layout: part ``p`` of a Kinect teacher and part ``p`` of a
COCO student are the same piece of the body, which is what part-level distillation between heterogeneous skeletons
relies on. Left and right are always the person's own.

Everything else that depends on a skeleton (adjacency, left/right flips, part pooling, plots) is derived from these
values, never re-typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

# The semantic vocabulary. Every layout's joints are drawn from it.
_CENTRAL = ("spine_base", "spine_mid", "spine_shoulder", "neck", "head", "nose")
_SIDED = (
    "eye", "ear", "shoulder", "elbow", "wrist", "hand", "hand_tip", "thumb", "hip", "knee", "ankle", "foot",
)
JOINT_NAMES: tuple[str, ...] = _CENTRAL + tuple(f"{side}_{j}" for j in _SIDED for side in ("left", "right"))


class UnknownNameError(KeyError):
    """A layout or grouping name that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the sentence as written
        return str(self.args[0])


def mirror_name(joint: str) -> str:
    """The joint on the other side of the body (``left_knee`` -> ``right_knee``); central joints map to themselves."""
    if joint.startswith("left_"):
        return "right_" + joint[len("left_"):]
    if joint.startswith("right_"):
        return "left_" + joint[len("right_"):]
    return joint


@dataclass(frozen=True)
class Layout:
    """One skeleton format. ``edges`` index into ``joints``; the bones form one tree."""

    name: str
    joints: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    center: int
    dims: int
    description: str = ""

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def index(self, joint: str) -> int:
        try:
            return self.joints.index(joint)
        except ValueError:
            raise KeyError(f"layout {self.name} has no joint {joint!r}; it has {', '.join(self.joints)}") from None

    @cached_property
    def flip_index(self) -> tuple[int, ...]:
        """Permutation that swaps left and right joints: ``x[..., flip_index, :]`` mirrors the body's labels."""
        return tuple(self.index(mirror_name(j)) for j in self.joints)

    @property
    def center_name(self) -> str:
        return self.joints[self.center]


def _layout(name: str, joints: list[str], bones: list[tuple[str, str]], center: str, dims: int, description: str):
    unknown = [j for j in joints if j not in JOINT_NAMES]
    if unknown:
        raise ValueError(f"layout {name}: joints {unknown} are not in the shared vocabulary JOINT_NAMES")
    index = {j: i for i, j in enumerate(joints)}
    edges = tuple((index[a], index[b]) for a, b in bones)
    return Layout(name, tuple(joints), edges, index[center], dims, description)


def _limb_bones(side: str, chain: list[str]) -> list[tuple[str, str]]:
    names = [f"{side}_{j}" for j in chain]
    return list(zip(names[:-1], names[1:]))


def _both_sides(chain: list[str]) -> list[tuple[str, str]]:
    return _limb_bones("left", chain) + _limb_bones("right", chain)


def _sided(joints: list[str]) -> list[str]:
    return [f"{side}_{j}" for side in ("left", "right") for j in joints]


# Kinect V2 / NTU-RGB+D: joint order of the SDK and the .skeleton files (1-based in the NTU paper).
NTU25 = _layout(
    "ntu25",
    [
        "spine_base", "spine_mid", "neck", "head",
        "left_shoulder", "left_elbow", "left_wrist", "left_hand",
        "right_shoulder", "right_elbow", "right_wrist", "right_hand",
        "left_hip", "left_knee", "left_ankle", "left_foot",
        "right_hip", "right_knee", "right_ankle", "right_foot",
        "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip", "right_thumb",
    ],
    [("spine_base", "spine_mid"), ("spine_mid", "spine_shoulder"), ("spine_shoulder", "neck"), ("neck", "head"),
     ("spine_shoulder", "left_shoulder"), ("spine_shoulder", "right_shoulder"),
     ("spine_base", "left_hip"), ("spine_base", "right_hip"),
     ("left_hand", "left_hand_tip"), ("left_hand", "left_thumb"),
     ("right_hand", "right_hand_tip"), ("right_hand", "right_thumb")]
    + _both_sides(["shoulder", "elbow", "wrist", "hand"]) + _both_sides(["hip", "knee", "ankle", "foot"]),
    center="spine_shoulder",  # ST-GCN's centre for NTU (joint 21)
    dims=3,
    description="Kinect V2 (NTU-RGB+D), 25 joints, 3D",
)

# Kinect V1 SDK order (SYSU 3D HOI, UTKinect); "shoulder centre" is spine_shoulder, "hip centre" spine_base.
KINECT20 = _layout(
    "kinect20",
    ["spine_base", "spine_mid", "spine_shoulder", "head"]
    + ["left_shoulder", "left_elbow", "left_wrist", "left_hand", "right_shoulder", "right_elbow", "right_wrist",
       "right_hand", "left_hip", "left_knee", "left_ankle", "left_foot", "right_hip", "right_knee", "right_ankle",
       "right_foot"],
    [("spine_base", "spine_mid"), ("spine_mid", "spine_shoulder"), ("spine_shoulder", "head"),
     ("spine_shoulder", "left_shoulder"), ("spine_shoulder", "right_shoulder"),
     ("spine_base", "left_hip"), ("spine_base", "right_hip")]
    + _both_sides(["shoulder", "elbow", "wrist", "hand"]) + _both_sides(["hip", "knee", "ankle", "foot"]),
    center="spine_shoulder",
    dims=3,
    description="Kinect V1 (SYSU 3D HOI, MSR Action3D, UTKinect), 20 joints, 3D",
)

# COCO keypoint order (OpenPifPaf, HRNet, MMPose); 2D coordinates, confidences stored as scores.
COCO17 = _layout(
    "coco17",
    ["nose", "left_eye", "right_eye", "left_ear", "right_ear",
     "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
     "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"],
    [("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"),
     ("nose", "left_shoulder"), ("nose", "right_shoulder"), ("left_shoulder", "left_hip"),
     ("right_shoulder", "right_hip")]
    + _both_sides(["shoulder", "elbow", "wrist"]) + _both_sides(["hip", "knee", "ankle"]),
    center="nose",  # as pyskl's COCO graph
    dims=2,
    description="COCO keypoints (OpenPifPaf, HRNet), 17 joints, 2D + score",
)

# OpenPose COCO-18 (Kinetics-skeleton): COCO plus a neck, in OpenPose's order.
OPENPOSE18 = _layout(
    "openpose18",
    ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
     "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
     "right_eye", "left_eye", "right_ear", "left_ear"],
    [("neck", "nose"), ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"),
     ("right_eye", "right_ear"), ("neck", "left_shoulder"), ("neck", "right_shoulder"),
     ("left_shoulder", "left_hip"), ("right_shoulder", "right_hip")]
    + _both_sides(["shoulder", "elbow", "wrist"]) + _both_sides(["hip", "knee", "ankle"]),
    center="neck",  # ST-GCN's centre for OpenPose
    dims=2,
    description="OpenPose COCO-18 (Kinetics-skeleton), 18 joints, 2D + score",
)

# Penn Action annotation order; visibility is stored as the score.
PENN13 = _layout(
    "penn13",
    ["head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
     "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"],
    [("head", "left_shoulder"), ("head", "right_shoulder"), ("left_shoulder", "left_hip"),
     ("right_shoulder", "right_hip")]
    + _both_sides(["shoulder", "elbow", "wrist"]) + _both_sides(["hip", "knee", "ankle"]),
    center="head",
    dims=2,
    description="Penn Action annotations, 13 joints, 2D + visibility",
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (NTU25, KINECT20, COCO17, OPENPOSE18, PENN13)}


@dataclass(frozen=True)
class Grouping:
    """Body parts defined by semantic joint names; a layout keeps the joints it has.

    Parts may share a joint where two segments meet (``limbs10``); each part must keep at least one joint on every
    registered layout, which the tests check over the full cross product.
    """

    name: str
    parts: tuple[tuple[str, frozenset[str]], ...]
    description: str = ""

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.parts)

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    def part_indices(self, layout: Layout | str) -> list[tuple[int, ...]]:
        """Joint indices of each part in ``layout``, in part order, each tuple sorted."""
        layout = get_layout(layout) if isinstance(layout, str) else layout
        indices = []
        for part, joints in self.parts:
            idx = tuple(i for i, j in enumerate(layout.joints) if j in joints)
            if not idx:
                raise ValueError(f"grouping {self.name}: part {part!r} has no joint in layout {layout.name}")
            indices.append(idx)
        return indices


def _grouping(name: str, parts: dict[str, list[str]], description: str) -> Grouping:
    for part, joints in parts.items():
        unknown = sorted(set(joints) - set(JOINT_NAMES))
        if unknown:
            raise ValueError(f"grouping {name}: part {part!r} names unknown joints {unknown}")
    return Grouping(name, tuple((p, frozenset(j)) for p, j in parts.items()), description)


_FACE = ["head", "nose", "left_eye", "right_eye", "left_ear", "right_ear"]
_SPINE = ["spine_base", "spine_mid", "spine_shoulder", "neck"]
_ARM = ["shoulder", "elbow", "wrist", "hand", "hand_tip", "thumb"]
_LEG = ["hip", "knee", "ankle", "foot"]
_FOREARM = ["wrist", "hand", "hand_tip", "thumb"]


def _side(side: str, joints: list[str]) -> list[str]:
    return [f"{side}_{j}" for j in joints]


GROUPINGS: dict[str, Grouping] = {
    g.name: g
    for g in (
        _grouping(
            "paper5",
            {"head": _FACE + _SPINE, "left_arm": _side("left", _ARM), "right_arm": _side("right", _ARM),
             "left_leg": _side("left", _LEG), "right_leg": _side("right", _LEG)},
            "the paper's five parts: head (with neck and trunk joints), two arms, two legs",
        ),
        _grouping(
            "torso6",
            {"head": _FACE + ["neck"], "torso": _SPINE[:3] + _sided(["shoulder", "hip"]),
             "left_arm": _side("left", _ARM[1:]), "right_arm": _side("right", _ARM[1:]),
             "left_leg": _side("left", _LEG[1:]), "right_leg": _side("right", _LEG[1:])},
            "head, torso (spine, shoulders, hips), and the four moving limbs",
        ),
        _grouping(
            "limbs10",
            {"head": _FACE + ["neck"], "torso": _SPINE[:3] + _sided(["shoulder", "hip"]),
             "left_upper_arm": _side("left", ["shoulder", "elbow"]),
             "left_forearm": _side("left", ["elbow"] + _FOREARM),
             "right_upper_arm": _side("right", ["shoulder", "elbow"]),
             "right_forearm": _side("right", ["elbow"] + _FOREARM),
             "left_thigh": _side("left", ["hip", "knee"]), "left_shank": _side("left", ["knee", "ankle", "foot"]),
             "right_thigh": _side("right", ["hip", "knee"]), "right_shank": _side("right", ["knee", "ankle", "foot"])},
            "head, torso and the two segments of each limb (segments share their joint)",
        ),
        _grouping(
            "halves2",
            {"upper": _FACE + ["neck", "spine_shoulder", "spine_mid"] + _sided(_ARM),
             "lower": ["spine_base"] + _sided(_LEG)},
            "upper body (head, trunk, arms) and lower body (pelvis, legs)",
        ),
    )
}


def _lookup(registry: dict, kind: str, name: str):
    try:
        return registry[name]
    except KeyError:
        raise UnknownNameError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(registry))}") from None


def get_layout(name: str) -> Layout:
    return _lookup(LAYOUTS, "layout", name)


def get_grouping(name: str) -> Grouping:
    return _lookup(GROUPINGS, "grouping", name)
