"""Pulmonary vessel and bronchial trees of a phantom.

Each lung gets an arterial tree (from the hilum) and a venous tree (from
the lower, anterior hilum towards the left atrium), grown by recursive
space division: random points fill the lung; a branch runs from its start
towards the centroid of the points it supplies, then the points split in two
along their principal axis and each half grows a child branch. Radii follow
Murray's law (``r**3`` proportional to the supplied volume), so the trees
thin towards the periphery. Bronchi run beside the arteries down to a few
generations, as in the broncho-vascular bundle.

The construction is vectorised level by level (no per-branch Python loop).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from inference.phantom.anatomy import Anatomy

LOGGER = logging.getLogger(__name__)

__all__ = ["TubeSet", "VesselTrees", "build_trees", "sample_lung_points"]

#: Radius ~ (supplied territory) ** exponent; Murray's law is 1/3, a little
#: more makes the distal branches as thin as on CT (about 1 mm across).
MURRAY_EXPONENT = 0.36


@dataclass(frozen=True)
class TubeSet:
    """Straight tube segments ``p0 -> p1`` (phantom frame, ``(x, y, z)`` mm).

    Attributes
    ----------
    p0, p1: numpy.ndarray
        ``(n, 3)`` segment ends.
    radius: numpy.ndarray
        ``(n,)`` radius (mm).
    depth: numpy.ndarray
        ``(n,)`` branching generation (0 at the root).
    """

    p0: np.ndarray
    p1: np.ndarray
    radius: np.ndarray
    depth: np.ndarray

    def __len__(self) -> int:
        return int(self.radius.shape[0])

    def select(self, keep: np.ndarray) -> TubeSet:
        """The segments where ``keep`` is true."""
        return TubeSet(self.p0[keep], self.p1[keep], self.radius[keep], self.depth[keep])

    @staticmethod
    def concat(parts: list[TubeSet]) -> TubeSet:
        """Concatenate tube sets."""
        if not parts:
            empty = np.zeros((0, 3))
            return TubeSet(empty, empty, np.zeros(0), np.zeros(0, dtype=int))
        return TubeSet(
            np.concatenate([p.p0 for p in parts]),
            np.concatenate([p.p1 for p in parts]),
            np.concatenate([p.radius for p in parts]),
            np.concatenate([p.depth for p in parts]),
        )


@dataclass(frozen=True)
class VesselTrees:
    """Vessels (blood density) and bronchi (wall and air lumen) of both lungs.

    Attributes
    ----------
    vessels: TubeSet
        Arteries and veins.
    bronchi: TubeSet
        Bronchial lumens (``radius`` is the lumen radius).
    bronchus_wall: numpy.ndarray
        ``(len(bronchi),)`` wall thickness (mm).
    nodes: dict[str, numpy.ndarray]
        Branch points of each lung's arterial tree (``"right"``, ``"left"``),
        ``(n, 3)``, used to place peribronchial lesions.
    """

    vessels: TubeSet
    bronchi: TubeSet
    bronchus_wall: np.ndarray
    nodes: dict[str, np.ndarray]


def sample_lung_points(anatomy: Anatomy, rng: np.random.Generator, count: int, side: int,
                       margin: float = 2.0) -> np.ndarray:
    """Uniform random points inside one lung.

    Parameters
    ----------
    anatomy: Anatomy
        Defines the lungs.
    rng: numpy.random.Generator
        Random stream.
    count: int
        Number of points wanted.
    side: int
        1 for the patient's right lung, 2 for the left.
    margin: float
        Minimum depth (mm) below the lung surface.

    Returns
    -------
    numpy.ndarray
        ``(count, 3)`` points ``(x, y, z)``.
    """
    lower, upper = anatomy.lung_bounds
    zlo, ylo, xlo = lower
    zhi, yhi, xhi = upper
    if side == 1:
        xhi = 0.0
    else:
        xlo = 0.0
    found: list[np.ndarray] = []
    total = 0
    for _ in range(50):
        n = max(4 * count, 2000)
        pts = np.column_stack([
            rng.uniform(xlo, xhi, n), rng.uniform(ylo, yhi, n), rng.uniform(zlo, zhi, n)
        ])
        inside = anatomy.lung_distance(pts[:, 0], pts[:, 1], pts[:, 2]) < -margin
        found.append(pts[inside])
        total += int(inside.sum())
        if total >= count:
            break
    return np.concatenate(found)[:count]


def _perpendicular(direction: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Unit vectors perpendicular to ``direction``, oriented like ``previous``."""
    up = np.zeros_like(direction)
    up[:, 2] = 1.0
    vertical = np.abs(direction[:, 2]) > 0.9
    up[vertical] = (1.0, 0.0, 0.0)
    perp = np.cross(direction, up)
    perp /= np.linalg.norm(perp, axis=1, keepdims=True) + 1e-9
    flip = np.sum(perp * previous, axis=1) < 0
    perp[flip] *= -1.0
    return perp


def _grow(root: np.ndarray, root_radius: float, points: np.ndarray, rng: np.random.Generator,
          root_offset: np.ndarray | None = None,
          bronchus_min: float = 0.0) -> tuple[TubeSet, TubeSet, np.ndarray]:
    """Grow one tree into ``points``; return vessels, bronchi and branch nodes."""
    pts = points.copy()
    n_total = len(pts)
    starts = np.array([0])
    ends = np.array([n_total])
    origin = root[None, :].astype(np.float64)
    offsets = (root_offset[None, :] if root_offset is not None else np.zeros((1, 3)))
    depth = 0
    seg_p0: list[np.ndarray] = []
    seg_p1: list[np.ndarray] = []
    seg_r: list[np.ndarray] = []
    seg_d: list[np.ndarray] = []
    br_p0: list[np.ndarray] = []
    br_p1: list[np.ndarray] = []
    br_r: list[np.ndarray] = []
    br_d: list[np.ndarray] = []
    nodes: list[np.ndarray] = []
    while len(starts):
        sizes = ends - starts
        csum = np.vstack([np.zeros((1, 3)), np.cumsum(pts, axis=0)])
        centroid = (csum[ends] - csum[starts]) / sizes[:, None]
        leaf = sizes <= 1
        frac = np.where(leaf, 1.0, rng.uniform(0.3, 0.55, len(starts)))
        tip = origin + frac[:, None] * (centroid - origin)
        radius = root_radius * (sizes / n_total) ** MURRAY_EXPONENT
        seg_p0.append(origin)
        seg_p1.append(tip)
        seg_r.append(radius)
        seg_d.append(np.full(len(starts), depth))
        nodes.append(tip[~leaf])

        direction = tip - origin
        direction /= np.linalg.norm(direction, axis=1, keepdims=True) + 1e-9
        lumen = 0.85 * radius
        gap = radius + lumen + 0.6 + 0.25 * lumen
        new_offsets = _perpendicular(direction, offsets) * gap[:, None]
        has_bronchus = radius >= bronchus_min
        if root_offset is not None and np.any(has_bronchus):
            br_p0.append((origin + offsets)[has_bronchus])
            br_p1.append((tip + new_offsets)[has_bronchus])
            br_r.append(lumen[has_bronchus])
            br_d.append(np.full(int(has_bronchus.sum()), depth))

        # Split every non-leaf group along its principal axis.
        active = ~leaf
        if not np.any(active):
            break
        a_starts, a_ends = starts[active], ends[active]
        mean = centroid[active]
        sizes_a = a_ends - a_starts
        group = np.repeat(np.arange(len(a_starts)), sizes_a)
        first = np.cumsum(sizes_a) - sizes_a
        index = a_starts[group] + (np.arange(group.size) - first[group])
        centred = pts[index] - mean[group]
        cov = np.zeros((len(a_starts), 3, 3))
        np.add.at(cov, group, centred[:, :, None] * centred[:, None, :])
        _, vecs = np.linalg.eigh(cov)
        axis = vecs[:, :, 2]
        proj = np.sum(centred * axis[group], axis=1)
        order = np.lexsort((proj, group))
        pts[index] = pts[index[order]]
        cut = a_starts + np.clip(np.rint(rng.uniform(0.3, 0.7, len(a_starts)) * sizes_a),
                                 1, sizes_a - 1).astype(int)
        starts = np.concatenate([a_starts, cut])
        ends = np.concatenate([cut, a_ends])
        origin = np.concatenate([tip[active], tip[active]])
        offsets = np.concatenate([new_offsets[active], new_offsets[active]])
        order = np.argsort(starts, kind="stable")
        starts, ends, origin, offsets = starts[order], ends[order], origin[order], offsets[order]
        depth += 1
    vessels = TubeSet(np.concatenate(seg_p0), np.concatenate(seg_p1),
                      np.concatenate(seg_r), np.concatenate(seg_d))
    if br_p0:
        bronchi = TubeSet(np.concatenate(br_p0), np.concatenate(br_p1),
                          np.concatenate(br_r), np.concatenate(br_d))
    else:
        bronchi = TubeSet.concat([])
    return vessels, bronchi, np.concatenate(nodes) if nodes else np.zeros((0, 3))


def build_trees(anatomy: Anatomy, rng: np.random.Generator, points_per_lung: int = 1500,
                vein_points_per_lung: int = 1000) -> VesselTrees:
    """Grow the arterial, venous and bronchial trees of both lungs.

    Parameters
    ----------
    anatomy: Anatomy
        Lungs and hila.
    rng: numpy.random.Generator
        The vessel-tree stream (independent of the grid).
    points_per_lung: int
        Terminal territories of each arterial tree.
    vein_points_per_lung: int
        Terminal territories of each venous tree.

    Returns
    -------
    VesselTrees
    """
    vessels: list[TubeSet] = []
    bronchi: list[TubeSet] = []
    nodes: dict[str, np.ndarray] = {}
    for side, label in (("right", 1), ("left", 2)):
        pts = sample_lung_points(anatomy, rng, points_per_lung, label, margin=3.0)
        hilum = anatomy.hila[side]
        root_offset = anatomy.bronchus_roots[side] - hilum
        art, bro, art_nodes = _grow(hilum, 7.0, pts, rng, root_offset=root_offset,
                                    bronchus_min=0.9)
        vessels.append(art)
        bronchi.append(bro)
        nodes[side] = art_nodes
        pts = sample_lung_points(anatomy, rng, vein_points_per_lung, label, margin=3.0)
        vein, _, _ = _grow(anatomy.venous_hila[side], 6.0, pts, rng)
        vessels.append(vein)
    bro = TubeSet.concat(bronchi)
    wall = 0.2 * bro.radius + 0.25
    LOGGER.debug("vessel trees: %d vessel and %d bronchial segments",
                 sum(len(v) for v in vessels), len(bro))
    return VesselTrees(TubeSet.concat(vessels), bro, wall, nodes)
