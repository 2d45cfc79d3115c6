"""Continuous chest anatomy of a phantom, in millimetres.

The phantom frame has its origin on the body axis at the height of the
lowest lung point (the posterior costophrenic recess); ``x`` grows towards
the patient's left, ``y`` towards the back (posterior), ``z`` towards the
head, like DICOM LPS. The lungs span ``0 <= z <= lung_height``.

Cross sections of the body wall are radial functions of the polar angle
``theta = atan2(y, x)`` (``+pi/2`` is posterior): skin, subcutaneous fat,
muscle, the rib ring and the thoracic cavity. The mediastinum is a band
between the lungs plus the heart, the great vessels, the trachea and the
main bronchi (capsules and an ellipsoid). A lung is the cavity minus the
mediastinum, below an apical dome and above the diaphragm.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from inference.phantom.fields import FLOAT, Capsule, Ellipsoid
from inference.phantom.spec import PhantomSpec

LOGGER = logging.getLogger(__name__)

__all__ = ["Anatomy", "Structure", "HU"]

#: Tissue densities (HU) calibrated against the real chest CT (docs/phantom.md).
HU: dict[str, float] = {
    "air": -1000.0,
    "lung": -885.0,
    "fat": -95.0,
    "mediastinal_fat": -85.0,
    "muscle": 45.0,
    "skin": 20.0,
    "blood": 40.0,
    "heart": 42.0,
    "liver": 58.0,
    "spleen": 48.0,
    "csf": 12.0,
    "disc": 85.0,
    "marrow": 230.0,
    "cortex": 850.0,
    "cartilage": 120.0,
    "airway_wall": 30.0,
    "table": -250.0,
    "table_shell": 150.0,
}

#: Number of angle bins of the radial tables.
N_THETA = 4096
#: Gap (mm) between a lung and the mediastinal structures (pleura).
PLEURAL_GAP = 1.5


@dataclass(frozen=True)
class Structure:
    """A mediastinal or skeletal shape painted with one density.

    Attributes
    ----------
    name: str
        What it is (``"heart"``, ``"aorta_descending"``...).
    shape: Capsule | Ellipsoid
        Its geometry (phantom frame, mm).
    hu: float
        Density inside.
    mediastinal: bool
        Whether the lungs are excluded from it.
    lumen: float
        For airways: the wall thickness (mm); the inside is air. 0 otherwise.
    """

    name: str
    shape: Capsule | Ellipsoid
    hu: float
    mediastinal: bool = True
    lumen: float = 0.0


def _superellipse(theta: np.ndarray, a: float, b: float, p: np.ndarray) -> np.ndarray:
    c = np.abs(np.cos(theta)) / a
    s = np.abs(np.sin(theta)) / b
    return (c**p + s**p) ** (-1.0 / p)


def _angle_gauss(theta: np.ndarray, center: float, width: float) -> np.ndarray:
    delta = np.angle(np.exp(1j * (theta - center)))
    return np.exp(-((delta / width) ** 2))


@dataclass
class Anatomy:
    """All continuous anatomical parameters of one phantom.

    Build it with :meth:`from_spec`; every method works on broadcastable
    coordinate arrays in the phantom frame (mm).
    """

    height: float
    body_a: float
    body_b: float
    theta_table: np.ndarray = field(repr=False)
    body_r: np.ndarray = field(repr=False)
    fat_r: np.ndarray = field(repr=False)
    cavity_r: np.ndarray = field(repr=False)
    rib_r: np.ndarray = field(repr=False)
    spine_y: float = 40.0
    vertebra_r: float = 20.0
    band_front: float = -70.0
    band_w_front: float = 10.0
    band_w_back: float = 30.0
    carina_z: float = 150.0
    domes: tuple[tuple[float, float, float, float, float], ...] = ()
    dome_floor: float = 25.0
    apices: tuple[tuple[float, float, float], ...] = ()
    rib_top: float = 240.0
    rib_pitch: float = 22.0
    rib_drop: float = 80.0
    narrowing: float = 0.2
    narrowing_start: float = 120.0
    n_ribs: int = 12
    sternum: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    vertebra_pitch: float = 26.0
    liver_x: float = 10.0
    stomach: tuple[float, float, float, float] | None = None
    table_y: float = 150.0
    structures: tuple[Structure, ...] = ()
    hila: dict[str, np.ndarray] = field(default_factory=dict)
    bronchus_roots: dict[str, np.ndarray] = field(default_factory=dict)
    venous_hila: dict[str, np.ndarray] = field(default_factory=dict)
    fissures: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    # ------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: PhantomSpec, rng: np.random.Generator) -> Anatomy:
        """Draw the anatomy of ``spec``'s patient.

        Parameters
        ----------
        spec: PhantomSpec
            Patient size, fat and lung height are taken from it.
        rng: numpy.random.Generator
            The anatomy stream (independent of the grid).

        Returns
        -------
        Anatomy
        """
        a = spec.body_width / 2.0
        b = spec.body_depth / 2.0
        height = spec.lung_height
        size = float(np.clip((spec.body_width - 280.0) / 120.0, 0.0, 1.0))
        theta = (np.arange(N_THETA) + 0.5) / N_THETA * 2.0 * np.pi - np.pi
        sin = np.sin(theta)
        p = np.where(sin > 0, rng.uniform(2.6, 3.4), rng.uniform(2.1, 2.5))
        wobble = 1.0 + sum(
            rng.normal(0.0, 0.012) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
            for k in range(2, 5)
        )
        body_r = _superellipse(theta, a, b, p) * wobble
        fat = spec.fat_thickness * (
            1.0 + 0.25 * np.cos(2 * theta) + 0.2 * sin
            + sum(rng.normal(0.0, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                  for k in range(1, 4))
        )
        fat = np.clip(fat, 2.0, None)
        pect = 9.0 + 6.0 * size
        muscle = (
            9.0 + 3.0 * size
            + 18.0 * _angle_gauss(theta, np.pi / 2, 0.55)
            + pect * (_angle_gauss(theta, -np.pi / 2 - 0.6, 0.45)
                      + _angle_gauss(theta, -np.pi / 2 + 0.6, 0.45))
        )
        rib_layer = 11.0
        fat_r = body_r - 2.0 - fat
        cavity_r = fat_r - muscle - rib_layer
        rib_r = cavity_r + 5.5

        def radius_at(table: np.ndarray, angle: float) -> float:
            index = int(((angle + np.pi) / (2 * np.pi)) * N_THETA) % N_THETA
            return float(table[index])

        cav_back = radius_at(cavity_r, np.pi / 2)
        cav_front = radius_at(cavity_r, -np.pi / 2)
        cav_side = 0.5 * (radius_at(cavity_r, 0.0) + radius_at(cavity_r, np.pi))
        vertebra_r = 14.5 + 3.5 * size
        spine_y = min(cav_back - vertebra_r - 4.0, b - spec.fat_thickness - 72.0)
        carina_z = height * rng.uniform(0.55, 0.62)

        dome_r = rng.uniform(0.22, 0.3) * height
        dome_l = dome_r - rng.uniform(8.0, 22.0)
        domes = (
            (-0.45 * cav_side, -0.15 * cav_front, 0.62 * cav_side, 0.95 * cav_back, dome_r),
            (0.45 * cav_side, -0.15 * cav_front, 0.6 * cav_side, 0.95 * cav_back, dome_l),
        )
        apex_y = 0.3 * cav_back
        apex_curv = rng.uniform(38.0, 52.0)
        apices = (
            (-0.42 * cav_side, apex_y, apex_curv),
            (0.42 * cav_side, apex_y, apex_curv),
        )

        anatomy = cls(
            height=height,
            body_a=a,
            body_b=b,
            theta_table=theta,
            body_r=body_r.astype(FLOAT),
            fat_r=fat_r.astype(FLOAT),
            cavity_r=cavity_r.astype(FLOAT),
            rib_r=rib_r.astype(FLOAT),
            spine_y=float(spine_y),
            vertebra_r=float(vertebra_r),
            band_front=-cav_front,
            band_w_front=float(rng.uniform(8.0, 13.0)),
            band_w_back=float(vertebra_r + rng.uniform(7.0, 11.0)),
            carina_z=float(carina_z),
            domes=domes,
            dome_floor=float(rng.uniform(15.0, 35.0)),
            apices=apices,
            rib_top=float(height - rng.uniform(5.0, 20.0)),
            rib_pitch=float(height * rng.uniform(0.085, 0.1)),
            rib_drop=float(height * rng.uniform(0.3, 0.42)),
            narrowing=float(rng.uniform(0.15, 0.28)),
            narrowing_start=float(height * rng.uniform(0.4, 0.55)),
            sternum=(
                -cav_front - 6.5,
                float(height - rng.uniform(35.0, 50.0)),
                float(dome_r - rng.uniform(0.0, 20.0)),
                float(rng.uniform(13.0, 18.0)),
            ),
            vertebra_pitch=float(height * rng.uniform(0.1, 0.115)),
            liver_x=float(rng.uniform(0.0, 25.0)),
            table_y=float(radius_at(body_r, np.pi / 2) + rng.uniform(1.0, 4.0)),
        )
        if rng.random() < 0.6:
            anatomy.stomach = (
                0.5 * cav_side, -0.1 * cav_front, dome_l - rng.uniform(20.0, 35.0),
                float(rng.uniform(12.0, 24.0)),
            )
        anatomy._build_mediastinum(rng, size, cav_front, cav_side)
        anatomy._build_fissures(rng, cav_front, cav_back)
        return anatomy

    # ------------------------------------------------------------------
    def _build_mediastinum(self, rng: np.random.Generator, size: float, cav_front: float,
                           cav_side: float) -> None:
        """Heart, great vessels, airways and the hila."""
        h = self.height
        zc = self.carina_z
        sy = self.spine_y
        vr = self.vertebra_r
        scale = 0.9 + 0.2 * size
        dome = 0.5 * (self.domes[0][4] + self.domes[1][4])
        trachea_y = sy - vr - rng.uniform(22.0, 28.0)
        trachea_r = rng.uniform(8.0, 10.5) * scale
        top = h + 200.0
        bottom = -250.0
        structures: list[Structure] = []

        # Heart: an ellipsoid resting on the diaphragm, long axis to the left front.
        axes = (rng.uniform(58.0, 70.0) * scale, rng.uniform(42.0, 50.0) * scale,
                rng.uniform(44.0, 52.0) * scale)
        yaw = math.radians(rng.uniform(-45.0, -30.0))
        tilt = math.radians(rng.uniform(15.0, 25.0))
        rz = np.array([[math.cos(yaw), -math.sin(yaw), 0.0],
                       [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
        ry = np.array([[math.cos(tilt), 0.0, -math.sin(tilt)], [0.0, 1.0, 0.0],
                       [math.sin(tilt), 0.0, math.cos(tilt)]])
        rotation = rz @ ry
        heart_center = (rng.uniform(18.0, 32.0), -cav_front + 12.0 + axes[1] * 0.95,
                        dome + axes[2] * 0.45)
        structures.append(Structure(
            "heart", Ellipsoid(heart_center, axes, tuple(map(tuple, rotation))),
            HU["heart"]))
        heart_top = heart_center[2] + axes[2] * 0.8

        # Aorta: ascending, arch, descending (left front of the spine).
        asc = (rng.uniform(-8.0, 4.0), heart_center[1] - 5.0)
        desc = (vr + rng.uniform(9.0, 14.0), sy - rng.uniform(10.0, 16.0))
        arch_z = zc + rng.uniform(30.0, 45.0)
        r_asc = rng.uniform(13.0, 17.0) * scale
        r_desc = rng.uniform(10.0, 13.0) * scale
        arch_mid = (0.5 * (asc[0] + desc[0]) - 2.0, trachea_y - 4.0, arch_z + 8.0)
        structures += [
            Structure("aorta_ascending", Capsule((asc[0], asc[1], heart_top - 30.0),
                                                 (asc[0], asc[1], arch_z), r_asc, r_asc),
                      HU["blood"]),
            Structure("aorta_arch", Capsule((asc[0], asc[1], arch_z), arch_mid,
                                            r_asc, 0.5 * (r_asc + r_desc)), HU["blood"]),
            Structure("aorta_arch", Capsule(arch_mid, (desc[0], desc[1], arch_z - 4.0),
                                            0.5 * (r_asc + r_desc), r_desc), HU["blood"]),
            Structure("aorta_descending", Capsule((desc[0], desc[1], arch_z - 4.0),
                                                  (desc[0], desc[1], bottom), r_desc, r_desc),
                      HU["blood"]),
            Structure("superior_vena_cava",
                      Capsule((asc[0] - r_asc - 10.0, asc[1] + 6.0, heart_top - 20.0),
                              (asc[0] - r_asc - 10.0, asc[1] + 8.0, top), 9.0, 9.0),
                      HU["blood"]),
            Structure("esophagus", Capsule((4.0, sy - vr - 9.0, top), (8.0, sy - vr - 9.0, -60.0),
                                           7.0, 7.0), HU["muscle"]),
            Structure("neck_vessels", Capsule((asc[0] + 5.0, trachea_y - 12.0, arch_z),
                                              (-8.0, trachea_y - 10.0, top), 8.0, 8.0),
                      HU["blood"]),
            Structure("neck_vessels", Capsule((arch_mid[0] + 8.0, trachea_y - 4.0, arch_z),
                                              (28.0, trachea_y - 6.0, top), 7.0, 7.0),
                      HU["blood"]),
        ]

        # Trachea and main bronchi (airways: wall then air lumen).
        carina = np.array([0.0, trachea_y, zc])
        root_r = np.array([-rng.uniform(36.0, 44.0), trachea_y + rng.uniform(4.0, 10.0),
                           zc - rng.uniform(22.0, 30.0)])
        root_l = np.array([rng.uniform(46.0, 56.0), trachea_y + rng.uniform(8.0, 14.0),
                           zc - rng.uniform(30.0, 40.0)])
        wall = 2.0
        structures += [
            Structure("trachea", Capsule(tuple(carina), (0.0, trachea_y, top),
                                         trachea_r, trachea_r), HU["airway_wall"], lumen=wall),
            Structure("right_main_bronchus", Capsule(tuple(carina), tuple(root_r),
                                                     trachea_r * 0.78, 6.5),
                      HU["airway_wall"], lumen=1.8),
            Structure("left_main_bronchus", Capsule(tuple(carina), tuple(root_l),
                                                    trachea_r * 0.7, 6.0),
                      HU["airway_wall"], lumen=1.6),
        ]
        self.bronchus_roots = {"right": root_r, "left": root_l}

        # Pulmonary arteries: trunk to the bifurcation, then to each hilum.
        trunk0 = (heart_center[0] - 5.0, heart_center[1] - 20.0, heart_top - 25.0)
        bif = (6.0, trachea_y - 8.0, zc - 8.0)
        hilum_r = root_r + np.array([-4.0, -14.0, 4.0])
        hilum_l = root_l + np.array([4.0, -6.0, 14.0])
        structures += [
            Structure("pulmonary_trunk", Capsule(trunk0, bif, 13.0 * scale, 12.0 * scale),
                      HU["blood"]),
            Structure("right_pulmonary_artery", Capsule(bif, tuple(hilum_r), 11.0 * scale, 9.0),
                      HU["blood"]),
            Structure("left_pulmonary_artery", Capsule(bif, tuple(hilum_l), 11.0 * scale, 9.0),
                      HU["blood"]),
        ]
        self.hila = {"right": hilum_r, "left": hilum_l}
        atrium = np.array([heart_center[0] - 15.0, heart_center[1] + axes[1] * 0.6,
                           heart_center[2] + 5.0])
        vein_r = np.array([-rng.uniform(34.0, 42.0), atrium[1] + 6.0, zc - rng.uniform(50.0, 65.0)])
        vein_l = np.array([rng.uniform(40.0, 50.0), atrium[1] + 8.0, zc - rng.uniform(45.0, 60.0)])
        structures += [
            Structure("pulmonary_veins", Capsule(tuple(atrium), tuple(vein_r), 9.0, 7.5),
                      HU["blood"]),
            Structure("pulmonary_veins", Capsule(tuple(atrium), tuple(vein_l), 9.0, 7.5),
                      HU["blood"]),
        ]
        self.venous_hila = {"right": vein_r, "left": vein_l}
        self.structures = tuple(structures)

    def _build_fissures(self, rng: np.random.Generator, cav_front: float,
                        cav_back: float) -> None:
        """Oblique fissures (both lungs) and the right horizontal fissure.

        An oblique fissure is the plane ``z = z0 + slope * y`` (higher at the
        back); the lower lobe lies below it. The horizontal fissure is
        ``z = z_h`` in front of the right oblique fissure.
        """
        h = self.height
        for side in ("right", "left"):
            z_back = h * rng.uniform(0.58, 0.7)
            z_front = h * rng.uniform(0.08, 0.2)
            depth = cav_back + cav_front
            slope = (z_back - z_front) / depth
            z0 = z_back - slope * cav_back
            self.fissures[f"{side}_oblique"] = (z0, slope, 0.0)
        self.fissures["right_horizontal"] = (self.carina_z - rng.uniform(20.0, 35.0), 0.0, 0.0)

    # ------------------------------------------------------------------
    # 2D (axial) functions of x, y
    # ------------------------------------------------------------------
    @staticmethod
    def polar(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(radius, angle bin)`` of axial positions."""
        rho = np.hypot(X, Y).astype(FLOAT)
        theta = np.arctan2(Y, X)
        index = ((theta + np.pi) * (N_THETA / (2.0 * np.pi))).astype(np.intp)
        np.clip(index, 0, N_THETA - 1, out=index)
        return rho, index

    def lung_axial_distance(self, rho: np.ndarray, index: np.ndarray, X: np.ndarray,
                            Y: np.ndarray) -> np.ndarray:
        """Signed distance to the cavity minus the mediastinal band (2D)."""
        cavity = rho - self.cavity_r[index]
        return np.maximum(cavity, -self.band_distance(X, Y) + FLOAT(PLEURAL_GAP))

    def band_distance(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Signed distance to the central mediastinal band (2D)."""
        span = self.spine_y - self.band_front
        t = np.clip((Y - FLOAT(self.band_front)) / FLOAT(span), 0.0, 1.0)
        width = FLOAT(self.band_w_front) + t * FLOAT(self.band_w_back - self.band_w_front)
        return np.abs(X) - width

    def diaphragm_height(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Height ``z`` (mm) of the diaphragm surface under ``(x, y)`` (2D)."""
        back = self.cavity_r[N_THETA * 3 // 4]
        front = self.cavity_r[N_THETA // 4]
        t = np.clip((FLOAT(back) - Y) / FLOAT(back + front), 0.0, 1.0)
        z = FLOAT(self.dome_floor) * t
        best = None
        for x0, y0, rx, ry, top in self.domes:
            q = ((X - FLOAT(x0)) / FLOAT(rx)) ** 2 + ((Y - FLOAT(y0)) / FLOAT(ry)) ** 2
            bump = FLOAT(top) * np.clip(1.0 - q, 0.0, 1.0) ** FLOAT(0.75)
            best = bump if best is None else np.maximum(best, bump)
        return (z + best).astype(FLOAT)

    def apex_height(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Height ``z`` (mm) of the top of the lungs above ``(x, y)`` (2D)."""
        best: np.ndarray | None = None
        for x0, y0, curv in self.apices:
            d2 = (X - FLOAT(x0)) ** 2 + (Y - FLOAT(y0)) ** 2
            top = FLOAT(self.height) - d2 / FLOAT(2.0 * curv)
            best = top if best is None else np.maximum(best, top)
        if best is None:
            raise ValueError("anatomy has no lung apex")
        return np.asarray(best, dtype=FLOAT)

    # ------------------------------------------------------------------
    # 3D distances at points
    # ------------------------------------------------------------------
    def narrowing_at(self, Z: np.ndarray) -> np.ndarray:
        """Lateral narrowing of the upper thorax at heights ``Z`` (0 below).

        The cavity radius is multiplied by ``1 - narrowing_at(Z) * cos(theta)**2``
        (the upper chest is narrower from side to side, not front to back).
        """
        t = np.clip((np.asarray(Z, dtype=FLOAT) - FLOAT(self.narrowing_start))
                    / FLOAT(self.height - self.narrowing_start), 0.0, 1.0)
        return (FLOAT(self.narrowing) * t * t).astype(FLOAT)

    def cos2(self, index: np.ndarray) -> np.ndarray:
        """``cos(theta)**2`` of angle bins."""
        return (np.cos(self.theta_table[index]) ** 2).astype(FLOAT)

    def lung_distance(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the lungs at points (negative inside).

        The zero level is the lung surface; the value is a true distance near
        the chest wall and an approximation elsewhere.

        Parameters
        ----------
        X, Y, Z: numpy.ndarray
            Phantom-frame coordinates (mm), broadcastable.

        Returns
        -------
        numpy.ndarray
            float32 signed distance.
        """
        X, Y, Z = (np.asarray(v, dtype=FLOAT) for v in (X, Y, Z))
        rho, index = self.polar(X, Y)
        out = self.lung_axial_distance(rho, index, X, Y)
        scale = FLOAT(1.0) - self.narrowing_at(Z) * self.cos2(index)
        out = np.maximum(out, rho - self.cavity_r[index] * scale)
        out = np.maximum(out, self.diaphragm_height(X, Y) - Z)
        out = np.maximum(out, self._apex_term(X, Y, Z))
        for structure in self.structures:
            if structure.mediastinal:
                out = np.maximum(out, FLOAT(PLEURAL_GAP) - structure.shape.distance(Z, Y, X))
        return out.astype(FLOAT)

    def _apex_term(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        return (Z - self.apex_height(X, Y)) * FLOAT(0.8)

    def side(self, X: np.ndarray) -> np.ndarray:
        """Lung label by side: 1 = patient's right (x < 0), 2 = left."""
        return np.where(np.asarray(X) < 0, 1, 2).astype(np.uint8)

    def cavity_distance(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Signed distance (mm, radial) to the thoracic cavity wall."""
        rho, index = self.polar(np.asarray(X, dtype=FLOAT), np.asarray(Y, dtype=FLOAT))
        scale = FLOAT(1.0) - self.narrowing_at(Z) * self.cos2(index)
        return rho - self.cavity_r[index] * scale

    def lobe(self, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Lobe number at points: 1 upper, 2 middle (right), 3 lower."""
        X, Y, Z = np.broadcast_arrays(*(np.asarray(v, dtype=FLOAT) for v in (X, Y, Z)))
        out = np.ones(X.shape, dtype=np.int8)
        for side, sign in (("right", -1.0), ("left", 1.0)):
            on_side = (X * sign) > 0
            lower = self.fissure_distance(f"{side}_oblique", Y, Z) > 0
            out[on_side & lower] = 3
            if side == "right":
                middle = ~lower & (self.fissure_distance("right_horizontal", Y, Z) > 0)
                out[on_side & middle] = 2
        return out

    def fissure_distance(self, name: str, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to a fissure plane; positive below it."""
        z0, slope, _ = self.fissures[name]
        return (FLOAT(z0) + FLOAT(slope) * Y - Z) / FLOAT(math.hypot(1.0, slope))

    @property
    def lung_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` ``(z, y, x)`` corners (mm) enclosing both lungs."""
        side = float(np.max(self.cavity_r * np.abs(np.cos(self.theta_table))))
        back = float(np.max(self.cavity_r * np.clip(np.sin(self.theta_table), 0, None)))
        front = float(np.max(self.cavity_r * np.clip(-np.sin(self.theta_table), 0, None)))
        return (np.array([-1.0, -front - 1.0, -side - 1.0]),
                np.array([self.height + 1.0, back + 1.0, side + 1.0]))
