"""Layouts and part groupings: the tree of each skeleton and the full grouping x layout cross product."""

from collections import deque

import pytest

from partkd.layouts import GROUPINGS, JOINT_NAMES, LAYOUTS, UnknownNameError, get_grouping, get_layout, mirror_name

LAYOUT_NAMES = sorted(LAYOUTS)
GROUPING_NAMES = sorted(GROUPINGS)


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_edges_form_one_connected_tree(name):
    layout = get_layout(name)
    v = layout.num_joints
    assert len(layout.edges) == v - 1, "a tree on V joints has V-1 bones"
    assert len({frozenset(e) for e in layout.edges}) == len(layout.edges), "duplicate bone"
    neighbours = {i: set() for i in range(v)}
    for a, b in layout.edges:
        assert a != b and 0 <= a < v and 0 <= b < v
        neighbours[a].add(b)
        neighbours[b].add(a)
    seen, queue = {layout.center}, deque([layout.center])
    while queue:
        for n in neighbours[queue.popleft()] - seen:
            seen.add(n)
            queue.append(n)
    assert seen == set(range(v)), f"joints not reached from the centre: {set(range(v)) - seen}"


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_layout_joints_are_unique_known_names(name):
    layout = get_layout(name)
    assert len(set(layout.joints)) == layout.num_joints
    assert set(layout.joints) <= set(JOINT_NAMES)
    assert layout.dims in (2, 3)


def test_layout_sizes_and_reference_orders():
    # joint counts and dimensions of DESIGN §3, and spot checks against each format's published order
    expected = {"ntu25": (25, 3), "kinect20": (20, 3), "coco17": (17, 2), "openpose18": (18, 2), "penn13": (13, 2)}
    assert {n: (layout.num_joints, layout.dims) for n, layout in LAYOUTS.items()} == expected
    ntu = get_layout("ntu25")
    assert ntu.joints[20] == "spine_shoulder" and ntu.center == 20  # NTU joint 21, ST-GCN's centre
    assert ntu.joints[3] == "head" and ntu.joints[7] == "left_hand" and ntu.joints[24] == "right_thumb"
    coco = get_layout("coco17")
    assert coco.joints[0] == "nose" and coco.joints[9] == "left_wrist" and coco.joints[16] == "right_ankle"
    openpose = get_layout("openpose18")
    assert openpose.joints[1] == "neck" and openpose.joints[2] == "right_shoulder" and openpose.center == 1
    penn = get_layout("penn13")  # order given in shared/data/README.md
    assert penn.joints == ("head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                           "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
                           "right_ankle")


@pytest.mark.parametrize("grouping", GROUPING_NAMES)
@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_every_grouping_gives_nonempty_parts_covering_every_joint(grouping, layout):
    g, lay = get_grouping(grouping), get_layout(layout)
    parts = g.part_indices(lay)
    assert len(parts) == g.num_parts == len(g.part_names)
    for name, idx in zip(g.part_names, parts):
        assert idx, f"part {name} empty on {layout}"
        assert list(idx) == sorted(set(idx)) and all(0 <= i < lay.num_joints for i in idx)
    covered = set().union(*map(set, parts))
    assert covered == set(range(lay.num_joints)), f"joints in no part: {set(range(lay.num_joints)) - covered}"


@pytest.mark.parametrize("grouping", GROUPING_NAMES)
@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_left_and_right_parts_mirror(grouping, layout):
    g, lay = get_grouping(grouping), get_layout(layout)
    parts = dict(zip(g.part_names, g.part_indices(lay)))
    sided = [p for p in parts if p.startswith("left_")]
    for left in sided:
        right = mirror_name(left)
        assert right in parts
        assert len(parts[left]) == len(parts[right])
        assert {mirror_name(lay.joints[i]) for i in parts[left]} == {lay.joints[i] for i in parts[right]}


@pytest.mark.parametrize("name", LAYOUT_NAMES)
def test_flip_index_swaps_sides(name):
    layout = get_layout(name)
    flip = layout.flip_index
    assert sorted(flip) == list(range(layout.num_joints))
    assert all(flip[flip[i]] == i for i in range(layout.num_joints))
    assert layout.joints[flip[layout.index("left_knee")]] == "right_knee"
    assert flip[layout.center] == layout.center


def test_paper5_on_ntu25_is_the_papers_five_parts():
    # hand-written from the NTU joint numbering (1-based): head 1,2,3,4,21; left arm 5-8,22,23; right arm 9-12,24,25;
    # left leg 13-16; right leg 17-20
    parts = get_grouping("paper5").part_indices("ntu25")
    one_based = [tuple(i + 1 for i in p) for p in parts]
    assert one_based == [(1, 2, 3, 4, 21), (5, 6, 7, 8, 22, 23), (9, 10, 11, 12, 24, 25), (13, 14, 15, 16),
                         (17, 18, 19, 20)]
    assert get_grouping("paper5").part_names == ("head", "left_arm", "right_arm", "left_leg", "right_leg")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownNameError, match="known layouts: coco17, kinect20, ntu25, openpose18, penn13"):
        get_layout("ntu26")
    with pytest.raises(UnknownNameError, match="halves2, limbs10, paper5, torso6"):
        get_grouping("paper6")
