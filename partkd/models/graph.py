"""Skeleton graphs for graph convolution, derived from a :class:`~partkd.layouts.Layout` (DESIGN §6).

Pure numpy, after pyskl's ``utils/graph.py``. The spatial partition strategy of ST-GCN (Yan et al., AAAI 2018,
Sec. 3.6) splits the 1-hop neighbourhood of each root joint into three subsets: the root itself, the *centripetal*
neighbours (nearer the centre joint than the root) and the *centrifugal* ones (the rest). Each subset gets its own
adjacency matrix, normalised by the subset's size, so ``A`` has shape ``(3, V, V)``.

Convention everywhere in ``partkd.models``: ``A[k, v, w]`` is the weight of source joint ``v`` in the output of
target joint ``w``, so a graph convolution is ``einsum("nkctv,kvw->nctw", x, A)`` and every non-empty column of
``A[k]`` sums to 1.

Distances to the centre are true shortest-path lengths over the whole skeleton. The original ST-GCN code computed
them only up to ``max_hop`` (so most joints sat at distance ``inf`` and fell into the root subset); pyskl fixed that
by listing inward edges by hand. Deriving them from the centre joint gives pyskl's partition for every layout.
"""

from __future__ import annotations

import numpy as np

from partkd.layouts import Layout


def edge_matrix(edges: tuple[tuple[int, int], ...], num_joints: int) -> np.ndarray:
    """Symmetric 0/1 adjacency ``(V, V)`` of the bones, without self-loops."""
    adj = np.zeros((num_joints, num_joints))
    for a, b in edges:
        adj[a, b] = adj[b, a] = 1.0
    return adj


def hop_distance(edges: tuple[tuple[int, int], ...], num_joints: int, max_hop: int | None = None) -> np.ndarray:
    """Shortest-path length in bones between every pair of joints ``(V, V)``; ``inf`` beyond ``max_hop``.

    ``max_hop=None`` means no limit (the full graph distance).
    """
    reach = edge_matrix(edges, num_joints) + np.eye(num_joints)  # (V, V) one step, staying allowed
    limit = num_joints - 1 if max_hop is None else max_hop
    dist = np.full((num_joints, num_joints), np.inf)
    power = np.eye(num_joints)
    for d in range(limit + 1):  # reach^d > 0 <=> within d hops
        dist[(power > 0) & np.isinf(dist)] = d
        power = (power @ reach > 0).astype(float)
    return dist


def normalize_digraph(adj: np.ndarray) -> np.ndarray:
    """Divide each column (target joint) by its in-degree, so every non-empty column sums to 1."""
    in_degree = adj.sum(axis=0)  # (V,)
    return adj / np.where(in_degree > 0, in_degree, 1.0)[None, :]


def spatial_partition(layout: Layout) -> np.ndarray:
    """The spatial-strategy adjacency ``(3, V, V)`` of ``layout``: root, centripetal, centrifugal.

    ``A[1][v, w] = 1 / n_in(w)`` for each neighbour ``v`` of ``w`` nearer the centre joint (``n_in(w)`` of them);
    ``A[2][v, w] = 1 / n_out(w)`` for each other neighbour. ``A[0]`` is the identity.
    """
    num_joints = layout.num_joints
    to_center = hop_distance(layout.edges, num_joints)[:, layout.center]  # (V,)
    if np.isinf(to_center).any():
        far = [layout.joints[i] for i in np.flatnonzero(np.isinf(to_center))]
        raise ValueError(f"layout {layout.name}: joints {far} are not connected to the centre {layout.center_name}")
    bones = edge_matrix(layout.edges, num_joints)  # (V, V)
    nearer = to_center[:, None] < to_center[None, :]  # (V, V) [v, w]: source v nearer the centre than target w
    centripetal = normalize_digraph(bones * nearer)
    centrifugal = normalize_digraph(bones * ~nearer)
    return np.stack([np.eye(num_joints), centripetal, centrifugal]).astype(np.float32)  # (3, V, V)
