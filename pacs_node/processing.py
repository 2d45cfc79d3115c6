"""One series through the model: files -> volume -> model -> SEG + SR.

Shared by the node's workers (:mod:`pacs_node.worker`) and the offline
``deepsc-node process`` command. No database and no networking here: the
caller decides where the files come from and where the objects go.

Steps of :meth:`SeriesProcessor.process_files`
    1. read the files (:func:`inference.volume.read_series`);
    2. keep the usable images (:func:`pacs_node.selection.usable_images`:
       CT Image Storage, Image Type not excluded);
    3. build the HU volume (:func:`inference.volume.build_volume`, which
       refuses irregular stacks, mixed orientations, undecodable pixels...
       with a :class:`~inference.errors.VolumeError` whose message is the
       job's rejection reason);
    4. run the model (:class:`inference.pipeline.InferencePipeline`; the
       ONNX Runtime session is loaded once and shared: ``run()`` is
       thread-safe);
    5. render the "AI summary" Secondary Capture pixels
       (:func:`pacs_node.results.sc.render_summary`: a few key slices and
       one coronal plane, read while the HU volume is still alive; the
       volume is then released);
    6. encode the DICOM-SEG and the TID 1500 SR
       (:func:`pacs_node.results.encode_results`, which checks every source
       image's position against the result geometry: never a result on a
       wrong geometry), the Secondary Capture series
       (:func:`pacs_node.results.capture.build_secondary_captures`) and,
       when asked for, the presentation state
       (:func:`pacs_node.results.gsps.build_presentation_state`).
"""
from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from config import DEFAULT_PROVIDERS, SelectionRules, Settings
from inference.errors import VolumeError
from inference.manifest import Manifest
from inference.pipeline import InferencePipeline
from inference.result import InferenceResult
from inference.volume import build_volume, read_series
from pacs_node.results import ResultObjects, build_outline_report, encode_results
from pacs_node.results.capture import build_secondary_captures
from pacs_node.results.gsps import build_presentation_state
from pacs_node.results.sc import SummaryRendering, render_summary
from pacs_node.selection import usable_images

LOGGER = logging.getLogger(__name__)

__all__ = ["ProcessedSeries", "SeriesProcessor", "dataset_bytes"]

#: Result object kinds in the order they are written, recorded and sent
#: (the SR references the SEG): SEG, SR, the outline report (when a lesion is
#: significant), the Secondary Capture series (one object per image), the
#: presentation state (when produced).
OBJECT_KINDS: tuple[str, ...] = ("seg", "sr", "outline", "sc", "gsps")


def dataset_bytes(dataset: Dataset) -> bytes:
    """A dataset encoded as a DICOM Part 10 file (preamble, file meta, data set).

    Parameters
    ----------
    dataset: pydicom.Dataset
        With ``file_meta`` (highdicom objects have it).

    Returns
    -------
    bytes
        The file content.
    """
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def _object_uids(dataset: Dataset) -> dict[str, str]:
    return {
        "sop_class_uid": str(dataset.SOPClassUID),
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "series_instance_uid": str(dataset.SeriesInstanceUID),
        "study_instance_uid": str(dataset.StudyInstanceUID),
    }


@dataclass(frozen=True)
class ProcessedSeries:
    """What processing one series produced.

    Parameters
    ----------
    series_instance_uid: str
        The source series.
    image_count: int
        Images in the volume.
    result: inference.result.InferenceResult
        The model's outcome on the source grid.
    objects: pacs_node.results.ResultObjects
        The SEG and the SR.
    intended_use: str
        The model's intended-use statement ("Research use only, not for
        diagnosis ...").
    stage_seconds: dict[str, float]
        Seconds spent reading the files (``read``), building the volume
        (``volume``), rendering the Secondary Capture pixels (``render``)
        and encoding every object (``encode``); the model stages are in
        ``result.timings``.
    secondary_captures: tuple[pydicom.Dataset, ...]
        The "AI summary" series: key images, then the summary page.
    presentation_state: pydicom.Dataset | None
        The GSPS with the lesion outlines, when it was asked for.
    outline_report: pydicom.Dataset | None
        The TID 1500 report with only the planar lesion groups
        (:func:`pacs_node.results.build_outline_report`, series base + 5),
        which stock OHIF 3.13 draws; ``None`` when no lesion is significant.

    .. versionchanged:: issue 4
        ``secondary_captures``, ``presentation_state`` and ``outline_report``.
    """

    series_instance_uid: str
    image_count: int
    result: InferenceResult
    objects: ResultObjects
    intended_use: str
    stage_seconds: dict[str, float] = field(default_factory=dict)
    secondary_captures: tuple[Dataset, ...] = ()
    presentation_state: Dataset | None = None
    outline_report: Dataset | None = None

    def datasets(self) -> list[tuple[str, Dataset]]:
        """Kinds and objects in sending order.

        Returns
        -------
        list[tuple[str, pydicom.Dataset]]
            ``("seg", seg)``, ``("sr", sr)``, ``("outline", report)`` when
            produced, ``("sc", image)`` per Secondary Capture image in
            instance order, then ``("gsps", state)`` when produced.
        """
        seg, sr = self.objects.datasets[:2]
        items: list[tuple[str, Dataset]] = [("seg", seg), ("sr", sr)]
        if self.outline_report is not None:
            items.append(("outline", self.outline_report))
        items.extend(("sc", image) for image in self.secondary_captures)
        if self.presentation_state is not None:
            items.append(("gsps", self.presentation_state))
        return items

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary: ``InferenceResult.to_dict()`` plus object UIDs.

        Returns
        -------
        dict[str, Any]
            Class probabilities, lesion measurements, geometry and timings
            (no PHI), ``source_series_instance_uid``, ``image_count``,
            ``intended_use`` and ``objects``: ``{"seg": uids, "sr": uids,
            "outline": uids, "sc": [uids, ...], "gsps": uids}`` where ``uids`` is ``{sop_class_uid,
            sop_instance_uid, series_instance_uid, study_instance_uid}``;
            ``"sc"`` lists the images in instance order (key images, then the
            summary page); ``"outline"`` and ``"gsps"`` are present only when
            produced.
        """
        data = self.result.to_dict()
        data["timings_s"] = {
            **{k: round(v, 4) for k, v in self.stage_seconds.items()},
            **data["timings_s"],
        }
        data["source_series_instance_uid"] = self.series_instance_uid
        data["image_count"] = self.image_count
        data["intended_use"] = self.intended_use
        objects: dict[str, Any] = {}
        for kind, ds in self.datasets():
            uids = _object_uids(ds)
            if kind == "sc":
                objects.setdefault("sc", []).append(uids)
            else:
                objects[kind] = uids
        data["objects"] = objects
        return data


class SeriesProcessor:
    """Turns the files of one CT series into a result and its DICOM objects.

    Parameters
    ----------
    pipeline: inference.pipeline.InferencePipeline
        The loaded model (one per node, shared by the workers).
    uid_root: str
        Root of every UID the node generates (``Settings.uid_root``).
    series_number_base: int
        Series Number base: SEG gets base + 1, SR base + 2, the Secondary
        Capture series base + 3, the presentation state base + 4, the outline
        report base + 5
        (``Settings.result_series_number_base``).
    rules: config.SelectionRules
        For the Image Type exclusions of :func:`usable_images`.
    presentation_state: bool
        Also encode the GSPS with the lesion outlines (default ``False``;
        :meth:`from_settings` sets it when a destination asks for ``"gsps"``).

    .. versionchanged:: issue 4
        The Secondary Capture series is always produced;
        ``presentation_state``.

    Raises
    ------
    TypeError
        If `pipeline` or `rules` has the wrong type.
    ValueError
        If `uid_root` is empty or `series_number_base` is not positive.
    """

    def __init__(
        self,
        pipeline: InferencePipeline,
        *,
        uid_root: str,
        series_number_base: int,
        rules: SelectionRules,
        presentation_state: bool = False,
    ) -> None:
        if not isinstance(pipeline, InferencePipeline):
            raise TypeError(
                f'Argument "pipeline" should be an InferencePipeline, got {type(pipeline).__name__}'
            )
        if not isinstance(rules, SelectionRules):
            raise TypeError(
                f'Argument "rules" should be SelectionRules, got {type(rules).__name__}'
            )
        if not isinstance(uid_root, str) or not uid_root:
            raise ValueError('Argument "uid_root" should be a non-empty UID root')
        if isinstance(series_number_base, bool) or not isinstance(series_number_base, int):
            raise TypeError('Argument "series_number_base" should be an int')
        if series_number_base < 1:
            raise ValueError(
                f'Argument "series_number_base" should be >= 1, got {series_number_base}'
            )
        self.pipeline = pipeline
        self.uid_root = uid_root
        self.series_number_base = series_number_base
        self.rules = rules
        self.presentation_state = bool(presentation_state)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        intra_op_threads: int | None = None,
        presentation_state: bool | None = None,
    ) -> SeriesProcessor:
        """Load ``settings.model_dir`` once and build the processor.

        Parameters
        ----------
        settings: config.Settings
            Model directory, providers, UID root, series number base, rules.
        intra_op_threads: int | None
            ONNX Runtime threads per operator (``None``: one per core).
        presentation_state: bool | None
            Encode the GSPS; ``None``: when at least one of
            ``settings.destinations`` names ``"gsps"`` in its ``objects``.

        Returns
        -------
        SeriesProcessor

        Raises
        ------
        inference.errors.ModelLoadError
            If the model directory or a file in it is missing or unreadable.
        inference.errors.ManifestError
            If the manifest is invalid or disagrees with the graph (its
            ``field`` names the manifest field).
        """
        # The default provider list is not an explicit request: let the session
        # log a CPU fallback at INFO rather than WARNING.
        explicit = settings.providers != DEFAULT_PROVIDERS
        pipeline = InferencePipeline.from_model_dir(
            settings.model_dir,
            providers=settings.providers if explicit else None,
            intra_op_threads=intra_op_threads,
        )
        return cls(
            pipeline,
            uid_root=settings.uid_root,
            series_number_base=settings.result_series_number_base,
            rules=settings.selection,
            presentation_state=(
                any("gsps" in d.objects for d in settings.destinations)
                if presentation_state is None
                else presentation_state
            ),
        )

    @property
    def manifest(self) -> Manifest:
        """The model's manifest."""
        return self.pipeline.manifest

    def process_files(self, paths: Iterable[str | Path]) -> ProcessedSeries:
        """Read the files of one series and process them (see the module docstring).

        Parameters
        ----------
        paths: Iterable[str | pathlib.Path]
            The series' files.

        Returns
        -------
        ProcessedSeries

        Raises
        ------
        inference.errors.VolumeError
            If a file cannot be read or the images are not a volume the
            model may see; the message is the rejection reason.
        inference.errors.InferenceError
            If the model's outputs break the contract.
        ValueError
            If the result objects cannot be encoded on the source images
            (e.g. a position mismatch).
        """
        started = time.perf_counter()
        datasets = read_series(list(paths))
        return self.process_datasets(
            datasets, read_seconds=time.perf_counter() - started, release_pixel_data=True
        )

    def process_datasets(
        self,
        datasets: Sequence[Dataset],
        read_seconds: float = 0.0,
        *,
        release_pixel_data: bool = False,
    ) -> ProcessedSeries:
        """Process the datasets (with pixel data) of one series.

        Parameters
        ----------
        datasets: Sequence[pydicom.Dataset]
            Every instance of the series, in any order.
        read_seconds: float
            Time it took to read them (reported in the stage timings).
        release_pixel_data: bool
            Delete the datasets' Pixel Data once the HU volume is built (the
            SEG and SR need only the headers): the encoded pixels are then
            not held twice while the model runs. :meth:`process_files` does,
            on the datasets it read itself.

        .. versionchanged:: issue 6
            ``release_pixel_data``; the HU volume is released before the SEG
            and SR are encoded.

        .. versionchanged:: issue 4
            The Secondary Capture pixels are rendered from the HU volume
            right after the model ran (only the key slices and one coronal
            plane are copied), before the volume is released.

        Returns
        -------
        ProcessedSeries

        Raises
        ------
        inference.errors.VolumeError, inference.errors.InferenceError, ValueError
            As :meth:`process_files`.
        """
        images = usable_images(datasets, self.rules)
        if not images:
            raise VolumeError(
                f"none of the {len(datasets)} instances is a usable CT image "
                "(CT Image Storage, Image Type not excluded)"
            )
        started = time.perf_counter()
        volume = build_volume(images)
        volume_seconds = time.perf_counter() - started
        if release_pixel_data:
            for dataset in datasets:
                if "PixelData" in dataset:
                    del dataset.PixelData
        result = self.pipeline.run_volume(volume)
        sources, series_uid = volume.datasets, volume.series_instance_uid
        started = time.perf_counter()
        rendering: SummaryRendering = render_summary(
            volume.hu,
            result,
            self.manifest,
            slice_labels=[str(ds.get("InstanceNumber", "") or k + 1)
                          for k, ds in enumerate(sources)],
        )
        render_seconds = time.perf_counter() - started
        del volume  # the HU array: not needed to encode (peak memory, issue 6)
        started = time.perf_counter()
        objects = encode_results(
            sources,
            result,
            self.manifest,
            uid_root=self.uid_root,
            seg_series_number=self.series_number_base + 1,
            sr_series_number=self.series_number_base + 2,
        )
        outline_report = build_outline_report(
            sources,
            objects.seg,
            result,
            self.manifest,
            uid_root=self.uid_root,
            series_number=self.series_number_base + 5,
        )
        secondary_captures = build_secondary_captures(
            sources,
            rendering,
            result,
            uid_root=self.uid_root,
            series_number=self.series_number_base + 3,
        )
        del rendering
        presentation_state = (
            build_presentation_state(
                sources, result, uid_root=self.uid_root,
                series_number=self.series_number_base + 4,
            )
            if self.presentation_state
            else None
        )
        encode_seconds = time.perf_counter() - started
        LOGGER.info(
            "series %s: %d images -> %s (p=%.3f), %d lesion(s); SEG %s, SR %s, "
            "%s%d SC image(s)%s",
            series_uid,
            len(sources),
            result.predicted_class,
            max(result.class_probabilities),
            len(result.analysis.lesions),
            objects.seg.SOPInstanceUID,
            objects.sr.SOPInstanceUID,
            "" if outline_report is None else f"outline SR {outline_report.SOPInstanceUID}, ",
            len(secondary_captures),
            ", GSPS" if presentation_state is not None else "",
        )
        return ProcessedSeries(
            series_instance_uid=series_uid,
            image_count=len(sources),
            result=result,
            objects=objects,
            intended_use=self.manifest.intended_use,
            stage_seconds={
                "read": read_seconds,
                "volume": volume_seconds,
                "render": render_seconds,
                "encode": encode_seconds,
            },
            secondary_captures=tuple(secondary_captures),
            presentation_state=presentation_state,
            outline_report=outline_report,
        )
