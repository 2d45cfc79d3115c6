"""Every accepted transfer syntax arrives intact: one real CT slice, 13 encodings.

The slice (Lung-PET-CT-Dx, 512x512, 12 bits) is encoded by independent
tools: DCMTK ``dcmconv`` / ``dcmcjpeg`` / ``dcmcjpls`` and pydicom with
pylibjpeg-openjpeg and its RLE encoder. DCMTK ``storescu`` sends each file
in its own transfer syntax (one presentation context per profile of a
generated association-negotiation config); the node stores the data set as
received, and pydicom can decode the stored pixel data.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pydicom.pixels import get_decoder
from pynetdicom.transport import ThreadedAssociationServer

from config import Destination
from pacs_node.ae import ACCEPTED_TRANSFER_SYNTAXES, build_ae, start_scp, stop_scp
from pacs_node.scu import send
from tests.dicom_fixtures import DirectoryReceiver
from tests.peers import free_port, run_dcmtk

NODE_AE = "DEEPSC"
CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
SOURCE = "ct/lung-pet-ct-dx-a0002/1-01.dcm"

#: How each syntax is made from an Explicit VR Little Endian file: a DCMTK
#: command (input and output paths appended) or a pydicom ``compress`` call.
DCMTK_ENCODERS: dict[UID, list[str]] = {
    ImplicitVRLittleEndian: ["dcmconv", "+ti"],
    DeflatedExplicitVRLittleEndian: ["dcmconv", "+td"],
    ExplicitVRBigEndian: ["dcmconv", "+tb"],
    JPEGBaseline8Bit: ["dcmcjpeg", "+eb", "+un"],
    JPEGExtended12Bit: ["dcmcjpeg", "+ee", "+un"],
    JPEGLosslessSV1: ["dcmcjpeg", "+e1"],
    JPEGLossless: ["dcmcjpeg", "+el"],
    JPEGLSLossless: ["dcmcjpls", "+el"],
    JPEGLSNearLossless: ["dcmcjpls", "+en", "+un"],
}
PYDICOM_ENCODERS: dict[UID, dict[str, object]] = {
    JPEG2000Lossless: {},
    JPEG2000: {"j2k_cr": [15]},
    RLELossless: {},
}
LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000}
ALL_SYNTAXES = [ExplicitVRLittleEndian, *DCMTK_ENCODERS, *PYDICOM_ENCODERS]


def _slug(syntax: UID) -> str:
    return "ts" + syntax.replace(".", "_")


@pytest.fixture(scope="module")
def source_pixels(shared_data: Path) -> np.ndarray:
    """Stored pixel values of the original slice."""
    return pydicom.dcmread(shared_data / SOURCE).pixel_array


@pytest.fixture(scope="module")
def encoded(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[UID, Path]:
    """The slice in every syntax, each with its own SOP Instance UID."""
    folder = tmp_path_factory.mktemp("encoded")
    original = pydicom.dcmread(shared_data / SOURCE)
    files: dict[UID, Path] = {}
    for syntax in ALL_SYNTAXES:
        ds = copy.deepcopy(original)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        base = folder / f"{_slug(syntax)}-base.dcm"
        ds.save_as(base, enforce_file_format=True)
        target = folder / f"{_slug(syntax)}.dcm"
        if syntax == ExplicitVRLittleEndian:
            target = base
        elif syntax in DCMTK_ENCODERS:
            proc = run_dcmtk([*DCMTK_ENCODERS[syntax], str(base), str(target)])
            assert proc.returncode == 0, proc.stderr
        else:
            ds.compress(syntax, **PYDICOM_ENCODERS[syntax])  # type: ignore[arg-type]
            ds.save_as(target, enforce_file_format=True)
        meta = pydicom.dcmread(target, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == syntax, f"{syntax.name}: got {meta.TransferSyntaxUID}"
        files[syntax] = target
    return files


@pytest.fixture(scope="module")
def storescu_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DCMTK association negotiation config: one profile per syntax, CT only."""
    lines = ["[[TransferSyntaxes]]"]
    for syntax in ALL_SYNTAXES:
        lines += [f"[{_slug(syntax)}]", f"TransferSyntax1 = {syntax}"]
    lines.append("[[PresentationContexts]]")
    for syntax in ALL_SYNTAXES:
        lines += [f"[pc{_slug(syntax)}]", f"PresentationContext1 = {CT}\\{_slug(syntax)}"]
    lines.append("[[Profiles]]")
    for syntax in ALL_SYNTAXES:
        lines += [f"[profile{_slug(syntax)}]", f"PresentationContexts = pc{_slug(syntax)}"]
    path = tmp_path_factory.mktemp("dcmtk") / "storescu.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, DirectoryReceiver]]:
    """The node's SCP with a DirectoryReceiver, shared by this module's tests."""
    receiver = DirectoryReceiver(tmp_path_factory.mktemp("node"))
    port = free_port()
    server: ThreadedAssociationServer = start_scp(
        build_ae(NODE_AE, acse_timeout=10, dimse_timeout=30, network_timeout=30),
        "127.0.0.1", port, receiver,
    )
    yield port, receiver
    stop_scp(server, timeout=2.0)


def _stored(receiver: DirectoryReceiver, sop_instance_uid: str) -> tuple[UID, Dataset]:
    (instance,) = [i for i in receiver.instances if i.sop_instance_uid == sop_instance_uid]
    return UID(instance.transfer_syntax_uid), pydicom.dcmread(receiver.path_for(instance))


def _check_pixels(syntax: UID, stored: Dataset, source_pixels: np.ndarray) -> None:
    pixels = stored.pixel_array
    assert pixels.shape == source_pixels.shape
    if syntax not in LOSSY:
        np.testing.assert_array_equal(pixels, source_pixels)


def test_every_accepted_syntax_is_covered_and_decodable() -> None:
    assert set(ALL_SYNTAXES) == set(ACCEPTED_TRANSFER_SYNTAXES)
    for syntax in ACCEPTED_TRANSFER_SYNTAXES:
        assert get_decoder(syntax).is_available, f"no pixel data decoder for {syntax.name}"


@pytest.mark.e2e
@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=lambda s: UID(s).keyword or str(s))
def test_storescu_sends_each_syntax_as_is(
    syntax: UID,
    encoded: dict[UID, Path],
    storescu_config: Path,
    node: tuple[int, DirectoryReceiver],
    source_pixels: np.ndarray,
) -> None:
    port, receiver = node
    path = encoded[syntax]
    proc = run_dcmtk(
        ["storescu", "-xf", str(storescu_config), f"profile{_slug(syntax)}",
         "-aec", NODE_AE, "127.0.0.1", str(port), str(path)]
    )
    assert proc.returncode == 0, proc.stderr
    sent = pydicom.dcmread(path)
    stored_syntax, stored = _stored(receiver, sent.SOPInstanceUID)
    assert stored_syntax == syntax
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored == sent  # every data element, pixel data (fragments) included
    _check_pixels(syntax, stored, source_pixels)


@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=lambda s: UID(s).keyword or str(s))
def test_node_scu_round_trip(
    syntax: UID,
    encoded: dict[UID, Path],
    node: tuple[int, DirectoryReceiver],
    source_pixels: np.ndarray,
    tmp_path: Path,
) -> None:
    """The node's own SCU sends compressed/big-endian files unchanged, others as LE."""
    port, receiver = node
    ds = pydicom.dcmread(encoded[syntax])
    ds.SOPInstanceUID = generate_uid()  # not the one storescu already sent
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "item.dcm"
    ds.save_as(path, enforce_file_format=True)
    report = send(Destination("node", NODE_AE, "127.0.0.1", port), [path], calling_ae="SCU")
    assert report.ok, report
    stored_syntax, stored = _stored(receiver, ds.SOPInstanceUID)
    if syntax.is_compressed or syntax == ExplicitVRBigEndian:
        assert stored_syntax == syntax
        assert stored.PixelData == ds.PixelData
    else:
        assert stored_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    _check_pixels(syntax, stored, source_pixels)
