"""Lesions and distractors of a phantom, as continuous fields in millimetres.

Every lesion has a *depth* field ``g`` (mm, positive inside, an approximate
distance to its surface). The lesion mask is ``g > 0`` clipped by the lungs;
the density blends in over ``edge`` mm around that surface (GGO: a few mm,
consolidation: sharp). The patterns follow the RSNA expert consensus on
COVID-19 CT (Simpson et al., Radiology: Cardiothoracic Imaging 2020) and the
published COVID-19 vs community-acquired pneumonia differences (Bai et al.,
Radiology 2020):

* ``covid19``: bilateral, multifocal, peripheral/subpleural, posterior and
  lower-zone predominant ground-glass patches (-700 to -300 HU, soft edges),
  some with a consolidated core or crazy paving;
* ``cap``: unilateral lobar or segmental consolidation (-100 to +50 HU) bounded
  by the fissures, often with air bronchograms, central/peribronchial, or a
  few peribronchial foci (bronchopneumonia);
* distractors (``nodule``, dependent ``atelectasis``) change the image but
  never the lesion mask.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from inference.phantom.anatomy import Anatomy
from inference.phantom.fields import FLOAT, BSplineNoise, GridBox
from inference.phantom.spec import PhantomSpec
from inference.phantom.vessels import VesselTrees, sample_lung_points

LOGGER = logging.getLogger(__name__)

__all__ = ["Lesion", "LesionNoise", "Where", "plan_lesions"]


@dataclass(frozen=True)
class LesionNoise:
    """The smooth random fields lesions are made of.

    Attributes
    ----------
    shape: BSplineNoise
        Boundary irregularity (8 mm features).
    texture: BSplineNoise
        Density heterogeneity of lesions and parenchyma (3 mm features).
    fine: BSplineNoise
        Interlobular septa of crazy paving (2.5 mm features).
    """

    shape: BSplineNoise
    texture: BSplineNoise
    fine: BSplineNoise

    @classmethod
    def create(cls, anatomy: Anatomy, rng: np.random.Generator) -> LesionNoise:
        """Lattices covering the lungs, drawn from ``rng``."""
        low, high = anatomy.lung_bounds
        lower = (float(low[0]) - 20.0, float(low[1]) - 20.0, float(low[2]) - 20.0)
        upper = (float(high[0]) + 20.0, float(high[1]) + 20.0, float(high[2]) + 20.0)
        return cls(
            shape=BSplineNoise(rng, lower, upper, 8.0),
            texture=BSplineNoise(rng, lower, upper, 3.0),
            fine=BSplineNoise(rng, lower, upper, 2.5),
        )


class Where:
    """Where fields are sampled: a grid block or an array of points.

    Parameters
    ----------
    Z, Y, X: numpy.ndarray
        Broadcastable coordinates (mm) in the phantom frame.
    box: GridBox | None
        The grid block the coordinates describe, if any (faster noise).
    """

    def __init__(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray,
                 box: GridBox | None = None,
                 parent: tuple[Where, tuple[slice, ...]] | None = None) -> None:
        self.Z, self.Y, self.X = Z, Y, X
        self.box = box
        self.parent = parent
        self._cache: dict[int, np.ndarray] = {}

    @classmethod
    def grid(cls, box: GridBox, parent: tuple[Where, tuple[slice, ...]] | None = None) -> Where:
        """Sample on a grid block.

        Parameters
        ----------
        box: GridBox
            The block.
        parent: tuple[Where, tuple[slice, ...]] | None
            A grid ``Where`` enclosing this block and the block's index
            expression in it: noise is sampled once on the parent and sliced.
        """
        Z, Y, X = box.mesh()
        return cls(Z, Y, X, box, parent)

    def remember(self, noise: BSplineNoise, values: np.ndarray) -> None:
        """Record ``noise`` already sampled here."""
        self._cache[id(noise)] = values

    def noise(self, noise: BSplineNoise) -> np.ndarray:
        """``noise`` sampled here (cached per noise object)."""
        key = id(noise)
        if key not in self._cache:
            if self.parent is not None:
                where, index = self.parent
                self._cache[key] = where.noise(noise)[index]
            elif self.box is not None:
                self._cache[key] = noise.grid(self.box.zs, self.box.ys, self.box.xs)
            else:
                self._cache[key] = noise.points(self.Z, self.Y, self.X)
        return self._cache[key]


@dataclass
class Lesion:
    """One lesion or distractor.

    Attributes
    ----------
    kind: str
        ``"ggo"``, ``"consolidation"``, ``"bronchopneumonia"``, ``"nodule"`` or
        ``"atelectasis"``.
    lower, upper: numpy.ndarray
        ``(z, y, x)`` corners (mm) of the region where ``g`` may be positive.
    edge: float
        Width (mm) over which the density blends in.
    density: float
        Mean HU inside.
    texture: float
        Standard deviation (HU) of the density heterogeneity.
    in_mask: bool
        False for distractors.
    air_bronchograms: bool
        Whether bronchi inside stay air-filled.
    center, axes, rotation: ellipsoidal lesions (patches, foci, nodules)
    irregularity: float
        Boundary irregularity, as a fraction of the radius.
    core_depth: float | None
        Depth (mm) beyond which the patch is consolidated (COVID-19 mixed
        lesions), ``None`` for none.
    core_density: float
        HU of the consolidated core.
    crazy_paving: bool
        Whether septal lines are superimposed.
    region: dict
        Parameters of lobar/segmental consolidation (see :func:`_region_depth`).
    band: tuple[float, float, float] | None
        Atelectasis band: ``(thickness, y_min, z_max)`` (mm).
    """

    kind: str
    lower: np.ndarray
    upper: np.ndarray
    edge: float
    density: float
    texture: float = 20.0
    in_mask: bool = True
    air_bronchograms: bool = True
    center: np.ndarray | None = None
    axes: np.ndarray | None = None
    rotation: np.ndarray | None = None
    irregularity: float = 0.2
    core_depth: float | None = None
    core_density: float = 0.0
    crazy_paving: bool = False
    region: dict[str, object] = field(default_factory=dict)
    band: tuple[float, float, float] | None = None

    # ------------------------------------------------------------------
    def depth(self, where: Where, noise: LesionNoise, anatomy: Anatomy) -> np.ndarray:
        """Depth field ``g`` (mm, positive inside) at ``where``."""
        if self.region:
            return _region_depth(self.region, where, noise, anatomy)
        if self.band is not None:
            return _atelectasis_depth(self.band, where, noise, anatomy)
        return self._ellipsoid_depth(where, noise)

    def _ellipsoid_depth(self, where: Where, noise: LesionNoise) -> np.ndarray:
        if self.center is None or self.axes is None or self.rotation is None:
            raise ValueError(f'lesion "{self.kind}" has no ellipsoid')
        dx = where.X - FLOAT(self.center[0])
        dy = where.Y - FLOAT(self.center[1])
        dz = where.Z - FLOAT(self.center[2])
        q2: np.ndarray | float = 0.0
        for axis in range(3):
            col = self.rotation[:, axis] / self.axes[axis]
            u = dx * FLOAT(col[0]) + dy * FLOAT(col[1])
            u = u + dz * FLOAT(col[2])
            q2 = q2 + u * u
        g = FLOAT(1.0) - np.sqrt(q2)
        if self.irregularity > 0:
            g = g + FLOAT(self.irregularity) * where.noise(noise.shape)
        g = g * FLOAT(min(self.axes))
        return np.asarray(g, dtype=FLOAT)

    def hu(self, where: Where, g: np.ndarray, noise: LesionNoise) -> np.ndarray:
        """Density (HU) at ``where`` given the depth ``g`` there."""
        value = FLOAT(self.density) + FLOAT(self.texture) * where.noise(noise.texture)
        if self.core_depth is not None:
            t = np.clip((g - FLOAT(self.core_depth)) / FLOAT(4.0) + FLOAT(0.5), 0.0, 1.0)
            value = value + t * (FLOAT(self.core_density) - value)
        if self.crazy_paving:
            ridge = np.clip(1.0 - np.abs(where.noise(noise.fine)) / FLOAT(0.3), 0.0, 1.0)
            value = value + FLOAT(180.0) * ridge * ridge * np.clip(g / FLOAT(3.0), 0.0, 1.0)
        return np.asarray(value, dtype=FLOAT)


# ----------------------------------------------------------------------
def _region_depth(region: dict[str, object], where: Where, noise: LesionNoise,
                  anatomy: Anatomy) -> np.ndarray:
    """Lobar or segmental consolidation: a lobe cut by a cone or a radius."""
    sign = float(region["sign"])  # type: ignore[arg-type]
    X, Y, Z = where.X, where.Y, where.Z
    lobe = X * FLOAT(sign) - FLOAT(3.0)
    for name, direction in region["fissures"]:  # type: ignore[attr-defined]
        lobe = np.minimum(lobe, FLOAT(direction) * anatomy.fissure_distance(name, Y, Z))
    hilum = np.asarray(region["hilum"], dtype=np.float64)
    dx = X - FLOAT(hilum[0])
    dy = Y - FLOAT(hilum[1])
    dz = Z - FLOAT(hilum[2])
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + FLOAT(1e-3)
    soft = r - FLOAT(region["r_min"])  # type: ignore[arg-type]
    axis = region.get("axis")
    if axis is not None:
        ax = np.asarray(axis, dtype=np.float64)
        cos = (dx * FLOAT(ax[0]) + dy * FLOAT(ax[1]) + dz * FLOAT(ax[2])) / r
        angle = np.arccos(np.clip(cos, -1.0, 1.0))
        half = FLOAT(region["half_angle"])  # type: ignore[arg-type]
        cone = r * np.sin(np.clip(half - angle, -np.pi / 2, np.pi / 2))
        soft = np.minimum(soft, cone)
    soft = soft + FLOAT(region["irregularity"]) * where.noise(noise.shape)  # type: ignore[arg-type]
    return np.asarray(np.minimum(lobe, soft), dtype=FLOAT)


def _atelectasis_depth(band: tuple[float, float, float], where: Where, noise: LesionNoise,
                       anatomy: Anatomy) -> np.ndarray:
    """Dependent (posterior, basal) subpleural band of atelectasis."""
    thickness, y0, z1 = band
    wall = -anatomy.cavity_distance(where.X, where.Y, where.Z)
    g = FLOAT(thickness) - wall
    g = np.minimum(g, (where.Y - FLOAT(y0)) * FLOAT(0.5))
    g = np.minimum(g, (FLOAT(z1) - where.Z) * FLOAT(0.5))
    g = g + FLOAT(1.5) * where.noise(noise.shape)
    return np.asarray(g, dtype=FLOAT)


def _frame(normal: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """Orthonormal columns (normal, tangent, vertical-ish), randomly turned."""
    n = normal / (np.linalg.norm(normal) + 1e-9)
    up = np.array([0.0, 0.0, 1.0])
    t1 = np.cross(up, n)
    if np.linalg.norm(t1) < 1e-6:
        t1 = np.array([1.0, 0.0, 0.0])
    t1 /= np.linalg.norm(t1)
    t2 = np.cross(n, t1)
    angle = rng.uniform(-jitter, jitter)
    c, s = math.cos(angle), math.sin(angle)
    t1, t2 = c * t1 + s * t2, -s * t1 + c * t2
    return np.column_stack([n, t1, t2])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _ellipsoid_bounds(center: np.ndarray, axes: np.ndarray, rotation: np.ndarray,
                      irregularity: float, edge: float) -> tuple[np.ndarray, np.ndarray]:
    half = np.sqrt((rotation**2) @ (axes**2)) * (1.0 + 4.0 * irregularity) + edge
    return (center - half)[::-1], (center + half)[::-1]


def _set_bounds(lesion: Lesion) -> None:
    if lesion.center is None or lesion.axes is None or lesion.rotation is None:
        raise ValueError(f'lesion "{lesion.kind}" has no ellipsoid')
    lesion.lower, lesion.upper = _ellipsoid_bounds(
        lesion.center, lesion.axes, lesion.rotation, lesion.irregularity, lesion.edge)


# ----------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------
def _side_candidates(anatomy: Anatomy, rng: np.random.Generator,
                     count: int) -> dict[int, np.ndarray]:
    return {side: sample_lung_points(anatomy, rng, count, side, margin=2.0) for side in (1, 2)}


def _covid(spec: PhantomSpec, anatomy: Anatomy, rng: np.random.Generator,
           noise: LesionNoise) -> list[Lesion]:
    candidates = _side_candidates(anatomy, rng, 3000)
    n = spec.lesion_count
    if spec.bilateral and n >= 2:
        sides = [1, 2] + [int(s) for s in rng.choice([1, 2], size=n - 2, p=[0.55, 0.45])]
    else:
        sides = [int(rng.choice([1, 2]))] * n
    lower_y = -anatomy.band_front
    lesions: list[Lesion] = []
    for index, side in enumerate(sides):
        pts = candidates[side]
        wall = -anatomy.cavity_distance(pts[:, 0], pts[:, 1], pts[:, 2])
        posterior = np.clip((pts[:, 1] + lower_y) / (2.0 * lower_y), 0.0, 1.0)
        low = np.clip(1.0 - pts[:, 2] / anatomy.height, 0.0, 1.0)
        weight = np.exp(-wall / 10.0) * (0.3 + posterior) * (0.3 + low)
        weight /= weight.sum()
        p = pts[int(rng.choice(len(pts), p=weight))]
        normal = np.array([p[0], p[1], 0.0])
        rotation = _frame(normal, rng, 0.5)
        axes = np.array([rng.uniform(7.0, 15.0), rng.uniform(9.0, 26.0), rng.uniform(9.0, 26.0)])
        depth = float(-anatomy.cavity_distance(p[:1], p[1:2], p[2:3])[0])
        unit = normal / (np.linalg.norm(normal) + 1e-9)
        center = p + unit * (depth - axes[0] * rng.uniform(0.1, 0.5))
        consolidated = rng.random() < spec.consolidation_fraction
        lesion = Lesion(
            kind="ggo",
            lower=np.zeros(3), upper=np.zeros(3),
            edge=float(rng.uniform(4.0, 7.0)),
            density=float(rng.uniform(-660.0, -450.0)),
            texture=float(rng.uniform(20.0, 40.0)),
            center=center, axes=axes, rotation=rotation,
            irregularity=float(rng.uniform(0.15, 0.3)),
            core_depth=float(axes[0] * rng.uniform(0.5, 0.8)) if consolidated else None,
            core_density=float(rng.uniform(-80.0, 20.0)),
            crazy_paving=bool(rng.random() < spec.crazy_paving_fraction),
        )
        lesions.append(lesion)
        LOGGER.debug("covid lesion %d on side %d at %s", index, side, np.round(center, 1))
    _scale_to_involvement(lesions, spec.involvement, anatomy, rng, noise)
    return lesions


def _scale_to_involvement(lesions: list[Lesion], target: float, anatomy: Anatomy,
                          rng: np.random.Generator, noise: LesionNoise) -> None:
    """Scale ellipsoidal lesions so that they cover about ``target`` of the lungs.

    The involvement is estimated by Monte Carlo on uniform lung points with
    the continuous fields (so it does not depend on any grid).
    """
    pts = np.concatenate([sample_lung_points(anatomy, rng, 4000, side, margin=0.0)
                          for side in (1, 2)])
    where = Where(pts[:, 2], pts[:, 1], pts[:, 0])
    for _ in range(3):
        inside = np.zeros(len(pts), dtype=bool)
        for lesion in lesions:
            inside |= lesion.depth(where, noise, anatomy) > 0
        fraction = max(float(inside.mean()), 1e-4)
        factor = float(np.clip((target / fraction) ** (1.0 / 3.0), 0.7, 1.5))
        for lesion in lesions:
            if lesion.axes is not None:
                lesion.axes = np.clip(lesion.axes * factor, 5.0, 60.0)
        if abs(factor - 1.0) < 0.03:
            break
    for lesion in lesions:
        _set_bounds(lesion)


def _cap(spec: PhantomSpec, anatomy: Anatomy, trees: VesselTrees,
         rng: np.random.Generator, noise: LesionNoise) -> list[Lesion]:
    primary = 1 if rng.random() < 0.6 else 2
    sides = [primary] * spec.lesion_count
    if spec.bilateral:
        sides[-1] = 3 - primary
    lesions: list[Lesion] = []
    lower, upper = anatomy.lung_bounds
    if spec.cap_pattern == "bronchopneumonia":
        for side in sorted(set(sides)):
            name = "right" if side == 1 else "left"
            lobe = "lower" if rng.random() < 0.65 else "upper"
            lesions.extend(_bronchopneumonia(anatomy, trees, rng, name, lobe, sides.count(side)))
        _scale_to_involvement(lesions, spec.involvement, anatomy, rng, noise)
        return lesions
    for side in sides:
        name = "right" if side == 1 else "left"
        sign = -1.0 if side == 1 else 1.0
        if side == 1:
            lobe = ("upper", "middle", "lower")[int(rng.choice(3, p=[0.3, 0.15, 0.55]))]
        else:
            lobe = ("upper", "lower")[int(rng.choice(2, p=[0.4, 0.6]))]
        fissures: list[tuple[str, float]] = []
        if lobe == "lower":
            fissures.append((f"{name}_oblique", 1.0))
        else:
            fissures.append((f"{name}_oblique", -1.0))
            if side == 1:
                fissures.append(("right_horizontal", 1.0 if lobe == "middle" else -1.0))
        side_lower = lower.copy()
        side_upper = upper.copy()
        if side == 1:
            side_upper[2] = 0.0
        else:
            side_lower[2] = 0.0
        hilum = anatomy.hila[name]
        density = float(rng.uniform(-40.0, 40.0))
        region: dict[str, object] = {
            "sign": sign, "fissures": fissures, "hilum": hilum,
            "irregularity": float(rng.uniform(4.0, 8.0)),
        }
        if spec.cap_pattern == "lobar":
            region["r_min"] = float(rng.uniform(10.0, 35.0))
        else:
            pts = sample_lung_points(anatomy, rng, 400, side, margin=5.0)
            in_lobe = _in_lobe(anatomy, pts, fissures)
            target = pts[in_lobe][0] if np.any(in_lobe) else pts[0]
            axis = target - hilum
            axis /= np.linalg.norm(axis)
            region.update(axis=axis, half_angle=math.radians(rng.uniform(22.0, 35.0)),
                          r_min=float(rng.uniform(20.0, 40.0)))
        lesion = Lesion(
            kind="consolidation", lower=side_lower, upper=side_upper,
            edge=float(rng.uniform(1.5, 2.5)), density=density,
            texture=float(rng.uniform(10.0, 20.0)),
            air_bronchograms=spec.air_bronchograms, region=region,
        )
        if "axis" in region:
            _fit_cone(lesion, spec.involvement / len(sides), anatomy, rng, noise)
        lesions.append(lesion)
    return lesions


def _fit_cone(lesion: Lesion, target: float, anatomy: Anatomy, rng: np.random.Generator,
              noise: LesionNoise) -> None:
    """Open or close a segmental cone until it covers about ``target`` of the lungs."""
    pts = np.concatenate([sample_lung_points(anatomy, rng, 3000, side, margin=0.0)
                          for side in (1, 2)])
    where = Where(pts[:, 2], pts[:, 1], pts[:, 0])
    for _ in range(4):
        fraction = max(float(np.mean(lesion.depth(where, noise, anatomy) > 0)), 1e-4)
        half = float(lesion.region["half_angle"])  # type: ignore[arg-type]
        new = float(np.clip(half * (target / fraction) ** 0.5, math.radians(15.0),
                            math.radians(60.0)))
        lesion.region["half_angle"] = new
        if abs(new / half - 1.0) < 0.05:
            break


def _in_lobe(anatomy: Anatomy, pts: np.ndarray, fissures: list[tuple[str, float]]) -> np.ndarray:
    ok = np.ones(len(pts), dtype=bool)
    for name, direction in fissures:
        ok &= direction * anatomy.fissure_distance(name, pts[:, 1], pts[:, 2]) > 5.0
    return ok


def _bronchopneumonia(anatomy: Anatomy, trees: VesselTrees, rng: np.random.Generator,
                      name: str, lobe: str, count: int) -> list[Lesion]:
    """``count`` peribronchial foci around branch points of one lobe's arteries."""
    nodes = trees.nodes[name]
    fissures = [(f"{name}_oblique", 1.0 if lobe == "lower" else -1.0)]
    ok = _in_lobe(anatomy, nodes, fissures)
    ok &= anatomy.lung_distance(nodes[:, 0], nodes[:, 1], nodes[:, 2]) < -6.0
    pool = nodes[ok] if np.any(ok) else nodes
    picks = pool[rng.choice(len(pool), size=min(count, len(pool)), replace=False)]
    out = []
    for center in picks:
        axes = np.array([rng.uniform(12.0, 24.0), rng.uniform(10.0, 18.0), rng.uniform(10.0, 18.0)])
        lesion = Lesion(
            kind="bronchopneumonia", lower=np.zeros(3), upper=np.zeros(3),
            edge=float(rng.uniform(2.0, 3.0)), density=float(rng.uniform(-60.0, 20.0)),
            texture=float(rng.uniform(15.0, 30.0)), center=np.asarray(center, dtype=float),
            axes=axes, rotation=_random_rotation(rng), irregularity=float(rng.uniform(0.2, 0.3)),
            air_bronchograms=bool(rng.random() < 0.3),
        )
        _set_bounds(lesion)
        out.append(lesion)
    return out


def _distractor(kind: str, anatomy: Anatomy, rng: np.random.Generator) -> Lesion:
    if kind == "nodule":
        side = int(rng.choice([1, 2]))
        center = sample_lung_points(anatomy, rng, 1, side, margin=12.0)[0]
        radius = float(rng.uniform(3.0, 6.0))
        lesion = Lesion(
            kind="nodule", lower=np.zeros(3), upper=np.zeros(3), edge=0.8,
            density=float(rng.uniform(10.0, 60.0)), texture=8.0, in_mask=False,
            center=center, axes=np.full(3, radius), rotation=np.eye(3),
            irregularity=0.04,
        )
        _set_bounds(lesion)
        return lesion
    lower, upper = anatomy.lung_bounds
    y0 = float(upper[1] * rng.uniform(0.2, 0.45))
    z1 = float(anatomy.height * rng.uniform(0.2, 0.35))
    return Lesion(
        kind="atelectasis", lower=np.array([lower[0], y0 - 5.0, lower[2]]),
        upper=np.array([z1 + 5.0, upper[1], upper[2]]), edge=2.0,
        density=float(rng.uniform(-250.0, -80.0)), texture=15.0, in_mask=False,
        air_bronchograms=False, band=(float(rng.uniform(3.0, 8.0)), y0, z1),
    )


def plan_lesions(spec: PhantomSpec, anatomy: Anatomy, trees: VesselTrees,
                 rng: np.random.Generator, noise: LesionNoise) -> list[Lesion]:
    """Place the lesions (and a distractor, if any) of ``spec``'s class.

    Parameters
    ----------
    spec: PhantomSpec
        Label and lesion configuration.
    anatomy: Anatomy
        The lungs and fissures.
    trees: VesselTrees
        Branch points for peribronchial foci.
    rng: numpy.random.Generator
        The lesion stream (independent of the grid).
    noise: LesionNoise
        Fields the lesions are made of.

    Returns
    -------
    list[Lesion]
        Lesions first (``in_mask`` true), then distractors.
    """
    if spec.label == "covid19":
        lesions = _covid(spec, anatomy, rng, noise)
    elif spec.label == "cap":
        lesions = _cap(spec, anatomy, trees, rng, noise)
    else:
        lesions = []
    if spec.distractor is not None:
        lesions.append(_distractor(spec.distractor, anatomy, rng))
    return lesions
