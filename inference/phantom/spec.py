"""Parameters of one synthetic chest-CT phantom and their random sampling.

A :class:`PhantomSpec` fixes everything that makes two phantoms differ: the
scan grid, the scanner (noise, padding, rescale), the patient (size, fat,
lung height, position in the field of view) and the lesion configuration.
Everything else (the exact shape of the domes, the vessel tree, where each
lesion sits) is drawn inside :func:`inference.phantom.generate_phantom` from
``spec.seed`` with random streams that do not depend on the grid, so a spec
rendered at two resolutions shows the same patient.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

LOGGER = logging.getLogger(__name__)

__all__ = [
    "CLASS_KEYS",
    "CAP_PATTERNS",
    "DISTRACTORS",
    "PADDING_VALUES",
    "PhantomSpec",
    "normalize_label",
    "parse_classes",
    "sample_spec",
]

#: Class keys of the joint model, in the model's order (fixed).
CLASS_KEYS: tuple[str, ...] = ("covid19", "cap", "no_pneumonia")

#: Accepted spellings of each class key (short command-line names and keys).
LABEL_ALIASES: dict[str, str] = {
    "covid19": "covid19",
    "covid": "covid19",
    "covid-19": "covid19",
    "cap": "cap",
    "pneumonia": "cap",
    "no_pneumonia": "no_pneumonia",
    "normal": "no_pneumonia",
    "none": "no_pneumonia",
}

#: Patterns of community-acquired pneumonia the generator draws.
CAP_PATTERNS: tuple[str, ...] = ("lobar", "segmental", "bronchopneumonia")

#: Findings that look abnormal but are not pneumonia (never in the lesion mask).
DISTRACTORS: tuple[str, ...] = ("nodule", "atelectasis")

#: Pixel padding values (HU) written outside the reconstruction circle.
PADDING_VALUES: tuple[int, ...] = (-2000, -3024)

#: Slice thicknesses (mm) drawn by :func:`sample_spec`.
SLICE_THICKNESSES: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 8.0)


def normalize_label(label: str) -> str:
    """Return the class key for ``label`` (``"covid"`` -> ``"covid19"`` ...).

    Parameters
    ----------
    label: str
        A class key (``"covid19"``, ``"cap"``, ``"no_pneumonia"``) or a short
        name (``"covid"``, ``"cap"``, ``"normal"``); case-insensitive.

    Returns
    -------
    str
        One of :data:`CLASS_KEYS`.

    Raises
    ------
    TypeError
        If ``label`` is not a string.
    ValueError
        If ``label`` names no class.
    """
    if not isinstance(label, str):
        raise TypeError('Argument "label" should be a string.')
    key = LABEL_ALIASES.get(label.strip().lower())
    if key is None:
        raise ValueError(
            f'Argument "label" should be one of {", ".join(sorted(LABEL_ALIASES))}; '
            f'got "{label}".'
        )
    return key


def parse_classes(text: str) -> tuple[str, ...]:
    """Parse a comma-separated class list such as ``"covid,cap,normal"``.

    Parameters
    ----------
    text: str
        Class names or keys separated by commas.

    Returns
    -------
    tuple[str, ...]
        Class keys in the given order, duplicates removed.

    Raises
    ------
    ValueError
        If the list is empty or names an unknown class.
    """
    keys: list[str] = []
    for part in text.split(","):
        if part.strip():
            key = normalize_label(part)
            if key not in keys:
                keys.append(key)
    if not keys:
        raise ValueError('Argument "classes" should name at least one class.')
    return tuple(keys)


def _check_range(name: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f'Argument "{name}" should be between {low} and {high}; got {value}.')
    return value


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f'Argument "{name}" should be an integer.')
    if not low <= int(value) <= high:
        raise ValueError(f'Argument "{name}" should be between {low} and {high}; got {value}.')
    return int(value)


@dataclass(frozen=True)
class PhantomSpec:
    """Everything that parametrises one phantom; see :func:`sample_spec`.

    Lengths are millimetres. "Anatomical z" is the height above the lowest
    point of the lungs (the posterior costophrenic recess), so the lungs
    span ``0 <= z <= lung_height``.

    Parameters
    ----------
    seed: int
        Seed of every random stream of the phantom (anatomy, vessel tree,
        lesions, texture, scanner noise); ``>= 0``.
    label: str
        Class key: ``"covid19"``, ``"cap"`` or ``"no_pneumonia"``.
    matrix: int
        Rows and columns of each slice (square images), 16 to 1024.
    pixel_spacing: float
        In-plane spacing (mm), 0.3 to 16.
    slice_thickness: float
        Slice thickness and spacing (mm, contiguous slices), 0.5 to 12.
    n_slices: int
        Number of slices, 1 to 2000.
    fov_center: tuple[float, float]
        LPS ``(x, y)`` of the reconstruction centre (centre of the image).
    table_z: float
        LPS ``z`` of anatomical ``z = 0``.
    scan_center_z: float
        Anatomical ``z`` of the centre of the scanned range.
    padding_value: int
        HU written outside the reconstruction circle: -2000 or -3024.
    rescale_intercept: float
        Rescale Intercept of the DICOM writer: -1024 or 0.
    noise_std: float
        Standard deviation of the scanner noise (HU), 0 to 60.
    noise_correlation_mm: float
        Sigma (mm) of the in-plane Gaussian that correlates the noise; 0 for
        white noise.
    body_width: float
        Left-right width of the body (mm), 240 to 440.
    body_depth: float
        Antero-posterior depth of the body (mm), 150 to 340.
    fat_thickness: float
        Mean subcutaneous fat thickness (mm), 2 to 60.
    lung_height: float
        Cranio-caudal height of the lungs (mm), 160 to 330.
    body_offset: tuple[float, float]
        ``(x, y)`` of the body centre relative to ``fov_center`` (mm).
    lesion_count: int
        Number of lesions (COVID-19 patches or CAP foci); 0 for no pneumonia.
    bilateral: bool
        Whether the lesions involve both lungs.
    involvement: float
        Target fraction of the lung volume covered by lesions (0 to 0.6);
        COVID-19 lesion sizes are scaled towards it; 0 for no pneumonia.
    cap_pattern: str | None
        ``"lobar"``, ``"segmental"`` or ``"bronchopneumonia"`` for CAP,
        ``None`` otherwise.
    consolidation_fraction: float
        Fraction of COVID-19 patches that have a consolidated core (0 to 1).
    crazy_paving_fraction: float
        Fraction of COVID-19 patches with crazy paving (0 to 1).
    air_bronchograms: bool
        Whether CAP consolidation shows air bronchograms.
    distractor: str | None
        ``"nodule"``, ``"atelectasis"`` or ``None``; never in the lesion mask.

    Raises
    ------
    ValueError
        If a value is out of range or inconsistent with the label.
    TypeError
        If an integer argument is not an integer.
    """

    seed: int
    label: str
    matrix: int = 512
    pixel_spacing: float = 0.7
    slice_thickness: float = 2.0
    n_slices: int = 150
    fov_center: tuple[float, float] = (0.0, -120.0)
    table_z: float = -150.0
    scan_center_z: float = 120.0
    padding_value: int = -2000
    rescale_intercept: float = -1024.0
    noise_std: float = 15.0
    noise_correlation_mm: float = 0.0
    body_width: float = 330.0
    body_depth: float = 230.0
    fat_thickness: float = 15.0
    lung_height: float = 250.0
    body_offset: tuple[float, float] = (0.0, 0.0)
    lesion_count: int = 0
    bilateral: bool = False
    involvement: float = 0.0
    cap_pattern: str | None = None
    consolidation_fraction: float = 0.0
    crazy_paving_fraction: float = 0.0
    air_bronchograms: bool = False
    distractor: str | None = None

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0, 2**63 - 1)
        object.__setattr__(self, "label", normalize_label(self.label))
        _check_int("matrix", self.matrix, 16, 1024)
        _check_range("pixel_spacing", self.pixel_spacing, 0.3, 16.0)
        _check_range("slice_thickness", self.slice_thickness, 0.5, 12.0)
        _check_int("n_slices", self.n_slices, 1, 2000)
        for name in ("fov_center", "body_offset"):
            value = getattr(self, name)
            if len(value) != 2 or not all(math.isfinite(float(v)) for v in value):
                raise ValueError(f'Argument "{name}" should be two finite numbers (mm).')
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        for name in ("table_z", "scan_center_z"):
            _check_range(name, getattr(self, name), -5000.0, 5000.0)
        if self.padding_value not in PADDING_VALUES:
            raise ValueError(
                f'Argument "padding_value" should be one of {PADDING_VALUES}; '
                f"got {self.padding_value}."
            )
        if float(self.rescale_intercept) not in (-1024.0, 0.0):
            raise ValueError('Argument "rescale_intercept" should be -1024 or 0.')
        _check_range("noise_std", self.noise_std, 0.0, 60.0)
        _check_range("noise_correlation_mm", self.noise_correlation_mm, 0.0, 3.0)
        _check_range("body_width", self.body_width, 240.0, 440.0)
        _check_range("body_depth", self.body_depth, 150.0, 340.0)
        if self.body_depth > self.body_width:
            raise ValueError('Argument "body_depth" should not exceed "body_width".')
        _check_range("fat_thickness", self.fat_thickness, 2.0, 60.0)
        _check_range("lung_height", self.lung_height, 160.0, 330.0)
        _check_int("lesion_count", self.lesion_count, 0, 40)
        _check_range("involvement", self.involvement, 0.0, 0.6)
        _check_range("consolidation_fraction", self.consolidation_fraction, 0.0, 1.0)
        _check_range("crazy_paving_fraction", self.crazy_paving_fraction, 0.0, 1.0)
        if self.distractor is not None and self.distractor not in DISTRACTORS:
            raise ValueError(f'Argument "distractor" should be one of {DISTRACTORS} or None.')
        if self.label == "no_pneumonia":
            if self.lesion_count or self.involvement or self.cap_pattern is not None:
                raise ValueError(
                    'Arguments "lesion_count", "involvement" and "cap_pattern" should be '
                    'empty for label "no_pneumonia".'
                )
        else:
            if self.lesion_count < 1 or self.involvement <= 0.0:
                raise ValueError(
                    f'Arguments "lesion_count" and "involvement" should be positive for '
                    f'label "{self.label}".'
                )
        if self.label == "cap":
            if self.cap_pattern not in CAP_PATTERNS:
                raise ValueError(f'Argument "cap_pattern" should be one of {CAP_PATTERNS}.')
        elif self.cap_pattern is not None:
            raise ValueError('Argument "cap_pattern" should be None unless label is "cap".')

    # ------------------------------------------------------------------
    @property
    def field_of_view(self) -> float:
        """Reconstruction field of view (mm): ``matrix * pixel_spacing``."""
        return self.matrix * self.pixel_spacing

    @property
    def scan_length(self) -> float:
        """Cranio-caudal extent of the scan (mm): ``n_slices * slice_thickness``."""
        return self.n_slices * self.slice_thickness

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_slices, rows, columns)`` of the phantom arrays."""
        return (self.n_slices, self.matrix, self.matrix)

    def with_grid(
        self,
        *,
        matrix: int | None = None,
        pixel_spacing: float | None = None,
        slice_thickness: float | None = None,
        n_slices: int | None = None,
    ) -> PhantomSpec:
        """Return the same patient on another voxel grid.

        An argument left out keeps the field of view (``matrix *
        pixel_spacing``) or the scan length (``n_slices * slice_thickness``)
        of this spec: ``with_grid(matrix=128)`` keeps the field of view and
        sets the pixel spacing; ``with_grid(slice_thickness=5.0)`` keeps the
        scan length and sets the slice count. Give both values of a pair to
        set them exactly (``dataclasses.replace`` does the same).

        Parameters
        ----------
        matrix: int | None
            Rows and columns.
        pixel_spacing: float | None
            In-plane spacing (mm).
        slice_thickness: float | None
            Slice thickness and spacing (mm).
        n_slices: int | None
            Number of slices.

        Returns
        -------
        PhantomSpec
            A copy with the new grid; the anatomy and lesions are unchanged.
        """
        fov = self.field_of_view
        if matrix is not None and pixel_spacing is None:
            pixel_spacing = fov / matrix
        elif pixel_spacing is not None and matrix is None:
            matrix = max(16, int(round(fov / pixel_spacing)))
        length = self.scan_length
        if slice_thickness is not None and n_slices is None:
            n_slices = max(1, int(round(length / slice_thickness)))
        elif n_slices is not None and slice_thickness is None:
            slice_thickness = length / n_slices
        return dataclasses.replace(
            self,
            matrix=self.matrix if matrix is None else matrix,
            pixel_spacing=self.pixel_spacing if pixel_spacing is None else float(pixel_spacing),
            slice_thickness=(
                self.slice_thickness if slice_thickness is None else float(slice_thickness)
            ),
            n_slices=self.n_slices if n_slices is None else n_slices,
        )


def _sample_lesions(rng: np.random.Generator, label: str) -> dict[str, object]:
    """Lesion configuration of one class (see the class patterns in the docs)."""
    if label == "no_pneumonia":
        distractor = None
        if rng.random() < 0.3:
            distractor = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        return {"distractor": distractor}
    distractor = None
    if rng.random() < 0.1:
        distractor = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
    if label == "covid19":
        # RSNA typical appearance: bilateral, multifocal, peripheral GGO.
        return {
            "lesion_count": int(np.clip(rng.poisson(5.0) + 2, 2, 14)),
            "bilateral": bool(rng.random() < 0.9),
            "involvement": float(np.exp(rng.uniform(np.log(0.03), np.log(0.32)))),
            "consolidation_fraction": float(rng.choice([0.0, 0.2, 0.4])),
            "crazy_paving_fraction": float(rng.choice([0.0, 0.0, 0.3, 0.6])),
            "distractor": distractor,
        }
    # CAP: unilateral lobar / segmental consolidation, fewer and denser foci.
    pattern = CAP_PATTERNS[int(rng.choice(3, p=[0.4, 0.4, 0.2]))]
    if pattern == "lobar":
        count, involvement = 1, float(rng.uniform(0.08, 0.3))
    elif pattern == "segmental":
        count = int(rng.choice([1, 1, 2, 3]))
        involvement = float(rng.uniform(0.04, 0.12))
    else:
        count = int(rng.integers(3, 7))
        involvement = float(rng.uniform(0.03, 0.08))
    return {
        "lesion_count": count,
        "bilateral": bool(rng.random() < (0.25 if pattern == "bronchopneumonia" else 0.08)),
        "involvement": involvement,
        "cap_pattern": pattern,
        "air_bronchograms": bool(pattern != "bronchopneumonia" and rng.random() < 0.75),
        "distractor": distractor,
    }


def sample_spec(seed: int, label: str | None = None) -> PhantomSpec:
    """Draw the parameters of a phantom, deterministically from ``seed``.

    The grid is that of a clinical scan: 512 x 512 images whose field of
    view (256 to 460 mm) fits the body, slice thickness 1 to 8 mm, and a
    scan range that covers the lungs with a margin (at a low rate it starts
    or stops a little inside the apex or the base). Use
    :meth:`PhantomSpec.with_grid` or :func:`dataclasses.replace` to change
    the grid of the same patient.

    Parameters
    ----------
    seed: int
        Non-negative seed.
    label: str | None
        Class key or short name; ``None`` draws it uniformly from
        :data:`CLASS_KEYS` (from the seed).

    Returns
    -------
    PhantomSpec

    Raises
    ------
    TypeError
        If ``seed`` is not an integer.
    ValueError
        If ``seed`` is negative or ``label`` is unknown.
    """
    _check_int("seed", seed, 0, 2**63 - 1)
    rng = np.random.default_rng([int(seed), 0x5EC])
    drawn = CLASS_KEYS[int(rng.integers(len(CLASS_KEYS)))]
    key = drawn if label is None else normalize_label(label)

    body_width = float(rng.uniform(280.0, 400.0))
    body_depth = float(body_width * rng.uniform(0.64, 0.78))
    size = (body_width - 280.0) / 120.0
    fat = float(np.clip(5.0 + 28.0 * size + rng.normal(0.0, 5.0), 3.0, 45.0))
    lung_height = float(np.clip(rng.normal(225.0 + 40.0 * size, 18.0), 180.0, 300.0))

    fov = float(np.clip(body_width + rng.uniform(25.0, 90.0), 256.0, 460.0))
    matrix = 512
    pixel_spacing = round(fov / matrix, 4)
    pixel_spacing = float(np.clip(pixel_spacing, 0.5, 0.9))
    fov = pixel_spacing * matrix
    slack = max(0.0, (fov - body_width) / 2.0 - 5.0)
    body_offset = (
        float(rng.uniform(-1.0, 1.0) * min(slack, 15.0)),
        float(rng.uniform(-1.0, 1.0) * min(slack, 20.0)),
    )
    fov_center = (float(rng.uniform(-12.0, 12.0)), float(rng.uniform(-190.0, -20.0)))

    thickness = float(rng.choice(SLICE_THICKNESSES))
    below = float(rng.uniform(15.0, 70.0))
    above = float(rng.uniform(10.0, 45.0))
    if rng.random() < 0.08:  # series starts or stops a little inside the lungs
        if rng.random() < 0.5:
            below = -float(rng.uniform(5.0, 25.0))
        else:
            above = -float(rng.uniform(5.0, 25.0))
    z_low, z_high = -below, lung_height + above
    n_slices = int(math.ceil((z_high - z_low) / thickness))
    scan_center_z = (z_low + z_high) / 2.0

    lesions = _sample_lesions(rng, key)
    spec = PhantomSpec(
        seed=int(seed),
        label=key,
        matrix=matrix,
        pixel_spacing=pixel_spacing,
        slice_thickness=thickness,
        n_slices=n_slices,
        fov_center=fov_center,
        table_z=float(rng.uniform(-400.0, 100.0)),
        scan_center_z=float(scan_center_z),
        padding_value=int(rng.choice(PADDING_VALUES)),
        rescale_intercept=float(rng.choice([-1024.0, 0.0])),
        noise_std=float(rng.uniform(10.0, 25.0)),
        noise_correlation_mm=float(rng.choice([0.0, 0.4, 0.6])),
        body_width=body_width,
        body_depth=body_depth,
        fat_thickness=fat,
        lung_height=lung_height,
        body_offset=body_offset,
        **lesions,  # type: ignore[arg-type]
    )
    LOGGER.debug("sampled phantom spec seed=%d label=%s", seed, key)
    return spec
