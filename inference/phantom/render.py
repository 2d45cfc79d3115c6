"""Sampling a phantom's continuous fields on its voxel grid, slab by slab.

The renderer paints Hounsfield units in layers (body wall, abdomen,
mediastinum, lungs, bronchial walls, lesions, airway lumens, vessels, bones,
scanner noise) and samples the masks at voxel centres: a voxel is lung where
the lung's signed distance is negative and lesion where a lesion's depth is
positive inside the lung. Edges blend over ``max(0.9 mm, 0.75 * pixel
spacing)``, which mimics the partial-volume effect of a coarser grid.

Slabs of slices are rendered independently (bounded memory); nothing in a
slab depends on the slab size, so results do not depend on it either.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from inference.phantom.anatomy import HU, PLEURAL_GAP, Anatomy
from inference.phantom.fields import FLOAT, Ellipsoid, GridBox, blend_into, ramp
from inference.phantom.lesions import Lesion, LesionNoise, Where
from inference.phantom.spec import PhantomSpec
from inference.phantom.vessels import TubeSet, VesselTrees

LOGGER = logging.getLogger(__name__)

__all__ = ["Renderer"]

#: Seed-sequence tag of the per-slice scanner-noise streams.
NOISE_STREAM = 0x5CA11
#: Largest distance (mm) between the sub-slices of a thick slice.
MAX_SUB_SLICE_MM = 2.0
#: Standard deviation (HU) of the parenchymal density texture.
PARENCHYMA_TEXTURE = 22.0


def _overlap(a: GridBox, b: GridBox) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Index expressions of the common part of two blocks, in each block."""
    k0, k1 = max(a.k0, b.k0), min(a.k1, b.k1)
    i0, i1 = max(a.i0, b.i0), min(a.i1, b.i1)
    j0, j1 = max(a.j0, b.j0), min(a.j1, b.j1)
    if k1 <= k0 or i1 <= i0 or j1 <= j0:
        return None
    in_a = (slice(k0 - a.k0, k1 - a.k0), slice(i0 - a.i0, i1 - a.i0), slice(j0 - a.j0, j1 - a.j0))
    in_b = (slice(k0 - b.k0, k1 - b.k0), slice(i0 - b.i0, i1 - b.i0), slice(j0 - b.j0, j1 - b.j0))
    return in_a, in_b


class Renderer:
    """Renders a phantom's slabs on the grid of its spec.

    Parameters
    ----------
    spec: PhantomSpec
        Grid, scanner and patient.
    anatomy: Anatomy
        Continuous anatomy.
    trees: VesselTrees
        Vessels and bronchi.
    lesions: list[Lesion]
        Lesions and distractors.
    lesion_noise: LesionNoise
        Fields the lesions and the parenchyma are made of.

    Notes
    -----
    Thick slices are rendered as ``sub_slices`` thinner sub-slices (at most
    about 2 mm apart, an odd number so that one lies at the slice centre)
    whose HU are averaged, as a detector row integrates over the slice
    profile; the masks are those of the central sub-slice.
    """

    def __init__(self, spec: PhantomSpec, anatomy: Anatomy, trees: VesselTrees,
                 lesions: list[Lesion], lesion_noise: LesionNoise) -> None:
        self.spec = spec
        self.anatomy = anatomy
        self.trees = trees
        self.lesions = lesions
        self.noise = lesion_noise
        m, ps = spec.matrix, spec.pixel_spacing
        centre = (np.arange(m) - (m - 1) / 2.0) * ps
        self.xs = centre - spec.body_offset[0]
        self.ys = centre - spec.body_offset[1]
        sub = int(math.ceil(spec.slice_thickness / MAX_SUB_SLICE_MM - 1e-6))
        self.sub_slices = sub + 1 if sub % 2 == 0 else sub
        self.z_step = spec.slice_thickness / self.sub_slices
        virtual = np.arange(spec.n_slices * self.sub_slices)
        self.zs = spec.scan_center_z + (
            (virtual + 0.5) / self.sub_slices - 0.5 - (spec.n_slices - 1) / 2.0
        ) * spec.slice_thickness
        self.width = max(0.9, 0.75 * ps)
        self.voxel_volume = ps * ps * self.z_step
        self._prepare_axial()

    # ------------------------------------------------------------------
    def _prepare_axial(self) -> None:
        """Everything that depends on (x, y) only, computed once."""
        an = self.anatomy
        w = self.width
        X = self.xs[None, :].astype(FLOAT)
        Y = self.ys[:, None].astype(FLOAT)
        rho, index = an.polar(X, Y)
        self.rho, self.theta_index = rho, index
        base = np.full(rho.shape, HU["air"], dtype=FLOAT)
        # Scanner table: a foam plate with thin shells under the patient.
        top = FLOAT(an.table_y) - np.clip(np.abs(X) - 60.0, 0.0, None) ** 2 / FLOAT(4000.0)
        plate = np.maximum(np.maximum(top - Y, Y - top - FLOAT(9.0)), np.abs(X) - FLOAT(215.0))
        blend_into(base, ramp(plate, w), HU["table_shell"])
        inner = np.maximum(np.maximum(top + 1.5 - Y, Y - top - FLOAT(7.5)), np.abs(X) - 213.0)
        blend_into(base, ramp(inner, w), HU["table"])
        body = rho - an.body_r[index]
        blend_into(base, ramp(body, w), HU["skin"])
        blend_into(base, ramp(body + FLOAT(2.0), w), HU["fat"])
        blend_into(base, ramp(rho - an.fat_r[index], w), HU["muscle"])
        cavity = rho - an.cavity_r[index]
        self.cavity_alpha = ramp(cavity, w)
        blend_into(base, self.cavity_alpha, HU["mediastinal_fat"])
        self.base = base
        self.lung_axial = an.lung_axial_distance(rho, index, X, Y)
        self.dome = an.diaphragm_height(X, Y)
        self.apex = an.apex_height(X, Y)
        liver = ramp(X - FLOAT(an.liver_x), 6.0)
        self.abdomen = (HU["spleen"] + liver * (HU["liver"] - HU["spleen"])).astype(FLOAT)
        self.parenchyma_gradient = (
            FLOAT(-25.0) + FLOAT(70.0) * np.clip(
                (Y - FLOAT(an.band_front)) / FLOAT(max(1.0, an.spine_y - an.band_front + 40.0)),
                0.0, 1.0)
        ).astype(FLOAT) * np.ones_like(X)
        m = self.spec.matrix
        jj = np.arange(m) - (m - 1) / 2.0
        self.outside_circle = (jj[None, :] ** 2 + jj[:, None] ** 2) > (m / 2.0) ** 2

        # Lung bounding block (rows, columns) and the rib annulus.
        lower, upper = an.lung_bounds
        full = self._box(0, len(self.zs))
        lung = full.sub(lower - 2.0 * w, upper + 2.0 * w)
        self.lung_rows = (lung.i0, lung.i1)
        self.lung_cols = (lung.j0, lung.j1)
        self.lung_z = (float(lower[0]) - 2.0 * w, float(upper[0]) + 2.0 * w)
        self.cos2 = an.cos2(index)
        self.cavity_radius = an.cavity_r[index]
        rib_r = an.rib_r[index]
        shrunk = rib_r * (FLOAT(1.0) - FLOAT(an.narrowing) * self.cos2)
        self.rib_pixels = np.nonzero((rho > shrunk - 8.0 - w) & (rho < rib_r + 8.0 + w))
        self.rib_rho = rho[self.rib_pixels]
        self.rib_radius = rib_r[self.rib_pixels]
        self.rib_cos2 = self.cos2[self.rib_pixels]
        self.rib_theta = an.theta_table[index[self.rib_pixels]]
        self._prepare_spine(X, Y)

    def _prepare_spine(self, X: np.ndarray, Y: np.ndarray) -> None:
        an = self.anatomy
        sy, vr = an.spine_y, an.vertebra_r
        canal_y = sy + vr + 9.0
        self.vertebra_d = (np.hypot(X, Y - FLOAT(sy)) - FLOAT(vr)).astype(FLOAT)
        self.canal_d = (np.hypot(X, Y - FLOAT(canal_y)) - FLOAT(7.5)).astype(FLOAT)
        self.arch_d = (np.hypot(X, Y - FLOAT(canal_y)) - FLOAT(12.5)).astype(FLOAT)
        spinous = np.hypot(X, np.clip(Y - FLOAT(canal_y + 12.0), 0.0, 32.0)
                           - (Y - FLOAT(canal_y + 12.0)))
        self.spinous_d = (spinous - FLOAT(4.5)).astype(FLOAT)
        tx = np.clip(np.abs(X), 8.0, 36.0)
        tx = np.clip(np.abs(X), 8.0, 27.0)
        transverse = np.hypot(np.abs(X) - tx, Y - FLOAT(canal_y) - (tx - 8.0) * FLOAT(0.45))
        self.transverse_d = (transverse - FLOAT(3.5)).astype(FLOAT)
        sternum_y, _, _, half = an.sternum
        sx = np.abs(X) / FLOAT(half) * np.ones_like(Y)
        sy = np.abs(Y - FLOAT(sternum_y)) / FLOAT(6.5) * np.ones_like(X)
        # Crop everything to the pixels the bones can reach.
        near = np.minimum(np.minimum(self.vertebra_d, self.arch_d),
                          np.minimum(self.spinous_d, self.transverse_d)) < 2 * self.width
        self.spine_crop = self._crop(near)
        for name in ("vertebra_d", "canal_d", "arch_d", "spinous_d", "transverse_d"):
            setattr(self, name, getattr(self, name)[self.spine_crop])
        self.sternum_crop = self._crop(np.hypot(sx / 1.6, sy) < 1.0 + 2 * self.width / 6.5)
        self.sternum_shape = (sx[self.sternum_crop], sy[self.sternum_crop])

    @staticmethod
    def _crop(mask: np.ndarray) -> tuple[slice, slice]:
        """Rows and columns enclosing the true pixels of a 2D mask."""
        rows = np.nonzero(mask.any(axis=1))[0]
        cols = np.nonzero(mask.any(axis=0))[0]
        if rows.size == 0 or cols.size == 0:
            return (slice(0, 0), slice(0, 0))
        return (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))

    def _box(self, k0: int, k1: int) -> GridBox:
        return GridBox(k0, k1, 0, len(self.ys), 0, len(self.xs),
                       self.zs[k0:k1], self.ys, self.xs)

    # ------------------------------------------------------------------
    def render(self, k0: int, k1: int, hu: np.ndarray, lesion_mask: np.ndarray,
               lung_mask: np.ndarray) -> None:
        """Render slices ``k0:k1`` into the full-volume output arrays.

        Parameters
        ----------
        k0, k1: int
            Slice range (half open).
        hu: numpy.ndarray
            int16 output volume.
        lesion_mask: numpy.ndarray
            bool output volume.
        lung_mask: numpy.ndarray
            uint8 output volume.
        """
        sub = self.sub_slices
        box = self._box(k0 * sub, k1 * sub)
        image = np.empty(box.shape, dtype=FLOAT)
        image[:] = self.base
        self._abdomen(box, image)
        self._upper_chest_wall(box, image)
        lung_box = self._lung_box(box)
        lung_d = None
        if lung_box is not None:
            lung_d = np.empty(lung_box.shape, dtype=FLOAT)
            lung_d[:] = self.lung_axial[lung_box.i0:lung_box.i1, lung_box.j0:lung_box.j1]
            Z = lung_box.zs[:, None, None].astype(FLOAT)
            rows = slice(lung_box.i0, lung_box.i1)
            cols = slice(lung_box.j0, lung_box.j1)
            np.maximum(lung_d, self.dome[rows, cols] - Z, out=lung_d)
            narrow = self.anatomy.narrowing_at(lung_box.zs)
            ks = np.nonzero(narrow > 0)[0]
            if ks.size:
                k = slice(int(ks[0]), None)
                scale = FLOAT(1.0) - narrow[k][:, None, None] * self.cos2[rows, cols]
                np.maximum(lung_d[k], self.rho[rows, cols] - self.cavity_radius[rows, cols] * scale,
                           out=lung_d[k])
            np.maximum(lung_d, (Z - self.apex[rows, cols]) * FLOAT(0.8), out=lung_d)
        self._mediastinum(box, image, lung_box, lung_d)
        if lung_box is not None and lung_d is not None:
            labels, lesion = self._lungs(box, image, lung_box, lung_d)
            virtual = np.arange(lung_box.k0, lung_box.k1)
            central = np.nonzero(virtual % sub == sub // 2)[0]
            if central.size:
                real = virtual[central] // sub
                target = (slice(int(real[0]), int(real[-1]) + 1),
                          slice(lung_box.i0, lung_box.i1), slice(lung_box.j0, lung_box.j1))
                lung_mask[target] = labels[central]
                lesion_mask[target] = lesion[central]
        self._bones(box, image)
        if sub > 1:
            image = image.reshape(k1 - k0, sub, *image.shape[1:]).mean(axis=1)
        self._noise_and_store(k0, k1, image, hu)

    def _lung_box(self, box: GridBox) -> GridBox | None:
        z = box.zs
        inside = np.nonzero((z >= self.lung_z[0]) & (z <= self.lung_z[1]))[0]
        if inside.size == 0:
            return None
        a, b = int(inside[0]), int(inside[-1]) + 1
        i0, i1 = self.lung_rows
        j0, j1 = self.lung_cols
        if i1 <= i0 or j1 <= j0:
            return None
        return GridBox(box.k0 + a, box.k0 + b, i0, i1, j0, j1, z[a:b], self.ys[i0:i1],
                       self.xs[j0:j1])

    # ------------------------------------------------------------------
    def _abdomen(self, box: GridBox, image: np.ndarray) -> None:
        an = self.anatomy
        top = float(self.dome.max()) + 2.0 * self.width
        ks = np.nonzero(box.zs < top)[0]
        if ks.size == 0:
            return
        sl = slice(int(ks[0]), int(ks[-1]) + 1)
        Z = box.zs[sl][:, None, None].astype(FLOAT)
        alpha = ramp(Z - self.dome, self.width)
        alpha *= self.cavity_alpha
        blend_into(image[sl], alpha, self.abdomen)
        if an.stomach is not None:
            x, y, z, r = an.stomach
            sub = box.sub((z - r, y - r, x - r), (z + r, y + r, x + r))
            if not sub.empty:
                Zs, Ys, Xs = sub.mesh()
                dist = np.sqrt((Xs - x) ** 2 + (Ys - y) ** 2 + ((Zs - z) * 1.3) ** 2) - FLOAT(r)
                dist = np.maximum(dist, FLOAT(z - r * 0.2) - Zs)
                blend_into(image[sub.local(box)], ramp(dist, self.width), HU["air"])

    def _upper_chest_wall(self, box: GridBox, image: np.ndarray) -> None:
        """Muscle between the narrowed upper cavity and the lower one."""
        narrow = self.anatomy.narrowing_at(box.zs)
        ks = np.nonzero(narrow > 0)[0]
        if ks.size == 0:
            return
        k = slice(int(ks[0]), None)
        scale = FLOAT(1.0) - narrow[k][:, None, None] * self.cos2
        inner = ramp(self.rho - self.cavity_radius * scale, self.width)
        alpha = self.cavity_alpha * (FLOAT(1.0) - inner)
        blend_into(image[k], alpha, HU["muscle"])

    def _mediastinum(self, box: GridBox, image: np.ndarray, lung_box: GridBox | None,
                     lung_d: np.ndarray | None) -> None:
        w = self.width
        for structure in self.anatomy.structures:
            lower, upper = structure.shape.bounds
            # Far enough that neither the tissue nor the lung edge changes there
            # (an ellipsoid's approximate distance shrinks along its long axes).
            margin = 2 * w + PLEURAL_GAP
            if isinstance(structure.shape, Ellipsoid):
                margin *= max(structure.shape.axes) / min(structure.shape.axes)
            sub = box.sub(lower - margin, upper + margin)
            if sub.empty:
                continue
            Z, Y, X = sub.mesh()
            dist = structure.shape.distance(Z, Y, X)
            view = image[sub.local(box)]
            blend_into(view, ramp(dist, w), structure.hu)
            if structure.lumen > 0:
                blend_into(view, ramp(dist + FLOAT(structure.lumen), w), HU["air"])
            if structure.mediastinal and lung_box is not None and lung_d is not None:
                both = _overlap(lung_box, sub)
                if both is not None:
                    in_lung, in_sub = both
                    np.maximum(lung_d[in_lung], FLOAT(PLEURAL_GAP) - dist[in_sub],
                               out=lung_d[in_lung])

    # ------------------------------------------------------------------
    def _lungs(self, box: GridBox, image: np.ndarray, lung_box: GridBox,
               lung_d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Paint the lungs; return their labels and the lesion mask (lung block)."""
        w = self.width
        view = image[lung_box.local(box)]
        rows = slice(lung_box.i0, lung_box.i1)
        cols = slice(lung_box.j0, lung_box.j1)
        inside = lung_d < 0
        side = np.where(lung_box.xs < 0, 1, 2).astype(np.uint8)
        labels = inside * side[None, None, :]
        alpha = ramp(lung_d, w)
        unit_texture = self.noise.texture.grid(lung_box.zs, lung_box.ys, lung_box.xs)
        texture = unit_texture * FLOAT(PARENCHYMA_TEXTURE)
        texture += FLOAT(HU["lung"])
        texture += self.parenchyma_gradient[rows, cols]
        blend_into(view, alpha, texture)
        del texture

        # Bronchial walls, lesions, lumens, vessels.
        bronchi = self.trees.bronchi
        walls = np.zeros(lung_box.shape, dtype=FLOAT)
        self._tubes(walls, lung_box, bronchi, bronchi.radius + self.trees.bronchus_wall)
        blend_into(view, walls, HU["airway_wall"])
        del walls
        lesion = np.zeros(lung_box.shape, dtype=bool)
        fill = np.zeros(lung_box.shape, dtype=FLOAT)
        block = Where.grid(lung_box)
        block.remember(self.noise.texture, unit_texture)
        for item in self.lesions:
            sub = lung_box.sub(item.lower, item.upper)
            if sub.empty:
                continue
            local = sub.local(lung_box)
            where = Where.grid(sub, parent=(block, local))
            g = item.depth(where, self.noise, self.anatomy)
            occupancy = ramp(-g, max(item.edge, w))
            occupancy *= alpha[local]
            blend_into(view[local], occupancy, item.hu(where, g, self.noise))
            if item.in_mask:
                lesion[local] |= g > 0
            if not item.air_bronchograms:
                np.maximum(fill[local], occupancy, out=fill[local])
        lesion &= inside
        del unit_texture, block
        lumen = np.zeros(lung_box.shape, dtype=FLOAT)
        self._tubes(lumen, lung_box, bronchi, bronchi.radius)
        lumen *= FLOAT(1.0) - fill
        blend_into(view, lumen, FLOAT(-990.0))
        del lumen, fill
        vessels = np.zeros(lung_box.shape, dtype=FLOAT)
        self._tubes(vessels, lung_box, self.trees.vessels, self.trees.vessels.radius)
        blend_into(view, vessels, HU["blood"])
        return labels, lesion

    def _tubes(self, out: np.ndarray, box: GridBox, tubes: TubeSet, radius: np.ndarray) -> None:
        """Max-combine the occupancy of tubes into ``out`` (covering ``box``).

        Tubes thinner than half a pixel are splatted: their volume is spread
        over the 8 nearest voxels (trilinear weights), which is what a coarse
        grid would record.
        """
        if len(tubes) == 0:
            return
        w = self.width
        p0, p1 = tubes.p0, tubes.p1
        margin = radius + 2 * w
        lo = np.minimum(p0, p1) - margin[:, None]
        hi = np.maximum(p0, p1) + margin[:, None]
        z0, z1 = box.zs[0], box.zs[-1]
        y0, y1 = box.ys[0], box.ys[-1]
        x0, x1 = box.xs[0], box.xs[-1]
        near = ((hi[:, 2] >= z0) & (lo[:, 2] <= z1) & (hi[:, 1] >= y0) & (lo[:, 1] <= y1)
                & (hi[:, 0] >= x0) & (lo[:, 0] <= x1))
        thin = radius < 0.5 * self.spec.pixel_spacing
        for n in np.nonzero(near & ~thin)[0]:
            sub = box.sub(lo[n, ::-1], hi[n, ::-1])
            if sub.empty:
                continue
            a = p0[n]
            d = p1[n] - a
            length2 = max(float(d @ d), 1e-9)
            dx = (sub.xs - a[0]).astype(FLOAT)
            dy = (sub.ys - a[1]).astype(FLOAT)
            dz = (sub.zs - a[2]).astype(FLOAT)
            t = (dz * FLOAT(d[2] / length2))[:, None, None] \
                + (dy * FLOAT(d[1] / length2))[None, :, None]
            t = t + (dx * FLOAT(d[0] / length2))[None, None, :]
            np.clip(t, 0.0, 1.0, out=t)
            ex = dx[None, None, :] - t * FLOAT(d[0])
            dist = ex * ex
            ey = dy[None, :, None] - t * FLOAT(d[1])
            dist += ey * ey
            ez = dz[:, None, None] - t * FLOAT(d[2])
            dist += ez * ez
            np.sqrt(dist, out=dist)
            dist -= FLOAT(radius[n])
            occ = ramp(dist, w)
            local = sub.local(box)
            np.maximum(out[local], occ, out=out[local])
        self._splat(out, box, tubes, radius, near & thin)

    def _splat(self, out: np.ndarray, box: GridBox, tubes: TubeSet, radius: np.ndarray,
               which: np.ndarray) -> None:
        index = np.nonzero(which)[0]
        if index.size == 0:
            return
        ps, thk = self.spec.pixel_spacing, self.z_step
        step = 0.5 * min(ps, thk)
        d = tubes.p1[index] - tubes.p0[index]
        length = np.linalg.norm(d, axis=1)
        count = np.maximum(1, np.ceil(length / step)).astype(int)
        owner = np.repeat(np.arange(index.size), count)
        first = np.cumsum(count) - count
        t = (np.arange(owner.size) - first[owner] + 0.5) / count[owner]
        pts = tubes.p0[index][owner] + t[:, None] * d[owner]
        volume = math.pi * radius[index][owner] ** 2 * (length / count)[owner]
        fk = (pts[:, 2] - box.zs[0]) / thk
        fi = (pts[:, 1] - box.ys[0]) / ps
        fj = (pts[:, 0] - box.xs[0]) / ps
        nz, ny, nx = box.shape
        k = np.floor(fk).astype(int)
        i = np.floor(fi).astype(int)
        j = np.floor(fj).astype(int)
        wk, wi, wj = fk - k, fi - i, fj - j
        total = np.zeros(nz * ny * nx, dtype=np.float64)
        for dk in (0, 1):
            for di in (0, 1):
                for dj in (0, 1):
                    kk, ii, jj = k + dk, i + di, j + dj
                    weight = ((wk if dk else 1 - wk) * (wi if di else 1 - wi)
                              * (wj if dj else 1 - wj)) * volume
                    ok = (kk >= 0) & (kk < nz) & (ii >= 0) & (ii < ny) & (jj >= 0) & (jj < nx)
                    if np.any(ok):
                        flat = (kk[ok] * ny + ii[ok]) * nx + jj[ok]
                        total += np.bincount(flat, weights=weight[ok], minlength=total.size)
        occ = (total / self.voxel_volume).reshape(box.shape).astype(FLOAT)
        out += occ
        np.minimum(out, 1.0, out=out)

    # ------------------------------------------------------------------
    def _bones(self, box: GridBox, image: np.ndarray) -> None:
        an = self.anatomy
        w = self.width
        Z = box.zs
        # Vertebrae: bodies with end plates and discs, canal, arches.
        phase = np.mod(Z / an.vertebra_pitch, 1.0)
        disc = (phase < 0.2).astype(FLOAT)[:, None, None]
        cortex = (HU["cortex"] * (1 - disc) + HU["disc"] * disc).astype(FLOAT)
        marrow = (HU["marrow"] * (1 - disc) + HU["disc"] * disc).astype(FLOAT)
        spine = image[(slice(None),) + self.spine_crop]
        blend_into(spine, ramp(self.vertebra_d, w), cortex)
        blend_into(spine, ramp(self.vertebra_d + FLOAT(1.8), w), marrow)
        arch = ((phase > 0.25) & (phase < 0.85)).astype(FLOAT)[:, None, None]
        posterior = np.minimum(np.minimum(self.arch_d, self.spinous_d), self.transverse_d)
        blend_into(spine, ramp(posterior, w) * arch, FLOAT(520.0))
        blend_into(spine, ramp(self.canal_d, w), HU["csf"])
        # Sternum (manubrium wider at the top).
        _, z_top, z_bottom, _ = an.sternum
        ks = np.nonzero((Z > z_bottom - 5) & (Z < z_top + 5))[0]
        if ks.size:
            sl = slice(int(ks[0]), int(ks[-1]) + 1)
            Zs = Z[sl][:, None, None].astype(FLOAT)
            widen = FLOAT(1.0) + FLOAT(0.6) * np.clip((Zs - FLOAT(z_top - 45.0)) / 20.0, 0, 1)
            sx, sy = self.sternum_shape
            q = np.sqrt((sx / widen) ** 2 + sy**2)
            dist = (q - FLOAT(1.0)) * FLOAT(6.5)
            dist = np.maximum(dist, np.maximum(Zs - FLOAT(z_top), FLOAT(z_bottom) - Zs))
            sternum = image[(sl,) + self.sternum_crop]
            blend_into(sternum, ramp(dist, w), HU["cortex"] * 0.8)
            blend_into(sternum, ramp(dist + FLOAT(1.5), w), HU["marrow"])
        self._ribs(box, image)

    def _ribs(self, box: GridBox, image: np.ndarray) -> None:
        an = self.anatomy
        w = self.width
        theta = self.rib_theta
        s = np.sin(theta)
        drop = an.rib_drop * (1.0 - s) / 2.0
        from_back = np.abs(np.angle(np.exp(1j * (theta - np.pi / 2))))
        from_front = np.abs(np.angle(np.exp(1j * (theta + np.pi / 2))))
        Z = box.zs[:, None].astype(np.float64)
        u = (an.rib_top - drop[None, :] - Z) / an.rib_pitch
        index = np.clip(np.rint(u), 0, an.n_ribs - 1)
        dz = (u - index) * an.rib_pitch
        half_height = 5.5 + 1.5 * (index / an.n_ribs)
        scale = 1.0 - self.anatomy.narrowing_at(box.zs)[:, None] * self.rib_cos2[None, :]
        rib_dr = self.rib_rho[None, :] - self.rib_radius[None, :] * scale
        q = np.sqrt((rib_dr / 4.5) ** 2 + (dz / half_height) ** 2)
        dist = (q - 1.0) * 4.5
        # No ribs over the spine or the sternum; floating ribs stop at the side.
        reach = np.where(index >= 9, np.pi * 0.55 - (index - 9) * 0.15, np.pi - 0.22)
        dist = np.maximum(dist, (from_back[None, :] - reach) * 60.0)
        dist = np.maximum(dist, (0.2 - from_back[None, :]) * 60.0)
        above = np.clip(u - (an.n_ribs - 1), 0, None) + np.clip(-u, 0, None)
        dist = np.maximum(dist, above * an.rib_pitch - 4.5)
        cartilage = np.clip((0.75 - from_front) / 0.15, 0.0, 1.0)[None, :]
        cortex = HU["cortex"] + cartilage * (HU["cartilage"] - HU["cortex"])
        marrow = HU["marrow"] + cartilage * (HU["cartilage"] - HU["marrow"])
        rows, cols = self.rib_pixels
        values = image[:, rows, cols]
        a = ramp(dist.astype(FLOAT), w)
        values += a * (cortex - values)
        a = ramp((dist + 1.3).astype(FLOAT), w)
        values += a * (marrow - values)
        image[:, rows, cols] = values

    # ------------------------------------------------------------------
    def _noise_and_store(self, k0: int, k1: int, image: np.ndarray, hu: np.ndarray) -> None:
        spec = self.spec
        sigma_px = spec.noise_correlation_mm / spec.pixel_spacing
        gain = 1.0
        if sigma_px >= 0.25:
            delta = np.zeros((15, 15))
            delta[7, 7] = 1.0
            gain = 1.0 / float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, sigma_px) ** 2)))
        for n in range(k1 - k0):
            if spec.noise_std > 0:
                rng = np.random.default_rng([spec.seed, NOISE_STREAM, k0 + n])
                noise = rng.standard_normal(image.shape[1:], dtype=np.float32)
                if gain != 1.0:
                    noise = ndimage.gaussian_filter(noise, sigma_px) * FLOAT(gain)
                noise *= FLOAT(spec.noise_std)
                image[n] += noise
        np.clip(image, -1024.0, 3071.0, out=image)
        np.rint(image, out=image)
        out = hu[k0:k1]
        out[:] = image
        out[:, self.outside_circle] = spec.padding_value
